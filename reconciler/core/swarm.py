"""A Stack on a swarm: the desired services, overlay networks, configs and secrets; the diff
against what the swarm shows; and the plan that converges it. Pure.

Naming follows `docker stack deploy`, so that `docker stack ps/services` read the stack:
service `<stack>_<service>`, network `<stack>_<network>`, and every object carries
`com.docker.stack.namespace=<stack>` besides our `io.pyapply.*` labels. Configs and secrets
are immutable on a swarm, so each is named by its content's hash (`<stack>_<key>_<hash8>`):
a new content is a new object, the services are updated to it, and the old one is removed
once the updates converged and nothing uses it.

The diff compares the desired `ServiceConfig` with the observed `ServiceState.spec` field by
field (the driver reads a spec back in the same vocabulary). A field that differs while the
service's spec-hash label is the desired one was changed out of band (`docker service update
--env-add` by hand); with another hash, the manifest changed. The revision label alone never
causes an update. Runtime drift -- fewer running tasks than desired, failing tasks, an update
paused or rolled back -- is a change of its own, so `diff --exit-code` reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import Change, DiffResult, FieldDiff
from pyapply.reconciler.core.model import FileRef, ServiceSpec, Stack
from pyapply.reconciler.core.plan import Action, Plan
from pyapply.reconciler.core.translate import FileKind, _health
from pyapply.runtime.base import MountConfig, VolumeState
from pyapply.runtime.services import (
    STACK_NAMESPACE_LABEL,
    OverlayNetworkConfig,
    OverlayNetworkState,
    Placement,
    Resources,
    RestartPolicy,
    ServiceConfig,
    ServiceNetwork,
    ServicePort,
    ServiceState,
    SwarmObjectConfig,
    SwarmObjectKind,
    SwarmObjectRef,
    SwarmObjectState,
    UpdatePolicy,
)

__all__ = [
    "DesiredObject",
    "DesiredService",
    "SwarmDesired",
    "SwarmObserved",
    "actions_text",
    "build_plan",
    "desired_swarm",
    "diff_swarm",
    "object_name",
    "service_name",
    "teardown_swarm",
]

# ---------------------------------------------------------------------------------------------
# Names


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def object_name(stack: str, key: str, data: bytes) -> str:
    """A config's or secret's swarm name: its content's hash makes a new content a new
    object (swarm objects are immutable)."""
    return f"{stack}_{key}_{hashlib.sha256(data).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------
# Desired


class DesiredService(msgspec.Struct, frozen=True):
    key: str  # the stack's service key
    config: ServiceConfig
    spec_hash: str


class DesiredObject(msgspec.Struct, frozen=True):
    kind: SwarmObjectKind
    key: str
    config: SwarmObjectConfig


class SwarmDesired(msgspec.Struct, frozen=True):
    stack: str
    revision: str
    services: tuple[DesiredService, ...]
    networks: tuple[OverlayNetworkConfig, ...]
    objects: tuple[DesiredObject, ...]
    external_networks: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def _owner(stack: str, revision: str, spec_hash: str, **extra: str) -> dict[str, str]:
    out = identity.labels(stack, revision=revision, spec_hash=spec_hash, extra=extra)
    out[STACK_NAMESPACE_LABEL] = stack
    return out


def _restart(service: ServiceSpec) -> RestartPolicy:
    d = service.deploy
    # `restart:` (one host's) is folded into deploy's condition by the loader only when the
    # deploy section names one; a swarm's default condition is "any", as docker stack's
    condition = d.restart_condition or "any"
    return RestartPolicy(
        condition=condition,
        delay_s=5.0 if d.restart_delay is None else d.restart_delay,
        max_attempts=d.restart_max_attempts or 0,
        window_s=d.restart_window or 0.0,
    )


def _update(service: ServiceSpec, rollback: bool) -> UpdatePolicy:
    r = service.deploy.rollback if rollback else service.deploy.update
    if rollback:
        parallelism, delay, order = r.parallelism, r.delay, r.order
    else:  # the fields one host's runtimes use too live in `service.update`
        u = service.update
        parallelism = u.parallelism if r.parallelism is None else r.parallelism
        delay = u.delay if r.delay is None else r.delay
        order = r.order or u.order
    return UpdatePolicy(
        parallelism=1 if parallelism is None else parallelism,
        delay_s=delay or 0.0,
        order=order or "stop-first",
        failure_action=r.failure_action or "pause",
        monitor_s=5.0 if r.monitor is None else r.monitor,
        max_failure_ratio=r.max_failure_ratio or 0.0,
    )


def _secret_target(target: str) -> str:
    """A secret's file as docker stack writes it: a bare name under /run/secrets."""
    rest = target.removeprefix("/run/secrets/")
    return rest if rest != target and "/" not in rest else target


