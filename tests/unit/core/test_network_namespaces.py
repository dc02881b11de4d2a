"""network_mode, container_name and expose in the pure core: what the runtimes are asked for
(translate), the drift of a container that joins another's network namespace and of a name
held by a stranger (diff), and the order of the plan (plan) -- whole plans as golden text,
each executed on the fake runtime and planned again to an empty plan."""

from __future__ import annotations

import msgspec
import pytest
from fakes import FakeRuntime
from test_plan_golden import IMAGE_2, render
from test_reconcile import IMAGE, converge, desired_of, plan_of

from pyapply.reconciler.core.diff import Observed, diff, named_containers
from pyapply.reconciler.core.model import NetworkSpec, Port, ServiceNetwork, ServiceSpec, Stack
from pyapply.reconciler.core.plan import build
from pyapply.runtime.base import ContainerState, ImageInfo, PortBinding


@pytest.fixture
def rt() -> FakeRuntime:
    return FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ()), IMAGE_2: ImageInfo("two")})


def app(*, web: dict[str, object] | None = None, side: dict[str, object] | None = None) -> Stack:
    """web (named front-door) and side, which lives in web's network namespace."""
    front = ServiceSpec(
        name="web",
        image=IMAGE,
        container_name="front-door",
        ports=(Port(80, 8080),),
        networks=(ServiceNetwork("front"),),
        expose=("9000-9001/UDP", "81"),
    )
    joiner = ServiceSpec(name="side", image=IMAGE, network_mode="service:web")
    return Stack(
        name="app",
        services=(
            msgspec.structs.replace(joiner, **dict(side or {})),  # type: ignore[arg-type]
            msgspec.structs.replace(front, **dict(web or {})),  # type: ignore[arg-type]
        ),
        networks=(NetworkSpec("front"),),
    )


def test_what_the_runtimes_are_asked_for() -> None:
    stack = Stack(
        name="s",
        services=(
            ServiceSpec(name="a", image=IMAGE, network_mode="service:b", replicas=2),
            ServiceSpec(name="b", image=IMAGE, network_mode="service:c"),
            ServiceSpec(name="c", image=IMAGE, container_name="the-c"),
            ServiceSpec(name="h", image=IMAGE, network_mode="host"),
            ServiceSpec(name="on-h", image=IMAGE, network_mode="service:h"),
            ServiceSpec(name="x", image=IMAGE, network_mode="container:db"),
            ServiceSpec(name="n", image=IMAGE, network_mode="none"),
            ServiceSpec(
                name="r",
                image=IMAGE,
                ports=(Port(80, 8000, published_last=8002),),
                networks=(ServiceNetwork("default"),),
                expose=("53/udp", "53", "7-8"),
            ),
        ),
        networks=(NetworkSpec("default"),),
    )
    configs = {dc.config.name: dc.config for dc in desired_of(stack).containers}
    names = ["s-a-1", "s-a-2", "s-b-1", "s-h-1", "s-n-1", "s-on-h-1", "s-r-1", "s-x-1", "the-c"]
    assert sorted(configs) == names
    # service:b, where b joins c: every replica joins c's one container, followed to the end
    assert configs["s-a-1"].network_mode == configs["s-a-2"].network_mode == "container:the-c"
    assert configs["s-b-1"].network_mode == "container:the-c"
    assert configs["the-c"].network_mode is None  # a namespace of its own
    assert configs["s-on-h-1"].network_mode == "host"  # h's namespace is the host's
    assert configs["s-x-1"].network_mode == "container:db"
    assert configs["s-n-1"].network_mode == "none"
    assert all(not configs[n].networks for n in ("s-a-1", "s-h-1", "s-n-1", "s-x-1"))
    r = configs["s-r-1"]
    assert r.ports == (PortBinding(80, "tcp", "", 8000, host_port_last=8002),)
    assert r.expose == ("53/tcp", "53/udp", "7-8/tcp")
    # the container_name is the container's name, and its labels still say whose it is
    assert configs["the-c"].labels["io.pyapply.service"] == "c"
    assert configs["the-c"].labels["io.pyapply.replica"] == "1"


