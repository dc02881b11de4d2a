"""reconciler.core.health on a swarm: a service's health from the swarm's task counts and
update state, and a stack's (the worst of its services), as the agent's status shows it."""

from __future__ import annotations

import msgspec
import pytest
from test_swarm_plan import desired, observed_from, stack

from pyapply.reconciler.core.health import service_health, swarm_stack_health
from pyapply.reconciler.core.swarm import build_plan, diff_swarm
from pyapply.runtime.services import ServiceState, TaskState, UpdateStatus

FAILED = TaskState("t", "s_web", "n1", "id1", 1, "failed", "running", error="exit 3")


def state(running: int, desired_tasks: int = 2, **fields: object) -> ServiceState:
    [svc] = observed_from(desired(stack())).services
    return msgspec.structs.replace(
        svc,
        running_tasks=running,
        desired_tasks=desired_tasks,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("svc", "reconciling", "pending", "health"),
    [
        (state(2), False, False, "Healthy"),
        (state(3), False, False, "Healthy"),  # start-first: an extra task for a moment
        # a drained or lost node's tasks being placed again: on its way, none failing
        (state(1), False, False, "Progressing"),
        (state(1, failing=(FAILED,)), False, False, "Degraded"),
        (state(1, failing=(FAILED,)), True, True, "Progressing"),  # a pass is repairing it
        (state(2, update=UpdateStatus("updating")), False, False, "Progressing"),
        (state(2, update=UpdateStatus("rollback_started")), False, False, "Progressing"),
        (state(2, update=UpdateStatus("paused", "task failed")), False, False, "Degraded"),
        (state(2, update=UpdateStatus("rollback_paused")), True, True, "Degraded"),
        (state(2, update=UpdateStatus("completed")), False, False, "Healthy"),
        (None, True, True, "Progressing"),  # to be created by the running pass
        (None, False, False, "Degraded"),  # removed by hand
    ],
)
def test_service_health(
    svc: ServiceState | None, reconciling: bool, pending: bool, health: str
) -> None:
    assert service_health(svc, reconciling=reconciling, pending=pending) == health


def test_stack_health_is_the_worst_with_the_swarm_counts() -> None:
    d = desired(stack())
    obs = observed_from(d)
    plan = build_plan(d, d.stack, diff_swarm(d, obs), {"s_web": 7})
    doc = swarm_stack_health(d, obs, plan, reconciling=False)
    assert doc == {
        "name": "s",
        "health": "Healthy",
        "services": [{"name": "web", "health": "Healthy", "replicas": 2, "running": 2}],
    }
    lagging = msgspec.structs.replace(
        obs,
        services=(msgspec.structs.replace(obs.services[0], running_tasks=1, failing=(FAILED,)),),
    )
    doc = swarm_stack_health(d, lagging, plan, reconciling=False)
    assert doc["health"] == "Degraded"
    assert doc["services"][0]["running"] == 1 and doc["services"][0]["failing"] == "exit 3"
    gone = msgspec.structs.replace(obs, services=())
    assert swarm_stack_health(d, gone, plan, reconciling=False)["services"] == [
        {"name": "web", "health": "Degraded", "replicas": 2, "running": 0}
    ]
