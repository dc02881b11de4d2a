"""A loaded Stack written back as YAML: `pyapply config` and `pyapply convert`.

`spec(stack)` is the compose-shaped mapping of a model, in one canonical form: the long
syntax of every field that has two, every default spelled out where it matters, paths
absolute, durations in seconds, sizes in bytes, and every `$` doubled so that loading the
text again interpolates nothing. Loading what `config` or `convert` prints gives a model
equal to the one printed (the round trip the tests check for every fixture and corpus file).

What the model does not hold is not printed: fields pyapply does not run (they were reported
as warnings when the files were loaded), `x-` extension fields, anchors, profiles that were
not enabled, and the `extends`/`include` structure (already applied).
"""

from __future__ import annotations

import decimal
import json
from typing import Any

from pyapply.reconciler.core.model import (
    BuildSpec,
    ConfigSpec,
    Healthcheck,
    Hook,
    Mount,
    NetworkSpec,
    ServiceSpec,
    Stack,
    UpdateConfig,
    VolumeSpec,
)
from pyapply.reconciler.manifest import swarm_deploy
from pyapply.reconciler.manifest.document import API_VERSION, KIND


def _s(text: str) -> str:
    """A string as a manifest must spell it so that interpolation gives it back."""
    return text.replace("$", "$$")


def _seconds(value: float) -> str:
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(decimal.Decimal(text), "f")
    if text.endswith(".0"):
        text = text[:-2]
    return text + "s"


def _mode(value: int) -> str:
    return "0" + format(value, "o")


