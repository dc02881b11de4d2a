"""The keeper's part in restart policies: it sees a container of the root end and, when
its policy says so, starts it again after dockerd's wait, with no pyapply process running.

Who owns a restart: the keeper, for a container whose policy restarts it (the decision is
runtime/restarts.py's, asked through containers.restart_delay). While the keeper runs, the
observation shows such a container as "restarting", which a reconcile pass (`pyapply -f`,
the agent) leaves alone, as it leaves a container dockerd is restarting; a container the
policy does not restart (stopped on purpose, `no`, on-failure after a success or once it
gave up) shows as exited and is the pass's to start, if the manifests say it runs. When
no keeper runs (killed), nothing would restart it, so it shows as exited too, and the
pass's start brings the keeper back.

The restart itself is the driver's `start_by_policy` (the container's netns, endpoints and
addresses as a start by `pyapply -f` has them), which asks the policy again under the
container's driver lock and then under its own lock: a stop, a removal or a start on
purpose that came first wins, and two restarters (the keeper and `pyapply system start`)
never start one container twice. Restarts run one at a time on a thread of their own, so that
healthchecks go on meanwhile; the driver (and pyroute2 with it) is imported at the first
restart only, so a keeper that never restarts stays small.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pyapply.runtime.native.container_state import restart_delay, restart_policy

# after a restart that failed (an image layer gone, a port taken), the next try waits this
# long, doubling up to the policy's longest wait: a failing start is never a busy loop
FAILED_RETRY_S = 1.0
FAILED_RETRY_MAX_S = 60.0


class PolicyStarter(Protocol):
    def start_by_policy(self, key: str, *, boot: bool = False) -> bool: ...


class Restarter:
    """The restarts one keeper owes, found by `consider` on each scan of the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._queue: list[tuple[str, float]] = []
        self._busy: set[str] = set()
        # key -> the exit (its time) a restart was made for: a restart that found nothing
        # to do (a stop came first) is not asked again for the same exit
        self._acted: dict[str, float] = {}
        self._wake = threading.Event()
        self._failed: dict[str, tuple[float, float]] = {}  # key -> (retry at, last wait)
        self._thread: threading.Thread | None = None
        self._starter: PolicyStarter | None = None

    def consider(self, cdir: Path, doc: Mapping[str, Any]) -> bool:
        """A container of the root that is not running, with its state: queue its restart
        once the policy's wait is over. Whether one is owed (the keeper stays for it)."""
        if restart_policy(doc).name == "no" or doc.get("pending") or not doc.get("started_at"):
            return False
        try:
            exit_file = cdir / "exit"
            code = int(exit_file.read_text().strip())
            finished = exit_file.stat().st_mtime
        except (OSError, ValueError):
            return False  # no exit recorded (conmon gone with it): the pass's to repair
        delay = restart_delay(doc, code, finished)
        key = cdir.name
        if delay is None or self._acted.get(key) == finished:
            self._failed.pop(key, None)
            return False
        now = time.time()
        due = max(finished + delay, self._failed.get(key, (0.0, 0.0))[0])
        if now >= due:
            self._submit(key, finished)
        return True

    def _submit(self, key: str, finished: float) -> None:
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)
            self._queue.append((key, finished))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="restarts", daemon=True)
            self._thread.start()
        self._wake.set()

    def _work(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                item = self._queue.pop(0) if self._queue else None
                if not self._queue:
                    self._wake.clear()
            if item is None:
                continue
            key, finished = item
            try:
                self._restart(key, finished)
            finally:
                with self._lock:
                    self._busy.discard(key)

    def _restart(self, key: str, finished: float) -> None:
        try:
            if self._starter is None:
                # the driver (and pyroute2 with it): only once a container is to restart
                from pyapply.runtime.native.driver import NativeRuntime

                self._starter = NativeRuntime(self.root)
            self._starter.start_by_policy(key)
            self._acted[key] = finished
            self._failed.pop(key, None)
        except Exception:  # a keeper outlives any one container's failure: try later
            _, last = self._failed.get(key, (0.0, 0.0))
            wait = min(max(last * 2, FAILED_RETRY_S), FAILED_RETRY_MAX_S)
            self._failed[key] = (time.time() + wait, wait)