def _refs(
    stack: str, refs: tuple[FileRef, ...], names: Mapping[str, str], secrets: bool = False
) -> tuple[SwarmObjectRef, ...]:
    out = [
        SwarmObjectRef(
            name=names.get(r.source, r.source),
            target=_secret_target(r.target) if secrets else r.target,
            uid=r.uid or "0",
            gid=r.gid or "0",
            mode=0o444 if r.mode is None else r.mode,
        )
        for r in refs
    ]
    return tuple(sorted(out, key=lambda r: (r.target, r.name)))


def _service_config(
    stack: Stack,
    s: ServiceSpec,
    *,
    revision: str,
    image: str,
    net_names: Mapping[str, str],
    config_names: Mapping[str, str],
    secret_names: Mapping[str, str],
) -> ServiceConfig:
    d = s.deploy
    cpus = None if s.resources.cpus is None else round(s.resources.cpus * 1e9)
    reserve = None if d.reserve_cpus is None else round(d.reserve_cpus * 1e9)
    mounts: list[MountConfig] = []
    volume_labels: dict[str, tuple[tuple[str, str], ...]] = {}
    for m in s.mounts:
        source = m.source
        if m.type == "volume" and m.source:
            vol = next((v for v in stack.volumes if v.name == m.source), None)
            if vol is not None and vol.external:
                source = vol.external_name or vol.name
            else:
                source = identity.volume_name(stack.name, m.source)
                # each node makes the volume when a task first mounts it: labelled as the
                # other runtimes label theirs (no revision: a volume outlives revisions)
                own = {
                    **dict(vol.labels if vol is not None else ()),
                    identity.STACK: stack.name,
                    identity.VOLUME: m.source,
                    STACK_NAMESPACE_LABEL: stack.name,
                }
                volume_labels[source] = tuple(sorted(own.items()))
        mounts.append(
            MountConfig(
                type=m.type,
                target=m.target,
                source=source,
                read_only=m.read_only,
                tmpfs_size=m.tmpfs_size,
                tmpfs_mode=m.tmpfs_mode,
            )
        )
    ports = sorted(
        (
            ServicePort(
                target=p.target,
                published=p.published,
                protocol="udp"
                if p.protocol == "udp"
                else "sctp"
                if p.protocol == "sctp"
                else "tcp",
                mode=p.mode,
            )
            for p in s.ports
        ),
        key=lambda p: (p.target, p.protocol, p.published or 0, p.mode),
    )
    networks = sorted(
        (
            # docker stack gives each task its service's key as an alias on every network
            ServiceNetwork(net_names[n.name], tuple(sorted({s.name, *n.aliases})))
            for n in s.networks
            if n.name in net_names
        ),
        key=lambda n: n.network,
    )
    config = ServiceConfig(
        name=service_name(stack.name, s.name),
        image=image,
        labels={**dict(d.labels)},
        container_labels={**dict(s.labels), STACK_NAMESPACE_LABEL: stack.name},
        command=s.command,
        entrypoint=s.entrypoint,
        env=tuple(sorted(f"{k}={v}" for k, v in s.environment)),
        working_dir=s.working_dir,
        user=s.user,
        hostname=s.hostname,
        init=s.init,
        read_only=s.read_only,
        stop_signal=s.stop_signal,
        stop_grace_period_s=s.stop_grace_period,
        mode=d.mode,
        replicas=1 if d.mode == "global" else s.replicas,
        placement=Placement(d.constraints, d.preferences, d.max_replicas_per_node),
        resources=Resources(
            limit_nano_cpus=cpus,
            limit_memory_bytes=s.resources.memory,
            limit_pids=s.resources.pids,
            reserve_nano_cpus=reserve,
            reserve_memory_bytes=d.reserve_memory,
        ),
        restart_policy=_restart(s),
        update_config=_update(s, rollback=False),
        rollback_config=_update(s, rollback=True),
        endpoint_mode=d.endpoint_mode or "vip",
        health=_health(s),
        ports=tuple(ports),
        networks=tuple(networks),
        mounts=tuple(sorted(mounts, key=lambda m: m.target)),
        configs=_refs(stack.name, s.configs, config_names),
        secrets=_refs(stack.name, s.secrets, secret_names, secrets=True),
        volume_labels=tuple(sorted(volume_labels.items())),
    )
    spec_hash = identity.digest(config)
    labels = {
        **config.labels,
        **_owner(stack.name, revision, spec_hash, **{identity.SERVICE: s.name}),
    }
    return msgspec.structs.replace(config, labels=labels)


