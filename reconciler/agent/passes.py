"""One pass of the agent over a loaded revision: apply every stack (and remove the gone
ones with `--allow-empty`) through `engine.apply.apply_all` under the host lock, then record
what happened: the history entry, the last pass, the metrics, a log line."""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import msgspec

from pyapply.reconciler.agent.actions import Reporter
from pyapply.reconciler.agent.history import snapshot_files
from pyapply.reconciler.agent.logs import info, log
from pyapply.reconciler.agent.notify import pass_event
from pyapply.reconciler.agent.status import pass_summary
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.apply import (
    Hooks,
    PassResult,
    apply_all,
    failed_actions,
    prepare_all,
)
from pyapply.reconciler.engine.lock import LockTimeout, host_lock
from pyapply.reconciler.engine.reconcile import PassError, StackResult, redactor_for
from pyapply.reconciler.manifest.loader import Loaded
from pyapply.reconciler.manifest.revision import Revision
from pyapply.runtime.base import RuntimeFailure
from pyapply.runtime.services import ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent

# the plan text a pass record keeps (the dashboard's pass page shows it); more is cut
MAX_PLAN_CHARS = 64 * 1024


class Target(msgspec.Struct, frozen=True):
    """What one pass applies: a loaded revision and where its files are."""

    revision: Revision
    directory: str
    loaded: Loaded
    pinned: bool = False


class LastPass(msgspec.Struct):
    """The last pass's result, as the status shows it."""

    revision: str = ""
    trigger: str = ""
    outcome: str = ""
    started: float = 0.0
    ended: float = 0.0
    errors: list[str] = msgspec.field(default_factory=list)
    summary: dict[str, Any] = msgspec.field(default_factory=dict)
    history_id: int | None = None


def apply_target(
    agent: Agent,
    target: Target,
    trigger: str,
    kinds: set[str],
    started: float,
    *,
    new_revision: bool,
) -> None:
    """Apply `target` for the reasons `kinds` (`trigger`, as recorded). A history entry is
    begun when the revision is new, someone asked, or something is done; a target whose
    every stack was applied becomes the agent's last good one. Never raises: an error is
    recorded as the pass's outcome."""
    rev = target.revision
    loaded = target.loaded
    errors: list[str] = []
    plans: list[Plan] = []  # the stacks' plans that had something to do
    previous = agent.good.revision.id if agent.good is not None else None
    # an automatic rollback (bad revision, why): this pass is the one it asked for
    rolled_back = agent.rolling_back if "rollback" in kinds else None
    if "rollback" in kinds:
        agent.rolling_back = None
    record: list[int] = []

    def begin() -> None:
        if not record:
            subject = agent.redactor.text(rev.subject)
            record.append(agent.history.begin(rev.id, subject, trigger, started=started))

    forced = new_revision or bool(kinds & {"api", "rollback", "resume"})
    if forced:
        agent.history.store_revision(
            rev.id, rev.subject, target.directory, snapshot_files(target.directory)
        )
        begin()

    def on_plan(plan: Plan) -> AbstractContextManager[Any] | None:
        if not plan.empty:
            plans.append(plan)
            begin()
            info(
                f"stack {plan.stack}: {len(plan.changes)} change(s) at revision {rev.id}",
                stack=plan.stack,
                revision=rev.id,
                changes=[f"{c.kind} {c.object} {c.name}: {c.reason}" for c in plan.changes],
            )
        return None

    # managed from now on: the events of its containers count even during this pass
    names = {s.name for s in loaded.stacks}
    if not names <= agent.history.managed_stacks():
        agent.history.set_managed_stacks(agent.history.managed_stacks() | names)
    gone = sorted(agent.history.managed_stacks() - names) if agent.options.allow_empty else []

    def on_result(result: StackResult) -> None:
        agent.executor = None
        if result.stack in gone:  # a removal: its failed actions
            errors.extend(failed_actions(result.outcome))
            return
        errors.extend(f"stack {result.stack}: {e}" for e in result.plan.errors)
        errors.extend(failed_actions(result.outcome, skipped=True))

    def on_remove(name: str) -> None:
        begin()
        info(f"stack {name}: its manifests are gone; removing it (--allow-empty)")

    reporter = Reporter(agent.metrics, agent.own_stops)
    hooks = Hooks(
        reporter=lambda stack: reporter,
        on_plan=on_plan,
        on_result=on_result,
        on_executor=agent.keep_executor,
        on_remove=on_remove,
        stopping=agent.stopping.is_set,
    )
    done = PassResult()
    try:
        # every stack's desired state before anything is shown, so that the secrets of
        # all of them are hidden everywhere; a stack that cannot be prepared fails in
        # its turn, as before
        if isinstance(agent.runtime, ServiceRuntime):
            _apply_swarm(agent, agent.runtime, target, gone, hooks, done)
        else:
            prepared = prepare_all(loaded, revision=rev.id, root=agent.root)
            agent.learn_secrets(redactor_for(d for d in prepared if isinstance(d, Desired)))
            apply_all(
                agent.runtime,
                prepared,
                agent.options.apply,
                root=agent.root,
                lock=hold_host_lock(agent),
                remove=gone,
                hooks=hooks,
                into=done,
            )
        if done.stopped_before is not None:
            errors.append("interrupted before stack " + done.stopped_before)
    except (PassError, RuntimeFailure, LockTimeout, OSError) as exc:
        errors.append(exc.message if isinstance(exc, RuntimeFailure) else str(exc))
        begin()
    except Exception as exc:  # a bug: recorded, and the agent goes on
        log.exception("pass failed unexpectedly")
        errors.append(f"internal error: {type(exc).__name__}: {exc}")
        begin()
    results = done.results
    interrupted = agent.stopping.is_set() and bool(
        errors or any(r.outcome is not None and not r.outcome.ok for r in results)
    )
    outcome_name = "interrupted" if interrupted else ("failed" if errors else "succeeded")
    errors = agent.redactor.value(errors)  # kept in the history and shown by the API
    summary = pass_summary(results)
    if plans:  # what the pass set out to do, as `diff` shows it (the history keeps it)
        from pyapply.reconciler.view.plan_text import plan_text

        text = "\n".join(plan_text(p, agent.redactor) for p in plans)
        summary["plan"] = text[:MAX_PLAN_CHARS] + ("\n..." if len(text) > MAX_PLAN_CHARS else "")
    agent.attempted = rev.id
    if len(done.applied) == len(loaded.stacks):
        agent.good = target
        agent.rejected.pop(rev.id, None)  # applied after all (--allow-empty, a fix)
        if agent.last_rejected is not None and agent.last_rejected[0] == rev.id:
            agent.last_rejected = None
        with agent.state_lock:
            agent.desired = list(done.applied)
    if done.removed:
        agent.history.set_managed_stacks(agent.history.managed_stacks() - set(done.removed))
    ended = time.time()
    if record:
        agent.history.finish(record[0], outcome_name, summary, errors)  # type: ignore[arg-type]
    with agent.state_lock:
        agent.last = LastPass(
            rev.id,
            trigger,
            outcome_name,
            started,
            ended,
            errors,
            summary,
            (record[0] if record[0] >= 0 else None) if record else agent.last.history_id,
        )
    if agent.metrics is not None:
        agent.metrics.passed(trigger, outcome_name, ended - started, results, rev.id, errors)
    if agent.notifier is not None:
        if outcome_name == "succeeded":
            agent.notifier.succeeded()
        event = pass_event(
            revision=rev.id,
            subject=rev.subject,
            trigger=trigger,
            kinds=kinds,
            outcome=outcome_name,
            new_revision=new_revision,
            errors=errors,
            results=results,
            previous=previous,
            at=ended,
            rolled_back=rolled_back,
        )
        if event is not None:
            agent.notifier.emit(event)
    if record:
        level = logging.INFO if outcome_name == "succeeded" else logging.ERROR
        log.log(
            level,
            "pass %s: revision %s %s in %.2fs%s",
            record[0],
            rev.id,
            outcome_name,
            ended - started,
            (": " + "; ".join(errors[:5])) if errors else "",
            extra={
                "fields": {
                    "revision": rev.id,
                    "outcome": outcome_name,
                    "trigger": trigger,
                    "summary": summary,
                    "errors": errors,
                }
            },
        )


