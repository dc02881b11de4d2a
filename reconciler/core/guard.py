"""The guard against emptying a stack by accident: one decision, made here, used by the watch
agent and by `pyapply -f`.

A revision that leaves a stack with no containers while it has some is, far more often than
not, a mistake: a bad merge deleted the manifest, a template rendered `services: {}`, every
service sits behind a compose profile the agent does not enable. The plan for such a revision
is a correct plan for the wrong input, so the diff cannot catch it; this guard looks at the
desired model beside what runs, before anything is planned or done.

What it refuses: a stack with N > 0 containers (any state) that the desired model would leave
with none, because its manifests are gone, it declares no services, or the services that run
now are no longer declared.

What it lets through: `replicas: 0` (or `scale: 0`) on a service that runs now. That is an
explicit scale-down, written service by service, the way a person says "keep the stack and its
networks, run nothing". A stack is only let through on those grounds when *every* service it
runs now is still declared with zero replicas; a service that merely vanished still counts as
an accident. `pyapply down` (and `--allow-empty`) remain the ways to remove a stack on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import Stack


class Labelled(Protocol):
    """What the guard reads of an observed object: its labels (a container on one host, a
    service on a swarm -- a swarm stack's services stand for its containers)."""

    @property
    def labels(self) -> Mapping[str, str]: ...


ALLOW_HINT = (
    "refused without --allow-empty (`pyapply down` removes a stack on purpose; "
    "`replicas: 0` on each service scales it to nothing)"
)


class Emptying(msgspec.Struct, frozen=True):
    """A stack the desired state would leave with no containers while it has some."""

    stack: str
    containers: int  # the stack's containers now, in any state
    reason: str  # why it would have none, in words

    def __str__(self) -> str:
        n = self.containers
        return (
            f"stack {self.stack} would be left with no containers while it has {n} ({self.reason})"
        )


def emptying(stack: str, desired: Stack | None, containers: Sequence[Labelled]) -> Emptying | None:
    """Whether applying `desired` (None: the stack's manifests are gone) to a stack that has
    `containers` now would empty it by accident. Pure: the caller observes."""
    if not containers:
        return None  # nothing runs, nothing to lose
    if desired is None:
        return Emptying(stack, len(containers), "its manifests are gone")
    if any(s.replicas > 0 for s in desired.services):
        return None
    declared = {s.name for s in desired.services}
    running = {c.labels.get(identity.SERVICE, "") for c in containers}
    undeclared = sorted(running - declared)
    if not undeclared:
        return None  # every service that runs asks for replicas: 0: a scale-down on purpose
    if not desired.services:
        reason = (
            "it declares no services; with compose, services whose profiles are all "
            "disabled are not declared"
        )
    else:
        listed = ", ".join(s or "(unlabelled)" for s in undeclared)
        reason = f"service(s) {listed} are no longer declared and the others have replicas: 0"
    return Emptying(stack, len(containers), reason)


def at_risk(desired: Iterable[Stack], gone: Iterable[str] = ()) -> list[str]:
    """The stacks that could be emptied: the gone ones and those that ask for no container
    at all. Only their containers need observing, so the guard costs nothing on a revision
    that keeps something running in every stack."""
    names = set(gone) | {s.name for s in desired if not any(v.replicas > 0 for v in s.services)}
    return sorted(names)


def emptied(
    desired: Iterable[Stack],
    containers: Iterable[Labelled],
    gone: Iterable[str] = (),
) -> list[Emptying]:
    """Every stack a revision would empty by accident: each stack in `desired`, and each
    stack in `gone` (stacks someone manages whose manifests the revision no longer has).
    `containers` are the observed containers of all of them (the stack label says whose)."""
    by_stack: dict[str, list[Labelled]] = {}
    for c in containers:
        by_stack.setdefault(c.labels.get(identity.STACK, ""), []).append(c)
    wanted: Mapping[str, Stack | None] = {
        **{name: None for name in gone},
        **{s.name: s for s in desired},
    }
    out = [emptying(name, stack, by_stack.get(name, ())) for name, stack in sorted(wanted.items())]
    return [e for e in out if e is not None]
