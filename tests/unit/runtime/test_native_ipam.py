"""IPAM of the native runtime's networks, as pure logic; plus the pure rule rendering."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyapply.runtime.base import Conflict, PermanentError, PortBinding
from pyapply.runtime.native import firewall
from pyapply.runtime.native.ipam import Ipam


def test_subnets_come_from_the_pool_one_block_each() -> None:
    ipam = Ipam()
    a = ipam.allocate_subnet("a")
    b = ipam.allocate_subnet("b")
    assert a.subnet == IPv4Network("10.89.0.0/24")
    assert a.gateway == IPv4Address("10.89.0.1")
    assert b.subnet == IPv4Network("10.89.1.0/24")
    assert ipam.allocate_subnet("a") is a  # idempotent


def test_pool_and_prefix_are_configurable_and_avoid_is_honoured() -> None:
    ipam = Ipam("172.30.0.0/22", 26)
    got = ipam.allocate_subnet("a", avoid=[IPv4Network("172.30.0.0/25")])
    assert got.subnet == IPv4Network("172.30.0.128/26")


def test_pool_exhaustion_is_permanent() -> None:
    ipam = Ipam("10.0.0.0/23", 24)
    ipam.allocate_subnet("a")
    ipam.allocate_subnet("b")
    with pytest.raises(PermanentError, match="no free"):
        ipam.allocate_subnet("c")


def test_explicit_subnet_and_gateway() -> None:
    ipam = Ipam()
    got = ipam.allocate_subnet("a", "192.168.77.0/24", "192.168.77.254")
    assert got.gateway == IPv4Address("192.168.77.254")
    assert ipam.lease("a", "c1") == IPv4Address("192.168.77.1")
    with pytest.raises(Conflict, match="overlaps"):
        ipam.allocate_subnet("b", "192.168.77.128/25")
    with pytest.raises(Conflict):
        ipam.allocate_subnet("a", "192.168.78.0/24")
    with pytest.raises(PermanentError):
        ipam.allocate_subnet("c", "192.168.90.0/24", "192.168.91.1")
    with pytest.raises(PermanentError):
        ipam.allocate_subnet("d", "not-a-subnet")
    # an auto-allocated subnet skips the explicit ones
    ipam2 = Ipam()
    ipam2.allocate_subnet("x", "10.89.0.0/24")
    assert ipam2.allocate_subnet("y").subnet == IPv4Network("10.89.1.0/24")


def test_leases_are_never_handed_out_twice() -> None:
    ipam = Ipam()
    ipam.allocate_subnet("a", "10.1.2.0/29")  # hosts .1-.6, .1 is the gateway
    got = [ipam.lease("a", f"c{i}") for i in range(5)]
    assert len(set(got)) == 5
    assert IPv4Address("10.1.2.1") not in got
    assert ipam.lease("a", "c0") == got[0]  # idempotent
    with pytest.raises(PermanentError, match="no free address"):
        ipam.lease("a", "c5")


def test_explicit_addresses() -> None:
    ipam = Ipam()
    ipam.allocate_subnet("a", "10.1.2.0/24")
    assert ipam.lease("a", "c1", "10.1.2.50") == IPv4Address("10.1.2.50")
    assert ipam.lease("a", "c1", "10.1.2.50") == IPv4Address("10.1.2.50")
    with pytest.raises(Conflict, match="in use by c1"):
        ipam.lease("a", "c2", "10.1.2.50")
    with pytest.raises(Conflict, match="gateway"):
        ipam.lease("a", "c2", "10.1.2.1")
    with pytest.raises(PermanentError):
        ipam.lease("a", "c2", "10.1.3.5")
    with pytest.raises(PermanentError):
        ipam.lease("a", "c2", "10.1.2.255")
    with pytest.raises(Conflict, match="already holds"):
        ipam.lease("a", "c1", "10.1.2.51")
    # automatic allocation skips the explicit lease
    ipam.allocate_subnet("b", "10.1.3.0/24")
    ipam.lease("b", "x", "10.1.3.2")
    assert ipam.lease("b", "y") == IPv4Address("10.1.3.3")


def test_release_and_reclaim_free_addresses() -> None:
    ipam = Ipam()
    ipam.allocate_subnet("a")
    ipam.allocate_subnet("b")
    a1 = ipam.lease("a", "c1")
    ipam.lease("a", "c2")
    ipam.lease("b", "c1")
    ipam.lease("b", "c3")
    assert ipam.release("a", "c1") == a1
    assert ipam.release("a", "c1") is None
    assert ipam.release("nope", "c1") is None
    assert ipam.lease("a", "c4") == a1  # freed addresses are reused
    freed = ipam.reclaim(["c2", "c4"])
    assert sorted((n, c) for n, c, _ in freed) == [("b", "c1"), ("b", "c3")]
    assert ipam.subnets["b"].leases == {}
    assert set(ipam.subnets["a"].leases) == {"c2", "c4"}


def test_release_subnet_makes_it_available_again() -> None:
    ipam = Ipam()
    ipam.allocate_subnet("a")
    ipam.allocate_subnet("b")
    ipam.release_subnet("a")
    assert ipam.allocate_subnet("c").subnet == IPv4Network("10.89.0.0/24")
    with pytest.raises(PermanentError):
        ipam.lease("a", "x")


def test_json_round_trip() -> None:
    ipam = Ipam("10.50.0.0/16", 24)
    ipam.allocate_subnet("a")
    ipam.lease("a", "c1")
    ipam.lease("a", "c2", "10.50.0.99")
    data = json.loads(json.dumps(ipam.to_json()))
    again = Ipam.from_json(data)
    assert again.to_json() == ipam.to_json()
    assert again.lease("a", "c3") == IPv4Address("10.50.0.3")
    with pytest.raises(Conflict):
        again.lease("a", "c4", "10.50.0.99")
    assert Ipam.from_json(data, "10.60.0.0/16").allocate_subnet("z").subnet == IPv4Network(
        "10.60.0.0/24"
    )


def test_bad_pool_config() -> None:
    with pytest.raises(PermanentError):
        Ipam("10.0.0.0/24", 16)
    with pytest.raises(PermanentError):
        Ipam("10.0.0.1/16")


# -- pure rule rendering ------------------------------------------------------------------


def _all_args(rules: list[firewall.Rule]) -> list[str]:
    return [" ".join(r.args) for r in rules]


def test_network_rules_isolate_and_nat_only_non_internal() -> None:
    net = IPv4Network("10.89.3.0/24")
    plain = firewall.network_rules("pa-aaaa0000", net, internal=False)
    internal = firewall.network_rules("pa-bbbb0000", net, internal=True)
    for rules in (plain, internal):
        assert {r.chain for r in rules} <= {
            firewall.FORWARD_CHAIN,
            firewall.POSTROUTING_CHAIN,
            firewall.INPUT_CHAIN,
            firewall.ISOLATION_CHAIN,
        }
        assert all("--comment" in r.args for r in rules)
    assert any("! -o pa-aaaa0000" in a and "MASQUERADE" in a for a in _all_args(plain))
    assert not any("MASQUERADE" in a and "! -o" in a for a in _all_args(internal))
    assert any("! -o pa-+" in a and a.endswith("ACCEPT") for a in _all_args(plain))
    assert not any("! -o pa-+" in a for a in _all_args(internal))
    # an internal network's "nothing leaves" drop goes to the head of the chain
    tops = [r for r in internal if r.top]
    assert [r.args[:4] for r in tops] == [("-i", "pa-bbbb0000", "!", "-o")]
    assert tops[0].args[-1] == "DROP"
    assert not any(r.top for r in plain)
    # the final drops of a network come after all its accepts (order-free between networks)
    fwd = [r.args for r in plain if r.chain == firewall.FORWARD_CHAIN]
    assert fwd[-2][-1] == "DROP" and fwd[-1][-1] == "DROP"


def test_guard_rules_close_loopback_and_docker_bridges() -> None:
    not_ours = "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
    plain = firewall.network_rules("pa-aaaa0000", IPv4Network("10.89.3.0/24"), internal=False)
    internal = firewall.network_rules("pa-bbbb0000", IPv4Network("10.89.4.0/24"), internal=True)
    for bridge, rules in (("pa-aaaa0000", plain), ("pa-bbbb0000", internal)):
        guards = [r for r in rules if r.table == "mangle"]
        assert guards == firewall.guard_rules(bridge, bridge == "pa-bbbb0000")
        assert all(r.args[-2:] == ("-j", "DROP") and not r.top for r in guards)
        # CVE-2020-8558: 127.0.0.0/8 from the bridge only as a reply or a DNAT'ed connection
        [loop] = [" ".join(r.args) for r in guards if r.chain == firewall.INPUT_CHAIN]
        assert loop.startswith(f"-i {bridge} -d 127.0.0.0/8 {not_ours} ")
        fwd = [" ".join(r.args) for r in guards if r.chain == firewall.ISOLATION_CHAIN]
        # nothing in from any other interface, nothing out to docker's bridges, unasked
        assert f"! -i {bridge} -o {bridge} {not_ours}" in "\n".join(fwd)
        # a forwarded connection first addressed to loopback (a 127.0.0.1-only published
        # port reached by a raw frame), from the bridge or into it
        for way in ("-i", "-o"):
            assert f"{way} {bridge} -m conntrack --ctorigdst 127.0.0.0/8 -m comment" in "\n".join(
                fwd
            )
        for docker_bridge in ("docker+", "br-+"):
            assert any(a.startswith(f"-i {bridge} -o {docker_bridge} {not_ours} ") for a in fwd)
    # an internal network's "nothing leaves" is repeated where dockerd cannot reorder it
    assert any(
        " ".join(r.args).startswith("-i pa-bbbb0000 ! -o pa-bbbb0000 -m comment")
        for r in internal
        if r.chain == firewall.ISOLATION_CHAIN
    )
    assert not any(
        "! -o pa-aaaa0000 -m comment" in " ".join(r.args)
        for r in plain
        if r.chain == firewall.ISOLATION_CHAIN
    )
    # the base chains our guards hang from are in the mangle table, which dockerd never writes
    jumps = {(t, base, target) for t, base, _m, target in firewall.JUMPS}
    assert ("mangle", "INPUT", firewall.INPUT_CHAIN) in jumps
    assert ("mangle", "FORWARD", firewall.ISOLATION_CHAIN) in jumps
    assert {("mangle", firewall.INPUT_CHAIN), ("mangle", firewall.ISOLATION_CHAIN)} <= set(
        firewall.OUR_CHAINS
    )


def test_port_rules() -> None:
    rules = firewall.port_rules(
        "pa-aaaa0000", "web", IPv4Address("10.89.0.2"), PortBinding(80, "tcp", "127.0.0.1", 8080)
    )
    assert len(rules) == 1
    args = " ".join(rules[0].args)
    assert rules[0].chain == firewall.DNAT_CHAIN
    assert "-d 127.0.0.1" in args and "--dport 8080" in args
    assert args.endswith("--to-destination 10.89.0.2:80")
    assert firewall.port_comment("pa-aaaa0000", "web") in rules[0].args
    any_ip = firewall.port_rules("b", "c", IPv4Address("10.0.0.2"), PortBinding(53, "udp", "", 53))
    assert "-d" not in any_ip[0].args
    with pytest.raises(PermanentError):
        firewall.port_rules("b", "c", IPv4Address("10.0.0.2"), PortBinding(80))
    with pytest.raises(PermanentError):
        firewall.port_rules("b", "c", IPv4Address("10.0.0.2"), PortBinding(80, "icmp", "", 1))
