"""What the agent shows of itself: the status document of the API (revision, last pass,
sync and each stack's health, decided by `reconciler.core.health`) and a pass's summary."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyapply.reconciler.core.health import stack_health, swarm_stack_health
from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.reconcile import StackResult, observe, plan_stack
from pyapply.reconciler.version import __version__
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent


def status_view(agent: Agent, runtime: Runtime | ServiceRuntime) -> dict[str, Any]:
    """The document of `GET /v1/status` (schemas/v1/agent-api.openapi.json: Status)."""
    with agent.state_lock:
        desired = list(agent.desired)
        last = agent.last
    good = agent.good
    stacks: list[dict[str, Any]] = []
    sync = "Unknown"
    nodes: list[dict[str, Any]] | None = None
    if good is not None and desired:
        try:
            out_of_sync = False
            for d in desired:
                if isinstance(runtime, ServiceRuntime):
                    if isinstance(d, Desired):
                        continue  # applied on another runtime: not this one's to show
                    from pyapply.reconciler.engine.swarm import observe_swarm, plan_observed

                    observed = observe_swarm(runtime, d.stack, d)
                    plan = plan_observed(d, observed)
                    health = swarm_stack_health(d, observed, plan, agent.running.is_set())
                elif isinstance(d, Desired):
                    plan = plan_stack(runtime, d, prune_volumes=agent.options.apply.prune_volumes)
                    health = stack_health(
                        d, observe(runtime, d.stack), plan, agent.running.is_set()
                    )
                else:
                    continue
                out_of_sync = out_of_sync or not plan.empty
                stacks.append(health)
            if isinstance(runtime, ServiceRuntime):
                nodes = nodes_view(runtime)
            current = agent.source_revision
            if current is not None and current != good.revision.id and not good.pinned:
                out_of_sync = True
            sync = "OutOfSync" if out_of_sync else "Synced"
        except RuntimeFailure as exc:
            sync = "Unknown"
            stacks = [{"name": d.stack, "health": "Unknown", "error": exc.message} for d in desired]
    doc: dict[str, Any] = {
        "agent": {
            "pid": os.getpid(),
            "version": __version__,
            "started": agent.started_at,
            "source": agent.source.path,
            "source_kind": agent.source.kind,
            "reconciling": agent.running.is_set(),
            "stopping": agent.stopping.is_set(),
        },
        "revision": {
            "applied": good.revision.id if good else None,
            "subject": good.revision.subject if good else None,
            "source": agent.source_revision,
            "pinned": agent.history.pinned(),
        },
        "last_result": {
            "pass": last.history_id,
            "revision": last.revision or None,
            "trigger": last.trigger or None,
            "outcome": last.outcome or None,
            "started": last.started or None,
            "ended": last.ended or None,
            "errors": last.errors,
            "summary": last.summary,
        },
        "sync": sync,
        "stacks": stacks,
        # the source's revision when it was refused or failed to load (the last pass
        # may since have been a self-heal of the last good revision)
        "rejected": rejected_view(agent),
        "history_reset": agent.history_resets[-1].to_json() if agent.history_resets else None,
        "history": {
            "resets": [r.to_json() for r in agent.history_resets],
            "write_failures": agent.history_failures,
            "last_failure": agent.history_last_failure,
        },
    }
    if nodes is not None:
        doc["nodes"] = nodes
    return doc


def nodes_view(rt: ServiceRuntime) -> list[dict[str, Any]]:
    """The swarm's nodes as the status shows them: a node that stopped reads `down`, a
    drained one `drain`."""
    return [
        {
            "hostname": n.hostname,
            "role": n.role,
            "state": n.state,
            "availability": n.availability,
            "leader": n.leader,
        }
        for n in sorted(rt.list_nodes(), key=lambda n: n.hostname)
    ]


def rejected_view(agent: Agent) -> dict[str, Any] | None:
    last = agent.last_rejected
    if last is None or last[0] != agent.source_revision:
        return None
    revision, outcome, at, errors = last
    return {"revision": revision, "outcome": outcome, "at": at, "errors": errors}


def pass_summary(results: Sequence[StackResult]) -> dict[str, Any]:
    """What a pass did, for its history record and the API: each stack's plan counts,
    and the actions by op and by result."""
    stacks: dict[str, Any] = {}
    actions: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for r in results:
        stacks[r.stack] = r.plan.counts()
        if r.outcome is not None:
            for ar in r.outcome.results:
                actions[ar.action.op] = actions.get(ar.action.op, 0) + 1
                statuses[ar.status] = statuses.get(ar.status, 0) + 1
    return {"stacks": stacks, "actions": actions, "results": statuses}
