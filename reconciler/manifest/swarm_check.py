"""What a manifest asks that cannot exist on a swarm, located (`file:line:col: path: ...`).

A swarm starts services in no order, names tasks itself, and its service spec has no place
for some container settings pyapply runs on one host. Rather than drop them silently, the
swarm runtime checks the stack as written (`StackDocument`, positions included) before it
changes anything: an error where the manifest would mean something else on a swarm, a
warning where the swarm's behaviour is close enough.
"""

from __future__ import annotations

from typing import Any

from pyapply.reconciler.core.model import Problem
from pyapply.reconciler.manifest.loader import Loaded, StackDocument, format_path

__all__ = ["check_swarm"]

Path = tuple[str | int, ...]

# service fields a swarm service spec has no place for: (field, sentence)
_ERRORS: tuple[tuple[str, str], ...] = (
    ("network_mode", "a swarm service's tasks join networks; there is no network_mode"),
    ("cap_add", "the swarm runtime does not set capabilities"),
    ("cap_drop", "the swarm runtime does not set capabilities"),
    ("ulimits", "the swarm runtime does not set ulimits"),
    ("extra_hosts", "the swarm runtime does not add /etc/hosts lines"),
    ("security_opt", "the swarm runtime does not set security options"),
    # what the one-host runtimes run of a container's isolation and process (isolation.py)
    ("privileged", "the swarm runtime does not run privileged tasks"),
    ("devices", "the swarm runtime does not give tasks host devices"),
    ("sysctls", "the swarm runtime does not set sysctls"),
    ("dns", "the swarm runtime does not set name servers"),
    ("dns_search", "the swarm runtime does not set search domains"),
    ("dns_opt", "the swarm runtime does not set resolver options"),
    ("shm_size", "the swarm runtime does not size /dev/shm"),
    ("tty", "the swarm runtime does not give tasks a terminal"),
    ("stdin_open", "the swarm runtime does not keep a task's stdin open"),
    ("pid", "the swarm runtime does not share process namespaces"),
    ("ipc", "the swarm runtime does not share IPC namespaces"),
    ("cgroup_parent", "the swarm runtime does not set a cgroup parent"),
    ("oom_score_adj", "the swarm runtime does not set the OOM score"),
    ("group_add", "the swarm runtime does not add groups"),
    ("mac_address", "the swarm runtime does not set MAC addresses"),
    ("runtime", "the swarm runtime uses each node's default OCI runtime"),
    ("post_start", "the swarm runtime does not run lifecycle hooks"),
    ("pre_stop", "the swarm runtime does not run lifecycle hooks"),
    ("build", "a swarm pulls images from a registry: build and push it, then name it in image"),
)
_WARNINGS: tuple[tuple[str, str], ...] = (
    ("container_name", "a swarm names each task itself; container_name is ignored"),
    ("restart", "a swarm uses deploy.restart_policy; restart is ignored"),
    ("logging", "the swarm runtime keeps the daemon's logging; logging is ignored"),
)


# Measured with dockerd 20.10 on a single-node swarm: EnableIPv6 with an IPv6 pool makes the
# overlay network, but every task on it is rejected ("Invalid address fd00:...: It does not
# belong to any of this network's subnets": its overlay driver knows IPv4 subnets only), and
# EnableIPv6 without a pool makes a network with no IPv6 at all. Neither is what was asked.
NO_IPV6 = (
    "the swarm's overlay networks cannot carry IPv6 (dockerd 20.10 rejects every task "
    "given an IPv6 address on one); remove enable_ipv6 for the swarm (runtime swarm)"
)


def _service_problems(doc: StackDocument, name: str, raw: Any) -> list[Problem]:
    base: Path = (*doc.base, "services", name)
    out: list[Problem] = []

    def add(path: Path, message: str, severity: str = "error", key: bool = True) -> None:
        out.append(
            Problem(
                f"{message} (runtime swarm)",
                doc.location(path, key=key),
                format_path(path),
                "error" if severity == "error" else "warning",
            )
        )

    for field, sentence in _ERRORS:
        if field in raw:
            add((*base, field), sentence)
    for field, sentence in _WARNINGS:
        if field in raw and not (
            field == "restart" and "restart_policy" in (raw.get("deploy") or {})
        ):
            add((*base, field), sentence, "warning")
    deps = raw.get("depends_on")
    if isinstance(deps, dict):
        for dep, spec in deps.items():
            cond = spec.get("condition") if isinstance(spec, dict) else None
            if cond in ("service_healthy", "service_completed_successfully"):
                add(
                    (*base, "depends_on", dep, "condition"),
                    f"a swarm starts services in no order, so {cond} cannot be waited for",
                    key=False,
                )
            else:
                add((*base, "depends_on", dep), "a swarm starts services in no order", "warning")
    elif isinstance(deps, list):
        add((*base, "depends_on"), "a swarm starts services in no order", "warning")
    for i, port in enumerate(raw.get("ports") or []):
        if isinstance(port, dict) and port.get("host_ip"):
            add((*base, "ports", i, "host_ip"), "a swarm publishes on every address of a node")
        elif isinstance(port, str) and port.count(":") >= 2:
            add((*base, "ports", i), "a swarm publishes on every address of a node", key=False)
    networks = raw.get("networks")
    if isinstance(networks, dict):
        for net, spec in networks.items():
            for key in ("ipv4_address", "ipv6_address"):
                if isinstance(spec, dict) and key in spec:
                    add((*base, "networks", net, key), "a swarm assigns the addresses of tasks")
    return out


def check_swarm(loaded: Loaded) -> list[Problem]:
    """The problems of every loaded stack on a swarm, errors and warnings, in file order."""
    out: list[Problem] = []
    for stack in loaded.stacks:
        doc = loaded.documents.get(stack.name)
        if doc is None:
            continue
        services = (doc.spec or {}).get("services") or {}
        for svc in stack.services:
            raw = services.get(svc.name)
            if isinstance(raw, dict):
                out += _service_problems(doc, svc.name, raw)
        for net in stack.networks:
            if net.enable_ipv6 and not net.external:
                path = (*doc.base, "networks", net.name, "enable_ipv6")
                out.append(
                    Problem(NO_IPV6, doc.location(path, key=True), format_path(path), "error")
                )
    return out
