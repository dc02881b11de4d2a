"""Diff, plan and execute on plain data and an in-memory runtime.

Each case is data: a desired stack, what the runtime shows, and the plan expected. The
idempotence property runs through all of them: executing a plan and planning again gives an
empty plan.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import diff, teardown
from pyapply.reconciler.core.model import (
    Dependency,
    Healthcheck,
    Mount,
    NetworkSpec,
    Port,
    Resources,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    UpdateConfig,
    VolumeSpec,
)
from pyapply.reconciler.core.plan import Plan, build, build_teardown
from pyapply.reconciler.core.translate import Desired, desired_state
from pyapply.reconciler.engine.execute import Executor, Settings
from pyapply.reconciler.engine.reconcile import observe
from pyapply.runtime.base import Fault, ImageInfo

IMAGE = "registry.local/busybox:1"


def web_db_stack(**web_changes: object) -> Stack:
    web = ServiceSpec(
        name="web",
        image=IMAGE,
        command=("httpd", "-f"),
        environment=(("LOG_LEVEL", "info"),),
        ports=(Port(target=80, published=8080),),
        networks=(ServiceNetwork("back"), ServiceNetwork("front")),
        depends_on=(Dependency("db", "service_healthy"),),
        restart="unless-stopped",
        replicas=2,
    )
    web = msgspec.structs.replace(web, **web_changes)  # type: ignore[arg-type]
    db = ServiceSpec(
        name="db",
        image=IMAGE,
        environment=(("DB_PASSWORD", "hunter2"),),
        mounts=(Mount("volume", "/data", source="data"),),
        networks=(ServiceNetwork("back"),),
        healthcheck=Healthcheck(test=("CMD", "true"), interval=1),
        restart="always",
    )
    return Stack(
        name="shop",
        services=(db, web),
        networks=(NetworkSpec("back", internal=True), NetworkSpec("front")),
        volumes=(VolumeSpec("data"),),
    )


def desired_of(stack: Stack, revision: str = "r1") -> Desired:
    return desired_state(stack, revision=revision, file_contents={}, files_root="/tmp/files")


def plan_of(rt: FakeRuntime, stack: Stack, **kw: bool) -> Plan:
    d = desired_of(stack)
    return build(d, diff(d, observe(rt, d.stack, d), **kw))


def converge(rt: FakeRuntime, stack: Stack) -> Plan:
    plan = plan_of(rt, stack)
    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert outcome.ok, [r.error for r in outcome.failed]
    return plan


def summary(plan: Plan) -> list[tuple[str, str, str]]:
    return [(c.kind, c.object, c.name) for c in plan.changes]


@pytest.fixture
def rt() -> FakeRuntime:
    return FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ("PATH=/bin",))})


def test_faults_are_reported_with_their_reasons_and_repaired_after_the_network(
    rt: FakeRuntime,
) -> None:
    stack = web_db_stack()
    converge(rt, stack)
    rt.break_network("shop_back", "bridge pa-1 missing")
    rt.mutate(
        "shop-web-1",
        faults=(Fault("veth pav1 not on bridge pa-1"), Fault("rule for 0.0.0.0:8080 missing")),
    )
    plan = plan_of(rt, stack)
    reasons = {(c.object, c.name): c.reason for c in plan.changes}
    assert reasons == {
        ("network", "shop_back"): "bridge pa-1 missing",
        ("container", "shop-web-1"): "veth pav1 not on bridge pa-1; rule for 0.0.0.0:8080 missing",
    }
    actions = {a.id: a for a in plan.actions}
    net = actions["network:shop_back:create"]
    repair = actions["container:shop-web-1:repair"]
    assert (net.op, repair.op) == ("repair_network", "repair")
    assert net.id in repair.deps  # the bridge is back before the endpoint goes on it
    rt.calls.clear()
    converge(rt, stack)
    assert rt.calls == ["create_network shop_back", "start shop-web-1"]


def test_cold_start_creates_everything_in_order(rt: FakeRuntime) -> None:
    plan = converge(rt, web_db_stack())
    assert sorted(summary(plan)) == sorted(
        [
            ("create", "network", "shop_back"),
            ("create", "network", "shop_front"),
            ("create", "volume", "shop_data"),
            ("create", "container", "shop-db-1"),
            ("create", "container", "shop-web-1"),
            ("create", "container", "shop-web-2"),
        ]
    )
    order = [c for c in rt.calls if c.startswith(("create", "start"))]
    # networks and the volume before containers; db healthy before web is created
    assert order.index("create_network shop_back") < order.index("create shop-db-1")
    assert order.index("create_volume shop_data") < order.index("create shop-db-1")
    assert order.index("start shop-db-1") < order.index("create shop-web-1")
    web = rt.containers["shop-web-1"]
    assert web.labels[identity.STACK] == "shop"
    assert web.labels[identity.SERVICE] == "web"
    assert web.labels[identity.REPLICA] == "1"
    assert web.labels[identity.REVISION] == "r1"
    assert rt.networks["shop_back"].labels[identity.STACK] == "shop"


def test_wait_action_guards_dependents(rt: FakeRuntime) -> None:
    plan = plan_of(rt, web_db_stack())
    actions = {a.id: a for a in plan.actions}
    wait = actions["service:db:service_healthy"]
    assert wait.op == "wait" and wait.replicas == ("shop-db-1",)
    assert "container:shop-db-1:create" in wait.deps
    assert "service:db:service_healthy" in actions["container:shop-web-1:create"].deps


MUTATIONS: dict[str, tuple[Callable[[FakeRuntime], None], list[tuple[str, str, str]]]] = {
    "container removed by hand": (
        lambda rt: rt.containers.pop("shop-web-2"),
        [("create", "container", "shop-web-2")],
    ),
    "container stopped by hand": (
        lambda rt: rt.mutate("shop-web-1", status="exited", exit_code=137),
        [("start", "container", "shop-web-1")],
    ),
    "network disconnected by hand": (
        lambda rt: rt.mutate("shop-web-1", networks=("shop_back",)),
        [("recreate", "container", "shop-web-1")],
    ),
    "env changed by hand": (
        lambda rt: rt.mutate("shop-db-1", env=("DB_PASSWORD=x", "PATH=/bin")),
        [("recreate", "container", "shop-db-1")],
    ),
    "memory limit changed by hand": (
        lambda rt: rt.mutate("shop-db-1", memory_bytes=1 << 20),
        [("recreate", "container", "shop-db-1")],
    ),
    "port unpublished by hand": (
        lambda rt: rt.mutate("shop-web-1", ports=()),
        [("recreate", "container", "shop-web-1")],
    ),
    "label changed by hand": (
        lambda rt: rt.mutate(
            "shop-web-1", labels={**rt.containers["shop-web-1"].labels, identity.SERVICE: "x"}
        ),
        [("recreate", "container", "shop-web-1")],
    ),
    "unhealthy": (
        lambda rt: rt.mutate("shop-db-1", health="unhealthy"),
        [("restart", "container", "shop-db-1")],
    ),
    "tag moved to another image": (
        lambda rt: rt.images_.__setitem__(IMAGE, ImageInfo("sha256:two", ("PATH=/bin",))),
        [
            ("recreate", "container", "shop-db-1"),
            ("recreate", "container", "shop-web-1"),
            ("recreate", "container", "shop-web-2"),
        ],
    ),
    "a veth deleted (repaired in place)": (
        lambda rt: rt.mutate("shop-web-2", faults=(Fault("veth pav1 on shop_back missing"),)),
        [("repair", "container", "shop-web-2")],
    ),
    "a bridge deleted (network and its members repaired in place)": (
        lambda rt: (
            rt.break_network("shop_back", "bridge pa-1 missing"),
            rt.mutate("shop-db-1", faults=(Fault("veth pav2 not on bridge pa-1"),)),
        ),
        [("repair", "network", "shop_back"), ("repair", "container", "shop-db-1")],
    ),
    "conmon died (restarted under a new one)": (
        lambda rt: rt.mutate(
            "shop-db-1",
            faults=(Fault("conmon not running", "restart"), Fault("netns pyapply-x missing")),
        ),
        [("restart", "container", "shop-db-1")],
    ),
    "network removed by hand (with its containers)": (
        lambda rt: rt.reset_network("shop_front"),
        [
            ("create", "network", "shop_front"),
            ("create", "container", "shop-db-1"),
            ("create", "container", "shop-web-1"),
            ("create", "container", "shop-web-2"),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_drift_is_found_and_repaired(rt: FakeRuntime, case: str) -> None:
    stack = web_db_stack()
    converge(rt, stack)
    assert plan_of(rt, stack).empty
    mutate, expected = MUTATIONS[case]
    mutate(rt)
    plan = plan_of(rt, stack)
    assert summary(plan) == expected
    ids = {name: c.id for name, c in rt.containers.items()}
    converge(rt, stack)
    assert plan_of(rt, stack).empty, summary(plan_of(rt, stack))
    if all(kind in ("repair", "restart") for kind, _, _ in expected):
        # repaired in place: no container was recreated
        assert {name: c.id for name, c in rt.containers.items()} == ids


SPEC_CHANGES: dict[str, tuple[dict[str, object], list[str], str]] = {
    "env": (
        {"environment": (("LOG_LEVEL", "debug"),)},
        ["shop-web-1", "shop-web-2"],
        "env.LOG_LEVEL",
    ),
    "image": ({"image": "registry.local/busybox:2"}, ["shop-web-1", "shop-web-2"], "image"),
    "memory": (
        {"resources": Resources(memory=64 << 20)},
        ["shop-web-1", "shop-web-2"],
        "memory_bytes",
    ),
}


@pytest.mark.parametrize("case", sorted(SPEC_CHANGES))
def test_spec_change_recreates_only_that_service(rt: FakeRuntime, case: str) -> None:
    converge(rt, web_db_stack())
    changes, names, field = SPEC_CHANGES[case]
    rt.images_["registry.local/busybox:2"] = ImageInfo("sha256:two", ())
    stack = web_db_stack(**changes)
    plan = plan_of(rt, stack)
    assert [c.name for c in plan.changes] == names
    assert all(c.kind == "recreate" and c.reason == "spec changed" for c in plan.changes)
    assert field in [f.field for f in plan.changes[0].fields]
    db_id = rt.containers["shop-db-1"].id
    converge(rt, stack)
    assert rt.containers["shop-db-1"].id == db_id
    assert plan_of(rt, stack).empty


def test_scale_up_and_down_removes_highest_first(rt: FakeRuntime) -> None:
    converge(rt, web_db_stack(replicas=4))
    plan = plan_of(rt, web_db_stack(replicas=1))
    assert summary(plan) == [
        ("remove", "container", "shop-web-4"),
        ("remove", "container", "shop-web-3"),
        ("remove", "container", "shop-web-2"),
    ]
    assert plan.changes[0].reason == "scaled down to 1"
    converge(rt, web_db_stack(replicas=1))
    assert sorted(rt.containers) == ["shop-db-1", "shop-web-1"]


def test_orphans_pruned_but_volumes_kept_unless_asked(rt: FakeRuntime) -> None:
    converge(rt, web_db_stack())
    stack = web_db_stack()
    only_web = msgspec.structs.replace(
        stack,
        services=(msgspec.structs.replace(stack.service("web"), depends_on=()),),
        volumes=(),
    )
    plan = plan_of(rt, only_web)
    assert ("remove", "container", "shop-db-1") in summary(plan)
    assert ("remove", "volume", "shop_data") not in summary(plan)
    assert any("shop_data" in w and "--prune-volumes" in w for w in plan.warnings)
    converge(rt, only_web)
    assert "shop_data" in rt.volumes
    pruned = plan_of(rt, only_web, prune_volumes=True)
    assert summary(pruned) == [("remove", "volume", "shop_data")]


def test_completed_one_shot_is_not_drift(rt: FakeRuntime) -> None:
    stack = Stack(
        name="job",
        services=(ServiceSpec(name="migrate", image=IMAGE, restart="no"),),
    )
    converge(rt, stack)
    rt.mutate("job-migrate-1", status="exited", exit_code=0)
    assert plan_of(rt, stack).empty
    rt.mutate("job-migrate-1", status="exited", exit_code=3)
    assert summary(plan_of(rt, stack)) == [("start", "container", "job-migrate-1")]


def test_start_first_update_uses_a_temporary_name(rt: FakeRuntime) -> None:
    stack = web_db_stack(ports=(), update=UpdateConfig(order="start-first", parallelism=1))
    converge(rt, stack)
    changed = web_db_stack(
        ports=(),
        update=UpdateConfig(order="start-first", parallelism=1),
        environment=(("LOG_LEVEL", "debug"),),
    )
    plan = plan_of(rt, changed)
    ops = [(a.op, a.target) for a in plan.actions if a.service == "web"]
    assert ("create", "shop-web-1--next") in ops
    assert ("rename", "shop-web-1--next") in ops
    converge(rt, changed)
    calls = [c for c in rt.calls if "shop-web-1" in c]
    assert calls.index("start shop-web-1--next") < calls.index("remove shop-web-1")
    assert sorted(rt.containers) == ["shop-db-1", "shop-web-1", "shop-web-2"]
    assert plan_of(rt, changed).empty


def test_rolling_update_batches_by_parallelism(rt: FakeRuntime) -> None:
    stack = web_db_stack(replicas=3, update=UpdateConfig(parallelism=1, delay=2.0))
    converge(rt, stack)
    changed = web_db_stack(
        replicas=3,
        update=UpdateConfig(parallelism=1, delay=2.0),
        environment=(("LOG_LEVEL", "debug"),),
    )
    actions = {a.id: a for a in plan_of(rt, changed).actions}
    second = actions["container:shop-web-2:remove"]
    assert "container:shop-web-1:create" in second.deps
    assert second.delay_s == 2.0
    assert "container:shop-web-2:create" in actions["container:shop-web-3:remove"].deps


def test_leftover_temporary_container_is_removed(rt: FakeRuntime) -> None:
    stack = web_db_stack()
    converge(rt, stack)
    rt.containers["shop-web-1--next"] = msgspec.structs.replace(
        rt.containers["shop-web-1"], name="shop-web-1--next", id="tmp"
    )
    plan = plan_of(rt, stack)
    assert summary(plan) == [("remove", "container", "shop-web-1--next")]
    assert "interrupted" in plan.changes[0].reason


def test_changed_network_is_recreated_with_its_containers(rt: FakeRuntime) -> None:
    stack = web_db_stack()
    converge(rt, stack)
    changed = msgspec.structs.replace(
        stack, networks=(NetworkSpec("back", internal=False), NetworkSpec("front"))
    )
    plan = plan_of(rt, changed)
    assert ("recreate", "network", "shop_back") in summary(plan)
    recreated = {c.name for c in plan.changes if c.object == "container"}
    assert recreated == {"shop-db-1", "shop-web-1", "shop-web-2"}
    converge(rt, changed)
    assert not rt.networks["shop_back"].internal
    assert plan_of(rt, changed).empty


def test_network_with_foreign_users_is_an_error(rt: FakeRuntime) -> None:
    stack = web_db_stack()
    converge(rt, stack)
    rt.containers["stranger"] = msgspec.structs.replace(
        rt.containers["shop-db-1"], name="stranger", labels={}
    )
    rt.networks["shop_back"] = msgspec.structs.replace(
        rt.networks["shop_back"], containers=("shop-db-1", "stranger")
    )
    changed = msgspec.structs.replace(
        stack, networks=(NetworkSpec("back", internal=False), NetworkSpec("front"))
    )
    plan = plan_of(rt, changed)
    assert any("stranger" in e and "shop_back" in e for e in plan.errors)


def test_transient_errors_are_retried_permanent_fail_fast(rt: FakeRuntime) -> None:
    rt.fail_next["create_network"] = 2
    plan = plan_of(rt, web_db_stack())
    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert outcome.ok
    attempts = {r.action.id: r.attempts for r in outcome.results}
    assert max(attempts[k] for k in attempts if k.startswith("network:")) == 3

    rt2 = FakeRuntime()  # no image: NotFound is permanent
    plan2 = plan_of(rt2, web_db_stack())
    plan2 = msgspec.structs.replace(
        plan2, actions=tuple(a for a in plan2.actions if a.op != "pull")
    )
    plan2 = msgspec.structs.replace(
        plan2,
        actions=tuple(
            msgspec.structs.replace(a, deps=tuple(d for d in a.deps if not d.startswith("image:")))
            for a in plan2.actions
        ),
    )
    out2 = Executor(rt2, Settings(sleep=lambda s: None)).run(plan2)
    failed = {r.action.id: r for r in out2.failed}
    assert failed["container:shop-db-1:create"].attempts == 1
    assert "no such image" in (failed["container:shop-db-1:create"].error or "")
    skipped = {r.action.id for r in out2.results if r.status == "skipped"}
    assert "container:shop-web-1:create" in skipped  # waits on db, which failed


def test_unhealthy_dependency_times_out_with_clear_error(rt: FakeRuntime) -> None:
    rt.healthy_after_start = False
    plan = plan_of(rt, web_db_stack())
    clock = iter(range(10_000))
    settings = Settings(sleep=lambda s: None, wait_timeout_s=0.0)
    del clock
    outcome = Executor(rt, settings).run(plan)
    failed = {r.action.id: r.error for r in outcome.failed}
    assert "service:db:service_healthy" in failed
    assert "did not become healthy" in (failed["service:db:service_healthy"] or "")


def test_missing_image_is_pulled_first(rt: FakeRuntime) -> None:
    stack = web_db_stack(image="registry.local/web:9")
    plan = plan_of(rt, stack)
    assert ("pull", "image", "registry.local/web:9") in summary(plan)
    actions = {a.id: a for a in plan.actions}
    assert "image:registry.local/web:9:pull" in actions["container:shop-web-1:create"].deps
    converge(rt, stack)
    assert plan_of(rt, stack).empty


def test_teardown_keeps_volumes_unless_asked(rt: FakeRuntime) -> None:
    converge(rt, web_db_stack())
    obs = observe(rt, "shop")
    plan = build_teardown("shop", teardown(obs, volumes=False))
    assert {c.object for c in plan.changes} == {"container", "network"}
    Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert not rt.containers and not rt.networks and "shop_data" in rt.volumes
    plan = build_teardown("shop", teardown(observe(rt, "shop"), volumes=True))
    Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert not rt.volumes


def test_diff_is_fast_for_a_thousand_services() -> None:
    import time

    services = tuple(
        ServiceSpec(name=f"s{i:04d}", image=IMAGE, environment=(("I", str(i)),))
        for i in range(1000)
    )
    stack = Stack(name="big", services=services, networks=(NetworkSpec("default"),))
    stack = msgspec.structs.replace(
        stack,
        services=tuple(
            msgspec.structs.replace(s, networks=(ServiceNetwork("default"),)) for s in services
        ),
    )
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one")})
    converge(rt, stack)
    t0 = time.perf_counter()
    plan = plan_of(rt, stack)
    elapsed = time.perf_counter() - t0
    assert plan.empty
    # recorded, not asserted as a speed target (benchmarks do that)
    print(f"diff+plan of 1000 services: {elapsed:.3f}s")
