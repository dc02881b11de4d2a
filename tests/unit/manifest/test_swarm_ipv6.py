"""`enable_ipv6` on a swarm is a located error, not ignored: dockerd 20.10's overlay networks
cannot carry IPv6 (swarm_check.py says what was measured; tests/e2e/test_swarm_features.py
runs the refusal on a real swarm)."""

from __future__ import annotations

from pathlib import Path

from manifest_support import load_text

from pyapply.reconciler.manifest.swarm_check import NO_IPV6, check_swarm

COMPOSE = """\
name: shop
services:
  web: {{image: busybox, networks: [front, back, outside]}}
networks:
  front:
    enable_ipv6: true
    ipam: {{config: [{{subnet: "fd00:9::/64"}}]}}
  back: {{enable_ipv6: {back}}}
  outside: {{external: true}}
"""


def test_ipv6_is_a_located_error_on_a_swarm(here: Path) -> None:
    loaded = load_text(here, COMPOSE.format(back="true"), name="compose.yaml")
    got = [str(p) for p in check_swarm(loaded) if p.severity == "error"]
    assert sorted(got) == [
        f"compose.yaml:6:5: networks.front.enable_ipv6: {NO_IPV6}",
        f"compose.yaml:8:10: networks.back.enable_ipv6: {NO_IPV6}",
    ]
    loaded = load_text(here, COMPOSE.format(back="false"), name="compose.yaml")
    assert [p.path for p in check_swarm(loaded)] == ["networks.front.enable_ipv6"]
