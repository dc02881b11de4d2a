"""Interrupted start-first updates: the plans that resolve each state a kill can leave.

A start-first update of replica N makes `N--next`, starts it, waits for it to be healthy,
stops and removes N and renames `N--next` to N. Each state a kill can leave between those
steps has a golden plan here; then a property over every kill point: the next pass keeps a
running container of the service at every step, and after it the plan is empty.
"""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import diff
from pyapply.reconciler.core.model import (
    Healthcheck,
    Mount,
    NetworkSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    UpdateConfig,
    VolumeSpec,
)
from pyapply.reconciler.core.plan import Plan, build
from pyapply.reconciler.core.translate import desired_state
from pyapply.reconciler.engine.execute import Executor, Settings
from pyapply.reconciler.engine.reconcile import observe
from pyapply.reconciler.view.plan_text import plan_text, plans_json
from pyapply.runtime.base import ImageInfo

IMAGE = "registry.local/busybox:1"
N = "shop-web-1"
T = N + identity.NEXT_SUFFIX


def stack(level: str = "info", *, order: str = "start-first", replicas: int = 1) -> Stack:
    web = ServiceSpec(
        name="web",
        image=IMAGE,
        command=("httpd", "-f"),
        environment=(("LOG_LEVEL", level),),
        mounts=(Mount("volume", "/data", source="data"),),
        networks=(ServiceNetwork("back"),),
        healthcheck=Healthcheck(test=("CMD", "true"), interval=1),
        restart="unless-stopped",
        replicas=replicas,
        update=UpdateConfig(order=order, parallelism=1),  # type: ignore[arg-type]
    )
    return Stack(
        name="shop",
        services=(web,),
        networks=(NetworkSpec("back"),),
        volumes=(VolumeSpec("data"),),
    )


OLD, NEW, NEWER = stack("info"), stack("debug"), stack("warn")


def plan_of(rt: FakeRuntime, s: Stack) -> Plan:
    d = desired_state(s, revision="r", file_contents={}, files_root="/tmp/files")
    return build(d, diff(d, observe(rt, d.stack, d)))


def run(rt: FakeRuntime, plan: Plan) -> None:
    outcome = Executor(rt, Settings(parallelism=1, sleep=lambda s: None)).run(plan)
    assert outcome.ok, [(r.action.id, r.error) for r in outcome.failed]


def converge(rt: FakeRuntime, s: Stack) -> None:
    run(rt, plan_of(rt, s))
    assert plan_of(rt, s).empty


def ops(plan: Plan) -> list[tuple[str, str]]:
    return [(a.op, a.target) for a in plan.actions if a.service == "web"]


def deps(plan: Plan, action_id: str) -> tuple[str, ...]:
    return next(a.deps for a in plan.actions if a.id == action_id)


@pytest.fixture
def rt() -> FakeRuntime:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ("PATH=/bin",))})
    converge(rt, OLD)
    return rt


def make_next(rt: FakeRuntime, s: Stack, status: str = "running") -> None:
    """`N--next` as a killed update towards `s` left it (created, or started and healthy)."""
    fresh = FakeRuntime(images_=dict(rt.images_))
    converge(fresh, s)
    made = fresh.containers[N]
    health = "healthy" if status == "running" else "starting"
    rt.containers[T] = msgspec.structs.replace(
        made,
        name=T,
        id="next",
        status=status,
        health=health,  # type: ignore[arg-type]
    )


# -- golden plans, one per state ------------------------------------------------------------


def test_old_only_is_an_ordinary_start_first_update(rt: FakeRuntime) -> None:
    plan = plan_of(rt, NEW)
    assert ops(plan) == [("create", T), ("wait", T), ("remove", N), ("rename", T)]


@pytest.mark.parametrize("status", ["created", "running"])
def test_old_and_next_resume_the_update_with_next(rt: FakeRuntime, status: str) -> None:
    make_next(rt, NEW, status)
    plan = plan_of(rt, NEW)
    [change] = plan.changes
    assert (change.kind, change.name, change.resume) == ("recreate", N, True)
    assert "resuming an interrupted start-first update" in change.reason
    # no removal of the new container: it is adopted (create is idempotent)
    assert ops(plan) == [("create", T), ("wait", T), ("remove", N), ("rename", T)]
    next_id = rt.containers[T].id
    run(rt, plan)
    assert rt.containers[N].id == next_id and T not in rt.containers
    assert plan_of(rt, NEW).empty


