"""How the swarm driver classifies the daemon's answers (runtime.swarm.driver._swarm_failure on
top of runtime.docker.errors), as table cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyapply.runtime.base import (
    Conflict,
    NotFound,
    PermanentError,
    RuntimeFailure,
    TransientError,
    Unavailable,
)
from pyapply.runtime.docker.errors import classify_api_error
from pyapply.runtime.swarm.driver import SwarmRuntime, _swarm_failure

# (case, HTTP status, the daemon's message, action, the error class expected)
CASES: list[tuple[str, int, str, str, type[RuntimeFailure]]] = [
    (
        "stale version",
        500,
        "rpc error: code = Unknown desc = update out of sequence",
        "update service shop_web",
        Conflict,
    ),
    (
        "not a manager",
        503,
        'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to '
        "connect this node to swarm and try again.",
        "list services",
        PermanentError,
    ),
    (
        "name taken",
        409,
        "rpc error: code = AlreadyExists desc = name conflicts with an existing object",
        "create service shop_web",
        Conflict,
    ),
    ("no such service", 404, "service shop_web not found", "inspect service shop_web", NotFound),
    (
        "config in use",
        400,
        "rpc error: code = InvalidArgument desc = config 'c' is in use by the following "
        "service: shop_web",
        "remove config c",
        Conflict,
    ),
    (
        "manager busy",
        500,
        "rpc error: code = Unavailable desc = raft busy",
        "list nodes",
        TransientError,
    ),
]


@pytest.mark.parametrize(
    ("status", "message", "action", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_swarm_failures(
    status: int, message: str, action: str, expected: type[RuntimeFailure]
) -> None:
    failure = _swarm_failure(classify_api_error(status, message, action), action)
    assert type(failure) is expected
    assert action in failure.message


def test_docker_host_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # nothing listens there: the driver goes to $DOCKER_HOST, not to the default socket
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    runtime = SwarmRuntime()
    try:
        with pytest.raises(Unavailable, match=r"absent\.sock"):
            runtime.list_nodes()
    finally:
        runtime.close()
