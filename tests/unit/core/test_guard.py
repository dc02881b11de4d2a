"""The guard against emptying a stack by accident: each way a revision can leave a stack
with no containers, read from real manifests, against observed containers as data."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.guard import ALLOW_HINT, Emptying, at_risk, emptied, emptying
from pyapply.reconciler.core.model import Stack
from pyapply.reconciler.manifest.loader import load
from pyapply.runtime.base import ContainerState

IMAGE = "pyapply-test/busybox:latest"


def running(stack: str, service: str, replica: int = 1, status: str = "running") -> ContainerState:
    return ContainerState(
        id=f"id-{stack}-{service}-{replica}",
        name=identity.container_name(stack, service, replica),
        image=IMAGE,
        image_id="sha256:one",
        labels={identity.STACK: stack, identity.SERVICE: service, identity.REPLICA: str(replica)},
        status=status,  # type: ignore[arg-type]
    )


def stack_of(tmp_path: Path, text: str, name: str = "compose.yaml", **kw: object) -> Stack:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    loaded = load([str(d)], environ={}, **kw)  # type: ignore[arg-type]
    (stack,) = loaded.stacks
    return stack


def envelope(services: str) -> str:
    return f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: shop}}\nspec:\n{services}"


WEB_DB = [running("shop", "web"), running("shop", "web", 2), running("shop", "db", status="exited")]


def test_services_empty_is_refused(tmp_path: Path) -> None:
    stack = stack_of(tmp_path, envelope("  services: {}\n"), "shop.yaml")
    found = emptying("shop", stack, WEB_DB)
    assert isinstance(found, Emptying) and (found.stack, found.containers) == ("shop", 3)
    assert "declares no services" in found.reason
    assert str(found).startswith("stack shop would be left with no containers while it has 3 (")


def test_every_service_behind_a_disabled_profile_is_refused(tmp_path: Path) -> None:
    text = f"""name: shop
services:
  web: {{image: {IMAGE}, profiles: [web]}}
  db: {{image: {IMAGE}, profiles: [db, all]}}
"""
    stack = stack_of(tmp_path, text)
    assert stack.services == ()
    found = emptying("shop", stack, WEB_DB)
    assert found is not None and "profiles are all disabled" in found.reason
    # with the profile enabled, something runs: no refusal
    enabled = stack_of(tmp_path, text, profiles=["web"])
    assert emptying("shop", enabled, WEB_DB) is None


def test_manifests_gone_is_refused_when_it_has_containers() -> None:
    found = emptying("shop", None, WEB_DB)
    assert found is not None and found.reason == "its manifests are gone"
    assert found.containers == 3
    # a stack without containers loses nothing
    assert emptying("shop", None, []) is None


def test_replicas_zero_on_every_running_service_is_an_explicit_scale_down(tmp_path: Path) -> None:
    text = envelope(
        f"  services:\n"
        f"    web: {{image: {IMAGE}, deploy: {{replicas: 0}}}}\n"
        f"    db: {{image: {IMAGE}, scale: 0}}\n"
    )
    stack = stack_of(tmp_path, text, "shop.yaml")
    assert [s.replicas for s in stack.services] == [0, 0]
    assert emptying("shop", stack, WEB_DB) is None


def test_replicas_zero_does_not_excuse_a_service_that_vanished(tmp_path: Path) -> None:
    text = envelope(f"  services:\n    web: {{image: {IMAGE}, deploy: {{replicas: 0}}}}\n")
    stack = stack_of(tmp_path, text, "shop.yaml")
    found = emptying("shop", stack, WEB_DB)
    assert found is not None
    assert "service(s) db are no longer declared" in found.reason


def test_a_revision_that_keeps_one_container_passes(tmp_path: Path) -> None:
    text = envelope(
        f"  services:\n"
        f"    web: {{image: {IMAGE}, deploy: {{replicas: 0}}}}\n"
        f"    other: {{image: {IMAGE}}}\n"
    )
    stack = stack_of(tmp_path, text, "shop.yaml")
    assert emptying("shop", stack, WEB_DB) is None
    assert at_risk([stack]) == []


def test_a_stack_with_no_containers_now_is_never_refused(tmp_path: Path) -> None:
    stack = stack_of(tmp_path, envelope("  services: {}\n"), "shop.yaml")
    assert emptying("shop", stack, []) is None


@pytest.mark.parametrize("status", ["running", "exited", "created", "paused"])
def test_containers_in_any_state_count(tmp_path: Path, status: str) -> None:
    stack = stack_of(tmp_path, envelope("  services: {}\n"), "shop.yaml")
    found = emptying("shop", stack, [running("shop", "web", status=status)])
    assert found is not None and found.containers == 1


def test_emptied_groups_by_stack_and_names_gone_stacks(tmp_path: Path) -> None:
    empty = stack_of(tmp_path, envelope("  services: {}\n"), "shop.yaml")
    observed = [
        *WEB_DB,
        running("old", "api"),
        running("other", "x"),  # not asked about: never reported
    ]
    found = emptied([empty], observed, gone=["old", "quiet"])
    assert [(e.stack, e.containers) for e in found] == [("old", 1), ("shop", 3)]
    assert found[0].reason == "its manifests are gone"
    assert at_risk([empty], gone=["old", "quiet"]) == ["old", "quiet", "shop"]
    assert "--allow-empty" in ALLOW_HINT and "pyapply down" in ALLOW_HINT
