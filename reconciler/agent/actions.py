"""What the agent's own actions leave behind: a log line and a metric for each, and the
containers it is stopping itself (`OwnStops`), whose deaths are not crashes."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from pyapply.reconciler.agent.logs import info, log
from pyapply.reconciler.core.plan import Action

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics
    from pyapply.reconciler.engine.execute import ActionResult

# actions that stop or remove a container: the runtime reports its death, which is ours
STOPPING_OPS = frozenset({"remove", "restart"})


class OwnStops:
    """The containers the agent itself is stopping or removing (and did until `grace_s`
    ago), so that their death events do not count as crashes nor cause another pass."""

    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._ended: dict[str, float] = {}

    def begin(self, name: str) -> None:
        with self._lock:
            self._active[name] = self._active.get(name, 0) + 1

    def end(self, name: str) -> None:
        with self._lock:
            left = self._active.get(name, 0) - 1
            if left > 0:
                self._active[name] = left
            else:
                self._active.pop(name, None)
            self._ended[name] = time.monotonic()

    def __call__(self, name: str) -> bool:
        with self._lock:
            if name in self._active:
                return True
            ended = self._ended.get(name)
            if ended is None:
                return False
            if time.monotonic() - ended > self.grace_s:
                del self._ended[name]
                return False
            return True


class Reporter:
    """Logs each action and counts it for the metrics."""

    def __init__(self, metrics: Metrics | None, own: OwnStops | None = None) -> None:
        self.metrics = metrics
        self.own = own

    def started(self, action: Action) -> None:
        if self.own is not None and action.op in STOPPING_OPS:
            self.own.begin(action.target)
        info(
            f"{action.op} {action.target}: {action.reason}", action=action.op, target=action.target
        )

    def retrying(self, action: Action, attempt: int, error: str, delay: float) -> None:
        log.warning(
            "%s %s: attempt %d failed (%s); retrying in %.1fs",
            action.op,
            action.target,
            attempt,
            error,
            delay,
        )

    def finished(self, result: ActionResult) -> None:
        if self.own is not None and result.action.op in STOPPING_OPS:
            self.own.end(result.action.target)
        if self.metrics is not None:
            self.metrics.action(result.action.op, result.status)
        if result.status != "done":
            log.warning(
                "%s %s: %s (%s)",
                result.action.op,
                result.action.target,
                result.status,
                result.error,
            )
