"""`pyapply build -f` and `pyapply push -f` (reconciler/cli/build.py) for what is decided
before a runtime is asked: which services, which references can be pushed, a name that is
no service, nothing to build, a missing context (located, nothing built). Builds and pushes
for real are in tests/e2e/test_compose_build.py."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.cli.build import push_refs, registry_host
from pyapply.reconciler.core.model import BuildSpec, ServiceSpec

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pyapply(here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    monkeypatch.setenv("PYAPPLY_ROOT", str(here / "root"))
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pyapply", *args])
        code = cli.run()
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        ("127.0.0.1:5000/shop/web:1", "127.0.0.1:5000"),
        ("registry.local/web", "registry.local"),
        ("localhost/web:2", "localhost"),
        ("shop-web", None),
        ("library/busybox:1", None),
        ("busybox", None),
    ],
)
def test_registry_host(ref: str, host: str | None) -> None:
    assert registry_host(ref) == host


def test_push_refs_are_the_image_and_the_tags_with_a_registry() -> None:
    svc = ServiceSpec(
        name="web",
        image="r.local/shop/web:1",
        build=BuildSpec(
            context="/c", tags=("r.local/shop/web:latest", "web:dev", "r.local/shop/web:1")
        ),
    )
    assert push_refs(svc) == ["r.local/shop/web:1", "r.local/shop/web:latest"]
    assert push_refs(ServiceSpec(name="web", image="shop-web", build=BuildSpec("/c"))) == []


def _project(here: Path, body: str) -> None:
    (here / "compose.yaml").write_text("name: shop\nservices:\n" + body)


def test_build_names_nothing_to_build_and_unknown_services(pyapply: Run, here: Path) -> None:
    _project(here, "  db:\n    image: busybox\n")
    assert pyapply("build", "-f", "compose.yaml") == (
        0,
        "no service to build: none has a build section\n",
        "",
    )
    code, out, _ = pyapply("build", "-f", "compose.yaml", "-o", "json")
    assert code == 0 and json.loads(out) == []
    code, _, err = pyapply("build", "-f", "compose.yaml", "web", "db")
    assert code == 1 and err.strip() == "error: no such service: web"


def test_build_with_a_missing_context_is_located_and_builds_nothing(
    pyapply: Run, here: Path
) -> None:
    _project(here, "  web:\n    build:\n      context: ./app\n")
    code, out, err = pyapply("build", "-f", "compose.yaml")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        'compose.yaml:5:16: warning: services.web.build.context: build context "app" does not '
        "exist: the image cannot be built here",
        f"error: compose.yaml:5:16: services.web.build.context: the build context "
        f"{here / 'app'} does not exist: cannot build shop-web; nothing was changed",
    ]
    assert not (here / "root").exists()  # no runtime was opened


def test_push_skips_what_names_no_registry(pyapply: Run, here: Path) -> None:
    (here / "app").mkdir()
    _project(here, "  web:\n    build: ./app\n  db:\n    image: busybox\n")
    code, out, err = pyapply("push", "-f", "compose.yaml", "-o", "json")
    assert code == 0 and json.loads(out) == []
    assert err.strip() == (
        "skipped web: its image shop-web names no registry (name it "
        "registry-host/repository:tag to push it)"
    )
    assert not (here / "root").exists()  # no runtime was opened
    assert pyapply("push", "-f", "compose.yaml")[:2] == (0, "nothing to push\n")


def test_build_is_checked_against_the_policy(pyapply: Run, here: Path) -> None:
    _project(here, "  web:\n    build: /etc\n")
    code, out, err = pyapply("build", "-f", "compose.yaml", "--policy", "restricted")
    assert code == 1 and out == ""
    assert err.splitlines()[-2:] == [
        'compose.yaml:4:12: services.web.build: build context "/etc" is outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")',
        "error: 1 ask denied by the policy restricted; nothing was changed",
    ]