def _pairs(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {k: _s(v) for k, v in items}


def _mount(m: Mount) -> dict[str, Any]:
    out: dict[str, Any] = {"type": m.type}
    if m.source:
        out["source"] = _s(m.source)
    out["target"] = _s(m.target)
    if m.read_only:
        out["read_only"] = True
    if m.type == "bind":
        out["bind"] = {"create_host_path": m.create_host_path}
    if m.nocopy:
        out["volume"] = {"nocopy": True}
    if m.type == "tmpfs" and (m.tmpfs_size is not None or m.tmpfs_mode is not None):
        opts: dict[str, Any] = {}
        if m.tmpfs_size is not None:
            opts["size"] = m.tmpfs_size
        if m.tmpfs_mode is not None:
            opts["mode"] = _mode(m.tmpfs_mode)
        out["tmpfs"] = opts
    return out


def _healthcheck(h: Healthcheck) -> dict[str, Any]:
    if h.disable or h.test[:1] == ("NONE",):
        return {"disable": True}
    out: dict[str, Any] = {"test": [_s(t) for t in h.test]} if h.test else {}
    return {
        **out,
        "interval": _seconds(h.interval),
        "timeout": _seconds(h.timeout),
        "retries": h.retries,
        "start_period": _seconds(h.start_period),
    }


def _build(b: BuildSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"context": _s(b.context)}
    if b.dockerfile is not None:
        out["dockerfile"] = _s(b.dockerfile)
    if b.dockerfile_inline is not None:
        out["dockerfile_inline"] = _s(b.dockerfile_inline)
    if b.args:
        out["args"] = _pairs(b.args)
    if b.target is not None:
        out["target"] = _s(b.target)
    if b.labels:
        out["labels"] = _pairs(b.labels)
    if b.tags:
        out["tags"] = [_s(t) for t in b.tags]
    if b.no_cache:
        out["no_cache"] = True
    if b.pull:
        out["pull"] = True
    return out


def service(s: ServiceSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"image": _s(s.image)}
    if s.build is not None:
        out["build"] = _build(s.build)
    if s.command is not None:
        out["command"] = [_s(c) for c in s.command]
    if s.entrypoint is not None:
        out["entrypoint"] = [_s(c) for c in s.entrypoint]
    if s.environment:
        out["environment"] = _pairs(s.environment)
    if s.ports:
        ports = []
        for p in s.ports:
            port: dict[str, Any] = {"target": p.target}
            if p.published is not None:
                port["published"] = p.published
                if p.published_last is not None:  # as compose renders a host range
                    port["published"] = f"{p.published}-{p.published_last}"
            if p.host_ip:
                port["host_ip"] = p.host_ip
            port["protocol"] = p.protocol
            if p.mode != "ingress":
                port["mode"] = p.mode
            ports.append(port)
        out["ports"] = ports
    volumes = [_mount(m) for m in s.mounts]
    if volumes:
        out["volumes"] = volumes
    if s.network_mode is not None:
        out["network_mode"] = _s(s.network_mode)
    elif s.networks:
        nets: dict[str, Any] = {}
        for n in s.networks:
            cfg: dict[str, Any] = {}
            if n.aliases:
                cfg["aliases"] = [_s(a) for a in n.aliases]
            if n.ipv4_address:
                cfg["ipv4_address"] = n.ipv4_address
            nets[n.name] = cfg or None
        out["networks"] = nets
    else:
        out["network_mode"] = "none"
    if s.expose:
        out["expose"] = [_s(e) for e in s.expose]
    if s.container_name is not None:
        out["container_name"] = _s(s.container_name)
    if s.depends_on:
        deps: dict[str, Any] = {}
        for d in s.depends_on:
            dep: dict[str, Any] = {"condition": d.condition}
            if not d.required:
                dep["required"] = False
            if d.restart:
                dep["restart"] = True
            deps[d.service] = dep
        out["depends_on"] = deps
    if s.healthcheck is not None:
        out["healthcheck"] = _healthcheck(s.healthcheck)
    if s.restart != "no":
        out["restart"] = s.restart
    limits: dict[str, Any] = {}
    if s.resources.memory is not None:
        limits["memory"] = s.resources.memory
    if s.resources.cpus is not None:
        limits["cpus"] = s.resources.cpus
    if s.resources.pids is not None:
        limits["pids"] = s.resources.pids
    deploy: dict[str, Any] = {}
    if s.replicas != 1:
        deploy["replicas"] = s.replicas
    if limits:
        deploy["resources"] = {"limits": limits}
    if s.update != UpdateConfig():
        deploy["update_config"] = {
            "order": s.update.order,
            "parallelism": s.update.parallelism,
            "delay": _seconds(s.update.delay),
        }
    swarm_deploy.dump_deploy(s.deploy, deploy, _seconds)
    if deploy:
        out["deploy"] = deploy
    if s.labels:
        out["labels"] = _pairs(s.labels)
    for name in ("user", "working_dir", "hostname", "stop_signal"):
        value = getattr(s, name)
        if value is not None:
            out[name] = _s(value)
    if s.cap_add:
        out["cap_add"] = list(s.cap_add)
    if s.cap_drop:
        out["cap_drop"] = list(s.cap_drop)
    if s.read_only:
        out["read_only"] = True
    if s.stop_grace_period is not None:
        out["stop_grace_period"] = _seconds(s.stop_grace_period)
    if s.init is not None:
        out["init"] = s.init
    if s.ulimits:
        out["ulimits"] = {u.name: {"soft": u.soft, "hard": u.hard} for u in s.ulimits}
    security = []
    if s.seccomp is not None:
        security.append(f"seccomp={_s(s.seccomp_file or s.seccomp)}")
    if s.no_new_privileges:
        security.append("no-new-privileges=true")
    if s.apparmor is not None:
        security.append(f"apparmor={_s(s.apparmor)}")
    if security:
        out["security_opt"] = security
    _isolation(s, out)
    if s.extra_hosts:
        out["extra_hosts"] = [f"{host}={ip}" for host, ip in s.extra_hosts]
    if s.log_max_size is not None or s.log_max_files is not None:
        options: dict[str, Any] = {}
        if s.log_max_size is not None:
            options["max-size"] = s.log_max_size
        if s.log_max_files is not None:
            options["max-file"] = s.log_max_files
        out["logging"] = {"driver": "json-file", "options": options}
    for section in ("configs", "secrets"):
        refs = []
        for r in getattr(s, section):
            ref: dict[str, Any] = {"source": r.source, "target": _s(r.target)}
            if r.mode is not None:
                ref["mode"] = _mode(r.mode)
            if r.uid is not None:
                ref["uid"] = _s(r.uid)
            if r.gid is not None:
                ref["gid"] = _s(r.gid)
            refs.append(ref)
        if refs:
            out[section] = refs
    if s.pull_policy != "missing":
        out["pull_policy"] = s.pull_policy
    elif s.build is not None and not s.build.pull_first:
        # `image` is always written: without a pull_policy, loading this back would pull
        # the image first (compose's rule for `build:` with `image:`), which was not asked
        out["pull_policy"] = "missing"
    return out


def _hook(h: Hook) -> dict[str, Any]:
    out: dict[str, Any] = {"command": [_s(c) for c in h.command]}
    if h.user is not None:
        out["user"] = _s(h.user)
    if h.privileged:
        out["privileged"] = True
    if h.working_dir is not None:
        out["working_dir"] = _s(h.working_dir)
    if h.environment:
        out["environment"] = _pairs(h.environment)
    return out


def _isolation(s: ServiceSpec, out: dict[str, Any]) -> None:
    """The fields of `reconciler.manifest.isolation`, where they are not at their default."""
    for name in ("privileged", "tty", "stdin_open"):
        if getattr(s, name):
            out[name] = True
    if s.devices:
        out["devices"] = [
            {"source": _s(d.source), "target": _s(d.target), "permissions": d.permissions}
            for d in s.devices
        ]
    if s.sysctls:
        out["sysctls"] = _pairs(s.sysctls)
    for name in ("dns", "dns_search", "dns_opt", "group_add"):
        values = getattr(s, name)
        if values:
            out[name] = [_s(v) for v in values]
    if s.shm_size is not None:
        out["shm_size"] = s.shm_size
    for name in ("pid", "ipc", "cgroup_parent", "mac_address", "platform", "runtime"):
        value = getattr(s, name)
        if value is not None:
            out[name] = _s(value)
    if s.oom_score_adj is not None:
        out["oom_score_adj"] = s.oom_score_adj
    for name in ("post_start", "pre_stop"):
        hooks = getattr(s, name)
        if hooks:
            out[name] = [_hook(h) for h in hooks]


def network(n: NetworkSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if n.external:
        out["external"] = True
        if n.external_name:
            out["name"] = _s(n.external_name)
        return out
    if n.external_name:
        out["name"] = _s(n.external_name)
    out["driver"] = _s(n.driver)
    if n.internal:
        out["internal"] = True
    if n.attachable:
        out["attachable"] = True
    if n.enable_ipv6:
        out["enable_ipv6"] = True
    configs: list[dict[str, Any]] = []
    for subnet, gateway in ((n.subnet, n.gateway), (n.subnet6, n.gateway6)):
        if subnet or gateway:
            cfg: dict[str, Any] = {}
            if subnet:
                cfg["subnet"] = subnet
            if gateway:
                cfg["gateway"] = gateway
            configs.append(cfg)
    if configs:
        out["ipam"] = {"config": configs}
    if n.labels:
        out["labels"] = _pairs(n.labels)
    return out


def volume(v: VolumeSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if v.external:
        out["external"] = True
        if v.external_name:
            out["name"] = _s(v.external_name)
        return out
    if v.external_name:
        out["name"] = _s(v.external_name)
    out["driver"] = _s(v.driver)
    if v.driver_opts:
        out["driver_opts"] = _pairs(v.driver_opts)
    if v.labels:
        out["labels"] = _pairs(v.labels)
    return out


def file_object(c: ConfigSpec) -> dict[str, Any]:
    if c.external:
        if c.external_name:
            return {"external": True, "name": _s(c.external_name)}
        return {"external": True}
    if c.file is not None:
        return {"file": _s(c.file)}
    if c.content is not None:
        return {"content": _s(c.content)}
    return {"environment": _s(c.environment or "")}


def spec(stack: Stack) -> dict[str, Any]:
    """The compose-shaped body of a stack (services, networks, volumes, configs, secrets)."""
    out: dict[str, Any] = {"services": {s.name: service(s) for s in stack.services}}
    if stack.networks:
        out["networks"] = {n.name: network(n) for n in stack.networks}
    if stack.volumes:
        out["volumes"] = {v.name: volume(v) for v in stack.volumes}
    if stack.configs:
        out["configs"] = {c.name: file_object(c) for c in stack.configs}
    if stack.secrets:
        out["secrets"] = {c.name: file_object(c) for c in stack.secrets}
    return out


def compose_document(stack: Stack) -> dict[str, Any]:
    """`pyapply config`: the resolved project as one compose file."""
    return {"name": stack.name, **spec(stack)}


def stack_document(stack: Stack) -> dict[str, Any]:
    """`pyapply convert`: the canonical pyapply/v1 Stack."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": stack.name},
        "spec": spec(stack),
    }


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump_all(
        docs, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def dump_json(docs: list[dict[str, Any]]) -> str:
    return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, ensure_ascii=False)
