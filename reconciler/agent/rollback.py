"""Automatic rollback (`watch --progress-deadline S`): when a revision counts as bad, and
what the agent does then. Pure: the agent feeds in what happened and acts on the answer.

A new revision from the source (not a pinned one) is on probation once it has been applied:
it passes when every stack is Healthy (`reconciler.core.health`), and it is bad when its
apply failed, or when some stack is still not Healthy `S` seconds after the apply. A bad
revision is rolled back to the last revision that passed: that one is pinned with the
reason `auto` (a manual `pyapply rollback` pins with `manual`), and the bad revision is
never applied again -- a resync or a file event keeps applying the pinned one. The auto
pin is lifted as soon as the source shows a revision that was never rolled back (a newer
commit); a manual pin only by `pyapply resume`.

A revision that does not load (or is refused) is not applied at all, so there is nothing
to roll back: the running state is the last good one already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

PinReason = Literal["manual", "auto"]
PIN_REASONS: tuple[PinReason, ...] = ("manual", "auto")
KEEP_ROLLED_BACK = 50  # rolled-back revisions remembered (never applied again)
# how often a revision on probation has its health looked at, at most and at least
CHECK_MAX_S = 2.0
CHECK_MIN_S = 0.2


class Probation(msgspec.Struct, frozen=True):
    """A revision applied and not yet known to be healthy."""

    revision: str
    applied_at: float  # Unix time of the apply
    deadline: float  # Unix time by which every stack must be Healthy

    def to_json(self) -> dict[str, object]:
        return {"revision": self.revision, "applied": self.applied_at, "deadline": self.deadline}


class Verdict(msgspec.Struct, frozen=True):
    """What to do: `wait` (keep the probation), `healthy` (it passed), `rollback` (it is
    bad, for `reason`), or `none` (nothing to watch)."""

    action: Literal["none", "wait", "healthy", "rollback"]
    reason: str = ""


NOTHING = Verdict("none")


def after_pass(
    *,
    deadline_s: float | None,
    pinned: bool,
    new_revision: bool,
    outcome: str,
    errors: Iterable[str],
) -> Verdict:
    """A pass applied a revision: is it bad already (its apply failed), or on probation?
    Only a new revision from the source is judged; a pinned one (a rollback) or another
    pass of the same revision (self-healing) is not."""
    if deadline_s is None or pinned or not new_revision:
        return NOTHING
    if outcome == "failed":
        listed = list(errors)
        return Verdict("rollback", "apply failed: " + ("; ".join(listed[:3]) or "no detail"))
    if outcome == "succeeded":
        return Verdict("wait")
    return NOTHING  # interrupted: the agent is stopping


def judge(probation: Probation, health: Mapping[str, str], now: float) -> Verdict:
    """The health of each stack of the revision on probation (stack -> Healthy /
    Progressing / Degraded / Unknown, or a service-level text): healthy, bad, or wait."""
    unhealthy = {name: h for name, h in sorted(health.items()) if h != "Healthy"}
    if not unhealthy:
        return Verdict("healthy")
    if now < probation.deadline:
        return Verdict("wait")
    took = probation.deadline - probation.applied_at
    listed = ", ".join(f"stack {name}: {h}" for name, h in unhealthy.items())
    return Verdict("rollback", f"not Healthy within {took:g}s of its apply ({listed})")


def check_every(deadline_s: float) -> float:
    """Seconds between two health checks of a revision on probation."""
    return min(CHECK_MAX_S, max(CHECK_MIN_S, deadline_s / 10))


def lift_auto_pin(
    reason: str | None, source_revision: str, pinned: str, rolled_back: Iterable[str]
) -> bool:
    """Follow the source again? Only an automatic pin is lifted, and only by a revision
    that is neither the pinned one nor one that was rolled back (a newer commit)."""
    return reason == "auto" and source_revision != pinned and source_revision not in rolled_back


def remember(rolled_back: list[str], revision: str) -> list[str]:
    """The rolled-back revisions with `revision` added, the oldest forgotten past a bound."""
    kept = [r for r in rolled_back if r != revision] + [revision]
    return kept[-KEEP_ROLLED_BACK:]
