"""The agent's view of its history: a record that a pass never depends on.

`AgentHistory` wraps `history.History`: a damaged database is moved aside and started
afresh, a record that cannot be written is reported and skipped, and the agent's small
state (pin, managed stacks) is also kept in memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pyapply.reconciler.agent.history import (
    KEEP_PASSES,
    History,
    HistoryError,
    Outcome,
    PassRecord,
    Reset,
)

T = TypeVar("T")


class AgentHistory(History):
    """The agent's record, which a pass never depends on.

    A damaged database is moved aside and started afresh (`on_reset`), and the statement
    tried again on the new one. A record that cannot be written (read-only, disk full, an
    I/O error) is reported to `on_failure` and skipped: the pass goes on unrecorded. The
    agent's small state (pin, managed stacks) is kept in memory too, and read from there
    when the database cannot be read. Reads of the record itself (passes, revisions) still
    raise HistoryError: there is no answer to give without it.
    """

    def __init__(
        self,
        root: str,
        *,
        on_reset: Callable[[Reset], None] | None = None,
        on_failure: Callable[[str, HistoryError], None] | None = None,
    ) -> None:
        self._cache: dict[str, Any] = {}
        self.on_failure = on_failure
        try:
            super().__init__(root, repair=True, on_reset=on_reset)
        except HistoryError as exc:
            # the agent starts without a record rather than not at all; every later use
            # tries again (and says so)
            self._failed("open", exc)
            self._ready = False
        else:
            self._ready = True

    def _failed(self, what: str, exc: HistoryError) -> None:
        if self.on_failure is not None:
            self.on_failure(what, exc)

    def _try(self, fn: Callable[[], T]) -> T:
        """Run `fn`; once more when a damaged database was moved aside meanwhile."""
        if not self._ready:
            with self._lock:
                try:
                    self._open(thorough=True)
                    self._ready = True
                except (OSError, sqlite3.Error) as exc:
                    raise HistoryError(f"history {self.path}: {exc}") from exc
        try:
            return fn()
        except HistoryError as exc:
            if not exc.mended:
                raise
        # the new database starts with what this process knew: which stacks it manages
        # (their events count) and the pin
        for key, value in self._cache.items():
            super().set_state(key, value)
        return fn()

    def _tolerate(self, what: str, fn: Callable[[], T], fallback: T) -> T:
        try:
            return self._try(fn)
        except HistoryError as exc:
            self._failed(what, exc)
            return fallback

    # writes: skipped, with a report, when they cannot be made

    def begin(self, revision: str, subject: str, trigger: str, started: float | None = None) -> int:
        """The pass's id, or -1 when it could not be recorded."""
        return self._tolerate(
            "record a pass",
            lambda: super(AgentHistory, self).begin(revision, subject, trigger, started),
            -1,
        )

    def finish(
        self,
        pass_id: int,
        outcome: Outcome,
        summary: Mapping[str, Any] | None = None,
        errors: list[str] | tuple[str, ...] = (),
    ) -> None:
        if pass_id < 0:
            return
        self._tolerate(
            "record a pass's end",
            lambda: super(AgentHistory, self).finish(pass_id, outcome, summary, errors),
            None,
        )

    def close_running(self) -> int:
        return self._tolerate("close passes", super().close_running, 0)

    def prune(self, keep: int = KEEP_PASSES) -> int:
        return self._tolerate("prune", lambda: super(AgentHistory, self).prune(keep), 0)

    def store_revision(
        self, revision: str, subject: str, source: str, files: Mapping[str, bytes]
    ) -> None:
        self._tolerate(
            "store a revision",
            lambda: super(AgentHistory, self).store_revision(revision, subject, source, files),
            None,
        )

    def set_state(self, key: str, value: Any) -> None:
        self._cache[key] = value
        self._tolerate(
            "record state", lambda: super(AgentHistory, self).set_state(key, value), None
        )

    # reads

    def get_state(self, key: str) -> Any:
        try:
            value = self._try(lambda: super(AgentHistory, self).get_state(key))
        except HistoryError as exc:
            self._failed("read state", exc)
            return self._cache.get(key)
        self._cache[key] = value
        return value

    def passes(self, limit: int = 50, revision: str | None = None) -> list[PassRecord]:
        return self._try(lambda: super(AgentHistory, self).passes(limit, revision))

    def get(self, pass_id: int) -> PassRecord | None:
        return self._try(lambda: super(AgentHistory, self).get(pass_id))

    def succeeded(self, revision: str) -> bool:
        return self._try(lambda: super(AgentHistory, self).succeeded(revision))

    def mark_rolled_back(self, revision: str, reason: str) -> int | None:
        return self._tolerate(
            "mark a pass rolled back",
            lambda: super(AgentHistory, self).mark_rolled_back(revision, reason),
            None,
        )

    def resolve(self, revision: str) -> str:
        return self._try(lambda: super(AgentHistory, self).resolve(revision))

    def revision_files(self, revision: str) -> tuple[str, str, dict[str, bytes]]:
        return self._try(lambda: super(AgentHistory, self).revision_files(revision))
