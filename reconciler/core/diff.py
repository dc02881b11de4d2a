"""Desired vs observed -> Changes, each with a reason and the fields that differ.

Pure. Four kinds of drift are found: spec drift (the hash label differs from the desired
hash), runtime drift (missing, exited, unhealthy, wrong replica count), out-of-band
mutation (the live object no longer matches what its own labels say it was created as: an
image retagged, an env var or network changed by hand) and faults (what the runtime made
for an object and found gone: a bridge, a veth, a firewall rule, a container's supervisor;
see `runtime.base.Fault`), repaired in place where the runtime can.

A start-first update of replica N makes `N--next`, waits for it to be healthy, removes N and
renames `N--next` to N. A pass killed at any step leaves one of the states below; each is
resolved so that a replica that had a container keeps one through the next pass ("new" is
the desired spec hash; a dead or half-removed `N--next` counts as absent, and is removed):

========================================  =================================================
observed                                  changes
========================================  =================================================
N only                                    the usual ones
N not new + `N--next` new (created,       recreate N, resuming: `N--next` is adopted (its
started, healthy; N running or stopped)   create is idempotent), then N goes and it is renamed
N new + `N--next` (any)                   remove `N--next` (a leftover; N stays)
N not new + `N--next` of another spec     remove `N--next` (before the update makes it again)
(or of another revision)
`N--next` only (N removed, not renamed)   rename `N--next` to N first, then diff it as N
                                          (start it, or update it, as any N)
N renamed (`N--next` gone)                the usual ones: the update is done
N not new + `N--next` new, on a network   remove `N--next` (before the network goes); N is
that is recreated                         recreated stop-first with its network
========================================  =================================================

The plan orders the removal of a leftover before every create of its service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from pyapply.reconciler.core import health, identity
from pyapply.reconciler.core.translate import (
    LAST_APPLIED,
    Desired,
    DesiredContainer,
    DesiredNetwork,
    builders,
)
from pyapply.runtime.base import ContainerState, Fault, ImageInfo, NetworkState, VolumeState

ChangeKind = Literal[
    "create",
    "recreate",
    "start",
    "restart",
    "repair",
    "remove",
    "rename",
    "pull",
    "update",
    "build",
]
# service, config, secret: a swarm's (reconciler.core.swarm)
ObjectKind = Literal["container", "network", "volume", "image", "service", "config", "secret"]


class FieldDiff(msgspec.Struct, frozen=True):
    field: str
    old: Any
    new: Any


class Change(msgspec.Struct, frozen=True):
    kind: ChangeKind
    object: ObjectKind
    name: str
    reason: str
    service: str | None = None
    replica: int | None = None
    fields: tuple[FieldDiff, ...] = ()
    # recreate: finish the interrupted start-first update whose new container
    # (`<name>--next`, already of the desired spec) exists, whatever the update order now is
    resume: bool = False


class Observed(msgspec.Struct, frozen=True):
    containers: tuple[ContainerState, ...] = ()
    networks: tuple[NetworkState, ...] = ()
    volumes: tuple[VolumeState, ...] = ()
    images: Mapping[str, ImageInfo | None] = msgspec.field(default_factory=dict)
    external_networks: Mapping[str, NetworkState | None] = msgspec.field(default_factory=dict)
    external_volumes: Mapping[str, VolumeState | None] = msgspec.field(default_factory=dict)
    # containers looked up by name (`named_containers`): whoever holds a `container_name`,
    # and the containers outside the stack whose network namespace a service joins
    named: Mapping[str, ContainerState | None] = msgspec.field(default_factory=dict)


class DiffResult(msgspec.Struct, frozen=True):
    changes: tuple[Change, ...]
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return bool(self.changes)


def joined(dc: DesiredContainer) -> str | None:
    """The name of the container whose network namespace `dc` joins."""
    mode = dc.config.network_mode or ""
    return mode.removeprefix("container:") if mode.startswith("container:") else None


def namespace_peers(dc: DesiredContainer) -> list[tuple[str, str]]:
    """(kind, container name) of each namespace `dc` joins: network, pid, ipc."""
    c = dc.config
    out: list[tuple[str, str]] = []
    for kind, mode in (("network", c.network_mode), ("pid", c.pid_mode), ("ipc", c.ipc_mode)):
        if mode is not None and mode.startswith("container:"):
            out.append((kind, mode.removeprefix("container:")))
    return out


def named_containers(desired: Desired) -> list[str]:
    """The names `observe` looks up one by one: a service's own `container_name` (held,
    perhaps, by a container that is not the stack's) and the containers outside the stack
    whose network namespace a service joins (they must exist)."""
    ours = {dc.config.name for dc in desired.containers}
    names = {
        dc.config.name
        for dc in desired.containers
        if desired.service(dc.service).container_name is not None
    }
    names |= {j for dc in desired.containers if (j := joined(dc)) and j not in ours}
    return sorted(names)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if prefix == "env" and isinstance(value, list):
        value = {k: v for k, _, v in (str(item).partition("=") for item in value)}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def field_diffs(old_json: str | None, new_json: str) -> tuple[FieldDiff, ...]:
    """Field-level differences between two canonical JSON documents (the last-applied label
    and the desired config)."""
    new = _flatten(json.loads(new_json))
    if not old_json:
        return ()
    try:
        old = _flatten(json.loads(old_json))
    except ValueError:
        return ()
    keys = sorted(set(old) | set(new))
    return tuple(FieldDiff(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k))


def _env_set(env: tuple[str, ...], image_env: tuple[str, ...]) -> set[str]:
    return set(env) - set(image_env)


def out_of_band(
    want: DesiredContainer, have: ContainerState, image: ImageInfo | None
) -> tuple[FieldDiff, ...]:
    """Fields of a live container that no longer match the config it was created with."""
    cfg = want.config
    diffs: list[FieldDiff] = []
    if image is not None and have.image_id and have.image_id != image.id:
        diffs.append(FieldDiff("image_id", have.image_id, image.id))
    image_env = image.env if image is not None else ()
    have_env = _env_set(have.env, image_env)
    want_env = _env_set(cfg.env, image_env)
    if have_env != want_env:
        diffs.append(FieldDiff("env", sorted(have_env - want_env), sorted(want_env - have_env)))
    want_nets = sorted(a.network for a in cfg.networks)
    if want_nets and sorted(have.networks) != want_nets:
        diffs.append(FieldDiff("networks", sorted(have.networks), want_nets))
    have_ports = sorted(have.ports, key=repr)
    want_ports = sorted(cfg.ports, key=repr)
    if have_ports != want_ports:
        diffs.append(
            FieldDiff("ports", [_port(p) for p in have_ports], [_port(p) for p in want_ports])
        )
    if (have.memory_bytes or None) != (cfg.memory_bytes or None):
        diffs.append(FieldDiff("memory", have.memory_bytes, cfg.memory_bytes))
    for key, value in cfg.labels.items():
        if key in (identity.REVISION, LAST_APPLIED):
            continue
        if have.labels.get(key) != value:
            diffs.append(FieldDiff(f"labels.{key}", have.labels.get(key), value))
    return tuple(diffs)


def _port(p: Any) -> str:
    host = f"{p.host_ip}:" if p.host_ip else ""
    published = f"{p.host_port}:" if p.host_port else ""
    if p.host_port and p.host_port_last:
        published = f"{p.host_port}-{p.host_port_last}:"
    return f"{host}{published}{p.container_port}/{p.protocol}"


def _faults_reason(faults: tuple[Fault, ...]) -> str:
    return "; ".join(f.reason for f in faults)


_UNUSABLE: tuple[str, ...] = ("dead", "removing")


def _leftovers(
    desired: Desired, by_name: dict[str, ContainerState], recreate_nets: set[str]
) -> tuple[dict[str, ContainerState], set[str], set[str]]:
    """How the `<name>--next` containers an interrupted start-first update left behind are
    resolved (see the table in the module docstring): the containers that take over a
    missing replica's name (name -> its `--next` state), the replicas whose update resumes
    with their `--next` container, and the `--next` containers kept (not removed)."""
    adopted: dict[str, ContainerState] = {}
    resumed: set[str] = set()
    for dc in desired.containers:
        name = dc.config.name
        nxt = by_name.get(name + identity.NEXT_SUFFIX)
        if nxt is None or nxt.status in _UNUSABLE:
            continue  # nothing left over, or nothing worth keeping: removed as an extra
        have = by_name.get(name)
        if have is None:
            adopted[name] = nxt  # the only instance: it gets the replica's name back
        elif (
            have.labels.get(identity.SPEC_HASH) != dc.spec_hash
            and nxt.labels.get(identity.SPEC_HASH) == dc.spec_hash
            # its create is repeated, and a runtime may count the revision as part of what
            # it was created with (native does): another revision's is made anew
            and nxt.labels.get(identity.REVISION) == dc.config.labels.get(identity.REVISION)
            and not set(nxt.networks) & recreate_nets
        ):
            resumed.add(name)
    kept = {n + identity.NEXT_SUFFIX for n in (*adopted, *resumed)}
    return adopted, resumed, kept


def _container_changes(
    desired: Desired, observed: Observed, recreate_nets: set[str]
) -> tuple[list[Change], dict[str, ContainerState]]:
    """The containers' changes, and the containers by the name they have once the plan's
    renames are done."""
    changes: list[Change] = []
    by_name = {c.name: c for c in observed.containers}
    adopted, resumed, kept = _leftovers(desired, by_name, recreate_nets)
    for name, nxt in adopted.items():
        changes.append(
            Change(
                "rename",
                "container",
                nxt.name,
                f"finishing an interrupted start-first update: the new container takes "
                f"the name {name}",
                nxt.labels.get(identity.SERVICE),
                _replica(nxt),
            )
        )
        by_name[name] = msgspec.structs.replace(nxt, name=name)
    wanted = {dc.config.name for dc in desired.containers} | kept
    for dc in desired.containers:
        have = by_name.get(dc.config.name)
        svc = desired.service(dc.service)

        def change(
            kind: ChangeKind,
            reason: str,
            fields: tuple[FieldDiff, ...] = (),
            dc: DesiredContainer = dc,
        ) -> Change:
            return Change(kind, "container", dc.config.name, reason, dc.service, dc.replica, fields)

        if have is None:
            changes.append(change("create", "missing"))
            continue
        if have.labels.get(identity.SPEC_HASH) != dc.spec_hash:
            fields = field_diffs(have.labels.get(LAST_APPLIED), dc.applied)
            if dc.config.name in resumed:
                changes.append(
                    Change(
                        "recreate",
                        "container",
                        dc.config.name,
                        "spec changed (resuming an interrupted start-first update: "
                        f"{dc.config.name}{identity.NEXT_SUFFIX} is already made)",
                        dc.service,
                        dc.replica,
                        fields,
                        resume=True,
                    )
                )
            else:
                changes.append(change("recreate", "spec changed", fields))
            continue
        oob = out_of_band(dc, have, observed.images.get(dc.config.image))
        if oob:
            if [f.field for f in oob] != ["image_id"]:
                reason = "changed outside pyapply"
            elif svc.build is not None:
                reason = "image id changed: the image was rebuilt"
            else:
                reason = "image tag now points to a different image"
            changes.append(change("recreate", reason, oob))
            continue
        if have.status == "dead":
            changes.append(change("recreate", "dead"))
        elif have.status in ("exited", "created"):
            if health.completed(have, svc.restart):
                continue  # a one-shot that did its job: not drift
            reason = (
                "created but not started"
                if have.status == "created"
                else f"exited with code {have.exit_code}"
            )
            changes.append(change("start", reason))
        elif have.status == "paused":
            changes.append(change("restart", "paused"))
        elif have.faults:
            restart = any(f.fix == "restart" for f in have.faults)
            changes.append(change("restart" if restart else "repair", _faults_reason(have.faults)))
        elif have.health == "unhealthy":
            changes.append(change("restart", "unhealthy"))

    extras: list[ContainerState] = [c for c in observed.containers if c.name not in wanted]
    services = {s.name: s for s in desired.services}
    renamed: dict[tuple[str, int | None], str] = {
        (dc.service, dc.replica): dc.config.name for dc in desired.containers
    }

    def _order(c: ContainerState) -> tuple[str, int]:
        try:
            return (c.labels.get(identity.SERVICE, ""), -int(c.labels.get(identity.REPLICA, "0")))
        except ValueError:
            return (c.labels.get(identity.SERVICE, ""), 0)

    for c in sorted(extras, key=_order):
        service = c.labels.get(identity.SERVICE)
        if c.name.endswith(identity.NEXT_SUFFIX):
            reason = "left over from an interrupted start-first update"
        elif service not in services:
            reason = "service no longer in the manifest"
        elif (service, _replica(c)) in renamed:
            reason = f"the container is now named {renamed[(service, _replica(c))]}"
        else:
            reason = f"scaled down to {services[service].replicas}"
        changes.append(
            Change("remove", "container", c.name, reason, service=service, replica=_replica(c))
        )
    return changes, by_name


def _replica(c: ContainerState) -> int | None:
    replica = c.labels.get(identity.REPLICA, "")
    return int(replica) if replica.isdigit() else None


def diff(desired: Desired, observed: Observed, *, prune_volumes: bool = False) -> DiffResult:
    """Compare one stack's desired state with what its runtime shows."""
    changes: list[Change] = []
    errors: list[str] = []
    warnings: list[str] = []

    # Images: only what is missing locally is a change here; `apply` pulls (and with
    # --build or `pull_policy: build`, builds) before observing. A missing image that a
    # service's `build:` makes is built, not pulled, as `compose up` does.
    policies = {s.image: s.pull_policy for s in desired.services}
    built = builders(desired)
    for ref in sorted({dc.config.image for dc in desired.containers}):
        if observed.images.get(ref) is None:
            if ref in built:
                b = built[ref].build
                why = "not present locally"
                if b is not None and b.pull_first:
                    why += "; pulled first, built if the pull fails"
                changes.append(Change("build", "image", ref, why, built[ref].name))
            elif policies.get(ref) == "never":
                errors.append(f"image {ref} is not present and pull_policy is never")
            else:
                changes.append(Change("pull", "image", ref, "not present locally"))

    # Networks
    net_by_name = {n.name: n for n in observed.networks}
    ours = {c.name for c in observed.containers}
    wanted_nets: set[str] = set()
    recreate_nets: set[str] = set()
    for dn in desired.networks:
        name = dn.config.name
        wanted_nets.add(name)
        if dn.external:
            if observed.external_networks.get(name) is None:
                errors.append(f"external network {name} does not exist")
            continue
        have_net = net_by_name.get(name)
        if have_net is None:
            changes.append(Change("create", "network", name, "missing"))
        elif have_net.labels.get(identity.SPEC_HASH) != dn.spec_hash:
            strangers = [c for c in have_net.containers if c not in ours]
            if strangers:
                errors.append(
                    f"network {name} changed in the manifest but cannot be recreated: "
                    f"containers not managed by this stack use it ({', '.join(strangers)})"
                )
                continue
            changes.append(Change("recreate", "network", name, _network_reason(have_net, dn)))
            recreate_nets.add(name)
        elif have_net.faults:
            # create_network makes sure of an existing network's kernel side
            changes.append(Change("repair", "network", name, _faults_reason(have_net.faults)))
    for have_net in observed.networks:
        if have_net.name not in wanted_nets:
            changes.append(Change("remove", "network", have_net.name, "no longer in the manifest"))

    # Volumes
    vol_by_name = {v.name: v for v in observed.volumes}
    wanted_vols: set[str] = set()
    for dv in desired.volumes:
        name = dv.config.name
        wanted_vols.add(name)
        if dv.external:
            if observed.external_volumes.get(name) is None:
                errors.append(f"external volume {name} does not exist")
            continue
        have_vol = vol_by_name.get(name)
        if have_vol is None:
            changes.append(Change("create", "volume", name, "missing"))
        elif have_vol.labels.get(identity.SPEC_HASH) != dv.spec_hash:
            warnings.append(
                f"volume {name} differs from the manifest (driver, options or labels); "
                "volumes are never recreated automatically: remove it yourself to change it"
            )
    for have_vol in observed.volumes:
        if have_vol.name not in wanted_vols:
            if prune_volumes:
                changes.append(
                    Change("remove", "volume", have_vol.name, "no longer in the manifest")
                )
            else:
                warnings.append(
                    f"volume {have_vol.name} is no longer in the manifest; kept "
                    "(use --prune-volumes to remove it)"
                )

    errors += _name_errors(desired, observed)
    container_changes, by_name_c = _container_changes(desired, observed, recreate_nets)
    # Containers on a network that must be recreated are recreated with it.
    if recreate_nets:
        for i, ch in enumerate(container_changes):
            have = by_name_c.get(ch.name)
            if (
                have is not None
                and ch.kind in ("start", "restart", "repair")
                and set(have.networks) & recreate_nets
            ):
                container_changes[i] = Change(
                    "recreate",
                    "container",
                    ch.name,
                    "its network is recreated",
                    service=ch.service,
                    replica=ch.replica,
                )
        touched = {ch.name for ch in container_changes}
        for dc in desired.containers:
            have = by_name_c.get(dc.config.name)
            if (
                have is not None
                and dc.config.name not in touched
                and set(have.networks) & recreate_nets
            ):
                container_changes.append(
                    Change(
                        "recreate",
                        "container",
                        dc.config.name,
                        "its network is recreated",
                        service=dc.service,
                        replica=dc.replica,
                    )
                )
    # ... and a container in the network namespace of one that is made anew, with it
    _follow_namespaces(desired, container_changes, by_name_c)
    changes += container_changes
    return DiffResult(tuple(changes), tuple(errors), tuple(warnings))


