"""Whole manifests load end to end: the DESIGN.md example, the rich example, and every
project of the real-world compose corpus (reconciler/manifest/loader.py)."""

from __future__ import annotations

import pytest
from manifest_support import DATA, only_stack

from pyapply.reconciler.core.model import (
    Dependency,
    FileRef,
    Healthcheck,
    Location,
    Mount,
    NetworkSpec,
    Port,
    Resources,
    SecretSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    UpdateConfig,
    VolumeSpec,
)
from pyapply.reconciler.manifest.loader import load
from tests import corpus as test_corpus

# ---------------------------------------------------------------------------------------------
# The DESIGN.md example, end to end


def test_design_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)
    loaded = load(["shop"], environ={})
    shop = only_stack(loaded)
    f = "shop/stack.yaml"
    assert loaded.warnings == ()
    assert loaded.files == (str(DATA / "shop" / "stack.yaml"),)
    assert shop == Stack(
        name="shop",
        services=(
            ServiceSpec(
                name="db",
                image="registry.local:5000/postgres:16",
                mounts=(Mount("volume", "/var/lib/postgresql/data", "db-data"),),
                networks=(ServiceNetwork("back"),),
                secrets=(FileRef("db-password", "/run/secrets/db-password"),),
            ),
            ServiceSpec(
                name="web",
                image="registry.local:5000/shop/web:1.4",
                environment=(("LOG_LEVEL", "info"),),
                ports=(Port(80),),
                networks=(ServiceNetwork("back"), ServiceNetwork("front")),
                depends_on=(Dependency("db", "service_healthy"),),
                healthcheck=Healthcheck(
                    ("CMD", "wget", "-q", "-O-", "http://localhost/health"), interval=5.0
                ),
                restart="unless-stopped",
                replicas=2,
                resources=Resources(memory=128 * 1024 * 1024, cpus=0.5),
                update=UpdateConfig(order="start-first", parallelism=1),
            ),
        ),
        networks=(NetworkSpec("back", internal=True), NetworkSpec("front")),
        volumes=(VolumeSpec("db-data"),),
        secrets=(SecretSpec("db-password", file=str(DATA / "shop" / "secrets" / "db-password")),),
    )
    assert shop.sources == (str(DATA / "shop" / "stack.yaml"),)
    assert shop.location == Location(f, 6, 9)
    assert shop.service("web").location == Location(f, 9, 5)
    assert shop.service("db").location == Location(f, 19, 5)
    assert shop.network("back").location == Location(f, 24, 25)
    assert shop.volume("db-data").location == Location(f, 25, 13)


def test_rich_example_loads() -> None:
    loaded = load([str(DATA / "rich")], environ={})
    stack = only_stack(loaded)
    assert [s.name for s in stack.services] == ["api", "cache", "db", "web"]
    assert loaded.warnings == ()


# ---------------------------------------------------------------------------------------------
# The compose corpus: every real-world file loads (warnings allowed, no errors)


def test_compose_corpus_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    root = test_corpus.need("compose", "awesome-compose").parent
    monkeypatch.chdir(root)
    projects = sorted(p.name for p in (root / "awesome-compose").iterdir() if p.is_dir())
    assert len(projects) > 30
    for project in projects:
        loaded = load([f"awesome-compose/{project}"], environ={"HOME": "/home/u"})
        stack = only_stack(loaded)
        assert stack.services, project
        for warning in loaded.warnings:
            assert warning.location is not None and warning.path, warning
