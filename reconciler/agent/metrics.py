"""Prometheus metrics of the watch agent (`pyapply watch --metrics 127.0.0.1:9464`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

if TYPE_CHECKING:
    from pyapply.reconciler.engine.reconcile import StackResult


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "pyapply_reconcile_passes",
            "Reconcile passes, by trigger kind and outcome.",
            ["trigger", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "pyapply_reconcile_duration_seconds",
            "Duration of reconcile passes.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.errors = Counter(
            "pyapply_reconcile_errors",
            "Errors: failed actions, plan errors, revisions that failed to load or were refused.",
            ["kind"],
            registry=r,
        )
        self.drifted = Gauge(
            "pyapply_objects_drifted",
            "Objects that differed from the desired state at the start of the last pass.",
            ["stack"],
            registry=r,
        )
        self.actions = Counter(
            "pyapply_actions",
            "Actions executed, by kind (op) and status.",
            ["kind", "status"],
            registry=r,
        )
        self.last_applied = Gauge(
            "pyapply_last_applied_revision_timestamp_seconds",
            "When a revision was last applied successfully (Unix time).",
            registry=r,
        )
        self.revision = Gauge(
            "pyapply_applied_revision_info",
            "The revision applied last (value 1, revision as a label).",
            ["revision"],
            registry=r,
        )
        self.history_resets = Counter(
            "pyapply_history_resets",
            "Damaged history databases moved aside and started afresh, by database.",
            ["database"],
            registry=r,
        )
        self.history_failures = Counter(
            "pyapply_history_failures",
            "Records the agent could not read or write (read-only, full, I/O error), by what.",
            ["what"],
            registry=r,
        )
        self.git_fetch_duration = Histogram(
            "pyapply_git_fetch_duration_seconds",
            "Duration of the git source's fetches (fetch, checkout and switch).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.git_fetch_failures = Counter(
            "pyapply_git_fetch_failures",
            "Failed fetches of the git source, by kind (auth, network, ref, timeout, other).",
            ["reason"],
            registry=r,
        )
        self.webhook_requests = Counter(
            "pyapply_webhook_requests",
            "Push webhook requests, by outcome (triggered, ignored, unauthorized, too_large, ...).",
            ["outcome"],
            registry=r,
        )
        self.notifications = Counter(
            "pyapply_notifications",
            "Notifications, by outcome (sent, failed after every attempt, dropped when the "
            "queue was full).",
            ["outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "pyapply_rollbacks",
            "Rollbacks, by kind: manual (`pyapply rollback`) or auto (--progress-deadline).",
            ["kind"],
            registry=r,
        )
        self._revision: str | None = None

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def action(self, op: str, status: str) -> None:
        self.actions.labels(op, status).inc()

    def git_fetch(self, seconds: float, failure: str | None) -> None:
        self.git_fetch_duration.observe(seconds)
        if failure is not None:
            self.git_fetch_failures.labels(failure).inc()

    def webhook(self, outcome: str) -> None:
        self.webhook_requests.labels(outcome).inc()

    def notification(self, outcome: str) -> None:
        self.notifications.labels(outcome).inc()

    def rollback(self, kind: str) -> None:
        self.rollbacks.labels(kind).inc()

    def history_reset(self, database: str) -> None:
        self.history_resets.labels(database).inc()

    def history_failure(self, what: str) -> None:
        self.history_failures.labels(what).inc()

    def rejected(self, outcome: str) -> None:
        self.passes.labels("file", outcome).inc()
        self.errors.labels("load" if outcome == "failed" else "refused").inc()

    def passed(
        self,
        trigger: str,
        outcome: str,
        seconds: float,
        results: Sequence[StackResult],
        revision: str,
        errors: Sequence[str],
    ) -> None:
        kinds = sorted({t.split(":")[0] for t in trigger.split(",")})
        self.passes.labels("+".join(kinds), outcome).inc()
        self.duration.observe(seconds)
        for r in results:
            self.drifted.labels(r.stack).set(len(r.plan.changes))
        if errors:
            self.errors.labels("apply").inc(len(errors))
        if outcome == "succeeded":
            self.last_applied.set(time.time())
            if revision != self._revision:
                if self._revision is not None:
                    self.revision.remove(self._revision)
                self.revision.labels(revision).set(1)
                self._revision = revision
