"""Pure translation between Docker Engine API payloads and the runtime vocabulary.

Nothing here talks to the daemon, so all of it can be unit-tested with plain dicts.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, cast

import msgspec

from pyapply.runtime import restarts
from pyapply.runtime.base import (
    ContainerState,
    ContainerStatus,
    Fault,
    Health,
    NetworkState,
    PortBinding,
    VolumeState,
)

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
            first, dash, last = str(entry.get("HostPort") or "").partition("-")
            host_port: int | None
            host_last: int | None = None
            try:
                host_port = int(first) if first else None
                host_last = int(last) if dash and last else None
            except ValueError:
                host_port = None
            out.append(
                PortBinding(
                    container_port=container_port,
                    protocol=proto or "tcp",
                    host_ip=str(entry.get("HostIp") or ""),
                    host_port=host_port,
                    host_port_last=host_last if host_last != host_port else None,
                )
            )
    return sort_ports(out)


def port_bindings(ports: tuple[PortBinding, ...]) -> dict[str, list[dict[str, str]]]:
    """Ports -> the HostConfig.PortBindings payload (several host bindings per port allowed)."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        host_port = "" if p.host_port is None else str(p.host_port)
        if p.host_port is not None and p.host_port_last is not None:
            host_port += f"-{p.host_port_last}"  # dockerd binds the first free port of it
        out.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": host_port}
        )
    return out


# the most ports one `expose` range may name (Docker lists each one in ExposedPorts)
MAX_EXPOSED = 4096


def exposed_ports(expose: Sequence[str]) -> list[tuple[int, str]]:
    """ContainerConfig.expose ("PORT[-LAST]/PROTOCOL") -> (port, protocol) pairs, the form
    the SDK takes for ExposedPorts; a range is cut at MAX_EXPOSED ports."""
    out: list[tuple[int, str]] = []
    for item in expose:
        ports, _, proto = item.partition("/")
        first, _, last = ports.partition("-")
        lo = int(first)
        hi = min(int(last or first), lo + MAX_EXPOSED - 1)
        out += [(n, proto or "tcp") for n in range(lo, hi + 1)]
    return out


def joined_id(host_config: JSON) -> str | None:
    """HostConfig.NetworkMode "container:<id>" -> the id (dockerd stores the id it resolved
    the name to)."""
    mode = str(host_config.get("NetworkMode") or "")
    return mode.removeprefix("container:") or None if mode.startswith("container:") else None


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
        joined=joined_id(host),
        restart_count=restart_count,
        restart_gave_up=gave_up,
    )


def _instant(stamp: str | None) -> datetime.datetime | None:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros cut) to a datetime (to the
    microsecond, which orders two starts well enough)."""
    if not stamp:
        return None
    head, dot, frac = stamp.rstrip("Z").partition(".")
    try:
        when = datetime.datetime.fromisoformat(head)
    except ValueError:
        return None
    micros = int((frac + "000000")[:6]) if dot and frac[:6].isdigit() else 0
    return when.replace(microsecond=micros)


def stale_namespaces(states: list[ContainerState]) -> list[ContainerState]:
    """A running container that joined another's network namespace (container:ID) holds
    the namespace that one had then: dockerd gives a container a new one each time it
    starts, so one started again after the joiner leaves it in a namespace nobody else is
    in. That is a fault a restart repairs (the joiner joins the new namespace)."""
    by_id = {s.id: s for s in states}
    out = []
    for s in states:
        peer = by_id.get(s.joined or "")
        mine, theirs = _instant(s.started_at), _instant(peer.started_at if peer else None)
        if s.running and peer is not None and peer.running and mine and theirs and theirs > mine:
            fault = Fault(
                f"the container whose network namespace it joins ({peer.name}) was started "
                "again after it",
                "restart",
            )
            s = msgspec.structs.replace(s, faults=(*s.faults, fault))
        out.append(s)
    return out


def network_state(info: JSON) -> NetworkState:
    """GET /networks/{id} -> NetworkState (attached containers by name, sorted)."""
    ipam_configs = (info.get("IPAM") or {}).get("Config") or []
    # per family, the first pool dockerd holds (a dual-stack network has one of each)
    v4 = [c for c in ipam_configs if ":" not in str(c.get("Subnet") or "")]
    v6 = [c for c in ipam_configs if ":" in str(c.get("Subnet") or "")]
    subnet = v4[0].get("Subnet") if v4 else None
    subnet6 = v6[0].get("Subnet") if v6 else None
    gateway6 = v6[0].get("Gateway") if v6 else None
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
        ipv6=bool(info.get("EnableIPv6")),
        subnet6=str(subnet6) if subnet6 else None,
        gateway6=str(gateway6) if gateway6 else None,
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
