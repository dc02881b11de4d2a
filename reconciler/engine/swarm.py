"""One reconcile pass on a swarm: observe a stack on a `ServiceRuntime`, plan
(`reconciler.core.swarm`), execute, and wait for each service's update to converge or roll
back within the wait timeout.

The executor's rules hold here too: every action is idempotent (create calls accept an object
that is already ours), transient errors are retried with exponential back-off and jitter (the
same loop and rule as `engine.execute`'s: `engine.retry`), a
failed action skips the actions that depend on it, and the outcome is a value
(`execute.Outcome`). A `wait_service` action is never retried: its result is the swarm's
verdict on the update (converged, rolled back, paused, timed out), said per service.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import Stack
from pyapply.reconciler.core.plan import Action, Plan
from pyapply.reconciler.core.redact import Redactor
from pyapply.reconciler.core.swarm import (
    SwarmDesired,
    SwarmObserved,
    build_plan,
    desired_swarm,
    diff_swarm,
    teardown_swarm,
)
from pyapply.reconciler.engine.apply import Hooks, PassResult, Unprepared
from pyapply.reconciler.engine.execute import (
    ActionResult,
    NullReporter,
    Outcome,
    Reporter,
    Settings,
)
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    PassError,
    StackResult,
    read_file_objects,
)
from pyapply.reconciler.engine.retry import Retry
from pyapply.runtime.base import Conflict, NotFound, RuntimeFailure
from pyapply.runtime.services import OverlayNetworkState, ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.loader import Loaded

__all__ = [
    "SwarmOptions",
    "apply_all_swarm",
    "apply_swarm",
    "desired_for_swarm",
    "execute",
    "observe_swarm",
    "plan_down_swarm",
    "plan_observed",
    "plan_swarm",
    "prepare_all_swarm",
    "swarm_redactor",
]


class SwarmOptions(msgspec.Struct, frozen=True):
    dry_run: bool = False
    wait_timeout_s: float = 120.0
    pin: bool = True


def desired_for_swarm(
    rt: ServiceRuntime,
    stack: Stack,
    *,
    revision: str,
    environ: Mapping[str, str] | None = None,
    pin: bool = True,
) -> SwarmDesired:
    """The stack's swarm objects, with each image pinned to the digest its registry holds
    (`pin_image`), so every node runs the same image. An unreadable config or secret is
    `engine.reconcile.PassError`. An image no registry holds (built on
    this node only) is used by its tag, with a warning: other nodes could not pull it."""
    contents = read_file_objects(stack, os.environ if environ is None else environ)
    images: dict[str, str] = {}
    warnings: list[str] = []
    if pin:
        for ref in sorted({s.image for s in stack.services}):
            try:
                images[ref] = rt.pin_image(ref)
            except (NotFound, RuntimeFailure) as exc:
                warnings.append(
                    f"image {ref} is not pinned to a digest (only nodes that have it can run "
                    f"it): {exc.message}"
                )
    desired = desired_swarm(stack, revision=revision, file_contents=contents, images=images)
    return msgspec.structs.replace(desired, warnings=tuple(warnings)) if warnings else desired


def observe_swarm(
    rt: ServiceRuntime, stack: str, desired: SwarmDesired | None = None, *, volumes: bool = False
) -> SwarmObserved:
    """What the swarm shows for one stack: one listing call per kind (plus one for the
    external networks, if the stack names any; and the stack's named volumes on the node
    talked to, with `volumes`)."""
    labels = {identity.STACK: stack}
    external: dict[str, OverlayNetworkState | None] = {}
    if desired is not None and desired.external_networks:
        every = {n.name: n for n in rt.list_overlay_networks({})}
        external = {name: every.get(name) for name in desired.external_networks}
    return SwarmObserved(
        services=tuple(rt.list_services(labels)),
        networks=tuple(rt.list_overlay_networks(labels)),
        configs=tuple(rt.list_objects("config", labels)),
        secrets=tuple(rt.list_objects("secret", labels)),
        external_networks=external,
        volumes=tuple(rt.list_node_volumes(labels)) if volumes else (),
    )


def plan_swarm(rt: ServiceRuntime, desired: SwarmDesired) -> Plan:
    return plan_observed(desired, observe_swarm(rt, desired.stack, desired))


def plan_observed(desired: SwarmDesired, observed: SwarmObserved) -> Plan:
    """The plan for a stack already observed (the agent's status shows both)."""
    versions = {s.name: s.version for s in observed.services}
    return build_plan(desired, desired.stack, diff_swarm(desired, observed), versions)


def plan_down_swarm(rt: ServiceRuntime, stack: str, *, volumes: bool = False) -> Plan:
    """Everything the stack owns on the swarm; with `volumes`, its named volumes on the node
    talked to as well (those on other nodes stay: the swarm cannot reach them)."""
    return build_plan(None, stack, teardown_swarm(observe_swarm(rt, stack, volumes=volumes)))


def _perform(rt: ServiceRuntime, action: Action, deadline: float) -> str | None:
    """Do one action; the note to show with its result, if any."""
    op = action.op
    if op == "create_overlay":
        assert action.overlay is not None
        rt.create_overlay_network(action.overlay)
    elif op == "remove_overlay":
        rt.remove_overlay_network(action.target)
    elif op == "remove_volume":
        rt.remove_node_volume(action.target)
    elif op == "create_object":
        assert action.swarm_object is not None and action.object_kind is not None
        rt.create_object(action.object_kind, action.swarm_object)
    elif op == "remove_object":
        assert action.object_kind is not None
        try:
            rt.remove_object(action.object_kind, action.target)
        except Conflict:
            # still used: an update that rolled back keeps the old one; a later pass removes it
            return "kept: still in use by a service"
    elif op == "create_service":
        assert action.service_config is not None
        rt.create_service(action.service_config)
    elif op == "update_service":
        assert action.service_config is not None
        version = action.version
        if version is None:
            state = rt.get_service(action.target)
            if state is None:
                raise NotFound(f"swarm: service {action.target} is gone")
            version = state.version
        rt.update_service(action.target, action.service_config, version)
    elif op == "remove_service":
        rt.remove_service(action.target)
    elif op == "wait_service":
        result = rt.wait_converged(action.target, max(0.0, deadline - time.monotonic()))
        counts = f"{result.running}/{result.desired} running"
        if result.outcome == "converged":
            return f"converged in {result.seconds:.1f}s ({counts})"
        what = {
            "rolled_back": "rolled back",
            "paused": "update paused",
            "timed_out": "not converged within the wait timeout",
            "missing": "gone",
        }[result.outcome]
        raise _WaitFailed(f"{what}: {result.message or counts}")
    else:  # a container op in a swarm plan is a bug in core.swarm
        raise AssertionError(f"swarm plans have no {op} actions")
    return None


def execution_order(actions: Sequence[Action]) -> list[Action]:
    """The plan's actions in the order to run them: every action that needs no wait first
    (so the swarm rolls every service's update at once), then the waits, then what needs a
    wait (removals after the updates converged); plan order within each group, which keeps
    each action after its dependencies. Waiting for 20 updates takes as long as the
    slowest, not their sum."""
    waiting: set[str] = set()
    early: list[Action] = []
    waits: list[Action] = []
    late: list[Action] = []
    for a in actions:
        if a.op == "wait_service":
            waits.append(a)
            waiting.add(a.id)
        elif any(d in waiting for d in a.deps):
            late.append(a)
            waiting.add(a.id)
        else:
            early.append(a)
    return [*early, *waits, *late]


class _WaitFailed(RuntimeFailure):
    """A service did not converge: the swarm's verdict, never retried."""


def execute(
    rt: ServiceRuntime,
    plan: Plan,
    settings: Settings | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    """Run the plan's actions in order (the plan lists them so that each comes after its
    dependencies); an action whose dependency failed is skipped."""
    settings = settings or Settings()
    reporter = reporter or NullReporter()
    deadline = time.monotonic() + settings.wait_timeout_s
    results: dict[str, ActionResult] = {}
    for action in execution_order(plan.actions):
        blocked = [d for d in action.deps if d in results and results[d].status != "done"]
        if blocked:
            results[action.id] = ActionResult(action, "skipped", error=f"after {blocked[0]}")
            reporter.finished(results[action.id])
            continue
        reporter.started(action)
        start = time.monotonic()

        def on_retry(n: int, exc: BaseException, delay: float, action: Action = action) -> None:
            reporter.retrying(action, n, str(exc), delay)

        # the retry loop and rule of every executor (`engine.retry`); a wait is a verdict
        retrying = Retry(
            settings.backoff,
            attempts=1 if action.op == "wait_service" else None,
            on_retry=on_retry,
        )
        try:
            note = retrying(_perform, rt, action, deadline)
        except RuntimeFailure as exc:
            result = ActionResult(
                action, "failed", time.monotonic() - start, exc.message, retrying.attempts_made
            )
        else:
            result = ActionResult(
                action,
                "done",
                time.monotonic() - start,
                attempts=retrying.attempts_made,
                note=note,
            )
        results[action.id] = result
        reporter.finished(result)
    return Outcome(tuple(results[a.id] for a in plan.actions))


def apply_swarm(
    rt: ServiceRuntime,
    desired: SwarmDesired,
    options: SwarmOptions,
    *,
    reporter: Reporter | None = None,
) -> StackResult:
    """Plan and (unless a dry run, an empty plan or one with errors) execute one stack."""
    plan = plan_swarm(rt, desired)
    if plan.errors or options.dry_run or plan.empty:
        return StackResult(desired.stack, plan)
    outcome = execute(rt, plan, Settings(wait_timeout_s=options.wait_timeout_s), reporter)
    return StackResult(desired.stack, plan, outcome)


def prepare_all_swarm(
    rt: ServiceRuntime, loaded: Loaded, *, revision: str
) -> list[SwarmDesired | Unprepared]:
    """`engine.apply.prepare_all` for a swarm: every stack's swarm objects (images pinned),
    or why it has none, before anything is touched."""
    out: list[SwarmDesired | Unprepared] = []
    for stack in loaded.stacks:
        try:
            out.append(
                desired_for_swarm(
                    rt, stack, revision=revision, environ=loaded.environments.get(stack.name)
                )
            )
        except PassError as exc:
            out.append(Unprepared(stack.name, exc))
    return out


def swarm_redactor(desired: Iterable[SwarmDesired]) -> Redactor:
    """What output must never show: the content of every secret of these stacks."""
    return Redactor(o.config.data for d in desired for o in d.objects if o.kind == "secret")


def apply_all_swarm(
    rt: ServiceRuntime,
    wanted: Sequence[SwarmDesired | Unprepared],
    options: ApplyOptions,
    *,
    lock: AbstractContextManager[Any] | None = None,
    remove: Sequence[str] = (),
    hooks: Hooks | None = None,
    into: PassResult | None = None,
) -> PassResult:
    """`engine.apply.apply_all` on a swarm: under `lock`, plan and execute each stack of
    `wanted` in order (an `Unprepared` one raises its PassError in its turn), waiting for
    each service's update within `options.wait_timeout_s`; then, unless stopped, take down
    each stack of `remove`. The swarm's own executor has no handle to cancel: a stop is
    seen between stacks."""
    hooks = hooks or Hooks()
    done = PassResult() if into is None else into
    settings = Settings(wait_timeout_s=options.wait_timeout_s)

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
            plan = plan_swarm(rt, desired)
            ctx = hooks.on_plan(plan) if hooks.on_plan is not None else None
            if plan.errors or options.dry_run or plan.empty:
                finished(StackResult(desired.stack, plan))
                continue
            with ctx or nullcontext():
                outcome = execute(rt, plan, settings, hooks.reporter(desired.stack))
            finished(StackResult(desired.stack, plan, outcome))
        for stack in remove:
            if hooks.stopping():
                return done
            if hooks.on_remove is not None:
                hooks.on_remove(stack)
            plan = plan_down_swarm(rt, stack)
            outcome = execute(rt, plan, settings, hooks.reporter(stack))
            result = StackResult(stack, plan, outcome)
            finished(result)
            if result.ok:
                done.removed.append(stack)
    return done
