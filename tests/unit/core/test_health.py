"""The health and completion rules (`core.health`), the one answer `diff` and the agent's
status share."""

from __future__ import annotations

import pytest

from pyapply.reconciler.core.health import completed, container_health, worst
from pyapply.runtime.base import ContainerState


def state(status: str, exit_code: int | None = None, health: str | None = None) -> ContainerState:
    return ContainerState(
        "id",
        "st-job-1",
        "img",
        "sha256:x",
        {},
        status,
        exit_code,
        health,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("restart", "expected"),
    [
        ("no", True),
        ("on-failure", True),
        ("on-failure:3", True),  # the manifest's spelling
        ("always", False),
        ("unless-stopped", False),
    ],
)
def test_an_exit_0_is_completed_unless_the_policy_restarts_it(restart: str, expected: bool) -> None:
    assert completed(state("exited", 0), restart) is expected
    assert not completed(state("exited", 1), restart)
    assert not completed(state("running"), restart)
    assert not completed(state("created"), restart)


def test_container_health() -> None:
    def h(s: ContainerState | None, restart: str = "no", **kw: bool) -> str:
        return container_health(
            s, restart, reconciling=kw.get("reconciling", False), pending=kw.get("pending", False)
        )

    assert h(None) == "Degraded"
    assert h(None, reconciling=True) == "Progressing"
    assert h(state("created")) == "Progressing"
    assert h(state("restarting")) == "Progressing"
    assert h(state("running", health="starting")) == "Progressing"
    assert h(state("running")) == "Healthy"
    assert h(state("running", health="healthy")) == "Healthy"
    assert h(state("running", health="unhealthy")) == "Degraded"
    assert h(state("exited", 0), "on-failure") == "Healthy"
    assert h(state("exited", 0), "always") == "Degraded"
    assert h(state("exited", 0), "always", reconciling=True, pending=True) == "Progressing"
    assert h(state("exited", 0), "always", reconciling=True) == "Degraded"
    assert h(state("exited", 2), "on-failure") == "Degraded"


def test_worst() -> None:
    assert worst([]) == "Healthy"
    assert worst(["Healthy", "Progressing"]) == "Progressing"
    assert worst(["Degraded", "Progressing", "Healthy"]) == "Degraded"
