"""What the agent shows of itself: the status document of the API (revision, last pass,
sync and each stack's health, decided by `reconciler.core.health`) and a pass's summary."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pyapply.reconciler.core.diff import Observed, diff
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.health import stack_health, swarm_stack_health
from pyapply.reconciler.core.plan import Plan, build
from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.reconcile import StackResult, observe, plan_stack
from pyapply.reconciler.version import __version__
from pyapply.reconciler.view.plan_text import plan_json, plan_text
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent
    from pyapply.reconciler.core.swarm import SwarmDesired


# what a status computation observed of each stack: its plan and the observation behind it
Seen = dict[str, tuple["Plan", "Observed"]]


def status_view(
    agent: Agent, runtime: Runtime | ServiceRuntime, seen: Seen | None = None
) -> dict[str, Any]:
    """The document of `GET /v1/status` (schemas/v1/agent-api.openapi.json: Status). With
    `seen`, each stack's plan and observation are kept there too (the dashboard derives its
    stack pages from them instead of observing again)."""
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
                    plan, observed_stack = planned(agent, runtime, d)
                    if seen is not None:
                        seen[d.stack] = (plan, observed_stack)
                    health = stack_health(d, observed_stack, plan, agent.running.is_set())
                else:
                    continue
                out_of_sync = out_of_sync or not plan.empty
                health["sync"] = "Synced" if plan.empty else "OutOfSync"
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
            "source": agent.git.shown_url if agent.git is not None else agent.source.path,
            "source_kind": agent.source.kind,
            "reconciling": agent.running.is_set(),
            "stopping": agent.stopping.is_set(),
        },
        "revision": {
            "applied": good.revision.id if good else None,
            "subject": good.revision.subject if good else None,
            "source": agent.source_revision,
            "pinned": agent.history.pinned(),
            # `manual` (`pyapply rollback`, until `resume`) or `auto` (--progress-deadline,
            # until a newer revision arrives)
            "pin_reason": agent.history.pin_reason(),
        },
        "rollback": rollback_view(agent),
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
        # `watch --repo`: the last fetch, its error, the commit in use (null otherwise)
        "git": agent.git.status() if agent.git is not None else None,
        "history_reset": agent.history_resets[-1].to_json() if agent.history_resets else None,
        "history": {
            "resets": [r.to_json() for r in agent.history_resets],
            "write_failures": agent.history_failures,
            "last_failure": agent.history_last_failure,
        },
        "webhook": agent.webhook.status() if agent.webhook is not None else None,
        # `watch --http`: where the dashboard and the API are served over TCP
        "http": agent.http.status() if agent.http is not None else None,
        "notifications": agent.notifier.to_json() if agent.notifier is not None else None,
    }
    if nodes is not None:
        doc["nodes"] = nodes
    return doc


def planned(agent: Agent, runtime: Runtime, d: Desired) -> tuple[Plan, Observed]:
    """One stack's plan and the observation it was made from: one listing per object kind
    (the health is judged from the same observation, not from a second one)."""
    observed = observe(runtime, d.stack, d)
    return build(d, diff(d, observed, prune_volumes=agent.options.apply.prune_volumes)), observed


class UnknownStack(PyapplyError):
    """No stack of that name in the desired state."""


def stack_detail(
    agent: Agent,
    runtime: Runtime | ServiceRuntime,
    name: str,
    seen: tuple[Plan, Observed] | None = None,
) -> dict[str, Any]:
    """The document of `GET /v1/stacks/<name>`: one stack of the desired state as the
    runtime shows it -- each service's replicas (state, health, image and image id, ports,
    restarts: the runtime's count, or the deaths the agent saw; start time), its networks and volumes, and the drift as the plan
    text with each change's fields. Redacted by the caller (the API), like every document;
    the plan text is redacted here too, by the same rules as the CLI's. `seen`: the plan and
    observation a status computation just made of this stack. Raises UnknownStack."""
    with agent.state_lock:
        desired = [d for d in agent.desired if d.stack == name]
    if not desired or isinstance(runtime, ServiceRuntime) or not isinstance(desired[0], Desired):
        raise UnknownStack(name)
    d = desired[0]
    plan, observed = seen if seen is not None else planned(agent, runtime, d)
    health = stack_health(d, observed, plan, agent.running.is_set())
    by_name = {c.name: c for c in observed.containers}
    deaths = dict(agent.changes.deaths)
    per_service = {str(s["name"]): s for s in health["services"]}
    services: dict[str, list[dict[str, Any]]] = {}
    for dc in d.containers:
        c = by_name.get(dc.config.name)
        services.setdefault(dc.service, []).append(
            {
                "name": dc.config.name,
                "state": c.status if c is not None else "missing",
                "exit_code": c.exit_code if c is not None else None,
                "health": c.health if c is not None else None,
                "image": c.image if c is not None else dc.config.image,
                "image_id": c.image_id if c is not None else None,
                "ports": [
                    {
                        "container_port": p.container_port,
                        "protocol": p.protocol,
                        "host_ip": p.host_ip,
                        "host_port": p.host_port,
                    }
                    for p in (c.ports if c is not None else dc.config.ports)
                ],
                # the runtime's own count (a restart policy's restarts) when it keeps one,
                # else the deaths the agent saw since it started
                "restarts": max(
                    c.restart_count if c is not None else 0, deaths.get(dc.config.name, 0)
                ),
                "started_at": c.started_at if c is not None else None,
            }
        )
    live_networks = {n.name: n for n in observed.networks}
    live_volumes = {v.name for v in observed.volumes}
    redactor = agent.redactor
    return {
        "name": name,
        "revision": agent.good.revision.id if agent.good else None,
        "sync": "Synced" if plan.empty else "OutOfSync",
        "health": health["health"],
        "services": [
            {
                "name": service,
                "health": per_service.get(service, {}).get("health", "Unknown"),
                "running": per_service.get(service, {}).get("running", 0),
                "replicas": replicas,
            }
            for service, replicas in sorted(services.items())
        ],
        "networks": [
            {
                "name": n.config.name,
                "driver": n.config.driver,
                "internal": n.config.internal,
                "subnet": n.config.subnet,
                "external": n.external,
                "state": "present" if n.external or n.config.name in live_networks else "missing",
            }
            for n in d.networks
        ],
        "volumes": [
            {
                "name": v.config.name,
                "driver": v.config.driver,
                "external": v.external,
                "state": "present" if v.external or v.config.name in live_volumes else "missing",
            }
            for v in d.volumes
        ],
        "drift": {
            "text": plan_text(plan, redactor),
            "changes": plan_json(plan, redactor)["changes"],
        },
    }


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


def rollback_view(agent: Agent) -> dict[str, Any]:
    """`--progress-deadline`: the revision on probation, the last healthy revision and the
    last automatic rollback (all null without one)."""
    probation = agent.probation
    last = agent.history.get_state("last_rollback")
    return {
        "progress_deadline": agent.options.progress_deadline_s,
        "probation": probation.to_json() if probation is not None else None,
        "last_healthy": agent.history.last_healthy(),
        "last": dict(last) if isinstance(last, dict) else None,
    }


def stacks_health(
    agent: Agent, runtime: Runtime | ServiceRuntime, desired: Iterable[Desired | SwarmDesired]
) -> dict[str, str]:
    """Each desired stack's health as the status shows it (stack -> Healthy / Progressing /
    Degraded, or Unknown when the runtime cannot be observed); on a swarm, from its services'
    tasks and updates."""
    out: dict[str, str] = {}
    for d in desired:
        try:
            if isinstance(runtime, ServiceRuntime) and not isinstance(d, Desired):
                from pyapply.reconciler.engine.swarm import observe_swarm, plan_observed

                observed = observe_swarm(runtime, d.stack, d)
                health = swarm_stack_health(d, observed, plan_observed(d, observed), False)
            elif not isinstance(runtime, ServiceRuntime) and isinstance(d, Desired):
                plan = plan_stack(runtime, d, prune_volumes=agent.options.apply.prune_volumes)
                health = stack_health(d, observe(runtime, d.stack), plan, False)
            else:
                continue  # applied on another runtime than this one
            out[d.stack] = str(health["health"])
        except RuntimeFailure:
            out[d.stack] = "Unknown"
    return out


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
