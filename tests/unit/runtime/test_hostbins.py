"""The list of host programs (runtime/native/hostbins.py) against the code, dpkg and setup.sh.

A program that the code runs but the list does not name, or a package that does not bring
the listed program, fails here: that is how `make demo` once broke on a fresh machine (the
init binary came only with docker.io, which the demo's set-up never installs)."""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native import hostbins
from pyapply.runtime.native.hostbins import HOST_BINARIES, HostBinary

REPO = Path(__file__).resolve().parents[3]
CODE_DIRS = ("reconciler", "runtime")
# an absolute path to a program in one of the system's bin directories
_BIN_PATH = re.compile(r"^/(usr/)?(local/)?s?bin/[A-Za-z0-9._+-]+$")
_SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}

LISTED_PATHS = {p for b in HOST_BINARIES for p in b.paths}
# paths inside a container, which the image (or our own bind mount) provides, not the host
IN_CONTAINER = {
    "/bin/sh",  # CMD-SHELL healthchecks run the image's shell
    "/sbin/docker-init",  # where the init is mounted, as Docker does
}
LISTED_NAMES = {b.name for b in HOST_BINARIES} | {os.path.basename(p) for p in LISTED_PATHS}


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for top in CODE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _argv0(call: ast.Call) -> ast.expr | None:
    """The first element of a literal argv list given to a subprocess function."""
    if not call.args or not isinstance(call.args[0], ast.List) or not call.args[0].elts:
        return None
    return call.args[0].elts[0]


def test_every_program_path_in_the_code_is_listed() -> None:
    unlisted = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _BIN_PATH.match(node.value)
                and node.value not in LISTED_PATHS | IN_CONTAINER
            ):
                unlisted.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value}")
    assert unlisted == [], "programs run by path but not in runtime/native/hostbins.py"


def test_every_program_named_in_a_subprocess_call_is_listed() -> None:
    unlisted = []
    calls = 0
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _SUBPROCESS_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "subprocess"
            ):
                continue
            calls += 1
            first = _argv0(node)
            if isinstance(first, ast.Constant) and first.value not in LISTED_NAMES:
                unlisted.append(f"{path.relative_to(REPO)}:{node.lineno}: {first.value}")
    assert calls >= 5, "the scan found almost no subprocess calls: is it looking in the code?"
    assert unlisted == [], "programs run by name but not in runtime/native/hostbins.py"


@pytest.mark.parametrize("binary", HOST_BINARIES, ids=lambda b: b.name)
def test_each_listed_program_is_installed_from_its_package(binary: HostBinary) -> None:
    """On this machine (set up by `make test`), the program is there and dpkg says the listed
    package owns it. Missing is a failure, not a skip: setup.sh installs these packages."""
    found = binary.find()
    assert found is not None, binary.missing()
    real = os.path.realpath(found)  # /usr/sbin/iptables is an alternatives link
    out = subprocess.run(
        ["dpkg-query", "-S", real], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, f"no package owns {real}: {out.stderr}"
    owners = {o.strip().split(":")[0] for o in out.stdout.split(":", 1)[0].split(",")}
    assert binary.package in owners, f"{real} belongs to {owners}, not {binary.package}"


@pytest.mark.parametrize("native", [True, False], ids=["native", "full"])
def test_setup_installs_every_listed_package(native: bool) -> None:
    args = ["bash", str(REPO / "scripts" / "setup.sh"), "--list-packages"]
    if native:
        args.append("--native")
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    listed = set(out.stdout.split())
    assert set(hostbins.packages()) <= listed
    assert "tini" in listed  # the one that was missing


def test_the_list_runs_as_a_script_with_the_system_python() -> None:
    # setup.sh runs it before the virtualenv exists: standard library only
    out = subprocess.run(
        ["/usr/bin/python3", "-I", str(REPO / "runtime/native/hostbins.py"), "packages"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.split() == hostbins.packages()


def test_a_missing_program_names_its_package() -> None:
    ghost = HostBinary("tini", ("/nonexistent/tini-static",), "tini", "for `init: true`")
    assert ghost.find() is None
    msg = ghost.missing()
    assert "apt-get install tini" in msg
    assert "/nonexistent/tini-static" in msg


def test_a_non_executable_candidate_is_not_found(tmp_path: Path) -> None:
    plain = tmp_path / "prog"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    assert HostBinary("p", (str(plain),), "p", "x").find() is None
    plain.chmod(0o755)
    assert HostBinary("p", (str(plain),), "p", "x").find() == str(plain)
    assert HostBinary("p", ("/dev/null",), "p", "x").find() is None  # not a regular file


def test_the_container_manager_refuses_before_making_anything(tmp_path: Path) -> None:
    from pyapply.runtime.base import ContainerConfig
    from pyapply.runtime.native.containers import ContainerManager

    mgr = ContainerManager(tmp_path / "root")
    mgr.init_path = None  # as on a machine without tini
    config = ContainerConfig(name="c1", image="busybox", init=True)
    with pytest.raises(PermanentError, match=r"apt-get install tini"):
        mgr.check_host(config)
    assert not (tmp_path / "root").exists()
    mgr.supervisor.conmon = hostbins.CONMON.paths[0] + ".gone"
    with pytest.raises(PermanentError, match="conmon not found at"):
        mgr.check_host(ContainerConfig(name="c1", image="busybox"))


# Programs that the tests and benchmarks run (not the runtime: those are HOST_BINARIES), each
# with the Debian package setup.sh installs for it. A test that starts using a new program
# belongs here, so that a fresh machine gets it.
TEST_TOOLS = {
    "/usr/bin/docker": "docker.io",
    "/usr/sbin/dockerd": "docker.io",
    "/usr/bin/docker-compose": "docker-compose",
    "/usr/bin/skopeo": "skopeo",
    "/usr/bin/docker-registry": "docker-registry",
    "/usr/bin/gcc": "gcc",
    "/usr/sbin/debootstrap": "debootstrap",
    "/usr/bin/chattr": "e2fsprogs",
    "/usr/sbin/sshd": "openssh-server",
    "/usr/bin/chromium": "chromium",
    "/usr/bin/chromedriver": "chromium-driver",
    "/usr/bin/buildah": "buildah",
}


@functools.cache
def _setup_packages() -> frozenset[str]:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "--list-packages"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return frozenset(out.stdout.split())


def _owners(path: str) -> set[str]:
    out = subprocess.run(
        ["dpkg-query", "-S", path], capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode != 0:
        return set()
    return {o.strip().split(":")[0] for o in out.stdout.split(":", 1)[0].split(",")}


@pytest.mark.parametrize("path", sorted(TEST_TOOLS))
def test_each_test_tool_comes_from_a_package_setup_installs(path: str) -> None:
    package = TEST_TOOLS[path]
    assert package in _setup_packages(), f"setup.sh does not install {package} (for {path})"
    assert os.access(path, os.X_OK), f"{path} is missing: setup.sh installs {package}"
    # the link itself (gcc -> gcc-12 belongs to gcc), else what it leads to (alternatives)
    owners = _owners(path) or _owners(os.path.realpath(path))
    assert package in owners, f"{path} belongs to {owners or 'no package'}, not {package}"