def desired_swarm(
    stack: Stack,
    *,
    revision: str,
    file_contents: Mapping[tuple[FileKind, str], bytes],
    images: Mapping[str, str] | None = None,
) -> SwarmDesired:
    """The swarm objects of `stack`. `file_contents` holds the bytes of each config and
    secret (as `engine.reconcile.read_file_objects` reads them); `images` maps an image
    reference to its pinned form (`ServiceRuntime.pin_image`), where one could be pinned."""
    pinned = images or {}
    net_names: dict[str, str] = {}
    networks: list[OverlayNetworkConfig] = []
    external: list[str] = []
    for n in stack.networks:
        if n.external:
            net_names[n.name] = n.external_name or n.name
            external.append(net_names[n.name])
            continue
        name = n.external_name or identity.network_name(stack.name, n.name)
        net_names[n.name] = name
        net = OverlayNetworkConfig(
            name=name,
            driver="overlay",
            attachable=n.attachable,  # as docker stack makes them: for services unless asked
            internal=n.internal,
            subnet=n.subnet,
            gateway=n.gateway,
        )
        spec_hash = identity.digest(net)
        networks.append(
            msgspec.structs.replace(
                net,
                labels={
                    **dict(n.labels),
                    **_owner(stack.name, revision, spec_hash, **{identity.NETWORK: n.name}),
                },
            )
        )
    objects: list[DesiredObject] = []
    names: dict[SwarmObjectKind, dict[str, str]] = {"config": {}, "secret": {}}
    for kind, specs in (("config", stack.configs), ("secret", stack.secrets)):
        k: SwarmObjectKind = "config" if kind == "config" else "secret"
        for spec in specs:
            if spec.external:
                names[k][spec.name] = spec.external_name or spec.name
                continue
            data = file_contents.get((k, spec.name), b"")
            name = object_name(stack.name, spec.name, data)
            names[k][spec.name] = name
            labels = _owner(stack.name, revision, name.rsplit("_", 1)[1])
            objects.append(DesiredObject(k, spec.name, SwarmObjectConfig(name, data, labels)))
    services = []
    for s in stack.services:
        config = _service_config(
            stack,
            s,
            revision=revision,
            image=pinned.get(s.image, s.image),
            net_names=net_names,
            config_names=names["config"],
            secret_names=names["secret"],
        )
        services.append(DesiredService(s.name, config, config.labels[identity.SPEC_HASH]))
    return SwarmDesired(
        stack=stack.name,
        revision=revision,
        services=tuple(services),
        networks=tuple(sorted(networks, key=lambda n: n.name)),
        objects=tuple(sorted(objects, key=lambda o: (o.kind, o.config.name))),
        external_networks=tuple(sorted(external)),
    )


