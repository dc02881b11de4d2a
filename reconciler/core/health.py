"""Is it healthy? One answer, given once, for every caller.

`diff` asks whether a container that is not running is drift or a job that is done; the
agent's status asks how healthy each service and stack is. Both use the rules here, so
that `pyapply diff` and `pyapply status` never disagree about the same container.

Pure: it reads the observed `ContainerState` and the desired restart policy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # types only: `diff` imports this module
    from pyapply.reconciler.core.diff import Observed
    from pyapply.reconciler.core.plan import Plan
    from pyapply.reconciler.core.swarm import SwarmDesired, SwarmObserved
    from pyapply.reconciler.core.translate import Desired
    from pyapply.runtime.base import ContainerState
    from pyapply.runtime.services import ServiceState

Health = Literal["Healthy", "Progressing", "Degraded"]

_RANK: dict[Health, int] = {"Healthy": 0, "Progressing": 1, "Degraded": 2}


def completed(state: ContainerState, restart: str) -> bool:
    """A one-shot that finished its job: it exited 0 and its restart policy does not start
    it again after a success (`no`, or `on-failure[:N]`: success is not a failure).
    `restart` is the manifest's (`on-failure:3`) or the runtime's (`on-failure`) spelling."""
    return (
        state.status == "exited"
        and state.exit_code == 0
        and (restart == "no" or restart.startswith("on-failure"))
    )


def container_health(
    state: ContainerState | None, restart: str, *, reconciling: bool, pending: bool
) -> Health:
    """One replica: missing or being started is Progressing while a pass runs (`pending`:
    the plan has a change for it), a running or completed container is Healthy unless its
    healthcheck says otherwise, anything else Degraded."""
    if state is None:
        return "Progressing" if reconciling else "Degraded"
    if state.status in ("created", "restarting") or state.health == "starting":
        return "Progressing"
    if state.running:
        return "Degraded" if state.health == "unhealthy" else "Healthy"
    if completed(state, restart):
        return "Healthy"
    return "Progressing" if reconciling and pending else "Degraded"


def worst(healths: list[Health]) -> Health:
    return max(healths, key=_RANK.__getitem__, default="Healthy")


def stack_health(
    desired: Desired, observed: Observed, plan: Plan, reconciling: bool
) -> dict[str, Any]:
    """Healthy / Progressing / Degraded per service and for the stack (the worst), as the
    agent's status shows it (schemas: the API's `Status.stacks`)."""
    by_name = {c.name: c for c in observed.containers}
    pending = {ch.name for ch in plan.changes}
    services: dict[str, list[str]] = {}
    restart: dict[str, str] = {}
    for dc in desired.containers:
        services.setdefault(dc.service, []).append(dc.config.name)
        restart[dc.service] = dc.config.restart_policy
    out: list[dict[str, Any]] = []
    for service, names in sorted(services.items()):
        states = [by_name.get(name) for name in names]
        health = worst(
            [
                container_health(
                    s, restart[service], reconciling=reconciling, pending=name in pending
                )
                for name, s in zip(names, states, strict=True)
            ]
        )
        running = sum(1 for s in states if s is not None and _counts_running(s))
        out.append({"name": service, "health": health, "replicas": len(names), "running": running})
    return {"name": desired.stack, "health": worst([s["health"] for s in out]), "services": out}


def _counts_running(state: ContainerState) -> bool:
    # as before: a replica counts as running when it is up and past its start
    return (
        state.running
        and state.status not in ("created", "restarting")
        and state.health != "starting"
    )


def service_health(state: ServiceState | None, *, reconciling: bool, pending: bool) -> Health:
    """One swarm service, from the swarm's own counts and update state: an update or
    rollback on its way, or tasks missing with none failing (a drained or lost node's
    tasks being placed again), is Progressing; a paused update or rollback, or missing
    tasks that fail, Degraded; every desired task running, Healthy. A missing service is
    Progressing while a pass that will create it runs, else Degraded."""
    if state is None:
        return "Progressing" if reconciling and pending else "Degraded"
    up = state.update
    if up is not None and up.state in ("paused", "rollback_paused"):
        return "Degraded"
    if up is not None and up.in_progress:
        return "Progressing"
    if state.running_tasks >= state.desired_tasks:
        return "Healthy"
    if state.failing and not (reconciling and pending):
        return "Degraded"
    return "Progressing"


def swarm_stack_health(
    desired: SwarmDesired, observed: SwarmObserved, plan: Plan, reconciling: bool
) -> dict[str, Any]:
    """`stack_health` for a stack on a swarm: per service (the stack's key), the desired
    and running tasks as the swarm counts them."""
    by_name = {s.name: s for s in observed.services}
    pending = {ch.name for ch in plan.changes}
    out: list[dict[str, Any]] = []
    for ds in sorted(desired.services, key=lambda d: d.key):
        name = ds.config.name
        state = by_name.get(name)
        health = service_health(state, reconciling=reconciling, pending=name in pending)
        entry: dict[str, Any] = {
            "name": ds.key,
            "health": health,
            "replicas": state.desired_tasks if state is not None else ds.config.replicas,
            "running": state.running_tasks if state is not None else 0,
        }
        if state is not None and state.update is not None:
            entry["update"] = state.update.state
        if state is not None and state.failing and state.failing[0].error:
            entry["failing"] = state.failing[0].error
        out.append(entry)
    return {"name": desired.stack, "health": worst([s["health"] for s in out]), "services": out}
