"""`enable_ipv6` and IPv6 `ipam.config` entries: loaded into the model (stack.py), rendered
back by `config` (dump.py), passed to the runtimes (translate.py), and a change of either
recreates the network with the reason (diff.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from fakes import FakeRuntime
from manifest_support import errors, load_text, only_stack, warnings
from test_reconcile import converge, desired_of, plan_of

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import NetworkSpec, ServiceNetwork, ServiceSpec, Stack
from pyapply.reconciler.manifest import dump

DUAL = """
name: s
services:
  web: {image: img}
networks:
  default:
    enable_ipv6: true
    ipam:
      config:
        - {subnet: 172.30.9.0/24}
        - {subnet: "fd00:9::/64", gateway: "fd00:9::1"}
"""


def test_a_dual_stack_network_is_loaded_and_rendered_back(here: Path) -> None:
    stack = only_stack(load_text(here, DUAL))
    net = stack.networks[0]
    assert (net.enable_ipv6, net.subnet, net.gateway, net.subnet6, net.gateway6) == (
        True,
        "172.30.9.0/24",
        None,
        "fd00:9::/64",
        "fd00:9::1",
    )
    assert warnings(here, DUAL) == []
    assert dump.network(net) == {
        "driver": "bridge",
        "enable_ipv6": True,
        "ipam": {
            "config": [
                {"subnet": "172.30.9.0/24"},
                {"subnet": "fd00:9::/64", "gateway": "fd00:9::1"},
            ]
        },
    }
    cfg = desired_of(stack).networks[0].config
    assert (cfg.enable_ipv6, cfg.subnet6, cfg.gateway6) == (True, "fd00:9::/64", "fd00:9::1")


def test_enable_ipv6_alone_leaves_the_subnet_to_the_runtime(here: Path) -> None:
    text = "name: s\nservices:\n  web: {image: img}\nnetworks:\n  default: {enable_ipv6: true}\n"
    net = only_stack(load_text(here, text)).networks[0]
    assert (net.enable_ipv6, net.subnet6, net.subnet) == (True, None, None)


def test_ipv6_mistakes_are_located(here: Path) -> None:
    assert errors(
        here,
        """
        name: s
        services:
          web: {image: img}
        networks:
          a: {ipam: {config: [{subnet: "fd00:1::/64"}]}}
          b: {enable_ipv6: true, ipam: {config: [{subnet: "fd00:2::/64", gateway: 10.0.0.1}]}}
          c: {enable_ipv6: true, ipam: {config: [{subnet: "fd00:3::/124"}]}}
        """,
    ) == [
        "stack.yaml:5:32: networks.a.ipam.config[0].subnet: an IPv6 subnet needs "
        "enable_ipv6: true on the network",
        "stack.yaml:6:75: networks.b.ipam.config[0].gateway: gateway 10.0.0.1 is an IPv4 "
        "address in an IPv6 subnet",
        "stack.yaml:7:51: networks.c.ipam.config[0].subnet: IPv6 subnet fd00:3::/124 is too "
        "small (at most /120)",
    ]


def test_a_second_config_of_one_family_warns(here: Path) -> None:
    text = DUAL + "        - {subnet: 172.30.10.0/24}\n"
    assert warnings(here, text) == [
        "stack.yaml:11:11: warning: networks.default.ipam.config[2]: only the first IPv4 "
        "IPAM config is used"
    ]


def app(net: NetworkSpec) -> Stack:
    web = ServiceSpec(name="web", image="img:1", networks=(ServiceNetwork("front"),))
    return Stack(name="app", services=(web,), networks=(net,))


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        (
            NetworkSpec("front"),
            NetworkSpec("front", enable_ipv6=True),
            "enable_ipv6 changed (false -> true)",
        ),
        (
            NetworkSpec("front", enable_ipv6=True, subnet6="fd00:1::/64"),
            NetworkSpec("front", enable_ipv6=True, subnet6="fd00:2::/64"),
            "IPv6 subnet changed (fd00:1::/64 -> fd00:2::/64)",
        ),
        (
            NetworkSpec("front", enable_ipv6=True),
            NetworkSpec("front"),
            "enable_ipv6 changed (true -> false)",
        ),
    ],
)
def test_a_changed_ipv6_setting_recreates_the_network_with_the_reason(
    before: NetworkSpec, after: NetworkSpec, reason: str
) -> None:
    rt = FakeRuntime()
    converge(rt, app(before))
    plan = plan_of(rt, app(after))
    assert [(c.kind, c.name, c.reason) for c in plan.changes][:1] == [
        ("recreate", "app_front", reason)
    ]
    # and an unchanged one is left alone (the new fields at their defaults hash as before)
    converge(rt, app(after))
    assert plan_of(rt, app(after)).changes == ()


def test_a_network_without_ipv6_hashes_as_before() -> None:
    """The new fields at their defaults stay out of the spec hash: networks made before them
    are not recreated."""
    cfg = desired_of(app(NetworkSpec("front"))).networks[0].config
    shown = identity.canonical_json(msgspec.structs.replace(cfg, name="", labels={}))
    assert shown == '{"name":""}'  # nothing but the (blanked) name