def test_old_stopped_and_next_running_resume(rt: FakeRuntime) -> None:
    make_next(rt, NEW)
    rt.mutate(N, status="exited", exit_code=137)
    plan = plan_of(rt, NEW)
    assert [(c.kind, c.name, c.resume) for c in plan.changes] == [("recreate", N, True)]
    run(rt, plan)
    assert rt.containers[N].id == "next"
    assert plan_of(rt, NEW).empty


def test_resume_even_when_the_order_is_now_stop_first(rt: FakeRuntime) -> None:
    """The new container is there and healthy: finishing with it beats tearing both down."""
    make_next(rt, NEW)
    new_stop_first = stack("debug", order="stop-first")
    plan = plan_of(rt, new_stop_first)
    assert ops(plan) == [("create", T), ("wait", T), ("remove", N), ("rename", T)]
    run(rt, plan)
    assert rt.containers[N].id == "next"


def test_next_only_takes_the_name_back_first(rt: FakeRuntime) -> None:
    make_next(rt, NEW)
    del rt.containers[N]
    plan = plan_of(rt, NEW)
    assert [(c.kind, c.name) for c in plan.changes] == [("rename", T)]
    assert "interrupted start-first update" in plan.changes[0].reason
    assert ops(plan) == [("rename", T)]
    [adopt] = plan.actions
    assert (adopt.id, adopt.new_name) == (f"container:{T}:adopt", N)
    assert f"~ container {T}: rename (finishing an interrupted" in plan_text(plan)
    schema = json.loads(
        resources.files("pyapply.schemas").joinpath("v1/plan.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(plans_json([plan]))
    run(rt, plan)
    assert sorted(rt.containers) == [N] and rt.containers[N].id == "next"
    assert plan_of(rt, NEW).empty


def test_next_only_and_not_started_is_renamed_then_started(rt: FakeRuntime) -> None:
    make_next(rt, NEW, "created")
    del rt.containers[N]
    plan = plan_of(rt, NEW)
    assert [(c.kind, c.name) for c in plan.changes] == [("rename", T), ("start", N)]
    assert f"container:{T}:adopt" in deps(plan, f"container:{N}:start")
    run(rt, plan)
    assert rt.containers[N].running
    assert plan_of(rt, NEW).empty


def test_next_only_of_an_older_spec_is_renamed_then_updated(rt: FakeRuntime) -> None:
    """A kill during an update to NEW, then the manifest moved on to NEWER: the only
    container keeps running until its replacement is healthy."""
    make_next(rt, NEW)
    del rt.containers[N]
    plan = plan_of(rt, NEWER)
    assert [(c.kind, c.name) for c in plan.changes] == [("rename", T), ("recreate", N)]
    assert ops(plan) == [
        ("rename", T),
        ("create", T),
        ("wait", T),
        ("remove", N),
        ("rename", T),
    ]
    assert f"container:{T}:adopt" in deps(plan, f"container:{T}:create")
    run(rt, plan)
    assert plan_of(rt, NEWER).empty


def test_old_and_next_of_another_spec_remove_next_before_making_it_again(
    rt: FakeRuntime,
) -> None:
    make_next(rt, NEW)
    plan = plan_of(rt, NEWER)
    assert [(c.kind, c.name) for c in plan.changes] == [("recreate", N), ("remove", T)]
    assert f"container:{T}:remove" in deps(plan, f"container:{T}:create")
    run(rt, plan)
    assert plan_of(rt, NEWER).empty


def test_next_of_another_revision_is_made_again(rt: FakeRuntime) -> None:
    """Same spec, another revision (a comment changed): its create would not be accepted
    as a repeat by every runtime, so it is removed first and the update starts over."""
    make_next(rt, NEW)
    nxt = rt.containers[T]
    rt.containers[T] = msgspec.structs.replace(nxt, labels={**nxt.labels, identity.REVISION: "r0"})
    plan = plan_of(rt, NEW)
    assert [(c.kind, c.name, c.resume) for c in plan.changes] == [
        ("recreate", N, False),
        ("remove", T, False),
    ]
    assert f"container:{T}:remove" in deps(plan, f"container:{T}:create")
    run(rt, plan)
    assert plan_of(rt, NEW).empty


def test_updated_and_next_left_over_removes_next(rt: FakeRuntime) -> None:
    make_next(rt, OLD)
    plan = plan_of(rt, OLD)
    assert ops(plan) == [("remove", T)]
    assert "interrupted" in plan.changes[0].reason
    run(rt, plan)
    assert sorted(rt.containers) == [N]


def test_dead_next_only_is_removed_before_the_replica_is_made(rt: FakeRuntime) -> None:
    make_next(rt, NEW)
    del rt.containers[N]
    rt.mutate(T, status="dead")
    plan = plan_of(rt, NEW)
    assert [(c.kind, c.name) for c in plan.changes] == [("create", N), ("remove", T)]
    assert f"container:{T}:remove" in deps(plan, f"container:{N}:create")
    run(rt, plan)
    assert sorted(rt.containers) == [N]


def test_next_on_a_network_being_recreated_goes_before_the_network(rt: FakeRuntime) -> None:
    make_next(rt, NEW)
    changed = msgspec.structs.replace(NEW, networks=(NetworkSpec("back", internal=True),))
    plan = plan_of(rt, changed)
    assert ("remove", "container", T) in [(c.kind, c.object, c.name) for c in plan.changes]
    assert f"container:{T}:remove" in deps(plan, "network:shop_back:remove")
    run(rt, plan)
    assert plan_of(rt, changed).empty


# -- the property: a kill at every step, then a pass -----------------------------------------


class Killed(BaseException):
    """The process died (SIGKILL): nothing after it runs, nothing is cleaned up."""


class Dying(FakeRuntime):
    """A FakeRuntime that dies at its `kill_at`-th mutating call (before making it), and
    that checks after every call of the next pass that the service still runs."""

    kill_at: int = 0
    watch: bool = False
    low: int = 1_000
    replicas: tuple[str, ...] = ("1",)

    def _call(self, op: str) -> None:
        if self.kill_at and len(self.calls) + 1 == self.kill_at:
            raise Killed(op)
        super()._call(op)

    def _observe_service(self) -> None:
        """`low`: the fewest running containers any replica had (its own or its --next)."""
        if self.watch:
            per_replica: dict[str, int] = dict.fromkeys(self.replicas, 0)
            for c in self.containers.values():
                if c.running:
                    per_replica[c.labels[identity.REPLICA]] += 1
            self.low = min(self.low, *per_replica.values())

    def start_container(self, name: str) -> None:
        super().start_container(name)
        self._observe_service()

    def stop_container(self, name: str, timeout_s: float | None = None) -> None:
        super().stop_container(name, timeout_s)
        self._observe_service()

    def remove_container(self, name: str) -> None:
        super().remove_container(name)
        self._observe_service()

    def rename_container(self, name: str, new_name: str) -> None:
        super().rename_container(name, new_name)
        self._observe_service()


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_kill_at_any_step_never_leaves_the_service_without_a_container(
    replicas: int,
) -> None:
    old, new = stack("info", replicas=replicas), stack("debug", replicas=replicas)
    probe = Dying(images_={IMAGE: ImageInfo("sha256:one", ("PATH=/bin",))})
    converge(probe, old)
    before = len(probe.calls)
    run(probe, plan_of(probe, new))
    steps = len(probe.calls) - before
    assert steps >= 5 * replicas  # create, start, stop, remove, rename per replica
    for k in range(1, steps + 1):
        rt = Dying(
            images_={IMAGE: ImageInfo("sha256:one", ("PATH=/bin",))},
            replicas=tuple(str(i) for i in range(1, replicas + 1)),
        )
        converge(rt, old)
        rt.kill_at = len(rt.calls) + k
        with pytest.raises(Killed):
            run(rt, plan_of(rt, new))
        rt.kill_at, rt.watch = 0, True
        left = {c.name: c.status for c in rt.containers.values()}
        assert any(c.running for c in rt.containers.values()), (k, left)
        run(rt, plan_of(rt, new))
        assert rt.low >= 1, f"kill before call {k} ({left}): a replica had 0 running"
        assert plan_of(rt, new).empty, (k, left, plan_of(rt, new).changes)
        assert sorted(rt.containers) == [f"shop-web-{i}" for i in range(1, replicas + 1)]
        assert all(
            c.labels[identity.SPEC_HASH] == rt.containers["shop-web-1"].labels[identity.SPEC_HASH]
            for c in rt.containers.values()
        )
