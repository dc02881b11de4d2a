"""The e2e environment itself: dockerd answers and the locally built test image runs."""

from __future__ import annotations

from typing import Any

import pytest

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
