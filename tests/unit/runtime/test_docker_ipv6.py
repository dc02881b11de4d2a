"""IPv6 on the docker runtime, the pure parts: what a dual-stack network inspects as
(normalise.py) and the subnet picked when the manifest gives none (ipv6.py)."""

from __future__ import annotations

from ipaddress import IPv6Network

from pyapply.runtime.docker.ipv6 import ula_subnet
from pyapply.runtime.docker.normalise import network_state


def test_a_dual_stack_network_inspects_with_both_families() -> None:
    info = {
        "Id": "n1",
        "Name": "s_front",
        "Driver": "bridge",
        "EnableIPv6": True,
        "IPAM": {
            "Config": [
                {"Subnet": "fd00:5::/64", "Gateway": "fd00:5::1"},
                {"Subnet": "172.31.5.0/24", "Gateway": "172.31.5.1"},
            ]
        },
    }
    state = network_state(info)
    assert (state.subnet, state.ipv6, state.subnet6, state.gateway6) == (
        "172.31.5.0/24",
        True,
        "fd00:5::/64",
        "fd00:5::1",
    )
    plain = network_state({"Name": "s_back", "IPAM": {"Config": [{"Subnet": "10.1.0.0/24"}]}})
    assert (plain.subnet, plain.ipv6, plain.subnet6) == ("10.1.0.0/24", False, None)


def test_the_picked_subnet_is_a_unique_local_64_per_name() -> None:
    a, b = ula_subnet("s_front"), ula_subnet("s_back")
    assert a == ula_subnet("s_front") and a != b
    assert a.prefixlen == 64 and a.subnet_of(IPv6Network("fd00::/8"))
