"""The package as a user installs it: a wheel of this checkout, in a fresh venv, run from
another directory.

Installed, all of pyapply lives under the one import package `pyapply` (pyapply.reconciler,
pyapply.runtime, pyapply.schemas): site-packages gets no top-level `runtime`, `reconciler`
or `schemas` to collide with anything else of that name, and nothing may work only because
the checkout is on the path. So the wheel is built from a copy of the checkout (the links in
pyapply/ included), installed with --no-deps into a venv of its own, and the commands run
with the working directory elsewhere and no PYTHONPATH.

Its dependencies come, offline, from the checkout's venv: a .pth file in the new venv names
that venv's site-packages, as a plain path entry (whose own .pth files, the editable install
of pyapply among them, Python does not process), after the new venv's own site-packages. The
test checks that `pyapply` is imported from the wheel, not the checkout.

On the native runtime the demo runs with a private state root (the `native` fixture), which
makes the root's health checker start: `python -m pyapply.runtime.native.health`, spawned by
the installed pyapply with the new venv's Python, must work from the wheel alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO_ROOT, http_get
from tests.e2e.runtimes import RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e

DEMO = REPO_ROOT / "manifests" / "demo"
# what a wheel is built from: the package and its metadata, nothing of the tests
SOURCES = ("pyproject.toml", "README.md", "pyapply", "reconciler", "runtime", "schemas")
HEALTH_MODULE = "pyapply.runtime.native.health"


def pip(*general: str, command: str, args: list[str]) -> list[str]:
    """The checkout venv's pip, offline: nothing is fetched, only this checkout is packed."""
    return [sys.executable, "-m", "pip", *general, command, "-q", "--no-input", "--no-index", *args]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def clean_env(base: dict[str, str]) -> dict[str, str]:
    """`base` without anything that would put the checkout or its venv on the path."""
    return {k: v for k, v in base.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


class Installed:
    """A fresh venv holding the wheel of this checkout."""

    def __init__(self, tmp: Path) -> None:
        env = clean_env(dict(os.environ))
        src = tmp / "src"
        src.mkdir()
        for name in SOURCES:
            path = REPO_ROOT / name
            if path.is_dir() and not path.is_symlink():
                shutil.copytree(
                    path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(path, src / name)
        dist = tmp / "dist"
        run(
            pip(
                command="wheel",
                args=["--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
            ),
            tmp,
            env,
        )
        (self.wheel,) = dist.glob("pyapply-*.whl")
        self.venv = tmp / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)], tmp, env)
        self.python = self.venv / "bin" / "python"
        self.site = Path(
            run(
                [str(self.python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                tmp,
                env,
            ).strip()
        )
        run(
            pip(
                "--python", str(self.python), command="install", args=["--no-deps", str(self.wheel)]
            ),
            tmp,
            env,
        )
        # the dependencies: the checkout venv's site-packages, a plain path entry
        (self.site / "zz-deps-from-checkout-venv.pth").write_text(
            sysconfig.get_path("purelib") + "\n"
        )
        self.pyapply = self.venv / "bin" / "pyapply"
        self.elsewhere = tmp / "elsewhere"
        self.elsewhere.mkdir()
        self.env = env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return Installed(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def demo_copy(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[Path]:
    """The demo, its stack named as the fixture's (whose clean-up then finds it all)."""
    target = tmp_path / "demo"
    target.mkdir()
    text = (DEMO / "stack.yaml").read_text()
    assert "name: demo\n" in text
    (target / "stack.yaml").write_text(text.replace("name: demo\n", f"name: {native.stack}\n", 1))
    yield target


def test_the_wheel_installs_one_package_pyapply(installed: Installed) -> None:
    top = sorted(p.name for p in installed.site.iterdir() if not p.name.endswith(".dist-info"))
    assert "pyapply" in top
    assert not {"runtime", "reconciler", "schemas"} & set(top), top
    with zipfile.ZipFile(installed.wheel) as whl:
        roots = {n.split("/", 1)[0] for n in whl.namelist()}
    assert {r for r in roots if not r.endswith(".dist-info")} == {"pyapply"}, roots
    # the dashboard's templates and static files ship in the package, and render from it
    view = "pyapply/reconciler/view/"
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
    for name in ("templates/base.html", "templates/overview.html", "static/dashboard.js",
                 "static/dashboard.css"):  # fmt: skip
        assert view + name in names, name
    page = (
        "from pyapply.reconciler.view.dashboard import Viewer, page\n"
        "print(page('login', Viewer(), 0.0, message='<x>', live='none').count('&lt;x&gt;'))\n"
    )
    assert (
        run([str(installed.python), "-c", page], installed.elsewhere, installed.env).strip() == "1"
    )
    # from another directory: pyapply comes from the wheel, the old top-level names are gone
    probe = (
        "import importlib.util, pyapply, pyapply.runtime.native.health, pyapply.schemas\n"
        "print(pyapply.__file__)\n"
        "print([importlib.util.find_spec(n) for n in ('runtime', 'reconciler', 'schemas')])\n"
    )
    out = run([str(installed.python), "-c", probe], installed.elsewhere, installed.env)
    where, specs = out.splitlines()
    assert Path(where) == installed.site / "pyapply" / "__init__.py"
    assert specs == "[None, None, None]"
    # the checker's entry point, as the native runtime spawns it
    out = run(
        [str(installed.python), "-m", HEALTH_MODULE, "--help"], installed.elsewhere, installed.env
    )
    assert "--root" in out


def test_validate_of_the_demo_from_another_directory(installed: Installed) -> None:
    out = run(
        [str(installed.pyapply), "validate", "-f", f"{DEMO}/"], installed.elsewhere, installed.env
    )
    assert "valid: 1 stack(s), 2 service(s)" in out


def test_demo_on_native_from_the_wheel(
    installed: Installed, native: RuntimeUnderTest, demo_copy: Path
) -> None:
    port = free_port()
    env = {**clean_env(native.env), "DEMO_PORT": str(port)}
    pyapply = str(installed.pyapply)
    try:
        run([pyapply, "-f", str(demo_copy)], installed.elsewhere, env, timeout=180)
        native.note_networks()
        status, body = http_get(f"http://127.0.0.1:{port}/", attempts=40, delay=0.25)
        assert status == 200 and "hello from pyapply" in body
        checker = checker_process(native.root)
        # spawned by the installed pyapply: the new venv's Python, with nothing of the
        # checkout nor pyapply/ itself on its path
        assert checker.argv[:3] == [str(installed.python), "-m", HEALTH_MODULE], checker.argv
        assert checker.pythonpath == [str(installed.site)], checker.pythonpath
        out = run([pyapply, "diff", "-f", str(demo_copy)], installed.elsewhere, env)
        assert "no changes" in out
    finally:
        down = subprocess.run(
            [pyapply, "down", "-f", str(demo_copy), "--volumes"],
            cwd=installed.elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert down.returncode == 0, down.stderr
    assert native.observe.containers(native.stack) == {}


class Checker:
    def __init__(self, pid: int) -> None:
        proc = Path(f"/proc/{pid}")
        self.argv = (proc / "cmdline").read_bytes().decode().rstrip("\0").split("\0")
        environ = (proc / "environ").read_bytes().decode().split("\0")
        value = next((e.split("=", 1)[1] for e in environ if e.startswith("PYTHONPATH=")), "")
        self.pythonpath = [p for p in value.split(":") if p]


def checker_process(root: Path) -> Checker:
    """The state root's health checker (bounded wait: it announces itself at start)."""
    from pyapply.runtime.native import health

    deadline = time.monotonic() + 10
    while (pid := health.checker_pid(root)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid is not None, f"no health checker runs for {root}"
    return Checker(pid)
