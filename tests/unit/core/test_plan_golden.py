"""Whole plans as golden text, one case per kind of change (as compose's reconcile_test.go
does): a desired stack, what the in-memory runtime shows, and the complete plan expected.

A case's text is what `pyapply plan` prints (view.plan_text: the changes, their reasons
and fields, the counts) followed by the actions in the order the executor may run them:
`#n op target`, the condition a wait is for, a delay, and the actions each one waits on
(`after #i #j`). Any change to what the planner decides, or to the order it imposes, shows
up here as a diff of the whole plan, not as one of its properties. Each case also executes
its plan on the fake runtime and plans again: the plan must then be empty.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import msgspec
import pytest
from fakes import FakeRuntime
from test_reconcile import IMAGE, converge, plan_of, web_db_stack

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import teardown
from pyapply.reconciler.core.model import (
    Dependency,
    Healthcheck,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    UpdateConfig,
)
from pyapply.reconciler.core.plan import Action, Plan, build_teardown
from pyapply.reconciler.engine.execute import Executor, Settings
from pyapply.reconciler.engine.reconcile import observe
from pyapply.reconciler.view.plan_text import plan_text
from pyapply.runtime.base import ImageInfo

IMAGE_2 = "registry.local/busybox:2"


def in_order(actions: tuple[Action, ...]) -> list[Action]:
    """The actions in a dependency order (each after all it waits on), ties broken by the
    plan's own order, so the numbering is stable."""
    index = {a.id: i for i, a in enumerate(actions)}
    waiting = {a.id: {d for d in a.deps if d in index} for a in actions}
    ready = [i for i, a in enumerate(actions) if not waiting[a.id]]
    heapq.heapify(ready)
    out: list[Action] = []
    while ready:
        a = actions[heapq.heappop(ready)]
        out.append(a)
        for b in actions:
            if a.id in waiting[b.id]:
                waiting[b.id].discard(a.id)
                if not waiting[b.id]:
                    heapq.heappush(ready, index[b.id])
    assert len(out) == len(actions), "the plan has a cycle"
    return out


def render(plan: Plan) -> str:
    lines = [plan_text(plan)]
    ordered = in_order(plan.actions)
    number = {a.id: n for n, a in enumerate(ordered, 1)}
    if ordered:
        lines.append("  actions:")
    for a in ordered:
        line = f"    #{number[a.id]} {a.op} {a.target}"
        if a.new_name:
            line += f" -> {a.new_name}"
        if a.condition:
            line += f" until {a.condition} ({', '.join(a.replicas)})"
        if a.delay_s:
            line += f" delay {a.delay_s:g}s"
        if a.deps:
            line += " after " + " ".join(f"#{number[d]}" for d in sorted(a.deps, key=number.get))
        lines.append(line)
    return "\n".join(lines) + "\n"


def chain_stack() -> Stack:
    """Three services in a depends_on chain with all three conditions."""
    return Stack(
        name="app",
        services=(
            ServiceSpec(name="migrate", image=IMAGE, restart="no"),
            ServiceSpec(
                name="db",
                image=IMAGE,
                healthcheck=Healthcheck(test=("CMD", "true"), interval=1),
            ),
            ServiceSpec(
                name="api",
                image=IMAGE,
                depends_on=(
                    Dependency("db", "service_healthy"),
                    Dependency("migrate", "service_completed_successfully"),
                ),
                replicas=2,
            ),
            ServiceSpec(name="front", image=IMAGE, depends_on=(Dependency("api"),)),
        ),
    )


def without_front() -> Stack:
    """web_db_stack with its network `front` gone (web stays on `back`)."""
    stack = web_db_stack(networks=(ServiceNetwork("back"),))
    return msgspec.structs.replace(stack, networks=stack.networks[:1])


class Case(msgspec.Struct, frozen=True):
    before: Stack | None  # converged first (None: an empty host)
    after: Stack  # planned against what `before` left
    expected: str
    mutate: Callable[[FakeRuntime], None] = lambda rt: None


START_FIRST = UpdateConfig(order="start-first", parallelism=1)

