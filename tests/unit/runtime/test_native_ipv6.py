"""The pure parts of IPv6 on native networks: the IPv6 subnet and the addresses derived from
the IPv4 leases (ipam.py), the ip6tables rules (firewall.py, network.py), the kernel checks
of a dual-stack network, its DNS entries (dns.py), and no rule for [::1] (the proxy's)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native import firewall
from pyapply.runtime.native.dns import render_network
from pyapply.runtime.native.ipam import (
    endpoint_ipv6,
    ipv6_for,
    ipv6_gateway,
    ula_subnet,
)
from pyapply.runtime.native.network import (
    KernelView,
    Link,
    _host_ipv6,
    network_faults,
    network_rules,
    network_rules6,
    port_faults,
    port_rules4,
    port_rules6,
)

BRIDGE = "pa-0000aaaa"
REC: dict[str, Any] = {
    "name": "s_front",
    "bridge": BRIDGE,
    "subnet": "10.89.3.0/24",
    "gateway": "10.89.3.1",
    "subnet6": "fd00:3::/64",
    "gateway6": "fd00:3::1",
    "internal": False,
    "endpoints": {"s-web-1": {"ip": "10.89.3.2", "veth": "pav1", "aliases": ["web"]}},
    "ports": [],
}


def test_the_default_ipv6_subnet_is_a_unique_local_64_per_seed() -> None:
    a, b = ula_subnet("/var/lib/pyapply\0s_front"), ula_subnet("/var/lib/pyapply\0s_back")
    assert a == ula_subnet("/var/lib/pyapply\0s_front")
    assert a != b
    for net in (a, b):
        assert net.prefixlen == 64 and net.subnet_of(IPv6Network("fd00::/8"))
    assert ipv6_gateway(a, None) == a.network_address + 1
    with pytest.raises(PermanentError, match="not a host address"):
        ipv6_gateway(a, "fd99::1")


def test_ipv6_addresses_follow_the_ipv4_leases_one_to_one() -> None:
    net4, gw4 = IPv4Network("10.0.0.0/24"), IPv4Address("10.0.0.1")
    net6 = IPv6Network("fd00:1::/64")
    assert ipv6_for(net4, gw4, IPv4Address("10.0.0.7"), net6, IPv6Address("fd00:1::1")) == (
        IPv6Address("fd00:1::7")
    )
    # a gateway elsewhere: the host number that would land on it takes the IPv4 gateway's
    gw6 = IPv6Address("fd00:1::9")
    got = {ipv6_for(net4, gw4, h, net6, gw6) for h in net4.hosts() if h != gw4}
    assert len(got) == 253 and gw6 not in got and IPv6Address("fd00:1::1") in got
    with pytest.raises(PermanentError, match="smaller than the IPv4 subnet"):
        ipv6_for(net4, gw4, IPv4Address("10.0.0.7"), IPv6Network("fd00:1::/121"), gw6)
    assert endpoint_ipv6(REC, "10.89.3.2") == IPv6Address("fd00:3::2")
    assert endpoint_ipv6({**REC, "subnet6": None}, "10.89.3.2") is None


def test_the_ip6tables_rules_mirror_the_iptables_ones_but_loopback() -> None:
    v4 = network_rules(REC)
    v6 = network_rules6(REC)
    loopback = {"127.0.0.0/8"}
    # every IPv4 rule but those about 127.0.0.0/8 has its IPv6 twin (the DNS guard's on the
    # IPv6 gateway, where the DNS server listens too)
    twin = {"10.89.3.0/24": "fd00:3::/64", "10.89.3.1": "fd00:3::1"}
    expected = [tuple(twin.get(a, a) for a in r.args) for r in v4 if not loopback & set(r.args)]
    assert [r.args for r in v6] == expected
    assert any(r.chain == firewall.DNS_CHAIN and "fd00:3::1" in r.args for r in v6)
    assert any(r.chain == firewall.ISOLATION_CHAIN and "br-+" in r.args for r in v6)
    assert any(r.chain == firewall.POSTROUTING_CHAIN and "fd00:3::/64" in r.args for r in v6)
    internal = network_rules6({**REC, "internal": True})
    assert internal[0].top and internal[0].args[:4] == ("-i", BRIDGE, "!", "-o")
    assert network_rules6({**REC, "subnet6": None}) == []


def port(host_ip: str) -> dict[str, Any]:
    b = {"container_port": 80, "protocol": "tcp", "host_ip": host_ip, "host_port": 18080}
    return {"container": "s-web-1", "ip": "10.89.3.2", "binding": b, "requested": b}


def test_a_published_port_gets_a_rule_per_family_it_is_published_on() -> None:
    def targets(rules: list[firewall.Rule]) -> list[tuple[str, ...]]:
        return [(*r.args[: r.args.index("-p")], r.args[-1]) for r in rules]

    assert targets(port_rules4(REC, port(""))) == [("10.89.3.2:80",)]
    assert targets(port_rules6(REC, port(""))) == [("[fd00:3::2]:80",)]
    assert targets(port_rules4(REC, port("::"))) == [("10.89.3.2:80",)]
    assert targets(port_rules6(REC, port("::"))) == [("[fd00:3::2]:80",)]
    assert targets(port_rules6(REC, port("fd00:3::1"))) == [("-d", "fd00:3::1", "[fd00:3::2]:80")]
    assert port_rules4(REC, port("fd00:3::1")) == []
    assert port_rules6(REC, port("127.0.0.1")) == []
    assert port_rules6({**REC, "subnet6": None}, port("")) == []


def test_ports_on_ipv6_loopback_get_no_rule_they_are_the_proxys() -> None:
    assert _host_ipv6("::1") == IPv6Address("::1")
    assert port_rules6(REC, port("::1")) == [] and port_rules4(REC, port("::1")) == []
    assert _host_ipv6("::") == IPv6Address("::")
    assert _host_ipv6("127.0.0.1") is None
    with pytest.raises(PermanentError, match="not an IP address"):
        _host_ipv6("fd00::zz")


def test_a_dual_stack_network_misses_its_ipv6_address_and_rules() -> None:
    rules4 = firewall.network_rules(BRIDGE, IPv4Network(REC["subnet"]), False)
    keys4 = frozenset(map(firewall.key_of, [*rules4, *firewall.jump_rules()]))
    keys4 |= frozenset(map(firewall.key_of, firewall.dns_rules(BRIDGE, IPv4Address("10.89.3.1"))))
    rules6 = network_rules6(REC)
    keys6 = frozenset(map(firewall.key_of, [*rules6, *firewall.jump_rules()]))
    links = {BRIDGE: Link(7, True, None)}
    both = frozenset({("10.89.3.1", 24), ("fd00:3::1", 64)})
    whole = KernelView(links, {7: both}, keys4, None, keys6)
    assert network_faults(REC, whole) == []
    no_v6 = KernelView(
        links,
        {7: frozenset({("10.89.3.1", 24)})},
        keys4,
        None,
        keys6 - {firewall.key_of(rules6[0])},
    )
    assert network_faults(REC, no_v6) == [
        f"bridge {BRIDGE} lacks its address fd00:3::1/64",
        f"1 of {len(rules6)} ip6tables rules of {BRIDGE} missing",
    ]
    # a port's ip6tables rule is checked beside its iptables one
    p = port("")
    with_port = KernelView(
        links, {7: both}, keys4 | frozenset(map(firewall.key_of, port_rules4(REC, p))), None, keys6
    )
    assert port_faults(REC, p, with_port) == "rule for 0.0.0.0:18080 missing"
    full = KernelView(
        links,
        {7: both},
        with_port.rules,
        None,
        keys6 | frozenset(map(firewall.key_of, port_rules6(REC, p))),
    )
    assert port_faults(REC, p, full) is None


def test_ipv6_rules_read_back_from_ip6tables_save_match() -> None:
    saved = (
        "*nat\n-A PYAPPLY-DNAT -d fd00:3::1/128 -p tcp -m tcp --dport 18080 -m comment "
        f'--comment "pyapply:{BRIDGE}:s-web-1" -j DNAT --to-destination [fd00:3::2]:80\nCOMMIT\n'
    )
    rules = port_rules6(REC, port("fd00:3::1"))
    assert firewall.missing(rules, firewall.parse_save(saved)) == []


def test_the_dns_entries_of_a_dual_stack_network_carry_the_ipv6_address() -> None:
    text = render_network(REC)
    assert text.splitlines()[1] == "s-web-1 10.89.3.2 fd00:3::2 s-web-1,web"
    plain = render_network({**REC, "subnet6": None})
    assert plain.splitlines()[1] == "s-web-1 10.89.3.2  s-web-1,web"
