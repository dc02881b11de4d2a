"""The e2e environment itself: dockerd answers and the locally built test image runs."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.dockerd import PrivateDockerd
from tests.e2e.helpers import STACK_LABEL, STACK_NAME_RE, TEST_IMAGE, cleanup_stack

pytestmark = pytest.mark.e2e


def test_dockerd_answers(docker_client: Any) -> None:
    assert docker_client.ping() is True
    assert docker_client.version()["ApiVersion"]


def test_image_runs_echo(docker_client: Any, stack_name: str) -> None:
    assert STACK_NAME_RE.match(stack_name)
    assert docker_client.images.get(TEST_IMAGE).attrs["Config"]["Cmd"] == ["sh"]
    container = docker_client.containers.run(
        TEST_IMAGE,
        ["echo", "ok"],
        name=f"{stack_name}-env-1",
        labels={STACK_LABEL: stack_name},
        init=True,
        detach=True,
    )
    try:
        assert container.wait(timeout=30)["StatusCode"] == 0
        assert container.logs().decode() == "ok\n"
    finally:
        container.remove(force=True)


def test_stack_cleanup_removes_owned_objects(docker_client: Any, stack_name: str) -> None:
    labels = {STACK_LABEL: stack_name}
    docker_client.networks.create(f"{stack_name}_net", labels=labels)
    docker_client.volumes.create(f"{stack_name}_data", labels=labels)
    docker_client.containers.create(TEST_IMAGE, ["true"], name=f"{stack_name}-unlabelled-1")
    assert cleanup_stack(docker_client, stack_name) == []
    assert docker_client.containers.list(all=True, filters={"name": stack_name}) == []
    assert docker_client.networks.list(filters={"label": f"{STACK_LABEL}={stack_name}"}) == []
    assert docker_client.volumes.list(filters={"label": f"{STACK_LABEL}={stack_name}"}) == []


def test_a_private_dockerd_restarts_without_touching_the_hosts_docker0(
    busybox_archive: Path,
) -> None:
    """tests/e2e/dockerd.py's daemon in the host's namespace, restarted with a container
    running (as the kill test restarts it): the host's docker0 is the same interface after,
    the container was stopped by the stop, and nothing of the daemon is left after its
    removal (no process, no mount under its directory)."""
    docker0 = socket.if_nametoindex("docker0")
    daemon = PrivateDockerd()
    base = str(daemon.base)
    try:
        daemon.start()
        daemon.load(busybox_archive)
        daemon.docker("run", "-d", "--name", "kept", TEST_IMAGE, "sleep", "600")
        daemon.restart()
        assert socket.if_nametoindex("docker0") == docker0
        state = daemon.inspect("kept", "{{.State.Running}}")
        assert state == "false", state
    finally:
        daemon.remove()
    assert socket.if_nametoindex("docker0") == docker0
    with open("/proc/mounts") as f:
        assert not [line for line in f if base in line]
    left = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True, check=False)
    assert left.stdout == "", left.stdout