def test_the_names_observe_looks_up() -> None:
    stack = msgspec.structs.replace(
        app(),
        services=(
            *app().services,
            ServiceSpec(name="db-user", image=IMAGE, network_mode="container:db"),
        ),
    )
    # front-door (a container_name, perhaps a stranger's) and db (outside the stack)
    assert named_containers(desired_of(stack)) == ["db", "front-door"]


FRESH = """\
stack app (revision r1):
  + network app_front: create (missing)
  + container app-side-1: create (missing)
  + container front-door: create (missing)
  plan: 3 to create
  actions:
    #1 create_network app_front
    #2 create front-door after #1
    #3 create app-side-1 after #2
"""


def test_a_joiner_is_made_after_the_namespace_it_joins(rt: FakeRuntime) -> None:
    plan = plan_of(rt, app())
    assert render(plan) == FRESH
    converge(rt, app())
    assert rt.containers["app-side-1"].joined == rt.containers["front-door"].id
    assert plan_of(rt, app()).empty


RECREATED = """\
stack app (revision r1):
  ~ container front-door: recreate (spec changed)
      image: registry.local/busybox:1 -> registry.local/busybox:2
  ~ container app-side-1: recreate (the container whose network namespace it joins (front-door) is made anew)
  plan: 2 to recreate
  actions:
    #1 remove front-door
    #2 create front-door after #1
    #3 remove app-side-1
    #4 create app-side-1 after #2 #3
"""


def test_a_joiner_follows_the_recreate_of_its_namespace(rt: FakeRuntime) -> None:
    converge(rt, app())
    after = app(web={"image": IMAGE_2})
    plan = plan_of(rt, after)
    assert render(plan) == RECREATED
    converge(rt, after)
    assert rt.containers["app-side-1"].joined == rt.containers["front-door"].id
    assert plan_of(rt, after).empty


def test_a_joiner_of_a_namespace_made_anew_by_hand_is_recreated(rt: FakeRuntime) -> None:
    converge(rt, app())
    # front-door removed and made again out of band: side is in a namespace nobody has
    config = rt.containers["front-door"]
    rt.remove_container("front-door")
    front = next(dc.config for dc in desired_of(app()).containers if dc.service == "web")
    rt.create_container(front)
    rt.start_container("front-door")
    assert rt.containers["front-door"].id != config.id
    plan = plan_of(rt, app())
    assert [(c.kind, c.name, c.reason) for c in plan.changes] == [
        (
            "recreate",
            "app-side-1",
            "it joined the network namespace of an earlier front-door",
        )
    ]
    converge(rt, app())
    assert plan_of(rt, app()).empty


def test_a_joiner_is_restarted_when_its_namespace_starts_again(rt: FakeRuntime) -> None:
    converge(rt, app())
    rt.stop_container("front-door")
    plan = plan_of(rt, app())
    assert [(c.kind, c.name, c.reason) for c in plan.changes] == [
        ("start", "front-door", "exited with code 137"),
        (
            "restart",
            "app-side-1",
            "the container whose network namespace it joins (front-door) is started again",
        ),
    ]
    side_restart = next(a for a in plan.actions if a.target == "app-side-1")
    assert "container:front-door:start" in side_restart.deps
    converge(rt, app())
    assert plan_of(rt, app()).empty
    # a joiner that is not running is left as it is (a one-shot that did its job)
    rt.stop_container("front-door")
    rt.containers["app-side-1"] = msgspec.structs.replace(
        rt.containers["app-side-1"], status="exited", exit_code=0
    )
    one_shot = app(side={"restart": "no"})
    assert [c.name for c in plan_of(rt, one_shot).changes] == ["front-door"]


def test_a_name_held_by_a_stranger_is_an_error(rt: FakeRuntime) -> None:
    desired = desired_of(app())
    stranger = ContainerState(
        id="x1", name="front-door", image=IMAGE, image_id="", labels={}, status="running"
    )
    other_stack = msgspec.structs.replace(
        stranger, labels={"io.pyapply.stack": "shop", "io.pyapply.service": "web"}
    )
    for holder, whose in (
        (stranger, "a container pyapply did not make"),
        (other_stack, 'service "web" of stack "shop"'),
    ):
        result = diff(desired, Observed(named={"front-door": holder}))
        assert result.errors == (
            'container name front-door (container_name of service "web") is in use by '
            f"{whose}: remove or rename that container, or choose another name",
        )
    # the stack's own container of that name is no error
    converge(rt, app())
    assert plan_of(rt, app()).errors == ()