def _name_errors(desired: Desired, observed: Observed) -> list[str]:
    """A `container_name` held by a container that is not the stack's, and a namespace to
    join that no container has: refused before anything is changed."""
    ours = {c.name for c in observed.containers}
    wanted = {dc.config.name for dc in desired.containers}
    errors: list[str] = []
    for dc in desired.containers:
        name = dc.config.name
        holder = observed.named.get(name)
        if name in ours or holder is None:
            continue
        stack = holder.labels.get(identity.STACK)
        whose = (
            f'service "{holder.labels.get(identity.SERVICE)}" of stack "{stack}"'
            if stack
            else "a container pyapply did not make"
        )
        errors.append(
            f'container name {name} (container_name of service "{dc.service}") is in use by '
            f"{whose}: remove or rename that container, or choose another name"
        )
    for dc in desired.containers:
        peer = joined(dc)
        if peer and peer not in wanted and observed.named.get(peer) is None:
            errors.append(
                f'service "{dc.service}" joins the network namespace of container {peer}, '
                "which does not exist"
            )
    return sorted(set(errors))


def _follow_namespaces(
    desired: Desired, changes: list[Change], by_name: Mapping[str, ContainerState]
) -> None:
    """A container that joins a namespace of another of the stack (network_mode, pid or ipc
    `service:X`) follows it: recreated when that one is made anew or was replaced since (its
    namespace is gone), restarted when that one is started again (a runtime may give a
    restarted container new namespaces, as Docker does)."""
    index = {ch.name: i for i, ch in enumerate(changes) if ch.object == "container"}
    wanted = {d.config.name for d in desired.containers}
    for dc in desired.containers:
        kind: ChangeKind | None = None
        reason = ""
        for ns, peer in namespace_peers(dc):
            if peer not in wanted:
                continue
            mine = changes[index[dc.config.name]] if dc.config.name in index else None
            if mine is not None and mine.kind in ("create", "recreate"):
                break
            theirs = changes[index[peer]] if peer in index else None
            have, peer_have = by_name.get(dc.config.name), by_name.get(peer)
            if theirs is not None and theirs.kind in ("create", "recreate"):
                kind, reason = (
                    "recreate",
                    f"the container whose {ns} namespace it joins ({peer}) is made anew",
                )
            elif (
                ns == "network"  # the runtime records the id of the network peer it joined
                and have is not None
                and have.joined
                and peer_have is not None
                and peer_have.id
                and have.joined != peer_have.id
            ):
                kind, reason = "recreate", f"it joined the network namespace of an earlier {peer}"
            elif (
                kind is None
                and theirs is not None
                and theirs.kind in ("start", "restart")
                and (mine is None or mine.kind == "repair")
                and have is not None
                and have.running
            ):
                kind, reason = (
                    "restart",
                    f"the container whose {ns} namespace it joins ({peer}) is started again",
                )
            if kind == "recreate":
                break
        if kind is None:
            continue
        mine = changes[index[dc.config.name]] if dc.config.name in index else None
        new = Change(kind, "container", dc.config.name, reason, dc.service, dc.replica)
        if mine is None:
            index[dc.config.name] = len(changes)
            changes.append(new)
        else:
            changes[index[dc.config.name]] = new


