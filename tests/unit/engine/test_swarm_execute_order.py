"""engine.swarm runs a plan's actions with the waits late: every create and update is
submitted before the first wait (so the swarm rolls them together), and what depends on a
wait (removing an old config) comes after it."""

from __future__ import annotations

from pyapply.reconciler.core.plan import Action
from pyapply.reconciler.engine.swarm import execution_order


def act(aid: str, op: str, *deps: str) -> Action:
    return Action(aid, op, aid, "test", tuple(deps))


def test_waits_after_every_update_and_removals_after_the_waits() -> None:
    plan = [
        act("cfg-new", "create_object"),
        act("a-update", "update_service", "cfg-new"),
        act("a-wait", "wait_service", "a-update"),
        act("b-update", "update_service", "cfg-new"),
        act("b-wait", "wait_service", "b-update"),
        act("c-remove", "remove_service", "cfg-new"),
        act("cfg-old", "remove_object", "c-remove", "a-wait", "b-wait"),
    ]
    order = [a.id for a in execution_order(plan)]
    assert order == [
        "cfg-new",
        "a-update",
        "b-update",
        "c-remove",
        "a-wait",
        "b-wait",
        "cfg-old",
    ]
    seen: set[str] = set()
    for a in execution_order(plan):  # still a topological order
        assert set(a.deps) <= seen, a.id
        seen.add(a.id)
