"""Apply every stack of a revision, then remove the stacks that are gone: one pass.

`pyapply apply`, the agent's pass and `pyapply rollback` without an agent all run this
loop; they differ only in what they show and record, which they say through `Hooks`. The
caller passes the host lock to hold (`nullcontext()` for a dry run).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import msgspec

from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    PassError,
    StackResult,
    apply_stack,
    desired_for,
)
from pyapply.runtime.base import Runtime

if TYPE_CHECKING:
    from pyapply.reconciler.core.swarm import SwarmDesired
    from pyapply.reconciler.engine.execute import Executor, Outcome, Reporter
    from pyapply.reconciler.manifest.loader import Loaded


class Unprepared(msgspec.Struct, frozen=True):
    """A stack whose desired state could not be made (a secret file unreadable ...): it
    fails in its turn, after the stacks before it were applied."""

    stack: str
    error: PassError


def prepare_all(loaded: Loaded, *, revision: str, root: str) -> list[Desired | Unprepared]:
    """Every loaded stack's desired state, or why it has none, before anything is touched
    (so that the secrets of all of them are known to the output of each)."""
    out: list[Desired | Unprepared] = []
    environments: Mapping[str, Mapping[str, str]] = loaded.environments
    for stack in loaded.stacks:
        try:
            out.append(
                desired_for(
                    stack, revision=revision, root=root, environ=environments.get(stack.name)
                )
            )
        except PassError as exc:
            out.append(Unprepared(stack.name, exc))
    return out


def _no_reporter(stack: str) -> Reporter | None:
    return None


def _not_stopping() -> bool:
    return False


class Hooks(msgspec.Struct, frozen=True):
    """What the caller sees of a pass. `reporter` makes the executor's reporter for a
    stack (asked only when the stack has work); `on_plan` sees each plan before it runs and may return a context manager that
    wraps the execution (a live table); `on_result` sees each stack's result (it may raise
    to end the pass); `on_executor` is handed each executor before it runs (to cancel it
    on SIGTERM); `on_remove` is told before a gone stack is removed; `stopping` is asked
    before each stack."""

    reporter: Callable[[str], Reporter | None] = _no_reporter
    on_plan: Callable[[Plan], AbstractContextManager[Any] | None] | None = None
    on_result: Callable[[StackResult], None] | None = None
    on_executor: Callable[[Executor], None] | None = None
    on_remove: Callable[[str], None] | None = None
    stopping: Callable[[], bool] = _not_stopping


class PassResult(msgspec.Struct):
    """What a pass did, filled in as it goes (so that a caller that passes one in still
    has it when the pass raises)."""

    results: list[StackResult] = msgspec.field(default_factory=list)
    # the stacks applied (or tried): a swarm's (engine.swarm.apply_all_swarm) or one host's
    applied: list[Desired | SwarmDesired] = msgspec.field(default_factory=list)
    removed: list[str] = msgspec.field(default_factory=list)  # the gone stacks removed completely
    stopped_before: str | None = None  # the stack not started because `stopping()` said so


def apply_all(
    runtime: Runtime,
    wanted: Sequence[Desired | Unprepared],
    options: ApplyOptions,
    *,
    root: str,
    lock: AbstractContextManager[Any] | None = None,
    remove: Sequence[str] = (),
    hooks: Hooks = Hooks(),
    into: PassResult | None = None,
) -> PassResult:
    """Under `lock`, apply each stack of `wanted` in order (an `Unprepared` one raises its
    PassError in its turn), then, unless stopped, take down each stack of `remove` (its
    objects and its files, as `pyapply down`)."""
    done = PassResult() if into is None else into

    def finished(result: StackResult) -> None:
        done.results.append(result)
        if hooks.on_result is not None:
            hooks.on_result(result)

    with lock if lock is not None else nullcontext():
        for desired in wanted:
            if hooks.stopping():
                done.stopped_before = desired.stack
                return done
            if isinstance(desired, Unprepared):
                raise desired.error
            done.applied.append(desired)
            finished(
                apply_stack(
                    runtime,
                    desired,
                    options,
                    reporter=functools.partial(hooks.reporter, desired.stack),
                    on_plan=hooks.on_plan,
                    on_executor=hooks.on_executor,
                )
            )
        if not remove or hooks.stopping():
            return done
        from pyapply.reconciler.engine.down import down_stack  # only when one is gone

        for stack in remove:
            if hooks.on_remove is not None:
                hooks.on_remove(stack)
            result = down_stack(
                runtime,
                stack,
                root,
                volumes=False,
                reporter=functools.partial(hooks.reporter, stack),
                on_executor=hooks.on_executor,
            )
            finished(result)
            if result.ok:
                done.removed.append(stack)
    return done


def failed_actions(outcome: Outcome | None, *, skipped: bool = False) -> list[str]:
    """One line per action that failed (`skipped`: or was skipped): `op target: error`."""
    if outcome is None:
        return []
    return [
        f"{r.action.op} {r.action.target}: {r.error}"
        for r in outcome.results
        if r.status == "failed" or (skipped and r.status == "skipped")
    ]