CASES: dict[str, Case] = {
    "fresh stack": Case(
        None,
        web_db_stack(),
        """\
stack shop (revision r1):
  + network shop_back: create (missing)
  + network shop_front: create (missing)
  + volume shop_data: create (missing)
  + container shop-db-1: create (missing)
  + container shop-web-1: create (missing)
  + container shop-web-2: create (missing)
  plan: 6 to create
  actions:
    #1 create_network shop_back
    #2 create_network shop_front
    #3 create_volume shop_data
    #4 create shop-db-1 after #1 #3
    #5 wait db until service_healthy (shop-db-1) after #4
    #6 create shop-web-1 after #1 #2 #5
    #7 create shop-web-2 after #1 #2 #5
""",
    ),
    "fresh stack, image to pull": Case(
        None,
        web_db_stack(),
        """\
stack shop (revision r1):
  + image registry.local/busybox:1: pull (not present locally)
  + network shop_back: create (missing)
  + network shop_front: create (missing)
  + volume shop_data: create (missing)
  + container shop-db-1: create (missing)
  + container shop-web-1: create (missing)
  + container shop-web-2: create (missing)
  plan: 6 to create, 1 to pull
  actions:
    #1 pull registry.local/busybox:1
    #2 create_network shop_back after #1
    #3 create_network shop_front after #1
    #4 create_volume shop_data after #1
    #5 create shop-db-1 after #1 #2 #4
    #6 wait db until service_healthy (shop-db-1) after #5
    #7 create shop-web-1 after #1 #2 #3 #6
    #8 create shop-web-2 after #1 #2 #3 #6
""",
        mutate=lambda rt: rt.images_.pop(IMAGE),
    ),
    "scale up": Case(
        web_db_stack(),
        web_db_stack(replicas=4),
        """\
stack shop (revision r1):
  + container shop-web-3: create (missing)
  + container shop-web-4: create (missing)
  plan: 2 to create
  actions:
    #1 wait db until service_healthy (shop-db-1)
    #2 create shop-web-3 after #1
    #3 create shop-web-4 after #1
""",
    ),
    "scale down": Case(
        web_db_stack(replicas=4),
        web_db_stack(replicas=1),
        """\
stack shop (revision r1):
  - container shop-web-4: remove (scaled down to 1)
  - container shop-web-3: remove (scaled down to 1)
  - container shop-web-2: remove (scaled down to 1)
  plan: 3 to remove
  actions:
    #1 remove shop-web-4
    #2 remove shop-web-3
    #3 remove shop-web-2
""",
    ),
    "image change, stop-first": Case(
        web_db_stack(update=UpdateConfig(parallelism=1, delay=2.0)),
        web_db_stack(image=IMAGE_2, update=UpdateConfig(parallelism=1, delay=2.0)),
        """\
stack shop (revision r1):
  ~ container shop-web-1: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  ~ container shop-web-2: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  plan: 2 to recreate
  actions:
    #1 remove shop-web-1
    #2 wait db until service_healthy (shop-db-1)
    #3 create shop-web-1 after #1 #2
    #4 remove shop-web-2 delay 2s after #3
    #5 create shop-web-2 after #2 #4
""",
    ),
    "image change, start-first": Case(
        web_db_stack(ports=(), update=START_FIRST),
        web_db_stack(ports=(), update=START_FIRST, image=IMAGE_2),
        """\
stack shop (revision r1):
  ~ container shop-web-1: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  ~ container shop-web-2: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  plan: 2 to recreate
  actions:
    #1 wait db until service_healthy (shop-db-1)
    #2 create shop-web-1--next after #1
    #3 remove shop-web-1 after #2
    #4 rename shop-web-1--next -> shop-web-1 after #3
    #5 create shop-web-2--next after #1 #4
    #6 remove shop-web-2 after #5
    #7 rename shop-web-2--next -> shop-web-2 after #6
""",
    ),
    "start-first waits for the new container's health": Case(
        chain_stack(),
        msgspec.structs.replace(
            chain_stack(),
            services=tuple(
                msgspec.structs.replace(s, image=IMAGE_2, update=START_FIRST)
                if s.name == "db"
                else s
                for s in chain_stack().services
            ),
        ),
        """\
stack app (revision r1):
  ~ container app-db-1: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  plan: 1 to recreate
  actions:
    #1 create app-db-1--next
    #2 wait app-db-1--next until service_healthy (app-db-1--next) after #1
    #3 remove app-db-1 after #2
    #4 rename app-db-1--next -> app-db-1 after #3
""",
    ),
    "network removed": Case(
        web_db_stack(),
        without_front(),
        """\
stack shop (revision r1):
  - network shop_front: remove (no longer in the manifest)
  ~ container shop-web-1: recreate (spec changed)
      networks: [{'aliases': ['web'], 'network': 'shop_back'}, {'aliases': ['web'], 'network'... -> [{'aliases': ['web'], 'network': 'shop_back'}]
  ~ container shop-web-2: recreate (spec changed)
      networks: [{'aliases': ['web'], 'network': 'shop_back'}, {'aliases': ['web'], 'network'... -> [{'aliases': ['web'], 'network': 'shop_back'}]
  plan: 2 to recreate, 1 to remove
  actions:
    #1 remove shop-web-1
    #2 wait db until service_healthy (shop-db-1)
    #3 create shop-web-1 after #1 #2
    #4 remove shop-web-2 after #3
    #5 remove_network shop_front after #1 #4
    #6 create shop-web-2 after #2 #4
""",
    ),
    "depends_on ordering": Case(
        None,
        chain_stack(),
        """\
stack app (revision r1):
  + container app-migrate-1: create (missing)
  + container app-db-1: create (missing)
  + container app-api-1: create (missing)
  + container app-api-2: create (missing)
  + container app-front-1: create (missing)
  plan: 5 to create
  actions:
    #1 create app-migrate-1
    #2 create app-db-1
    #3 wait db until service_healthy (app-db-1) after #2
    #4 wait migrate until service_completed_successfully (app-migrate-1) after #1
    #5 create app-api-1 after #3 #4
    #6 create app-api-2 after #3 #4
    #7 create app-front-1 after #5 #6
""",
    ),
    "no changes": Case(
        web_db_stack(),
        web_db_stack(),
        """\
stack shop (revision r1):
  no changes: the live state matches the manifests
""",
    ),
}


