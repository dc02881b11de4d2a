"""IP address management for native bridge networks, as pure logic (no I/O).

One `Ipam` holds, per network, its subnet, its gateway and the leases of its containers
(one address per container per network). It is serialised to a plain JSON-able dict and the
caller persists it (`NetworkManager` writes it to `<root>/networks/ipam.json` under a lock).

Rules:
- a network's subnet comes from the config (checked not to overlap another network's) or is
  the first free `prefix`-sized block of the pool that overlaps neither another network's
  subnet nor anything in `avoid` (the host's own routes, given by the caller);
- the gateway is the config's or the first host address;
- an address is leased to at most one container at a time: an explicit address that is the
  gateway, outside the subnet, the network or broadcast address, held by another
  container or live in the kernel (given by the caller) is refused; otherwise the lowest
  free host address that is not live in the kernel is handed out;
- a lease is freed by `release` and by `reclaim` (containers that no longer exist).

IPv6 (a dual-stack network) holds no leases of its own: a container's IPv6 address follows
from its IPv4 lease (`ipv6_for`: the same host number in the IPv6 subnet), so it is unique
on the network whenever the IPv4 one is, survives a restart or a reboot with it, and needs
no second record to keep in step. A network's IPv6 subnet is the config's or a unique local
/64 (RFC 4193) whose 40-bit global ID is a hash of the state root and the network's name.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import msgspec

from pyapply.runtime.base import Conflict, PermanentError

DEFAULT_POOL = "10.89.0.0/16"
DEFAULT_PREFIX = 24
IPV6_DEFAULT_PREFIX = 64


class SubnetAlloc(msgspec.Struct):
    """A network's address space and its leases (container name -> address)."""

    subnet: IPv4Network
    gateway: IPv4Address
    leases: dict[str, IPv4Address] = msgspec.field(default_factory=dict)

    def holder(self, address: IPv4Address) -> str | None:
        for container, leased in self.leases.items():
            if leased == address:
                return container
        return None


def _network(text: str) -> IPv4Network:
    try:
        return IPv4Network(text, strict=True)
    except ValueError as e:
        raise PermanentError(f"invalid IPv4 subnet {text!r}: {e}") from None


def _address(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError as e:
        raise PermanentError(f"invalid IPv4 address {text!r}: {e}") from None


class Ipam:
    """Subnets per network and address leases per container, with no I/O."""

    def __init__(self, pool: str = DEFAULT_POOL, prefix: int = DEFAULT_PREFIX) -> None:
        self.pool = _network(pool)
        if not self.pool.prefixlen <= prefix <= 30:
            raise PermanentError(f"subnet size /{prefix} does not fit the pool {self.pool}")
        self.prefix = prefix
        self.subnets: dict[str, SubnetAlloc] = {}

    # -- subnets -------------------------------------------------------------------------

    def allocate_subnet(
        self,
        network: str,
        subnet: str | None = None,
        gateway: str | None = None,
        avoid: Iterable[IPv4Network] = (),
    ) -> SubnetAlloc:
        """Give `network` a subnet and gateway; idempotent for the same request."""
        existing = self.subnets.get(network)
        if existing is not None:
            if subnet is not None and _network(subnet) != existing.subnet:
                raise Conflict(f"network {network} already has subnet {existing.subnet}")
            if gateway is not None and _address(gateway) != existing.gateway:
                raise Conflict(f"network {network} already has gateway {existing.gateway}")
            return existing
        taken = [a.subnet for a in self.subnets.values()]
        if subnet is not None:
            net = _network(subnet)
            if net.prefixlen > 30:
                raise PermanentError(f"subnet {net} is too small for a network")
            for other_name, other in self.subnets.items():
                if net.overlaps(other.subnet):
                    raise Conflict(f"subnet {net} overlaps {other.subnet} of network {other_name}")
        else:
            blocked = [*taken, *avoid]
            found = next(
                (
                    c
                    for c in self.pool.subnets(new_prefix=self.prefix)
                    if not any(c.overlaps(b) for b in blocked)
                ),
                None,
            )
            if found is None:
                raise PermanentError(f"no free /{self.prefix} subnet left in the pool {self.pool}")
            net = found
        gw = _address(gateway) if gateway is not None else next(net.hosts())
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise PermanentError(f"gateway {gw} is not a host address of {net}")
        alloc = SubnetAlloc(subnet=net, gateway=gw)
        self.subnets[network] = alloc
        return alloc

    def release_subnet(self, network: str) -> None:
        self.subnets.pop(network, None)

    def get(self, network: str) -> SubnetAlloc:
        try:
            return self.subnets[network]
        except KeyError:
            raise PermanentError(f"network {network} has no address space") from None

    # -- leases --------------------------------------------------------------------------

    def lease(
        self,
        network: str,
        container: str,
        address: str | None = None,
        live: Iterable[IPv4Address] = (),
    ) -> IPv4Address:
        """Lease an address to `container` on `network`; idempotent for the same container.
        `live`: addresses the kernel shows in use on the network (its bridge's neighbours),
        whatever the leases say; a new lease is never one of them."""
        alloc = self.get(network)
        current = alloc.leases.get(container)
        in_kernel = set(live)
        if address is None:
            if current is not None:
                return current
            used = {alloc.gateway, *alloc.leases.values(), *in_kernel}
            for candidate in alloc.subnet.hosts():
                if candidate not in used:
                    alloc.leases[container] = candidate
                    return candidate
            raise PermanentError(f"no free address left in {alloc.subnet} (network {network})")
        wanted = _address(address)
        if current == wanted:
            return wanted
        if current is not None:
            raise Conflict(f"{container} already holds {current} on network {network}")
        net = alloc.subnet
        if wanted not in net or wanted in (net.network_address, net.broadcast_address):
            raise PermanentError(f"address {wanted} is not a host address of {net}")
        if wanted == alloc.gateway:
            raise Conflict(f"address {wanted} is the gateway of network {network}")
        holder = alloc.holder(wanted)
        if holder is not None:
            raise Conflict(f"address {wanted} on network {network} is in use by {holder}")
        if wanted in in_kernel:
            raise Conflict(
                f"address {wanted} on network {network} is in use in the kernel by something "
                "the state does not know (a leftover container?)"
            )
        alloc.leases[container] = wanted
        return wanted

    def release(self, network: str, container: str) -> IPv4Address | None:
        alloc = self.subnets.get(network)
        if alloc is None:
            return None
        return alloc.leases.pop(container, None)

    def reclaim(self, live_containers: Iterable[str]) -> list[tuple[str, str, IPv4Address]]:
        """Free every lease whose container is not in `live_containers`."""
        live = set(live_containers)
        freed: list[tuple[str, str, IPv4Address]] = []
        for network, alloc in sorted(self.subnets.items()):
            for container in sorted(alloc.leases):
                if container not in live:
                    freed.append((network, container, alloc.leases.pop(container)))
        return freed

    # -- (de)serialisation ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": str(self.pool),
            "prefix": self.prefix,
            "networks": {
                name: {
                    "subnet": str(a.subnet),
                    "gateway": str(a.gateway),
                    "leases": {c: str(ip) for c, ip in sorted(a.leases.items())},
                }
                for name, a in sorted(self.subnets.items())
            },
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], pool: str | None = None, prefix: int | None = None
    ) -> Ipam:
        """Load persisted state; `pool`/`prefix` (if given) apply to future allocations."""
        ipam = cls(
            pool or str(data.get("pool", DEFAULT_POOL)),
            prefix or int(data.get("prefix", DEFAULT_PREFIX)),
        )
        for name, entry in dict(data.get("networks", {})).items():
            ipam.subnets[name] = SubnetAlloc(
                subnet=ipaddress.IPv4Network(entry["subnet"]),
                gateway=ipaddress.IPv4Address(entry["gateway"]),
                leases={
                    c: ipaddress.IPv4Address(ip) for c, ip in dict(entry.get("leases", {})).items()
                },
            )
        return ipam


