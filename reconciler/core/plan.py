"""Changes -> a DAG of Actions: the plan, a value that can be printed, serialised and tested.

Ordering rules: images (pulled, or built from a service's `build:`), files, networks and volumes before the containers that use them;
`depends_on` order (waiting for health or completion where the manifest asks); replicas of a
service replaced in batches of `update_config.parallelism`, with `delay` between batches;
removals of containers before the networks and volumes they used. A recreate is stop-first
(remove, then create) unless the service asks for start-first, in which case the new
container starts under a temporary name, becomes healthy, replaces the old one and is renamed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Literal

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import Change, DiffResult, joined
from pyapply.reconciler.core.model import Condition, Dependency, ServiceSpec
from pyapply.reconciler.core.translate import (
    Desired,
    DesiredContainer,
    DesiredFile,
    build_config,
    builders,
)
from pyapply.runtime.base import BuildConfig, ContainerConfig, NetworkConfig, VolumeConfig

if TYPE_CHECKING:  # a container stack's plan never loads the swarm vocabulary (startup)
    from pyapply.runtime.services import (
        OverlayNetworkConfig,
        ServiceConfig,
        SwarmObjectConfig,
        SwarmObjectKind,
    )

Op = Literal[
    "pull",
    "build",
    "write_file",
    "create_network",
    "repair_network",
    "remove_network",
    "create_volume",
    "remove_volume",
    "create",
    "start",
    "restart",
    "repair",
    "remove",
    "rename",
    "wait",
    # a swarm's (reconciler.core.swarm)
    "create_overlay",
    "remove_overlay",
    "create_object",
    "remove_object",
    "create_service",
    "update_service",
    "remove_service",
    "wait_service",
]


class Action(msgspec.Struct, frozen=True):
    id: str
    op: Op
    target: str
    reason: str = ""
    deps: tuple[str, ...] = ()
    service: str | None = None
    container: ContainerConfig | None = None
    network: NetworkConfig | None = None
    volume: VolumeConfig | None = None
    file: DesiredFile | None = None
    build: BuildConfig | None = None  # for build: what to build (the target is its image)
    pull_first: bool = False  # for build: pull the image, and build only if that fails
    condition: Condition | None = None
    replicas: tuple[str, ...] = ()  # for wait: the containers to wait on
    new_name: str | None = None  # for rename
    delay_s: float = 0.0
    # a swarm's objects (reconciler.core.swarm); `version` is the service's, for an update
    service_config: ServiceConfig | None = None
    overlay: OverlayNetworkConfig | None = None
    swarm_object: SwarmObjectConfig | None = None
    object_kind: SwarmObjectKind | None = None
    version: int | None = None


class Plan(msgspec.Struct, frozen=True):
    stack: str
    revision: str
    changes: tuple[Change, ...]
    actions: tuple[Action, ...]
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for ch in self.changes:
            out[ch.kind] += 1
        return dict(out)


def _fixed_ports(service: ServiceSpec) -> bool:
    return any(p.published for p in service.ports)


class _Builder:
    def __init__(self, desired: Desired | None) -> None:
        self.desired = desired
        self.actions: dict[str, Action] = {}
        # the action after which a container (by name) is in its new state
        self.final: dict[str, str] = {}
        self.removals: list[str] = []  # container removals, for teardown

    def add(self, action: Action) -> str:
        self.actions[action.id] = action
        return action.id

    def dep(self, action_id: str, *deps: str) -> None:
        a = self.actions[action_id]
        extra = tuple(d for d in deps if d and d != action_id and d not in a.deps)
        if extra:
            self.actions[action_id] = msgspec.structs.replace(a, deps=a.deps + extra)


def build(desired: Desired, result: DiffResult) -> Plan:
    """The plan that converges one stack from `result` (a diff against `desired`)."""
    b = _Builder(desired)
    by_name: dict[str, DesiredContainer] = {dc.config.name: dc for dc in desired.containers}
    net_create: dict[str, str] = {}
    vol_create: dict[str, str] = {}
    net_remove: dict[str, str] = {}
    pulls: dict[str, str] = {}

    built = builders(desired)
    for ch in result.changes:
        if ch.object == "image" and ch.kind == "build":
            recipe = built[ch.name].build
            pulls[ch.name] = b.add(
                Action(
                    f"image:{ch.name}:build",
                    "build",
                    ch.name,
                    ch.reason,
                    service=ch.service,
                    build=build_config(built[ch.name]),
                    pull_first=recipe is not None and recipe.pull_first,
                )
            )
        elif ch.object == "image":
            pulls[ch.name] = b.add(Action(f"image:{ch.name}:pull", "pull", ch.name, ch.reason))
        elif ch.object == "network":
            dn = next((n for n in desired.networks if n.config.name == ch.name), None)
            if ch.kind == "remove":
                net_remove[ch.name] = b.add(
                    Action(f"network:{ch.name}:remove", "remove_network", ch.name, ch.reason)
                )
            elif dn is not None:
                create_id = b.add(
                    Action(
                        f"network:{ch.name}:create",
                        "repair_network" if ch.kind == "repair" else "create_network",
                        ch.name,
                        ch.reason,
                        network=dn.config,
                    )
                )
                net_create[ch.name] = create_id
                if ch.kind == "recreate":
                    rid = b.add(
                        Action(f"network:{ch.name}:remove", "remove_network", ch.name, ch.reason)
                    )
                    net_remove[ch.name] = rid
                    b.dep(create_id, rid)
        elif ch.object == "volume":
            if ch.kind == "remove":
                b.add(Action(f"volume:{ch.name}:remove", "remove_volume", ch.name, ch.reason))
            else:
                dv = next(v for v in desired.volumes if v.config.name == ch.name)
                vol_create[ch.name] = b.add(
                    Action(
                        f"volume:{ch.name}:create",
                        "create_volume",
                        ch.name,
                        ch.reason,
                        volume=dv.config,
                    )
                )

    # A pull or a build that fails must leave the host untouched: everything else waits for
    # the images (`pulls` holds both).
    for aid, action in list(b.actions.items()):
        if action.op in (
            "create_network",
            "repair_network",
            "create_volume",
            "remove_network",
            "remove_volume",
        ):
            b.dep(aid, *pulls.values())

    files_by_path = {f.path: f for f in desired.files}

    def prerequisites(cfg: ContainerConfig) -> list[str]:
        deps: list[str] = []
        if cfg.image in pulls:
            deps.append(pulls[cfg.image])
        deps += [net_create[a.network] for a in cfg.networks if a.network in net_create]
        for m in cfg.mounts:
            if m.type == "volume" and m.source in vol_create:
                deps.append(vol_create[m.source])
            if m.type == "bind" and m.source in files_by_path:
                f = files_by_path[m.source]
                fid = f"file:{f.path}:write"
                if fid not in b.actions:
                    b.add(
                        Action(
                            fid,
                            "write_file",
                            f.path,
                            f"{f.kind} {f.key}",
                            tuple(pulls.values()),
                            file=f,
                        )
                    )
                deps.append(fid)
        return deps

    # What an interrupted start-first update left (see reconciler.core.diff): a `--next` container
    # that takes its replica's name back goes first of everything done to that replica; a
    # leftover one is removed before anything of its service is created.
    adopts: dict[str, str] = {}
    leftovers: dict[str | None, list[str]] = defaultdict(list)
    for ch in result.changes:
        if ch.object == "container" and ch.kind == "rename":
            name = ch.name.removesuffix(identity.NEXT_SUFFIX)
            adopts[name] = b.add(
                Action(
                    f"container:{ch.name}:adopt",
                    "rename",
                    ch.name,
                    ch.reason,
                    service=ch.service,
                    new_name=name,
                )
            )
            b.final[name] = adopts[name]

    # Container changes, grouped by service so replicas can be rolled in batches.
    recreates: dict[str, list[Change]] = defaultdict(list)
    for ch in result.changes:
        if ch.object != "container" or ch.kind == "rename":
            continue
        dc = by_name.get(ch.name)
        if ch.kind == "remove" or dc is None:
            rid = b.add(
                Action(
                    f"container:{ch.name}:remove", "remove", ch.name, ch.reason, service=ch.service
                )
            )
            if ch.name.endswith(identity.NEXT_SUFFIX):
                leftovers[ch.service].append(rid)
            continue
        pre = prerequisites(dc.config)
        if ch.name in adopts:
            pre.append(adopts[ch.name])
        if ch.kind == "create":
            cid = b.add(
                Action(
                    f"container:{ch.name}:create",
                    "create",
                    ch.name,
                    ch.reason,
                    tuple(pre),
                    service=dc.service,
                    container=dc.config,
                )
            )
            b.final[ch.name] = cid
        elif ch.kind in ("start", "restart", "repair"):
            op: Op = ch.kind
            sid = b.add(
                Action(
                    f"container:{ch.name}:{op}",
                    op,
                    ch.name,
                    ch.reason,
                    tuple(pre),
                    service=dc.service,
                    container=dc.config,
                )
            )
            b.final[ch.name] = sid
        elif ch.kind == "recreate":
            recreates[dc.service].append(ch)

    for service_name, changes in recreates.items():
        spec = desired.service(service_name)
        changes.sort(key=lambda c: c.replica or 0)
        batch = spec.update.parallelism or len(changes)
        finals: list[str] = []
        for i, ch in enumerate(changes):
            dc = by_name[ch.name]
            pre = prerequisites(dc.config)
            adopted = (adopts[ch.name],) if ch.name in adopts else ()
            pre += adopted
            on_recreated_net = any(a.network in net_remove for a in dc.config.networks)
            start_first = ch.resume or (
                spec.update.order == "start-first"
                and not _fixed_ports(spec)
                and not on_recreated_net
            )
            # Containers of a recreated network all go before it does: no rolling there.
            previous = finals[i - batch] if i >= batch and not on_recreated_net else None
            delay = spec.update.delay if previous else 0.0
            if start_first:
                temp = ch.name + identity.NEXT_SUFFIX
                cid = b.add(
                    Action(
                        f"container:{temp}:create",
                        "create",
                        temp,
                        ch.reason,
                        tuple(pre) + ((previous,) if previous else ()),
                        service=dc.service,
                        container=msgspec.structs.replace(dc.config, name=temp),
                        delay_s=delay,
                    )
                )
                ready = cid
                if dc.config.health is not None and dc.config.health.test != ("NONE",):
                    ready = b.add(
                        Action(
                            f"container:{temp}:wait",
                            "wait",
                            temp,
                            "new container must be healthy before the old one goes",
                            (cid,),
                            service=dc.service,
                            condition="service_healthy",
                            replicas=(temp,),
                        )
                    )
                rid = b.add(
                    Action(
                        f"container:{ch.name}:remove",
                        "remove",
                        ch.name,
                        ch.reason,
                        (ready,),
                        service=dc.service,
                    )
                )
                final = b.add(
                    Action(
                        f"container:{temp}:rename",
                        "rename",
                        temp,
                        ch.reason,
                        (rid,),
                        service=dc.service,
                        new_name=ch.name,
                    )
                )
            else:
                rid = b.add(
                    Action(
                        f"container:{ch.name}:remove",
                        "remove",
                        ch.name,
                        ch.reason,
                        ((previous,) if previous else ()) + adopted,
                        service=dc.service,
                        delay_s=delay,
                    )
                )
                final = b.add(
                    Action(
                        f"container:{ch.name}:create",
                        "create",
                        ch.name,
                        ch.reason,
                        (rid, *pre),
                        service=dc.service,
                        container=dc.config,
                    )
                )
                for a in dc.config.networks:
                    if a.network in net_remove:
                        b.dep(net_remove[a.network], rid)
            finals.append(final)
            b.final[ch.name] = final

    # depends_on: a service's containers wait for its dependencies' conditions.
    finals_by_service: dict[str, list[str]] = defaultdict(list)
    for name, final in b.final.items():
        svc = by_name[name].service if name in by_name else None
        if svc:
            finals_by_service[svc].append(final)
    waits: dict[tuple[str, str], str] = {}
    for name, final in list(b.final.items()):
        dc = by_name.get(name)
        if dc is None:
            continue
        spec = desired.service(dc.service)
        first = _first_action(b, final, name)
        for dep in _dependencies(spec, dc, by_name):
            upstream = finals_by_service.get(dep.service, [])
            if dep.condition == "service_started":
                b.dep(first, *upstream)
                continue
            key = (dep.service, dep.condition)
            if key not in waits:
                replicas = tuple(
                    c.config.name for c in desired.containers if c.service == dep.service
                )
                waits[key] = b.add(
                    Action(
                        f"service:{dep.service}:{dep.condition}",
                        "wait",
                        dep.service,
                        f"{dep.condition.removeprefix('service_').replace('_', ' ')} "
                        f"(needed by {dc.service})",
                        tuple(upstream),
                        service=dep.service,
                        condition=dep.condition,
                        replicas=replicas,
                    )
                )
            b.dep(first, waits[key])

    # A replica whose container changed its name (container_name) is made once the container
    # of its old name is gone: they may publish the same host ports.
    old_names: dict[tuple[str | None, int | None], list[str]] = defaultdict(list)
    for ch in result.changes:
        if (
            ch.object == "container"
            and ch.kind == "remove"
            and ch.name not in by_name
            and not ch.name.endswith(identity.NEXT_SUFFIX)
        ):
            old_names[(ch.service, ch.replica)].append(f"container:{ch.name}:remove")
    for name, dc in by_name.items():
        create = f"container:{name}:create"
        if create in b.actions:
            b.dep(create, *old_names.get((dc.service, dc.replica), ()))

    # Leftovers first: they have no dependencies of their own, so this makes no cycle.
    everything_left = [rid for rids in leftovers.values() for rid in rids]
    for aid, action in list(b.actions.items()):
        if action.op == "create":
            b.dep(aid, *leftovers.get(action.service, ()))
        elif action.op == "remove_network":
            b.dep(aid, *everything_left)

    # Networks and volumes that go for good are removed after every container removal (a
    # network being recreated already waits for the removal of its own containers).
    removes = [a.id for a in b.actions.values() if a.op == "remove"]
    for aid, action in list(b.actions.items()):
        recreated = action.op == "remove_network" and action.target in net_create
        if action.op in ("remove_network", "remove_volume") and not recreated:
            b.dep(aid, *removes)

    # A build that fails stops the pass before anything is touched: a build takes long and
    # fails for the user's reasons (a typo in a Dockerfile), so nothing of the stack goes
    # down waiting for it -- not even the old containers of a stop-first recreate.
    image_ops = ("pull", "build")
    builds = [a.id for a in b.actions.values() if a.op == "build"]
    for aid, action in list(b.actions.items()):
        if action.op not in image_ops:
            b.dep(aid, *builds)

    _check_acyclic(b.actions)
    return Plan(
        stack=desired.stack,
        revision=desired.revision,
        changes=result.changes,
        actions=tuple(b.actions.values()),
        errors=result.errors,
        warnings=result.warnings,
    )


def _dependencies(
    spec: ServiceSpec, dc: DesiredContainer, by_name: dict[str, DesiredContainer]
) -> tuple[Dependency, ...]:
    """A service's `depends_on`, and the service owning the network namespace it joins
    (network_mode service:X): started first, as compose does."""
    deps = spec.depends_on
    owners = [spec.network_peer()]
    peer = joined(dc)
    if peer in by_name:
        owners.append(by_name[peer].service)
    for owner in owners:
        if owner and owner != spec.name and all(d.service != owner for d in deps):
            deps = (*deps, Dependency(owner))
    return deps


def _first_action(b: _Builder, final: str, name: str) -> str:
    """The action of a container's replacement that must wait for its dependencies: the
    creation of the new container (the old one may go before, in a stop-first update)."""
    start_first = f"container:{name}{identity.NEXT_SUFFIX}:create"
    return start_first if start_first in b.actions else final


def _check_acyclic(actions: dict[str, Action]) -> None:
    """A cycle here is a bug in `build`, never the user's doing: fail loudly."""
    indegree = {aid: sum(1 for d in a.deps if d in actions) for aid, a in actions.items()}
    dependents: dict[str, list[str]] = defaultdict(list)
    for aid, a in actions.items():
        for d in a.deps:
            if d in actions:
                dependents[d].append(aid)
    ready = [aid for aid, n in indegree.items() if n == 0]
    seen = 0
    while ready:
        aid = ready.pop()
        seen += 1
        for nxt in dependents[aid]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if seen != len(actions):
        stuck = sorted(aid for aid, n in indegree.items() if n > 0)
        raise AssertionError(f"plan has a dependency cycle among: {', '.join(stuck)}")


def build_teardown(stack: str, result: DiffResult) -> Plan:
    """The plan of `down`: containers first, then networks, then (if asked) volumes."""
    b = _Builder(None)
    for ch in result.changes:
        if ch.object == "container":
            b.removals.append(
                b.add(Action(f"container:{ch.name}:remove", "remove", ch.name, ch.reason))
            )
    for ch in result.changes:
        if ch.object == "network":
            b.add(
                Action(
                    f"network:{ch.name}:remove",
                    "remove_network",
                    ch.name,
                    ch.reason,
                    tuple(b.removals),
                )
            )
        elif ch.object == "volume":
            b.add(
                Action(
                    f"volume:{ch.name}:remove",
                    "remove_volume",
                    ch.name,
                    ch.reason,
                    tuple(b.removals),
                )
            )
    return Plan(stack, "", result.changes, tuple(b.actions.values()), (), result.warnings)
