"""`apply`, `diff`, `down`, `get`, `logs`, `restart`, `events` and `rollback` on the swarm
runtime (`--runtime swarm`).

`cli/main.py` hands a command over here once it has opened a `ServiceRuntime`; the manifests
are loaded and the policy enforced there already. Output and exit codes are the other
runtimes': the plan as text or JSON, one line per action, and per service how its update
ended (converged, rolled back, paused, timed out); 0 / 1 / 2 as everywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import NO_SECRETS, Redactor
from pyapply.reconciler.core.swarm import SwarmDesired
from pyapply.reconciler.engine.execute import ActionResult, Outcome
from pyapply.reconciler.engine.reconcile import PassError
from pyapply.reconciler.engine.swarm import (
    SwarmOptions,
    apply_swarm,
    desired_for_swarm,
    execute,
    observe_swarm,
    plan_down_swarm,
    plan_swarm,
)
from pyapply.reconciler.manifest.loader import Loaded
from pyapply.reconciler.view.plan_text import outcome_summary, plan_text, plans_json
from pyapply.runtime.base import PermanentError, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime, TaskState

__all__ = ["apply", "diff", "down", "events", "get", "logs", "restart", "rollback"]

EXIT_ERROR, EXIT_DRIFT = 1, 2


def _fail(message: str) -> NoReturn:
    from pyapply.reconciler.cli.main import fail  # main hands over to this module

    fail(message)


def _checked(loaded: Loaded, acting: bool) -> None:
    """What cannot exist on a swarm: warnings printed, errors printed and fatal."""
    from pyapply.reconciler.manifest.swarm_check import check_swarm

    problems = check_swarm(loaded)
    for p in problems:
        click.echo(str(p), err=True)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        n = len(errors)
        tail = "; nothing was changed" if acting else ""
        _fail(f"{n} error{'s' if n != 1 else ''} in the manifests for the swarm runtime{tail}")


def _desired(rt: ServiceRuntime, loaded: Loaded, revision: str) -> list[SwarmDesired]:
    try:
        return [
            desired_for_swarm(rt, s, revision=revision, environ=loaded.environments.get(s.name))
            for s in loaded.stacks
        ]
    except PassError as exc:
        _fail(f"{exc}; nothing was changed")


def _redactor(desired: list[SwarmDesired]) -> Redactor:
    from pyapply.reconciler.manifest.sealed import revealed

    secrets = [o.config.data for d in desired for o in d.objects if o.kind == "secret"]
    return Redactor([*secrets, *revealed()])


def _line(r: ActionResult, redactor: Redactor) -> str:
    a = r.action
    head = f"  {r.status:7} {a.op:15} {a.target}"
    if r.status == "done":
        return redactor.text(head + (f": {r.note}" if r.note else ""))
    return redactor.text(f"{head}: {r.error or ''}")


def _services_summary(outcome: Outcome) -> list[str]:
    out = []
    for r in outcome.results:
        if r.action.op != "wait_service":
            continue
        if r.status == "done":
            out.append(f"service {r.action.target}: {r.note}")
        elif r.status == "failed":
            out.append(f"service {r.action.target}: {r.error}")
    return out


def apply(
    rt: ServiceRuntime,
    loaded: Loaded,
    revision: str,
    *,
    output: str,
    dry_run: bool,
    wait_timeout: float,
) -> None:
    _checked(loaded, acting=True)
    wanted = _desired(rt, loaded, revision)
    redactor = _redactor(wanted)
    options = SwarmOptions(dry_run=dry_run, wait_timeout_s=wait_timeout)
    plans: list[Plan] = []
    outcomes: list[Outcome] = []
    try:
        for desired in wanted:
            for w in desired.warnings:
                click.echo(redactor.text(f"warning: {w}"), err=True)
            result = apply_swarm(rt, desired, options)
            plans.append(result.plan)
            if output == "text":
                click.echo(plan_text(result.plan, redactor))
            if result.plan.errors:
                _fail(
                    redactor.text(
                        f"stack {desired.stack}: cannot apply: " + "; ".join(result.plan.errors)
                    )
                )
            if result.outcome is not None:
                outcomes.append(result.outcome)
                if output == "text":
                    for r in result.outcome.results:
                        click.echo(_line(r, redactor))
                    for line in _services_summary(result.outcome):
                        click.echo(redactor.text(line))
                    click.echo(f"stack {desired.stack}: {outcome_summary(result.outcome)}")
    except RuntimeFailure as exc:
        _fail(redactor.text(exc.message))
    if output == "json":
        doc = plans_json(plans, redactor)
        doc["revision"] = revision
        doc["applied"] = not dry_run
        doc["results"] = [
            {
                "id": redactor.text(r.action.id),
                "status": r.status,
                "seconds": round(r.seconds, 3),
                "error": redactor.value(r.error),
                "note": r.note,
            }
            for o in outcomes
            for r in o.results
        ]
        click.echo(json.dumps(doc, indent=2))
    if any(not o.ok for o in outcomes):
        _fail("some actions failed; run `pyapply diff` to see what is left, or apply again")


def diff(
    rt: ServiceRuntime, loaded: Loaded, revision: str, *, output: str, exit_code: bool
) -> None:
    _checked(loaded, acting=False)
    wanted = _desired(rt, loaded, revision)
    redactor = _redactor(wanted)
    try:
        plans = [plan_swarm(rt, d) for d in wanted]
    except RuntimeFailure as exc:
        _fail(redactor.text(exc.message))
    if output == "json":
        click.echo(json.dumps(plans_json(plans, redactor), indent=2))
    else:
        for plan in plans:
            click.echo(plan_text(plan, redactor))
    if any(p.errors for p in plans):
        sys.exit(EXIT_ERROR)
    if exit_code and any(not p.empty for p in plans):
        sys.exit(EXIT_DRIFT)


def down(rt: ServiceRuntime, names: list[str], *, volumes: bool = False) -> None:
    ok = True
    try:
        for name in names:
            plan = plan_down_swarm(rt, name, volumes=volumes)
            click.echo(plan_text(plan))
            if plan.empty:
                continue
            outcome = execute(rt, plan)
            for r in outcome.results:
                click.echo(_line(r, NO_SECRETS))
            click.echo(f"stack {name}: {outcome_summary(outcome)}")
            ok = ok and outcome.ok
    except RuntimeFailure as exc:
        _fail(exc.message)
    if not ok:
        _fail("some objects could not be removed; run down again")


def get(rt: ServiceRuntime, names: list[str], *, output: str) -> None:
    """Each stack's services with their health (`core.health.service_health`: Progressing
    while the swarm places tasks again, after a drain or a lost node), and the swarm's nodes
    with the stack's running tasks on each (a node that stopped reads `down`)."""
    from pyapply.reconciler.core.health import service_health, worst

    docs: list[dict[str, Any]] = []
    try:
        nodes = rt.list_nodes()
        for name in names:
            obs = observe_swarm(rt, name)
            on_node: dict[str, int] = {}
            for s in obs.services:
                for t in rt.service_tasks(s.name):
                    if t.running:
                        on_node[t.node_id] = on_node.get(t.node_id, 0) + 1
            healths = {
                s.name: service_health(s, reconciling=False, pending=False) for s in obs.services
            }
            docs.append(
                {
                    "stack": name,
                    "health": worst(list(healths.values())) if obs.services else None,
                    "nodes": [
                        {
                            "hostname": n.hostname,
                            "role": n.role,
                            "state": n.state,
                            "availability": n.availability,
                            "tasks": on_node.get(n.id, 0),
                        }
                        for n in nodes
                    ],
                    "services": [
                        {
                            "name": s.name,
                            "service": s.labels.get(identity.SERVICE),
                            "health": healths[s.name],
                            "mode": s.spec.mode,
                            "running": s.running_tasks,
                            "desired": s.desired_tasks,
                            "update": s.update.state if s.update else None,
                            "image": s.spec.image,
                            "revision": s.labels.get(identity.REVISION),
                            "ports": [
                                f"{p.published or ''}:{p.target}/{p.protocol} ({p.mode})"
                                for p in s.spec.ports
                            ],
                            "failing": [t.error for t in s.failing if t.error],
                        }
                        for s in obs.services
                    ],
                    "networks": [{"name": n.name, "driver": n.driver} for n in obs.networks],
                    "configs": [o.name for o in obs.configs],
                    "secrets": [o.name for o in obs.secrets],
                }
            )
    except RuntimeFailure as exc:
        _fail(exc.message)
    if output == "json":
        click.echo(json.dumps(docs, indent=2))
        return
    for doc in docs:
        click.echo(f"stack {doc['stack']}" + (f" ({doc['health']})" if doc["health"] else ""))
        rows = [("NAME", "HEALTH", "MODE", "TASKS", "UPDATE", "IMAGE", "PORTS")]
        for s in doc["services"]:
            rows.append(
                (
                    s["name"],
                    s["health"],
                    s["mode"],
                    f"{s['running']}/{s['desired']}",
                    s["update"] or "-",
                    s["image"],
                    ", ".join(s["ports"]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo(
                "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
        for s in doc["services"]:
            for e in s["failing"]:
                click.echo(f"  ! {s['name']}: {e}")
        for n in doc["networks"]:
            click.echo(f"  network {n['name']} ({n['driver']})")
        for c in doc["configs"]:
            click.echo(f"  config {c}")
        for c in doc["secrets"]:
            click.echo(f"  secret {c}")
        for n in doc["nodes"]:
            click.echo(
                f"  node {n['hostname']} ({n['role']}, {n['state']}, {n['availability']}): "
                f"{n['tasks']} task(s) of the stack"
            )
            if n["state"] != "ready":
                click.echo(f"  ! node {n['hostname']} is {n['state']}")


# ---------------------------------------------------------------------------------------------
# logs, restart, events, rollback: the everyday commands, as a `docker service` user knows them


def _services_of(rt: ServiceRuntime, names: list[str], services: Sequence[str]) -> list[str]:
    """The swarm service names of `services` in the stacks (`<stack>_<service>`); a service
    that none of them has is an error naming the services they have."""
    found: list[str] = []
    for service in services:
        hits = [
            s.name
            for stack in names
            for s in rt.list_services({identity.STACK: stack, identity.SERVICE: service})
        ]
        if not hits:
            have = sorted(
                {
                    s.labels.get(identity.SERVICE, s.name)
                    for stack in names
                    for s in rt.list_services({identity.STACK: stack})
                }
            )
            _fail(
                f"no service {service} in stack {', '.join(names)} on the swarm"
                + (f" (services: {', '.join(have)})" if have else " (apply it first)")
            )
        found += hits
    return found


def task_labels(service: str, tasks: Sequence[TaskState]) -> dict[str, str]:
    """What to prefix the lines of each task of `service` with, by task id:
    `<service>.<slot>` (a global
    service's task: `<service>.<node>`), as `docker service ps` names tasks, with the task's
    short id added where an older task of the same slot shares the name."""

    def base(t: TaskState) -> str:
        return f"{service}.{t.slot if t.slot is not None else t.node or t.node_id[:12]}"

    counts: dict[str, int] = {}
    for t in tasks:
        counts[base(t)] = counts.get(base(t), 0) + 1
    return {t.id: base(t) + (f".{t.id[:6]}" if counts[base(t)] > 1 else "") for t in tasks}


def logs(
    rt: ServiceRuntime, names: list[str], service: str, *, follow: bool, tail: int | None
) -> None:
    """The service's output from every task on every node, through the manager (the
    Engine's service logs); each line prefixed with its task when the service has more than
    one (`task_labels`). `--follow` streams until interrupted; `--tail N` per task."""
    import threading

    try:
        [name, *more] = _services_of(rt, names, [service])
        if more:
            _fail(f"service {service} is in more than one stack: name one with --stack")
        labels = task_labels(name, rt.service_tasks(name))
        prefix = len(labels) > 1 or follow
        width = max((len(v) for v in labels.values()), default=0)
        lock = threading.Lock()

        def label_of(task_id: str) -> str:
            with lock:
                if task_id and task_id not in labels:  # a task made while following
                    labels.update(task_labels(name, rt.service_tasks(name)))
                return labels.get(task_id) or task_id[:12] or name

        stream = rt.service_logs(name, follow=follow, tail=tail)
        try:
            for entry in stream:
                text = entry.line.decode(errors="replace").rstrip("\n")
                if prefix:
                    click.echo(f"{label_of(entry.task_id).ljust(width)} | {text}")
                else:
                    click.echo(text)
                if follow:
                    sys.stdout.flush()
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                close()
    except KeyboardInterrupt:  # the way to end --follow: not an error
        return
    except RuntimeFailure as exc:
        _fail(exc.message)


def restart(
    rt: ServiceRuntime, names: list[str], services: Sequence[str], *, wait_timeout: float
) -> None:
    """`docker service update --force` for each service: the swarm replaces every task with
    a new one of the same spec, rolling as the service's update_config says (parallelism,
    delay, order, monitor, failure_action -- already in its spec), and pyapply waits for
    each update to end (or roll back) within `wait_timeout`."""
    import time

    ok = True
    try:
        targets = _services_of(rt, names, services)
        for name in targets:
            rt.redeploy_service(name)
        deadline = time.monotonic() + wait_timeout
        for name in targets:
            result = rt.wait_converged(name, max(0.0, deadline - time.monotonic()))
            counts = f"{result.running}/{result.desired} running"
            if result.outcome == "converged":
                click.echo(f"restarted {name}: converged in {result.seconds:.1f}s ({counts})")
            else:
                ok = False
                click.echo(f"restart of {name}: {result.outcome}: {result.message or counts}")
    except RuntimeFailure as exc:
        _fail(exc.message)
    if not ok:
        _fail("some services did not converge after their restart")


def events(rt: ServiceRuntime, names: list[str], *, output: str) -> None:
    """The Engine's events about the stacks' services, task containers, networks, configs
    and secrets, until interrupted: a line each, or a JSON object per line."""
    from pyapply.reconciler.cli.ops import print_events

    try:
        print_events(
            rt.events({identity.STACK: names[0] if len(names) == 1 else ""}), names, output
        )
    except RuntimeFailure as exc:
        _fail(exc.message)


def rollback(
    rt: ServiceRuntime, names: list[str], services: Sequence[str], *, wait_timeout: float
) -> None:
    """`docker service rollback` for each service of the stacks (all of them, or
    `services`): the swarm puts each back to its previous spec, rolling as its
    rollback_config says, and pyapply waits for each within `wait_timeout`. A service never
    updated has no previous spec: it is said and left as it is. The manifests are not
    touched: the next apply of them updates the services again."""
    import time

    ok = True
    try:
        if services:
            targets = _services_of(rt, names, services)
        else:
            targets = sorted(
                s.name for stack in names for s in rt.list_services({identity.STACK: stack})
            )
            if not targets:
                _fail(f"stack {', '.join(names)} has no services on the swarm")
        started: list[tuple[str, str | None]] = []
        for name in targets:
            # the last update's start: a rollback is done when a later one completed
            before = rt.get_service(name)
            since = before.update.started_at if before and before.update else None
            try:
                rt.rollback_service(name)
            except PermanentError as exc:
                ok = False
                click.echo(f"not rolled back: {exc.message}")
                continue
            started.append((name, since))
        deadline = time.monotonic() + wait_timeout
        for name, since in started:
            ok = _rolled_back(rt, name, since, deadline) and ok
    except RuntimeFailure as exc:
        _fail(exc.message)
    if not ok:
        _fail("some services were not rolled back")


def _rolled_back(rt: ServiceRuntime, name: str, since: str | None, deadline: float) -> bool:
    """Wait for the rollback of `name` to end: the swarm's update status, of an update
    started after `since` (the one before the rollback was asked for), reads
    rollback_completed (and the tasks run) -- success --, or rollback_paused, or the
    deadline passes. Said in one line; whether it succeeded is returned."""
    import time

    start = time.monotonic()
    state = None
    while True:
        state = rt.get_service(name)
        up = state.update if state is not None else None
        if up is not None and up.started_at == since:
            up = None  # the update before the rollback: it has not started yet
        if state is None:
            click.echo(f"rollback of {name}: the service is gone")
            return False
        counts = f"{state.running_tasks}/{state.desired_tasks} running"
        if up is not None and up.state == "rollback_completed":
            if state.running_tasks >= state.desired_tasks:
                took = time.monotonic() - start
                click.echo(f"rolled back {name} to its previous spec in {took:.1f}s ({counts})")
                return True
        elif up is not None and up.state == "rollback_paused":
            click.echo(f"rollback of {name}: paused: {up.message or counts}")
            return False
        if time.monotonic() >= deadline:
            where = up.state if up is not None else "not started"
            click.echo(f"rollback of {name}: not done within the wait timeout ({where}, {counts})")
            return False
        time.sleep(0.5)
