"""Why a pass runs: the coalescing set of triggers the watchers and the API put reasons
into and the agent's main loop takes from, one pass at a time."""

from __future__ import annotations

import threading
import time

# Triggers that ask for a pass even when the revision was already attempted.
FORCING = frozenset({"resync", "event", "api", "rollback", "resume", "start", "webhook"})


class Triggers:
    """A coalescing set of pending reasons, plus pass counters for "wait until done"."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._closed = False
        self.started = 0  # passes that took their triggers
        self.completed = 0

    def put(self, reason: str) -> int:
        """Queue a reason; returns the number of the pass that will cover it."""
        with self._cond:
            if self._closed:
                return -1
            self._pending.add(reason)
            self._cond.notify_all()
            return self.started + 1

    def take(self, timeout: float) -> set[str]:
        """Wait up to `timeout` for reasons; take them all (empty on timeout or close)."""
        with self._cond:
            if not self._pending and not self._closed:
                self._cond.wait(max(0.0, timeout))
            if self._closed:
                return set()
            taken, self._pending = self._pending, set()
            if taken:
                self.started += 1
            return taken

    def done(self) -> None:
        with self._cond:
            self.completed += 1
            self._cond.notify_all()

    def wait_for(self, ticket: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.completed < ticket and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.completed >= ticket

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Changes:
    """A counter of what the dashboard shows changing: bumped when a pass ends and when a
    container of a managed stack changes state (the runtime events the agent follows).
    Live pages wait on it (`wait`) and fetch their view again when it moved. It also counts
    the deaths of each container that the agent did not cause (the restarts a page shows)."""

    MAX_NAMES = 10_000  # deaths are remembered for at most this many containers

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0
        self._closed = False
        self.deaths: dict[str, int] = {}

    def bump(self) -> None:
        with self._cond:
            self.seq += 1
            self._cond.notify_all()

    def container_event(self, name: str, action: str) -> None:
        counted = name in self.deaths or len(self.deaths) < self.MAX_NAMES
        with self._cond:
            if action == "die" and counted:
                self.deaths[name] = self.deaths.get(name, 0) + 1
            self.seq += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """The counter once it differs from `seen`, or after `timeout` (or on close)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.seq == seen and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.seq

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
