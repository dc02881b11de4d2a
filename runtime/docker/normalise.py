"""Pure translation between Docker Engine API payloads and the runtime vocabulary.

Nothing here talks to the daemon, so all of it can be unit-tested with plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pyapply.runtime import restarts
from pyapply.runtime.base import (
    ContainerState,
    ContainerStatus,
    Health,
    NetworkState,
    PortBinding,
    VolumeState,
)

STACK_LABEL = "io.pyapply.stack"
HASH_LABEL = "io.pyapply.spec-hash"
OWNER_LABELS = (STACK_LABEL, HASH_LABEL)

_STATUSES: frozenset[str] = frozenset(
    ("created", "running", "paused", "restarting", "exited", "dead", "removing")
)
_HEALTH: frozenset[str] = frozenset(("healthy", "unhealthy", "starting"))
_ZERO_TIME = "0001-01-01T00:00:00Z"

JSON = Mapping[str, Any]


def label_filters(labels: Mapping[str, str]) -> dict[str, list[str]]:
    """{k: v} -> Docker's `label` filter ("k=v", or "k" when v is "")."""
    if not labels:
        return {}
    return {"label": [f"{k}={v}" if v != "" else k for k, v in sorted(labels.items())]}


def labels_match(have: Mapping[str, str] | None, want: Mapping[str, str]) -> bool:
    """Whether `have` satisfies a label filter ({k: ""} means "has the key")."""
    have = have or {}
    return all(k in have and (v == "" or have[k] == v) for k, v in want.items())


def same_owner(want: Mapping[str, str], have: Mapping[str, str] | None) -> bool:
    """An existing object counts as "ours, with this spec" when it carries the same stack and
    spec-hash labels as asked; a config without either label has to match all its labels."""
    have = have or {}
    if any(k in want for k in OWNER_LABELS):
        return all(want.get(k) == have.get(k) for k in OWNER_LABELS)
    return all(have.get(k) == v for k, v in want.items())


def _time(value: object) -> str | None:
    if not isinstance(value, str) or not value or value == _ZERO_TIME:
        return None
    return value


def _port_sort_key(p: PortBinding) -> tuple[int, str, str, int]:
    return (p.container_port, p.protocol, p.host_ip, -1 if p.host_port is None else p.host_port)


def sort_ports(ports: list[PortBinding]) -> tuple[PortBinding, ...]:
    return tuple(sorted(ports, key=_port_sort_key))


def ports_from_bindings(bindings: Mapping[str, Any] | None) -> tuple[PortBinding, ...]:
    """HostConfig.PortBindings ({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}) -> ports.

    An empty HostIp stays "" (all addresses); an empty HostPort is None (any free port).
    """
    out: list[PortBinding] = []
    for key, entries in (bindings or {}).items():
        port_s, _, proto = str(key).partition("/")
        try:
            container_port = int(port_s)
        except ValueError:
            continue
        for entry in entries or []:
            host_port_s = str(entry.get("HostPort") or "")
            host_port: int | None
            try:
                host_port = int(host_port_s) if host_port_s else None
            except ValueError:
                host_port = None
            out.append(
                PortBinding(
                    container_port=container_port,
                    protocol=proto or "tcp",
                    host_ip=str(entry.get("HostIp") or ""),
                    host_port=host_port,
                )
            )
    return sort_ports(out)


def port_bindings(ports: tuple[PortBinding, ...]) -> dict[str, list[dict[str, str]]]:
    """Ports -> the HostConfig.PortBindings payload (several host bindings per port allowed)."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {
                "HostIp": p.host_ip,
                "HostPort": "" if p.host_port is None else str(p.host_port),
            }
        )
    return out


def container_state(info: JSON) -> ContainerState:
    """GET /containers/{id}/json -> ContainerState."""
    state: JSON = info.get("State") or {}
    config: JSON = info.get("Config") or {}
    host: JSON = info.get("HostConfig") or {}
    netset: JSON = info.get("NetworkSettings") or {}

    raw_status = str(state.get("Status") or "")
    status = cast(ContainerStatus, raw_status if raw_status in _STATUSES else "dead")
    health_raw = str(((state.get("Health") or {}).get("Status")) or "")
    health = cast(Health, health_raw) if health_raw in _HEALTH else None
    exit_code: int | None = None
    if status in ("exited", "dead", "restarting") and state.get("ExitCode") is not None:
        exit_code = int(state["ExitCode"])
    memory = int(host.get("Memory") or 0)
    rp: JSON = host.get("RestartPolicy") or {}
    restart_count = int(info.get("RestartCount") or 0)
    gave_up = status == "exited" and restarts.gave_up(
        restarts.Policy.parse(rp.get("Name"), rp.get("MaximumRetryCount")),
        restarts.Record(count=restart_count),
        exit_code,
    )
    return ContainerState(
        id=str(info.get("Id", "")),
        name=str(info.get("Name", "")).lstrip("/"),
        image=str(config.get("Image") or ""),
        image_id=str(info.get("Image") or ""),
        labels=dict(config.get("Labels") or {}),
        status=status,
        exit_code=exit_code,
        health=health,
        env=tuple(sorted(config.get("Env") or ())),
        networks=tuple(sorted((netset.get("Networks") or {}).keys())),
        ports=ports_from_bindings(host.get("PortBindings")),
        memory_bytes=memory or None,
        started_at=_time(state.get("StartedAt")),
        finished_at=_time(state.get("FinishedAt")),
        restart_count=restart_count,
        restart_gave_up=gave_up,
    )


def network_state(info: JSON) -> NetworkState:
    """GET /networks/{id} -> NetworkState (attached containers by name, sorted)."""
    ipam_configs = (info.get("IPAM") or {}).get("Config") or []
    subnet = ipam_configs[0].get("Subnet") if ipam_configs else None
    containers = sorted(
        str(c.get("Name", "")).lstrip("/")
        for c in (info.get("Containers") or {}).values()
        if c.get("Name")
    )
    return NetworkState(
        id=str(info.get("Id", "")),
        name=str(info.get("Name", "")),
        driver=str(info.get("Driver") or ""),
        internal=bool(info.get("Internal")),
        labels=dict(info.get("Labels") or {}),
        subnet=str(subnet) if subnet else None,
        containers=tuple(containers),
    )


def volume_state(info: JSON) -> VolumeState:
    """GET /volumes/{name} (or an entry of GET /volumes) -> VolumeState."""
    return VolumeState(
        name=str(info.get("Name", "")),
        driver=str(info.get("Driver") or ""),
        labels=dict(info.get("Labels") or {}),
        mountpoint=str(info.get("Mountpoint") or ""),
    )


def split_image_ref(ref: str) -> tuple[str, str]:
    """ "host:5000/ns/app:1.4" -> ("host:5000/ns/app", "1.4"); "app@sha256:..." -> ("app",
    "sha256:..."); no tag -> "latest". A digest wins over a tag ("app:1@sha256:x" pulls
    by digest, as docker does)."""
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        name, tag = _split_tag(repo)
        return name, digest
    name, tag = _split_tag(ref)
    return name, tag or "latest"


def _split_tag(ref: str) -> tuple[str, str]:
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:  # a colon after the last slash is a tag, not a registry port
        return ref[:colon], ref[colon + 1 :]
    return ref, ""