class JobRuntime(FakeRuntime):
    """The fake runtime, where the one-shot `migrate` exits 0 as soon as it starts (so a
    service_completed_successfully wait is met)."""

    def start_container(self, name: str) -> None:
        super().start_container(name)
        if self.containers[name].labels.get(identity.SERVICE) == "migrate":
            self.mutate(name, status="exited", exit_code=0)


@pytest.fixture
def rt() -> FakeRuntime:
    return JobRuntime(
        images_={
            IMAGE: ImageInfo("sha256:one", ("PATH=/bin",)),
            IMAGE_2: ImageInfo("sha256:two", ("PATH=/bin",)),
        }
    )


@pytest.mark.parametrize("name", list(CASES))
def test_whole_plan(rt: FakeRuntime, name: str) -> None:
    case = CASES[name]
    if case.before is not None:
        converge(rt, case.before)
    case.mutate(rt)
    plan = plan_of(rt, case.after)
    assert render(plan) == case.expected
    converge(rt, case.after)
    assert plan_of(rt, case.after).empty


TEARDOWN = {
    True: """\
stack shop (revision -):
  - container shop-db-1: remove (down)
  - container shop-web-1: remove (down)
  - container shop-web-2: remove (down)
  - network shop_back: remove (down)
  - network shop_front: remove (down)
  - volume shop_data: remove (down --volumes)
  plan: 6 to remove
  actions:
    #1 remove shop-db-1
    #2 remove shop-web-1
    #3 remove shop-web-2
    #4 remove_network shop_back after #1 #2 #3
    #5 remove_network shop_front after #1 #2 #3
    #6 remove_volume shop_data after #1 #2 #3
""",
    False: """\
stack shop (revision -):
  - container shop-db-1: remove (down)
  - container shop-web-1: remove (down)
  - container shop-web-2: remove (down)
  - network shop_back: remove (down)
  - network shop_front: remove (down)
  ! warning: kept 1 volume(s): shop_data (use --volumes to remove them)
  plan: 5 to remove
  actions:
    #1 remove shop-db-1
    #2 remove shop-web-1
    #3 remove shop-web-2
    #4 remove_network shop_back after #1 #2 #3
    #5 remove_network shop_front after #1 #2 #3
""",
}


@pytest.mark.parametrize("volumes", [False, True], ids=["keep volumes", "with volumes"])
def test_whole_teardown_plan(rt: FakeRuntime, volumes: bool) -> None:
    converge(rt, web_db_stack())
    plan = build_teardown("shop", teardown(observe(rt, "shop"), volumes=volumes))
    assert render(plan) == TEARDOWN[volumes]
    assert Executor(rt, Settings(sleep=lambda s: None)).run(plan).ok
    assert not rt.containers and not rt.networks
    assert bool(rt.volumes) is not volumes
