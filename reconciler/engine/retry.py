"""The one retry loop of every executor: what is worth trying again, and how long to wait.

Both executors -- the DAG executor of one host (`engine.execute`) and the swarm's
(`engine.swarm`) -- run each action through `Retry`, so that the two can never disagree on
which failures are transient or on the back-off between tries. The rule: a `RuntimeFailure`
that says it is retryable (`TransientError`, `Unavailable`: a daemon busy or restarting, a
timeout, a 5xx) is tried again, up to `attempts` tries in all, after an exponentially
growing, jittered delay (`initial_s`, doubling, at most `max_s`); anything else fails at
once. A caller may widen the rule for one action (`also`), as the executor does for a
container start that fails on stale state.

tenacity does the looping; it is imported on the first retry loop that runs, so a pass that
has nothing to do never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import msgspec

from pyapply.runtime.base import RuntimeFailure, Uncompared

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = ["Backoff", "Retry", "is_retryable"]

P = ParamSpec("P")
T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Whether a failure may go away by itself: the runtime's own verdict (`retryable`),
    decided once in the runtime's error taxonomy (`runtime.base`)."""
    return isinstance(exc, RuntimeFailure) and exc.retryable


class Backoff(Uncompared, msgspec.Struct, frozen=True):
    """How many tries, and the waits between them (`sleep` is replaceable for tests)."""

    __uncompared__ = frozenset({"sleep"})
    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 8.0
    sleep: Callable[[float], None] = time.sleep


# (attempt that failed, its error, the delay before the next one)
OnRetry = Callable[[int, BaseException, float], None]


class Retry:
    """One action's retry loop. `attempts` overrides the back-off's count (1: never retry,
    as for a wait whose outcome is a verdict); `also` makes more failures retryable;
    `on_retry` hears of each failed try that will be tried again. After a call,
    `attempts_made` says how many tries it took (also when it raised)."""

    def __init__(
        self,
        backoff: Backoff,
        *,
        attempts: int | None = None,
        also: Callable[[BaseException], bool] | None = None,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.backoff = backoff
        self.attempts = max(1, backoff.attempts if attempts is None else attempts)
        self._also = also
        self._on_retry = on_retry
        self.attempts_made = 0

    def retryable(self, exc: BaseException) -> bool:
        return is_retryable(exc) or (self._also is not None and self._also(exc))

    def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)`, tried again while it fails retryably; the last failure
        is raised as it is."""
        self.attempts_made = 0
        if self.attempts == 1:  # no loop to build
            self.attempts_made = 1
            return fn(*args, **kwargs)
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            if self._on_retry is not None and exc is not None:
                self._on_retry(state.attempt_number, exc, delay)

        retrying = Retrying(
            retry=retry_if_exception(self.retryable),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(multiplier=self.backoff.initial_s, max=self.backoff.max_s),
            sleep=self.backoff.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(fn, *args, **kwargs)
        finally:
            self.attempts_made = int(retrying.statistics.get("attempt_number", 1))