def _apply_swarm(
    agent: Agent,
    rt: ServiceRuntime,
    target: Target,
    gone: list[str],
    hooks: Hooks,
    done: PassResult,
) -> None:
    """The pass on a swarm manager: the same hooks and record, `engine.swarm`'s loop."""
    from pyapply.reconciler.core.swarm import SwarmDesired
    from pyapply.reconciler.engine.swarm import apply_all_swarm, prepare_all_swarm, swarm_redactor

    prepared = prepare_all_swarm(rt, target.loaded, revision=target.revision.id)
    ready = [d for d in prepared if isinstance(d, SwarmDesired)]
    agent.learn_secrets(swarm_redactor(ready))
    for d in ready:
        for w in d.warnings:
            log.warning("stack %s: %s", d.stack, agent.redactor.text(w))
    apply_all_swarm(
        rt,
        prepared,
        agent.options.apply,
        lock=hold_host_lock(agent),
        remove=gone,
        hooks=hooks,
        into=done,
    )


def hold_host_lock(agent: Agent) -> AbstractContextManager[None]:
    """The host lock for a pass, waited for in steps of a second so that a SIGTERM
    meanwhile ends the wait (`LockTimeout`) instead of the agent's life."""

    class Guard:
        def __init__(self) -> None:
            self.cm: AbstractContextManager[None] | None = None

        def __enter__(self) -> None:
            told = False
            while True:
                cm = host_lock(agent.root, timeout_s=1.0)
                try:
                    cm.__enter__()
                    self.cm = cm
                    return
                except LockTimeout:
                    if agent.stopping.is_set():
                        raise
                    if not told:
                        log.info("waiting for the host lock (another pyapply is applying)")
                        told = True

        def __exit__(self, *exc: object) -> None:
            if self.cm is not None:
                self.cm.__exit__(None, None, None)

    return Guard()
