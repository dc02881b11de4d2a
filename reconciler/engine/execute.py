"""Run a plan's DAG against a runtime: bounded parallelism, retries, progress events.

Every action is idempotent (the runtime's create/remove calls are), so a pass interrupted at
any point is finished by the next one. Transient runtime errors are retried with exponential
back-off and jitter (`engine.retry`, the loop the swarm's executor shares); permanent ones fail
the action at once, and the actions that depend on it are skipped. The outcome is a value, not an exception.

One escalation, decided here and nowhere else: a container's start that fails because the
runtime holds stale state of it (`Stuck`: a port a leaked proxy holds, a task a killed
daemon left) is tried `stuck_attempts` times, then the container is removed and made
again from the action's config -- once -- and the result says so and why.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from pyapply.reconciler.core.plan import Action, Plan
from pyapply.reconciler.engine.retry import Backoff, Retry
from pyapply.runtime.base import (
    BuildEvent,
    BuildFailed,
    ContainerState,
    NotFound,
    Runtime,
    RuntimeFailure,
    Stuck,
)
from pyapply.runtime.statefs import atomic_write, private_dir

if TYPE_CHECKING:
    from concurrent.futures import Future

Status = Literal["done", "failed", "skipped"]


class ActionResult(msgspec.Struct, frozen=True):
    action: Action
    status: Status
    seconds: float = 0.0
    error: str | None = None
    attempts: int = 1
    note: str | None = None  # what was done beyond the action itself (an escalation)


class Outcome(msgspec.Struct, frozen=True):
    results: tuple[ActionResult, ...] = ()

    @property
    def ok(self) -> bool:
        return all(r.status == "done" for r in self.results)

    @property
    def failed(self) -> tuple[ActionResult, ...]:
        return tuple(r for r in self.results if r.status == "failed")

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)


class Reporter(Protocol):
    def started(self, action: Action) -> None: ...
    def retrying(self, action: Action, attempt: int, error: str, delay: float) -> None: ...
    def finished(self, result: ActionResult) -> None: ...


class NullReporter:
    def started(self, action: Action) -> None:
        pass

    def retrying(self, action: Action, attempt: int, error: str, delay: float) -> None:
        pass

    def finished(self, result: ActionResult) -> None:
        pass


class WaitFailed(RuntimeFailure):
    """A dependency condition was not met (unhealthy, failed, or timed out)."""


class Settings(msgspec.Struct):
    parallelism: int = 8
    attempts: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    wait_timeout_s: float = 120.0
    poll_s: float = 0.25
    # tries of a start that fails on stale runtime state before the container is recreated
    # (at most `attempts` tries in all, the recreated container's included)
    stuck_attempts: int = 3
    sleep: Callable[[float], None] = time.sleep
    # the progress of a build action: (the image being built, an event of its build)
    on_build: Callable[[str, BuildEvent], None] | None = None

    @property
    def backoff(self) -> Backoff:
        """The retry loop's tries and waits (`engine.retry`)."""
        return Backoff(self.attempts, self.backoff_initial_s, self.backoff_max_s, self.sleep)


_STARTS = ("create", "start", "restart")  # the ops that start a container


class _Escalation(msgspec.Struct):
    """A start's failures on stale state, and whether the container was recreated."""

    failures: list[str] = msgspec.field(default_factory=list)
    recreated: bool = False
    said: str | None = None  # what else the action has to say (a build that was pulled)

    def note(self) -> str | None:
        if not self.recreated:
            return self.said
        return (
            f"recreated: start failed {len(self.failures)} times on state the runtime "
            f"kept ({self.failures[-1]})"
        )


