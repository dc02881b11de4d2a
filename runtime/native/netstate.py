"""The shapes of the network manager's state files, `<root>/networks/networks.json` and
`ipam.json`, checked whenever they are read (statefile.read_json).

Besides types, they hold what the kernel side relies on and a damaged file could break:
each network's endpoints have distinct addresses inside its subnet (two endpoints on one
address would put a duplicate address in the kernel), subnets do not overlap, and bridges
are not shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyapply.runtime.native.statefile import (
    bad,
    boolean,
    checked,
    integer,
    ipv4_address,
    ipv4_network,
    ipv6_address,
    ipv6_network,
    list_of,
    map_of,
    nonempty,
    optional,
    record,
    string,
)

_BINDING = record(
    {"container_port": integer, "protocol": string, "host_ip": string},
    {"host_port": optional(integer)},
)
_PORT = record(
    {"container": string, "ip": ipv4_address, "binding": _BINDING, "requested": _BINDING}
)
_ENDPOINT = record(
    {
        "ip": ipv4_address,
        "veth": nonempty,
        "netns": string,
        "ifname": string,
        "aliases": list_of(string),
        "default_route": boolean,
    },
    {"withdrawn": boolean},
)


def _addresses_fit(
    subnet: IPv4Network, gateway: IPv4Address, held: Mapping[str, str], where: str
) -> None:
    """Every address in `held` (holder -> address) a host address of `subnet`, none the
    gateway, no two the same."""
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise bad(where, f"gateway {gateway} is not a host address of {subnet}")
    seen: dict[IPv4Address, str] = {}
    for holder, text in sorted(held.items()):
        ip = IPv4Address(text)
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            raise bad(where, f"{holder}'s address {ip} is not a host address of {subnet}")
        if ip == gateway:
            raise bad(where, f"{holder}'s address {ip} is the gateway")
        if ip in seen:
            raise bad(where, f"{seen[ip]} and {holder} both hold {ip}")
        seen[ip] = holder


def _network_fits(rec: Mapping[str, Any], where: str) -> None:
    _addresses_fit(
        IPv4Network(rec["subnet"]),
        IPv4Address(rec["gateway"]),
        {c: ep["ip"] for c, ep in rec["endpoints"].items()},
        where,
    )
    if "subnet6" in rec or "gateway6" in rec:
        # a dual-stack network: both or neither, the gateway a host address of the subnet,
        # which holds a host number for each IPv4 one (the endpoints' IPv6 addresses are
        # derived from theirs: ipam.endpoint_ipv6)
        if "subnet6" not in rec or "gateway6" not in rec:
            raise bad(where, "subnet6 and gateway6 go together")
        subnet6, gateway6 = IPv6Network(rec["subnet6"]), IPv6Address(rec["gateway6"])
        if gateway6 not in subnet6 or gateway6 == subnet6.network_address:
            raise bad(where, f"gateway {gateway6} is not a host address of {subnet6}")
        if subnet6.num_addresses < IPv4Network(rec["subnet"]).num_addresses:
            raise bad(where, f"IPv6 subnet {subnet6} is smaller than {rec['subnet']}")


def _apart(subnets: Mapping[str, IPv4Network] | Mapping[str, IPv6Network], where: str) -> None:
    names = sorted(subnets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if subnets[a].overlaps(subnets[b]):
                raise bad(where, f"the subnets of {a} and {b} overlap")


def _networks_apart(doc: Mapping[str, Any], where: str) -> None:
    nets = doc.get("networks") or {}
    _apart({n: IPv4Network(r["subnet"]) for n, r in nets.items()}, "networks")
    _apart({n: IPv6Network(r["subnet6"]) for n, r in nets.items() if r.get("subnet6")}, "networks")
    bridges: dict[str, str] = {}
    for name, rec in sorted(nets.items()):
        if rec["bridge"] in bridges:
            raise bad("networks", f"{bridges[rec['bridge']]} and {name} share {rec['bridge']}")
        bridges[rec["bridge"]] = name


NETWORKS_SHAPE = checked(
    record(
        {},
        {
            "networks": map_of(
                checked(
                    record(
                        {
                            "id": string,
                            "name": string,
                            "driver": string,
                            "bridge": nonempty,
                            "internal": boolean,
                            "labels": map_of(string),
                            "subnet": ipv4_network,
                            "gateway": ipv4_address,
                            "endpoints": map_of(_ENDPOINT),
                            "ports": list_of(_PORT),
                        },
                        {"guards": integer, "subnet6": ipv6_network, "gateway6": ipv6_address},
                    ),
                    _network_fits,
                )
            ),
            "hosts_files": map_of(
                record(
                    {"path": string},
                    {"hostname": optional(string), "extra": list_of(list_of(string))},
                )
            ),
        },
    ),
    _networks_apart,
)


def _alloc_fits(entry: Mapping[str, Any], where: str) -> None:
    _addresses_fit(
        IPv4Network(entry["subnet"]),
        IPv4Address(entry["gateway"]),
        dict(entry.get("leases") or {}),
        where,
    )


def _allocs_apart(doc: Mapping[str, Any], where: str) -> None:
    nets = doc.get("networks") or {}
    _apart({n: IPv4Network(e["subnet"]) for n, e in nets.items()}, "networks")


IPAM_SHAPE = checked(
    record(
        {},
        {
            "pool": ipv4_network,
            "prefix": integer,
            "networks": map_of(
                checked(
                    record(
                        {"subnet": ipv4_network, "gateway": ipv4_address},
                        {"leases": map_of(ipv4_address)},
                    ),
                    _alloc_fits,
                )
            ),
        },
    ),
    _allocs_apart,
)
