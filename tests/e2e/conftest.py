"""Fixtures for the end-to-end tests, which run against the real runtimes: dockerd, and the
native runtime (runc, conmon, overlayfs, bridges) on a private state root.

A missing daemon, tool or test image is a failure, never a skip: CI runs `make setup` first,
so either is a broken environment that must be seen. The `runtime` fixture runs a test once
per runtime (tests/e2e/runtimes.py); a feature the native runtime lacks is a failing test.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from pyapply.runtime.native.hostbins import HOST_BINARIES
from tests.e2e.helpers import TEST_IMAGE, Workdir, cleanup_stack, http_get, new_stack_name
from tests.e2e.runtimes import (
    RUNTIME_NAMES,
    Cli,
    DockerUnderTest,
    NativeUnderTest,
    RuntimeUnderTest,
    import_test_image,
    save_docker_image,
)
from tests.e2e.stacks import STACK_RUNTIMES, OneHost, OnSwarm, StackUnderTest
from tests.e2e.swarm import TEST_REF, new_prefix, remove_prefixed, single_node_swarm

# The local registry that `make setup` (scripts/setup.sh) starts: plain HTTP on loopback.
REGISTRY = "127.0.0.1:5000"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test, even if a file forgets its pytestmark."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def _link_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


@pytest.fixture(autouse=True)
def host_docker0_untouched() -> Iterator[None]:
    """The host dockerd's default bridge is not ours: a test after which it is gone (or
    another interface of its name) fails here, by name, instead of every later test that
    builds or runs on dockerd's default network failing with "could not find bridge
    docker0". (A private dockerd's restart deleted it once: see tests/e2e/dockerd.py.)"""
    before = _link_index("docker0")
    yield
    if before is not None:
        after = _link_index("docker0")
        assert after == before, (
            f"this test took away the host dockerd's docker0 (index {before} before, {after} after)"
        )


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for the local dockerd, checked to have the test image."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"dockerd is not reachable ({e}); run `make setup`", pytrace=False)
    try:
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        client.close()
        pytest.fail(f"test image {TEST_IMAGE} is missing; run `make setup`", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry() -> str:
    """The local registry's address (host:port), checked to answer the v2 API."""
    try:
        status, body = http_get(f"http://{REGISTRY}/v2/", timeout=5, attempts=3, delay=0.5)
    except (OSError, http.client.HTTPException) as e:
        pytest.fail(f"no registry answers on {REGISTRY} ({e}); run `make setup`", pytrace=False)
    if status != 200:
        pytest.fail(
            f"the registry on {REGISTRY} answered /v2/ with HTTP {status}: {body[:200]!r}; "
            "run `make setup`",
            pytrace=False,
        )
    return REGISTRY


@pytest.fixture
def stack_name(docker_client: Any) -> Iterator[str]:
    """A unique stack name for this test; whatever the stack left in dockerd is removed
    afterwards, pass or fail."""
    name = new_stack_name()
    yield name
    leftovers = cleanup_stack(docker_client, name)
    if leftovers:
        pytest.fail(f"could not clean up stack {name}:\n" + "\n".join(leftovers), pytrace=False)


@pytest.fixture
def workdir(tmp_path: Path) -> Workdir:
    """A scratch directory to copy manifests into (`.copy`) and write files in (`.write`)."""
    return Workdir(tmp_path)


@pytest.fixture(scope="session")
def busybox_archive(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test image as a `docker save` archive, made once per session, for the native
    runtime's image store (each test has its own state root)."""
    return save_docker_image(
        docker_client, TEST_IMAGE, tmp_path_factory.mktemp("image") / "busybox.tar"
    )


@pytest.fixture(params=RUNTIME_NAMES)
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeUnderTest]:
    """One runtime (docker, native) with a fresh stack name and a private state root
    (tmp_path/root) holding the test image on native. Afterwards every container, network
    and volume of the stack is removed, and on native nothing of the root may be left in the
    kernel (bridges, veths, netns, mounts, rules, cgroups, processes): if anything could not
    be removed, the test fails."""
    yield from under_test(str(request.param), request, tmp_path)


@pytest.fixture(scope="module")
def swarm_prefix() -> Iterator[str]:
    prefix = new_prefix()
    with single_node_swarm(prefix):
        yield prefix


@pytest.fixture(params=STACK_RUNTIMES)
def stack_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StackUnderTest]:
    """The `runtime` fixture, and swarm too, for stack-level tests (tests/e2e/stacks.py): on
    swarm, a fresh stack on the module's single-node swarm, whose objects must be gone at
    the end (removed anyway)."""
    if request.param != "swarm":
        for rut in under_test(str(request.param), request, tmp_path):
            yield OneHost(rut, "pyapply-test/busybox:latest")
        return
    prefix = request.getfixturevalue("swarm_prefix")
    stack = prefix + uuid.uuid4().hex[:4]
    s = OnSwarm("swarm", stack, TEST_REF, Cli(stack, tmp_path / "root", 0, "swarm"))
    try:
        yield s
    finally:
        left = s.leftovers()
        remove_prefixed(stack)
    assert not left, f"left behind on the swarm: {left}"


@pytest.fixture
def native(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeUnderTest]:
    """The `runtime` fixture on the native runtime only, for what only native has."""
    yield from under_test("native", request, tmp_path)


def under_test(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, client: Any = None
) -> Iterator[RuntimeUnderTest]:
    """The `runtime` fixture's body; `client` is the docker one's SDK client (default: the
    local dockerd's)."""
    stack = new_stack_name()
    root = tmp_path / "root"
    rut: RuntimeUnderTest
    if name == "docker":
        rut = DockerUnderTest(stack, root, client or request.getfixturevalue("docker_client"))
    else:
        if os.geteuid() != 0:
            pytest.fail("the native runtime's tests need root", pytrace=False)
        missing = [b.missing() for b in HOST_BINARIES if b.find() is None]
        if shutil.which("iptables-save") is None:  # the leftover check reads the rules
            missing.append("iptables-save (apt-get install iptables)")
        if missing:
            pytest.fail("; ".join(missing), pytrace=False)
        archive = request.getfixturevalue("busybox_archive")
        rut = NativeUnderTest(stack, root)
        import_test_image(rut.root, archive, TEST_IMAGE)
    try:
        yield rut
    finally:
        leftovers = rut.cleanup()
        rut.close()
    if leftovers:
        pytest.fail(
            f"{name}: could not clean up stack {stack}:\n" + "\n".join(leftovers), pytrace=False
        )