def test_joining_a_container_that_does_not_exist_is_an_error(rt: FakeRuntime) -> None:
    stack = Stack(
        name="s", services=(ServiceSpec(name="a", image=IMAGE, network_mode="container:db"),)
    )
    desired = desired_of(stack)
    assert diff(desired, Observed(named={"db": None})).errors == (
        'service "a" joins the network namespace of container db, which does not exist',
    )
    there = ContainerState(id="d", name="db", image=IMAGE, image_id="", labels={}, status="running")
    assert diff(desired, Observed(named={"db": there})).errors == ()


RENAMED = """\
stack app (revision r1):
  ~ container app-side-1: recreate (spec changed)
      network_mode: container:front-door -> container:the-front
  + container the-front: create (missing)
  - container front-door: remove (the container is now named the-front)
  plan: 1 to create, 1 to recreate, 1 to remove
  actions:
    #1 remove front-door
    #2 create the-front after #1
    #3 remove app-side-1
    #4 create app-side-1 after #2 #3
"""


def test_a_new_container_name_replaces_the_container(rt: FakeRuntime) -> None:
    converge(rt, app())
    renamed = app(web={"container_name": "the-front"})
    plan = plan_of(rt, renamed)
    # the new name is made once the old one is gone: they publish the same host port
    assert render(plan) == RENAMED
    converge(rt, renamed)
    assert sorted(rt.containers) == ["app-side-1", "the-front"]
    assert plan_of(rt, renamed).empty


def test_the_plan_of_a_joiner_stays_acyclic_with_its_own_depends_on(rt: FakeRuntime) -> None:
    from pyapply.reconciler.core.model import Dependency

    stack = app(side={"depends_on": (Dependency("web", "service_started"),)})
    desired = desired_of(stack)
    plan = build(desired, diff(desired, Observed()))
    side = next(a for a in plan.actions if a.target == "app-side-1")
    assert "container:front-door:create" in side.deps
    assert [d.service for d in stack.service("side").depends_on] == ["web"]  # not doubled


def test_a_joiner_follows_a_container_recreated_with_its_network(rt: FakeRuntime) -> None:
    converge(rt, app())
    after = msgspec.structs.replace(app(), networks=(NetworkSpec("front", internal=True),))
    plan = plan_of(rt, after)
    assert [(c.kind, c.name, c.reason) for c in plan.changes] == [
        ("recreate", "app_front", "spec changed"),
        ("recreate", "front-door", "its network is recreated"),
        (
            "recreate",
            "app-side-1",
            "the container whose network namespace it joins (front-door) is made anew",
        ),
    ]
    converge(rt, after)
    assert rt.containers["app-side-1"].joined == rt.containers["front-door"].id
    assert plan_of(rt, after).empty


def test_a_pid_or_ipc_joiner_follows_its_peer_by_the_name_it_runs_under(rt: FakeRuntime) -> None:
    """pid/ipc `service:web` join web's first container by the name it runs under (its
    container_name), and follow its recreate as a network joiner does."""
    from pyapply.reconciler.core.model import Dependency

    def stack(web_image: str) -> Stack:
        base = app(web={"image": web_image}, side={"network_mode": None})
        dbg = ServiceSpec(
            name="dbg",
            image=IMAGE,
            pid="service:web",
            ipc="service:web",
            depends_on=(Dependency("web"),),  # as the loader adds it
        )
        return msgspec.structs.replace(base, services=(*base.services, dbg))

    first = stack(IMAGE)
    (dbg,) = [dc.config for dc in desired_of(first).containers if dc.service == "dbg"]
    assert (dbg.pid_mode, dbg.ipc_mode) == ("container:front-door", "container:front-door")
    converge(rt, first)
    assert plan_of(rt, first).empty
    changed = stack(IMAGE_2)
    plan = plan_of(rt, changed)
    assert [(c.kind, c.name, c.reason) for c in plan.changes] == [
        ("recreate", "front-door", "spec changed"),
        (
            "recreate",
            "app-dbg-1",
            "the container whose pid namespace it joins (front-door) is made anew",
        ),
    ]
    converge(rt, changed)
    assert plan_of(rt, changed).empty