# ---------------------------------------------------------------------------------------------
# Observed and the diff


class SwarmObserved(msgspec.Struct, frozen=True):
    services: tuple[ServiceState, ...] = ()
    networks: tuple[OverlayNetworkState, ...] = ()
    configs: tuple[SwarmObjectState, ...] = ()
    secrets: tuple[SwarmObjectState, ...] = ()
    # external networks by name: None when missing
    external_networks: Mapping[str, OverlayNetworkState | None] = msgspec.field(
        default_factory=dict
    )
    # the stack's named volumes on the node observed (for `down --volumes` only)
    volumes: tuple[VolumeState, ...] = ()


# labels that never cause an update: the revision changes with every commit
_VOLATILE_LABELS = (identity.REVISION,)


def _show(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return {
            name: _show(v)
            for name, default in identity.compared_fields(type(value))
            if (v := getattr(value, name)) != default
        }
    if isinstance(value, tuple):
        return [_show(v) for v in value]
    return value


def _pairs(prefix: str, old: Mapping[str, str], new: Mapping[str, str]) -> list[FieldDiff]:
    keys = sorted(set(old) | set(new))
    return [
        FieldDiff(f"{prefix}.{k}", old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)
    ]


def _env_map(env: Sequence[str]) -> dict[str, str]:
    return {k: v for k, _, v in (e.partition("=") for e in env)}


def field_changes(old: ServiceConfig, new: ServiceConfig) -> tuple[FieldDiff, ...]:
    """The fields of two service configs that differ, one `FieldDiff` per leaf: `env.KEY`,
    `labels.KEY`, `update_config.parallelism`, `replicas` ...; the revision label is left out."""
    out: list[FieldDiff] = []
    for name in ServiceConfig.__struct_fields__:
        a, b = getattr(old, name), getattr(new, name)
        if name in ("labels", "container_labels"):
            drop = _VOLATILE_LABELS if name == "labels" else ()
            out += _pairs(
                name,
                {k: v for k, v in a.items() if k not in drop},
                {k: v for k, v in b.items() if k not in drop},
            )
        elif a == b:
            continue
        elif name == "env":
            out += _pairs("env", _env_map(a), _env_map(b))
        elif isinstance(a, msgspec.Struct) and type(a) is type(b):
            for sub in a.__struct_fields__:
                x, y = getattr(a, sub), getattr(b, sub)
                if x != y:
                    out.append(FieldDiff(f"{name}.{sub}", _show(x), _show(y)))
        else:
            out.append(FieldDiff(name, _show(a), _show(b)))
    return tuple(out)


def _runtime_drift(state: ServiceState) -> str | None:
    """Why a service whose spec is right is not in its desired state, or None."""
    up = state.update
    if up is not None and up.state == "paused":
        return f"its update is paused: {up.message or 'a task failed'}"
    if up is not None and up.state == "rollback_paused":
        return f"its rollback is paused: {up.message or 'a task failed'}"
    if up is not None and up.in_progress:
        return None  # the swarm is on its way: waiting is the plan's business, not a change
    if state.running_tasks < state.desired_tasks:
        why = f"{state.running_tasks}/{state.desired_tasks} tasks running"
        if state.failing and state.failing[0].error:
            why += f"; failing: {state.failing[0].error}"
        return why
    return None


def diff_swarm(desired: SwarmDesired, observed: SwarmObserved) -> DiffResult:
    """Changes that converge the swarm to `desired`: spec drift and out-of-band changes
    (field by field), runtime drift, missing objects, and the stack's objects no longer
    declared (pruned)."""
    changes: list[Change] = []
    errors: list[str] = []
    for name in desired.external_networks:
        if observed.external_networks.get(name) is None:
            errors.append(f"external network {name} does not exist on the swarm")
    have_nets = {n.name: n for n in observed.networks}
    for net in desired.networks:
        found = have_nets.get(net.name)
        if found is None:
            changes.append(Change("create", "network", net.name, "not found"))
        elif found.labels.get(identity.SPEC_HASH) != net.labels[identity.SPEC_HASH]:
            # a swarm network cannot be changed in place, and removing it would cut off
            # the services on it: say so, and leave it to the user (down, then apply)
            errors.append(
                f"network {net.name} differs from the manifest (internal, attachable or "
                "subnet); swarm networks cannot be changed in place: remove the stack "
                "(pyapply down) and apply again"
            )
    for kind, have_objs in (("config", observed.configs), ("secret", observed.secrets)):
        have = {o.name for o in have_objs}
        for obj in desired.objects:
            if obj.kind == kind and obj.config.name not in have:
                changes.append(
                    Change("create", obj.kind, obj.config.name, f"{kind} {obj.key}: not found")
                )
    have_svcs = {s.name: s for s in observed.services}
    for ds in desired.services:
        state = have_svcs.get(ds.config.name)
        if state is None:
            changes.append(Change("create", "service", ds.config.name, "not found", ds.key))
            continue
        fields = field_changes(state.spec, ds.config)
        up = state.update
        if fields:
            if state.labels.get(identity.SPEC_HASH) == ds.spec_hash:
                reason = "changed out of band"
            else:
                reason = "the manifest changed"
            if up is not None and up.state == "rollback_completed":
                reason += f"; the last update was rolled back: {up.message}".rstrip(": ")
            changes.append(
                Change("update", "service", ds.config.name, reason, ds.key, None, fields)
            )
            continue
        drift = _runtime_drift(state)
        if drift is not None:
            changes.append(Change("repair", "service", ds.config.name, drift, ds.key))
    wanted_svcs = {ds.config.name for ds in desired.services}
    for state in observed.services:
        if state.name not in wanted_svcs:
            changes.append(Change("remove", "service", state.name, "not in the manifests"))
    wanted_objs = {o.config.name for o in desired.objects}
    for o in (*observed.configs, *observed.secrets):
        if o.name not in wanted_objs:
            changes.append(Change("remove", o.kind, o.name, "replaced or no longer declared"))
    wanted_nets = {n.name for n in desired.networks}
    for n in observed.networks:
        if n.name not in wanted_nets:
            changes.append(Change("remove", "network", n.name, "not in the manifests"))
    return DiffResult(tuple(changes), tuple(errors), desired.warnings)


def teardown_swarm(observed: SwarmObserved) -> DiffResult:
    """`down`: every service, config, secret and network of the stack, and the named
    volumes observed (only `down --volumes` observes them: a volume outlives its stack)."""
    changes = [Change("remove", "service", s.name, "down") for s in observed.services]
    changes += [Change("remove", o.kind, o.name, "down") for o in observed.configs]
    changes += [Change("remove", o.kind, o.name, "down") for o in observed.secrets]
    changes += [Change("remove", "network", n.name, "down") for n in observed.networks]
    changes += [Change("remove", "volume", v.name, "down (--volumes)") for v in observed.volumes]
    return DiffResult(tuple(changes))


# ---------------------------------------------------------------------------------------------
# The plan


def build_plan(
    desired: SwarmDesired | None,
    stack: str,
    result: DiffResult,
    versions: Mapping[str, int] | None = None,
) -> Plan:
    """The actions of `result` (`versions`: the observed services' versions, which an update
    must name): networks, configs and secrets first; then the services
    (create or update, each followed by a wait for it to converge); then removals --
    services, then the networks they were on, then configs and secrets no longer used,
    after every update has converged (swarm refuses to remove one still in use)."""
    actions: list[Action] = []
    nets = {n.name: n for n in desired.networks} if desired else {}
    objs = {o.config.name: o for o in desired.objects} if desired else {}
    svcs = {s.config.name: s for s in desired.services} if desired else {}
    first: list[str] = []
    for ch in result.changes:
        if ch.kind == "create" and ch.object == "network":
            aid = f"network:{ch.name}:create"
            actions.append(Action(aid, "create_overlay", ch.name, ch.reason, overlay=nets[ch.name]))
            first.append(aid)
        elif ch.kind == "create" and ch.object in ("config", "secret"):
            aid = f"{ch.object}:{ch.name}:create"
            obj = objs[ch.name]
            actions.append(
                Action(
                    aid,
                    "create_object",
                    ch.name,
                    ch.reason,
                    swarm_object=obj.config,
                    object_kind=obj.kind,
                )
            )
            first.append(aid)
    waits: list[str] = []
    removed: list[str] = []
    for ch in result.changes:
        if ch.object != "service":
            continue
        if ch.kind == "remove":
            aid = f"service:{ch.name}:remove"
            actions.append(Action(aid, "remove_service", ch.name, ch.reason, tuple(first)))
            removed.append(aid)
            continue
        ds = svcs[ch.name]
        deps: tuple[str, ...] = tuple(first)
        paused = ch.kind == "repair" and "paused" in ch.reason
        if ch.kind in ("create", "update") or paused:
            # a paused update is resumed by submitting the spec again
            verb = "create" if ch.kind == "create" else "update"
            aid = f"service:{ch.name}:{verb}"
            actions.append(
                Action(
                    aid,
                    "create_service" if verb == "create" else "update_service",
                    ch.name,
                    ch.reason,
                    deps,
                    service=ds.key,
                    service_config=ds.config,
                    version=(versions or {}).get(ch.name) if verb == "update" else None,
                )
            )
            deps = (aid,)
        wid = f"service:{ch.name}:wait"
        actions.append(Action(wid, "wait_service", ch.name, ch.reason, deps, service=ds.key))
        waits.append(wid)
    after_removals = tuple(removed)
    for ch in result.changes:
        if ch.kind == "remove" and ch.object in ("config", "secret"):
            object_kind: SwarmObjectKind = "config" if ch.object == "config" else "secret"
            actions.append(
                Action(
                    f"{ch.object}:{ch.name}:remove",
                    "remove_object",
                    ch.name,
                    ch.reason,
                    (*after_removals, *waits),
                    object_kind=object_kind,
                )
            )
        elif ch.kind == "remove" and ch.object == "network":
            actions.append(
                Action(
                    f"network:{ch.name}:remove",
                    "remove_overlay",
                    ch.name,
                    ch.reason,
                    (*after_removals, *waits),
                )
            )
        elif ch.kind == "remove" and ch.object == "volume":
            actions.append(
                Action(
                    f"volume:{ch.name}:remove",
                    "remove_volume",
                    ch.name,
                    ch.reason,
                    (*after_removals, *waits),
                )
            )
    revision = desired.revision if desired else ""
    return Plan(stack, revision, result.changes, tuple(actions), result.errors, result.warnings)


def actions_text(plan: Plan) -> str:
    """The plan's actions, one a line, in order: `#1 create_overlay network:s_back:create
    (not found) after -`, for golden tests and --verbose output."""
    index = {a.id: i for i, a in enumerate(plan.actions, 1)}
    lines = []
    for i, a in enumerate(plan.actions, 1):
        after = ",".join(f"#{index[d]}" for d in a.deps if d in index) or "-"
        lines.append(f"#{i} {a.op} {a.target} ({a.reason}) after {after}")
    return "\n".join(lines)
