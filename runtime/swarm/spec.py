"""ServiceConfig <-> Engine ServiceSpec, both ways, as pure functions.

`service_spec` writes every field we model explicitly (defaults included), so that the spec
the swarm stores reads back, through `service_config`, as the very config it came from; a
field someone changed out of band (`docker service update --env-add X=1`, `--replicas 5`)
reads back as that field's new value, which the reconciler shows as a field difference.

What the swarm stores differs from what is sent in two ways that `service_config` undoes:
network targets are stored as network ids (`network_names` maps them back), and fields at
their zero value are omitted (read back as our defaults, which are the swarm's own).
Durations are nanoseconds in the Engine API and seconds here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from pyapply.runtime.base import HealthConfig, MountConfig, MountType
from pyapply.runtime.services import (
    Placement,
    Resources,
    RestartPolicy,
    ServiceConfig,
    ServiceNetwork,
    ServicePort,
    SwarmObjectRef,
    UpdatePolicy,
)

__all__ = ["service_config", "service_spec"]

JSON = Mapping[str, Any]
_NS = 1_000_000_000


def _ns(seconds: float) -> int:
    return round(seconds * _NS)


def _s(nanoseconds: object) -> float:
    return int(cast(int, nanoseconds or 0)) / _NS


# ---------------------------------------------------------------------------------------------
# ServiceConfig -> ServiceSpec


def service_spec(
    config: ServiceConfig,
    *,
    config_ids: Mapping[str, str] | None = None,
    secret_ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Engine `ServiceSpec` of `config`. Configs and secrets are referenced by name and
    id: `config_ids`/`secret_ids` map the names to the swarm objects' ids (a name missing
    from them is sent without an id, which the daemon refuses as a missing object)."""
    container: dict[str, Any] = {
        "Image": config.image,
        "Labels": dict(config.container_labels),
        "Env": list(config.env),
        "ReadOnly": config.read_only,
        "Mounts": [_mount(m, dict(config.volume_labels)) for m in config.mounts],
        "Configs": [_object_ref(r, "Config", config_ids or {}) for r in config.configs],
        "Secrets": [_object_ref(r, "Secret", secret_ids or {}) for r in config.secrets],
    }
    if config.entrypoint is not None:
        container["Command"] = list(config.entrypoint)
    if config.command is not None:
        container["Args"] = list(config.command)
    for key, value in (
        ("Dir", config.working_dir),
        ("User", config.user),
        ("Hostname", config.hostname),
        ("Init", config.init),
        ("StopSignal", config.stop_signal),
    ):
        if value is not None:
            container[key] = value
    if config.stop_grace_period_s is not None:
        container["StopGracePeriod"] = _ns(config.stop_grace_period_s)
    if config.health is not None:
        container["Healthcheck"] = _healthcheck(config.health)
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": _resources(config.resources),
        "RestartPolicy": {
            "Condition": config.restart_policy.condition,
            "Delay": _ns(config.restart_policy.delay_s),
            "MaxAttempts": config.restart_policy.max_attempts,
            "Window": _ns(config.restart_policy.window_s),
        },
        "Placement": _placement(config.placement),
        "Networks": [{"Target": n.network, "Aliases": list(n.aliases)} for n in config.networks],
    }
    mode: dict[str, Any] = (
        {"Global": {}} if config.mode == "global" else {"Replicated": {"Replicas": config.replicas}}
    )
    return {
        "Name": config.name,
        "Labels": dict(config.labels),
        "TaskTemplate": task,
        "Mode": mode,
        "UpdateConfig": _update_policy(config.update_config),
        "RollbackConfig": _update_policy(config.rollback_config),
        "EndpointSpec": {
            "Mode": config.endpoint_mode,
            "Ports": [
                {
                    "Protocol": p.protocol,
                    "TargetPort": p.target,
                    "PublishedPort": p.published or 0,
                    "PublishMode": p.mode,
                }
                for p in config.ports
            ],
        },
    }