# -- IPv6 (pure) ---------------------------------------------------------------------------


def ula_subnet(seed: str) -> IPv6Network:
    """The unique local /64 of a network (RFC 4193: fd00::/8, a 40-bit global ID, here a
    hash of `seed`, and subnet ID 0)."""
    global_id = hashlib.sha256(seed.encode()).digest()[:5]
    return IPv6Network((int.from_bytes(b"\xfd" + global_id + b"\0\0", "big") << 64, 64))


def ipv6_network(text: str) -> IPv6Network:
    try:
        return IPv6Network(text, strict=True)
    except ValueError as e:
        raise PermanentError(f"invalid IPv6 subnet {text!r}: {e}") from None


def ipv6_gateway(subnet: IPv6Network, gateway: str | None) -> IPv6Address:
    """The config's gateway (checked to be a host address of `subnet`), else its ::1."""
    if gateway is None:
        return subnet.network_address + 1
    try:
        gw = IPv6Address(gateway)
    except ValueError as e:
        raise PermanentError(f"invalid IPv6 address {gateway!r}: {e}") from None
    if gw not in subnet or gw == subnet.network_address:
        raise PermanentError(f"gateway {gw} is not a host address of {subnet}")
    return gw


def ipv6_fits(subnet4: IPv4Network, subnet6: IPv6Network) -> None:
    """An IPv6 subnet must hold a host number for each of the IPv4 subnet's (`ipv6_for`)."""
    if subnet6.num_addresses < subnet4.num_addresses:
        raise PermanentError(
            f"IPv6 subnet {subnet6} is smaller than the IPv4 subnet {subnet4} it goes with "
            f"(at most /{128 - (32 - subnet4.prefixlen)})"
        )


def ipv6_for(
    subnet4: IPv4Network,
    gateway4: IPv4Address,
    address4: IPv4Address,
    subnet6: IPv6Network,
    gateway6: IPv6Address,
) -> IPv6Address:
    """A container's IPv6 address on a dual-stack network: its IPv4 address's host number
    in the IPv6 subnet. The one host number that would land on the IPv6 gateway takes the
    IPv4 gateway's instead (which no container holds), so the mapping stays one to one."""
    ipv6_fits(subnet4, subnet6)
    if address4 not in subnet4:
        raise PermanentError(f"address {address4} is not in {subnet4}")
    host = int(address4) - int(subnet4.network_address)
    candidate = subnet6.network_address + host
    if candidate == gateway6:
        candidate = subnet6.network_address + (int(gateway4) - int(subnet4.network_address))
    return candidate


def endpoint_ipv6(rec: Mapping[str, Any], address4: str) -> IPv6Address | None:
    """The IPv6 address of the endpoint holding `address4` on the network record `rec`
    (networks.json), None if the network is IPv4 only."""
    if not rec.get("subnet6"):
        return None
    return ipv6_for(
        IPv4Network(rec["subnet"]),
        IPv4Address(rec["gateway"]),
        IPv4Address(address4),
        IPv6Network(rec["subnet6"]),
        IPv6Address(rec["gateway6"]),
    )