def teardown(observed: Observed, *, volumes: bool) -> DiffResult:
    """The changes `down` makes: remove every object the stack owns (volumes only if asked)."""
    changes = [
        Change(
            "remove",
            "container",
            c.name,
            "down",
            service=c.labels.get(identity.SERVICE),
            replica=int(r) if (r := c.labels.get(identity.REPLICA, "")).isdigit() else None,
        )
        for c in observed.containers
    ]
    changes += [Change("remove", "network", n.name, "down") for n in observed.networks]
    warnings: list[str] = []
    if volumes:
        changes += [Change("remove", "volume", v.name, "down --volumes") for v in observed.volumes]
    elif observed.volumes:
        warnings.append(
            f"kept {len(observed.volumes)} volume(s): "
            + ", ".join(v.name for v in observed.volumes)
            + " (use --volumes to remove them)"
        )
    return DiffResult(tuple(changes), (), tuple(warnings))


def _network_reason(have: NetworkState, dn: DesiredNetwork) -> str:
    """Why a network is recreated: what of its address families changed, if that shows in
    what the runtime reports, else "spec changed"."""
    want = dn.config
    if have.ipv6 != want.enable_ipv6:
        return f"enable_ipv6 changed ({str(have.ipv6).lower()} -> {str(want.enable_ipv6).lower()})"
    if want.enable_ipv6 and want.subnet6 and have.subnet6 and want.subnet6 != have.subnet6:
        return f"IPv6 subnet changed ({have.subnet6} -> {want.subnet6})"
    if want.subnet and have.subnet and want.subnet != have.subnet:
        return f"subnet changed ({have.subnet} -> {want.subnet})"
    return "spec changed"