def _mount(
    m: MountConfig, volume_labels: Mapping[str, tuple[tuple[str, str], ...]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": m.type, "Target": m.target, "ReadOnly": m.read_only}
    if m.type != "tmpfs":
        out["Source"] = m.source
    if m.type == "volume" and m.source in volume_labels:
        out["VolumeOptions"] = {"Labels": dict(volume_labels[m.source])}
    else:
        tmpfs: dict[str, int] = {}
        if m.tmpfs_size is not None:
            tmpfs["SizeBytes"] = m.tmpfs_size
        if m.tmpfs_mode is not None:
            tmpfs["Mode"] = m.tmpfs_mode
        if tmpfs:
            out["TmpfsOptions"] = tmpfs
    return out


def _object_ref(ref: SwarmObjectRef, kind: str, ids: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "File": {"Name": ref.target, "UID": ref.uid, "GID": ref.gid, "Mode": ref.mode},
        f"{kind}Name": ref.name,
    }
    if ref.name in ids:
        out[f"{kind}ID"] = ids[ref.name]
    return out


def _healthcheck(h: HealthConfig) -> dict[str, Any]:
    if h.test[:1] == ("NONE",):
        return {"Test": ["NONE"]}
    return {
        "Test": list(h.test),
        "Interval": _ns(h.interval_s),
        "Timeout": _ns(h.timeout_s),
        "Retries": h.retries,
        "StartPeriod": _ns(h.start_period_s),
    }


def _resources(r: Resources) -> dict[str, Any]:
    limits: dict[str, int] = {}
    reservations: dict[str, int] = {}
    if r.limit_nano_cpus is not None:
        limits["NanoCPUs"] = r.limit_nano_cpus
    if r.limit_memory_bytes is not None:
        limits["MemoryBytes"] = r.limit_memory_bytes
    if r.limit_pids is not None:
        limits["Pids"] = r.limit_pids
    if r.reserve_nano_cpus is not None:
        reservations["NanoCPUs"] = r.reserve_nano_cpus
    if r.reserve_memory_bytes is not None:
        reservations["MemoryBytes"] = r.reserve_memory_bytes
    return {"Limits": limits, "Reservations": reservations}


def _placement(p: Placement) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Constraints": list(p.constraints),
        "Preferences": [{"Spread": {"SpreadDescriptor": d}} for d in p.preferences],
    }
    if p.max_replicas_per_node is not None:
        out["MaxReplicas"] = p.max_replicas_per_node
    return out


def _update_policy(u: UpdatePolicy) -> dict[str, Any]:
    return {
        "Parallelism": u.parallelism,
        "Delay": _ns(u.delay_s),
        "FailureAction": u.failure_action,
        "Monitor": _ns(u.monitor_s),
        "MaxFailureRatio": u.max_failure_ratio,
        "Order": u.order,
    }


# ---------------------------------------------------------------------------------------------
# ServiceSpec -> ServiceConfig


def service_config(spec: JSON, *, network_names: Mapping[str, str] | None = None) -> ServiceConfig:
    """The `ServiceConfig` a stored `ServiceSpec` amounts to. `network_names` maps network
    ids to names (the swarm stores a network target as its id; an id missing from it stays
    as it is). Tuples come out in the canonical order `ServiceConfig` documents."""
    names = network_names or {}
    task: JSON = spec.get("TaskTemplate") or {}
    container: JSON = task.get("ContainerSpec") or {}
    mode: JSON = spec.get("Mode") or {}
    endpoint: JSON = spec.get("EndpointSpec") or {}
    restart: JSON = task.get("RestartPolicy") or {}
    grace = container.get("StopGracePeriod")
    networks = task.get("Networks") or spec.get("Networks") or []
    return ServiceConfig(
        name=str(spec.get("Name") or ""),
        image=str(container.get("Image") or ""),
        labels=dict(spec.get("Labels") or {}),
        container_labels=dict(container.get("Labels") or {}),
        command=_opt_tuple(container.get("Args")),
        entrypoint=_opt_tuple(container.get("Command")),
        env=tuple(sorted(str(e) for e in container.get("Env") or ())),
        working_dir=container.get("Dir") or None,
        user=container.get("User") or None,
        hostname=container.get("Hostname") or None,
        init=container.get("Init"),
        read_only=bool(container.get("ReadOnly")),
        stop_signal=container.get("StopSignal") or None,
        stop_grace_period_s=None if grace is None else _s(grace),
        mode="global" if "Global" in mode else "replicated",
        replicas=int((mode.get("Replicated") or {}).get("Replicas", 1))
        if "Global" not in mode
        else 1,
        placement=_placement_of(task.get("Placement") or {}),
        resources=_resources_of(task.get("Resources") or {}),
        restart_policy=RestartPolicy(
            condition=restart.get("Condition") or "any",
            delay_s=_s(restart["Delay"]) if "Delay" in restart else RestartPolicy().delay_s,
            max_attempts=int(restart.get("MaxAttempts") or 0),
            window_s=_s(restart.get("Window")),
        ),
        update_config=_update_policy_of(spec.get("UpdateConfig")),
        rollback_config=_update_policy_of(spec.get("RollbackConfig")),
        endpoint_mode="dnsrr" if endpoint.get("Mode") == "dnsrr" else "vip",
        health=_health_of(container.get("Healthcheck")),
        ports=tuple(
            sorted(
                (
                    ServicePort(
                        target=int(p.get("TargetPort") or 0),
                        published=int(p["PublishedPort"]) if p.get("PublishedPort") else None,
                        protocol=p.get("Protocol") or "tcp",
                        mode="host" if p.get("PublishMode") == "host" else "ingress",
                    )
                    for p in endpoint.get("Ports") or ()
                ),
                key=lambda p: (p.target, p.protocol, p.published or 0, p.mode),
            )
        ),
        networks=tuple(
            sorted(
                (
                    ServiceNetwork(
                        network=names.get(str(n.get("Target")), str(n.get("Target"))),
                        aliases=tuple(sorted(n.get("Aliases") or ())),
                    )
                    for n in networks
                ),
                key=lambda n: n.network,
            )
        ),
        mounts=tuple(sorted((_mount_of(m) for m in container.get("Mounts") or ()), key=_mkey)),
        configs=_refs_of(container.get("Configs"), "Config"),
        secrets=_refs_of(container.get("Secrets"), "Secret"),
        volume_labels=_volume_labels_of(container.get("Mounts") or ()),
    )


def _volume_labels_of(mounts: object) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for m in cast(list[JSON], mounts):
        labels = (m.get("VolumeOptions") or {}).get("Labels")
        if m.get("Type") == "volume" and m.get("Source") and labels:
            out[str(m["Source"])] = tuple(sorted((str(k), str(v)) for k, v in labels.items()))
    return tuple(sorted(out.items()))


def _opt_tuple(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(str(v) for v in cast(list[object], value))


def _mkey(m: MountConfig) -> tuple[str, str, str]:
    return (m.target, m.type, m.source)


def _placement_of(p: JSON) -> Placement:
    return Placement(
        constraints=tuple(p.get("Constraints") or ()),
        preferences=tuple(
            str((pref.get("Spread") or {}).get("SpreadDescriptor") or "")
            for pref in p.get("Preferences") or ()
        ),
        max_replicas_per_node=int(p["MaxReplicas"]) if p.get("MaxReplicas") else None,
    )


def _resources_of(r: JSON) -> Resources:
    limits: JSON = r.get("Limits") or {}
    reservations: JSON = r.get("Reservations") or {}

    def opt(m: JSON, key: str) -> int | None:
        return int(m[key]) if m.get(key) else None

    return Resources(
        limit_nano_cpus=opt(limits, "NanoCPUs"),
        limit_memory_bytes=opt(limits, "MemoryBytes"),
        limit_pids=opt(limits, "Pids"),
        reserve_nano_cpus=opt(reservations, "NanoCPUs"),
        reserve_memory_bytes=opt(reservations, "MemoryBytes"),
    )


def _update_policy_of(u: JSON | None) -> UpdatePolicy:
    u = u or {}
    default = UpdatePolicy()
    return UpdatePolicy(
        parallelism=int(u.get("Parallelism", default.parallelism)),
        delay_s=_s(u.get("Delay")),
        order="start-first" if u.get("Order") == "start-first" else "stop-first",
        failure_action=u.get("FailureAction") or default.failure_action,
        monitor_s=_s(u["Monitor"]) if u.get("Monitor") else default.monitor_s,
        max_failure_ratio=float(u.get("MaxFailureRatio") or 0.0),
    )


def _health_of(h: JSON | None) -> HealthConfig | None:
    if not h:
        return None
    test = tuple(str(t) for t in h.get("Test") or ())
    if test[:1] == ("NONE",):
        return HealthConfig(test=("NONE",))
    default = HealthConfig(test=())
    return HealthConfig(
        test=test,
        interval_s=_s(h["Interval"]) if h.get("Interval") else default.interval_s,
        timeout_s=_s(h["Timeout"]) if h.get("Timeout") else default.timeout_s,
        retries=int(h["Retries"]) if h.get("Retries") else default.retries,
        start_period_s=_s(h.get("StartPeriod")),
    )


def _mount_of(m: JSON) -> MountConfig:
    raw = m.get("Type")
    kind: MountType = "bind" if raw == "bind" else "tmpfs" if raw == "tmpfs" else "volume"
    tmpfs: JSON = m.get("TmpfsOptions") or {}
    return MountConfig(
        type=kind,
        target=str(m.get("Target") or ""),
        source="" if kind == "tmpfs" else str(m.get("Source") or ""),
        read_only=bool(m.get("ReadOnly")),
        tmpfs_size=int(tmpfs["SizeBytes"]) if tmpfs.get("SizeBytes") else None,
        tmpfs_mode=int(tmpfs["Mode"]) if tmpfs.get("Mode") else None,
    )


def _refs_of(refs: object, kind: str) -> tuple[SwarmObjectRef, ...]:
    out = []
    for r in cast(list[JSON], refs or []):
        file: JSON = r.get("File") or {}
        out.append(
            SwarmObjectRef(
                name=str(r.get(f"{kind}Name") or ""),
                target=str(file.get("Name") or ""),
                uid=str(file.get("UID") or "0"),
                gid=str(file.get("GID") or "0"),
                mode=int(file["Mode"]) if "Mode" in file else 0o444,
            )
        )
    return tuple(sorted(out, key=lambda r: (r.target, r.name)))