class Executor:
    def __init__(
        self, runtime: Runtime, settings: Settings | None = None, reporter: Reporter | None = None
    ) -> None:
        self.runtime = runtime
        self.settings = settings or Settings()
        self.reporter: Reporter = reporter or NullReporter()
        self._stop = threading.Event()

    def cancel(self) -> None:
        """Stop starting new actions; those running finish."""
        self._stop.set()

    # -- the DAG -------------------------------------------------------------------------

    def run(self, plan: Plan) -> Outcome:
        # imported here: a pass with nothing to do never runs the pool
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        actions = {a.id: a for a in plan.actions}
        pending = dict(actions)
        results: dict[str, ActionResult] = {}
        running: dict[Future[ActionResult], str] = {}
        workers = max(1, self.settings.parallelism)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyapply") as pool:
            while pending or running:
                for aid, action in list(pending.items()):
                    if len(running) >= workers:
                        break
                    dep_results = [results.get(d) for d in action.deps if d in actions]
                    if any(r is not None and r.status != "done" for r in dep_results):
                        failed = next(
                            d for d in action.deps if d in results and results[d].status != "done"
                        )
                        res = ActionResult(action, "skipped", error=f"{failed} did not succeed")
                        results[aid] = res
                        del pending[aid]
                        self.reporter.finished(res)
                        continue
                    if any(r is None for r in dep_results):
                        continue
                    if self._stop.is_set():
                        res = ActionResult(action, "skipped", error="cancelled")
                        results[aid] = res
                        del pending[aid]
                        self.reporter.finished(res)
                        continue
                    del pending[aid]
                    running[pool.submit(self._run_one, action)] = aid
                if not running:
                    if pending:  # nothing runnable: a cycle (never produced by plan.build)
                        for aid, action in pending.items():
                            results[aid] = ActionResult(action, "skipped", error="dependency cycle")
                        pending.clear()
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    aid = running.pop(fut)
                    results[aid] = fut.result()
                    self.reporter.finished(results[aid])
        return Outcome(tuple(results[a.id] for a in plan.actions if a.id in results))

    def _run_one(self, action: Action) -> ActionResult:
        start = time.monotonic()
        if action.delay_s:
            self.settings.sleep(action.delay_s)
        self.reporter.started(action)
        attempts = 1 if action.op == "wait" else self.settings.attempts
        escalation = _Escalation()

        retrying = Retry(
            self.settings.backoff,
            attempts=attempts,
            # a stuck start is tried again (bounded): `_start` recreates at the last try
            also=lambda exc: isinstance(exc, Stuck) and action.op in _STARTS,
            on_retry=lambda n, exc, delay: self.reporter.retrying(action, n, str(exc), delay),
        )
        try:
            retrying(self._perform, action, escalation)
        except RuntimeFailure as exc:
            n = retrying.attempts_made
            error = failure_text(exc)
            if escalation.recreated:
                error = f"{error} (even after it was {escalation.note()})"
            elif escalation.failures:
                error = f"{error} (start failed {len(escalation.failures)} times)"
            return ActionResult(
                action, "failed", time.monotonic() - start, error, n, escalation.note()
            )
        except OSError as exc:  # writing a config/secret file
            return ActionResult(action, "failed", time.monotonic() - start, str(exc))
        n = retrying.attempts_made
        return ActionResult(
            action, "done", time.monotonic() - start, attempts=n, note=escalation.note()
        )

    # -- one action ----------------------------------------------------------------------

    def _perform(self, action: Action, escalation: _Escalation | None = None) -> None:
        rt = self.runtime
        escalation = escalation or _Escalation()
        op = action.op
        if op == "pull":
            rt.pull_image(action.target)
        elif op == "build":
            assert action.build is not None
            if action.pull_first:
                # `build:` with `image:` and no pull_policy: the registry's image if it has
                # one, as compose does; any failure of the pull (not found, no registry
                # reachable) falls back to the build
                try:
                    rt.pull_image(action.target)
                except RuntimeFailure as exc:
                    escalation.said = f"the pull failed first: {exc.message}"
                else:
                    escalation.said = "pulled from its registry, not built"
                    return
            on_build = self.settings.on_build
            target = action.target
            rt.build_image(
                action.build,
                None if on_build is None else (lambda event: on_build(target, event)),
            )
        elif op == "write_file":
            assert action.file is not None
            f = action.file
            write_file_atomic(f.path, f.content, f.mode, owner=(f.uid, f.gid))
        elif op in ("create_network", "repair_network"):
            # creating an existing network makes sure of its kernel side: that is the repair
            assert action.network is not None
            rt.create_network(action.network)
        elif op == "remove_network":
            rt.remove_network(action.target)
        elif op == "create_volume":
            assert action.volume is not None
            rt.create_volume(action.volume)
        elif op == "remove_volume":
            rt.remove_volume(action.target)
        elif op == "create":
            assert action.container is not None
            rt.create_container(action.container)
            self._start(action, escalation)
        elif op == "start":
            self._start(action, escalation)
        elif op == "repair":
            # starting a running container repairs its faults in place (Runtime protocol)
            rt.start_container(action.target)
        elif op == "restart":
            self._stop_quietly(action.target)
            self._start(action, escalation)
        elif op == "remove":
            self._stop_quietly(action.target)
            rt.remove_container(action.target)
        elif op == "rename":
            assert action.new_name is not None
            if rt.get_container(action.target) is None and rt.get_container(action.new_name):
                return  # already renamed by an earlier, interrupted pass
            rt.rename_container(action.target, action.new_name)
        elif op == "wait":
            self._wait(action)
        else:  # pragma: no cover - exhaustive over Op
            raise AssertionError(op)

    def _start(self, action: Action, escalation: _Escalation) -> None:
        """Start the action's container; at the `stuck_attempts`-th start failing on stale
        runtime state, remove it and make it again from the action's config (once)."""
        rt = self.runtime
        if (
            escalation.recreated
            and action.container is not None
            and rt.get_container(action.target) is None
        ):
            rt.create_container(action.container)  # an earlier try removed it, then failed
        try:
            rt.start_container(action.target)
        except Stuck as exc:
            escalation.failures.append(exc.message)
            if (
                escalation.recreated
                or action.container is None
                or len(escalation.failures) < self.settings.stuck_attempts
            ):
                raise
        else:
            return
        self._stop_quietly(action.target)
        rt.remove_container(action.target)
        escalation.recreated = True
        rt.create_container(action.container)
        rt.start_container(action.target)

    def _stop_quietly(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.runtime.stop_container(name, None)

    def _wait(self, action: Action) -> None:
        deadline = time.monotonic() + self.settings.wait_timeout_s
        cond = action.condition
        last: dict[str, ContainerState | None] = {}
        while True:
            ready = True
            for name in action.replicas:
                state = self.runtime.get_container(name)
                last[name] = state
                problem = _condition_problem(cond, name, state)
                if problem == "":
                    continue
                ready = False
                if problem is not None:
                    raise WaitFailed(f"service {action.service}: {problem}")
            if ready:
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{n}: {_describe(s)}" for n, s in sorted(last.items()))
                what = {
                    "service_healthy": "become healthy",
                    "service_completed_successfully": "complete",
                    "service_started": "start",
                }[cond or "service_started"]
                raise WaitFailed(
                    f"service {action.service} did not {what} within "
                    f"{self.settings.wait_timeout_s:g}s ({states})"
                )
            self.settings.sleep(self.settings.poll_s)


def failure_text(exc: RuntimeFailure) -> str:
    """An action's error for the user: the runtime's message, and for a failed build the
    step, its exit code and the last lines it printed (what a person needs to fix it)."""
    if not isinstance(exc, BuildFailed):
        return exc.message
    text = exc.message
    if exc.step and exc.step not in text:
        text += f" (step: {exc.step})"
    if exc.exit_code is not None and str(exc.exit_code) not in text:
        text += f" (exit code {exc.exit_code})"
    if exc.tail:
        text += "\n" + "\n".join(f"  | {line}" for line in exc.tail)
    return text


def _describe(state: ContainerState | None) -> str:
    if state is None:
        return "missing"
    if state.health:
        return f"{state.status}, {state.health}"
    if state.status == "exited":
        return f"exited with code {state.exit_code}"
    return state.status


def _condition_problem(cond: str | None, name: str, state: ContainerState | None) -> str | None:
    """ "" when the condition holds, None when not yet, else why it never will."""
    if state is None:
        return None
    if cond == "service_completed_successfully":
        if state.status == "exited":
            if state.exit_code == 0:
                return ""
            return f"{name} exited with code {state.exit_code}"
        return None
    if cond == "service_healthy":
        if state.health == "healthy" and state.running:
            return ""
        if state.health is None and state.running:
            return f"{name} has no healthcheck, so it can never be healthy"
        if state.status in ("exited", "dead"):
            return f"{name} {_describe(state)} while waiting for it to become healthy"
        return None
    return "" if state.running else None


def write_file_atomic(
    path: str, content: bytes, mode: int, *, owner: tuple[int | None, int | None] = (None, None)
) -> None:
    """Write a config's or a secret's file under `<root>/files/<stack>` (0700 directories):
    born 0600, given its owner and `mode` (what the container is to see through the bind
    mount, e.g. 0400 for a secret, 0444 for a config) before it takes its name
    (statefs.atomic_write)."""
    private_dir(os.path.dirname(path))
    atomic_write(path, content, mode, owner=owner)
