"""engine.retry: the one retry loop both executors use -- which failures are tried again,
how many times, how long between tries -- and both executors going through it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from pyapply.reconciler.core.plan import Action, Plan
from pyapply.reconciler.engine import execute as execute_mod
from pyapply.reconciler.engine import swarm as swarm_engine
from pyapply.reconciler.engine.execute import ActionResult, Executor, Settings
from pyapply.reconciler.engine.retry import Backoff, Retry, is_retryable
from pyapply.runtime.base import (
    Conflict,
    NotFound,
    PermanentError,
    Stuck,
    TransientError,
    Unavailable,
)
from pyapply.runtime.services import ConvergeResult


def failing(*errors: BaseException, result: str = "ok") -> Callable[[], str]:
    """A call that raises each of `errors` in turn, then returns `result`."""
    pending: Iterator[BaseException] = iter(errors)

    def call() -> str:
        for exc in pending:
            raise exc
        return result

    return call


def backoff(sleeps: list[float], attempts: int = 5) -> Backoff:
    return Backoff(attempts=attempts, initial_s=0.5, max_s=2.0, sleep=sleeps.append)


# ---------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
    "exc, expected",
    [
        (TransientError("busy"), True),
        (Unavailable("daemon restarting"), True),
        (PermanentError("bad image name"), False),
        (NotFound("gone"), False),
        (Conflict("name taken"), False),
        (Stuck("stale task"), False),
        (OSError("disk full"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_the_runtimes_transient_failures_are_retryable(
    exc: BaseException, expected: bool
) -> None:
    assert is_retryable(exc) is expected


# ---------------------------------------------------------------------------------------------
# The loop


def test_transient_failures_are_tried_again_with_growing_bounded_waits() -> None:
    sleeps: list[float] = []
    heard: list[tuple[int, str, float]] = []
    loop = Retry(backoff(sleeps), on_retry=lambda n, e, d: heard.append((n, str(e), d)))
    call = failing(TransientError("a"), TransientError("b"), TransientError("c"))
    assert loop(call) == "ok"
    assert loop.attempts_made == 4
    assert [n for n, _, _ in heard] == [1, 2, 3]
    assert [e for _, e, _ in heard] == ["a", "b", "c"]
    assert sleeps == [d for _, _, d in heard]
    # exponential from 0.5 s with up to 1 s of jitter, never above the 2 s cap
    assert 0.5 <= sleeps[0] <= 1.5
    assert 1.0 <= sleeps[1] <= 2.0
    assert sleeps[2] == 2.0
    assert all(s <= 2.0 for s in sleeps)


def test_the_attempts_are_bounded_and_the_last_failure_is_raised() -> None:
    sleeps: list[float] = []
    loop = Retry(backoff(sleeps, attempts=3))
    errors = [TransientError(f"try {i}") for i in range(1, 6)]
    with pytest.raises(TransientError, match="try 3"):
        loop(failing(*errors))
    assert loop.attempts_made == 3
    assert len(sleeps) == 2


def test_a_permanent_failure_fails_at_once() -> None:
    sleeps: list[float] = []
    loop = Retry(backoff(sleeps))
    with pytest.raises(PermanentError, match="bad"):
        loop(failing(TransientError("busy"), PermanentError("bad")))
    assert loop.attempts_made == 2
    assert len(sleeps) == 1


def test_one_attempt_never_retries_nor_sleeps() -> None:
    sleeps: list[float] = []
    loop = Retry(backoff(sleeps), attempts=1)
    with pytest.raises(TransientError):
        loop(failing(TransientError("busy")))
    assert loop.attempts_made == 1
    assert sleeps == []


def test_a_caller_may_widen_the_rule_for_one_action() -> None:
    sleeps: list[float] = []
    loop = Retry(backoff(sleeps), also=lambda e: isinstance(e, Stuck))
    assert loop(failing(Stuck("stale"), TransientError("busy"), result="up")) == "up"
    assert loop.attempts_made == 3
    narrow = Retry(backoff([]))
    with pytest.raises(Stuck):
        narrow(failing(Stuck("stale")))


def test_arguments_are_passed_through() -> None:
    loop = Retry(backoff([]))
    assert loop(lambda a, b=0: a + b, 2, b=3) == 5
    assert loop.attempts_made == 1


# ---------------------------------------------------------------------------------------------
# Both executors use it


class FlakyRuntime:
    """Just enough of a runtime for one action of each executor: fails `fails` times with a
    transient error, then succeeds."""

    name = "flaky"

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise TransientError(f"busy {self.calls}")

    def remove_network(self, name: str) -> None:  # engine.execute's remove_network
        self._call()

    def remove_overlay_network(self, name: str) -> None:  # engine.swarm's remove_overlay
        self._call()

    def wait_converged(self, name: str, timeout_s: float) -> ConvergeResult:
        self._call()
        return ConvergeResult(name, "converged", "", 0.0, 1, 1)


def settings(sleeps: list[float], attempts: int = 4) -> Settings:
    return Settings(
        attempts=attempts, backoff_initial_s=0.5, backoff_max_s=2.0, sleep=sleeps.append
    )


def the_one(results: tuple[ActionResult, ...]) -> ActionResult:
    [result] = results
    return result


def test_the_host_executor_retries_through_the_shared_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Mapping[str, Any]] = []
    real = execute_mod.Retry

    def spy(*args: Any, **kwargs: Any) -> Retry:
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(execute_mod, "Retry", spy)
    sleeps: list[float] = []
    rt = FlakyRuntime(fails=2)
    plan = Plan("s", "r", (), (Action("net:x:remove", "remove_network", "x", "test"),))
    result = the_one(Executor(rt, settings(sleeps)).run(plan).results)  # type: ignore[arg-type]
    assert (result.status, result.attempts, rt.calls) == ("done", 3, 3)
    assert len(made) == 1 and len(sleeps) == 2
    rt = FlakyRuntime(fails=9)
    result = the_one(Executor(rt, settings([])).run(plan).results)  # type: ignore[arg-type]
    assert (result.status, result.attempts) == ("failed", 4)
    assert result.error == "busy 4"


def test_the_swarm_executor_retries_through_the_shared_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Mapping[str, Any]] = []
    real = swarm_engine.Retry

    def spy(*args: Any, **kwargs: Any) -> Retry:
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(swarm_engine, "Retry", spy)
    sleeps: list[float] = []
    rt = FlakyRuntime(fails=2)
    plan = Plan("s", "r", (), (Action("network:x:remove", "remove_overlay", "x", "test"),))
    result = the_one(swarm_engine.execute(rt, plan, settings(sleeps)).results)  # type: ignore[arg-type]
    assert (result.status, result.attempts, rt.calls) == ("done", 3, 3)
    assert len(made) == 1 and len(sleeps) == 2
    rt = FlakyRuntime(fails=9)
    result = the_one(swarm_engine.execute(rt, plan, settings([])).results)  # type: ignore[arg-type]
    assert (result.status, result.attempts) == ("failed", 4)


def test_a_swarm_wait_is_a_verdict_never_retried() -> None:
    sleeps: list[float] = []
    rt = FlakyRuntime(fails=1)
    plan = Plan("s", "r", (), (Action("service:x:wait", "wait_service", "x", "test"),))
    result = the_one(swarm_engine.execute(rt, plan, settings(sleeps)).results)  # type: ignore[arg-type]
    assert (result.status, result.attempts, rt.calls) == ("failed", 1, 1)
    assert sleeps == []
