"""Images from `build:` in the pass, on plain data and an in-memory runtime that "builds"
(its image id is a digest of the context's files): a missing image is a build action (not a
pull) that everything else of the stack waits for; a failed build touches nothing and says
the step, its exit code and its last lines; after a rebuild with a changed context the
service's containers are recreated, with the reason "image id changed"; `--build` and
`pull_policy: build` build before observing; a missing context is a located error before
anything is done (reconciler/core/diff.py, plan.py, translate.py, engine/build.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.core.diff import diff
from pyapply.reconciler.core.model import (
    BuildSpec,
    Location,
    NetworkSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
)
from pyapply.reconciler.core.plan import Plan, build
from pyapply.reconciler.core.translate import Desired, build_config, desired_state
from pyapply.reconciler.engine import build as engine_build
from pyapply.reconciler.engine.execute import Executor, Settings
from pyapply.reconciler.engine.reconcile import ApplyOptions, apply_stack, observe
from pyapply.reconciler.view.plan_text import plan_text
from pyapply.runtime.base import (
    BuildConfig,
    BuildEvent,
    BuildFailed,
    BuildProgress,
    BuildResult,
    ImageInfo,
)

BASE = "registry.local/busybox:1"


class BuildingRuntime(FakeRuntime):
    """A FakeRuntime whose builds tag an image whose id is a digest of the context's files
    (so a changed file is a new id), or fail when the context has a file named FAIL."""

    builds: list[BuildConfig] = msgspec.field(default_factory=list)

    def build_image(
        self, config: BuildConfig, progress: BuildProgress | None = None
    ) -> BuildResult:
        self.builds.append(config)
        ctx = Path(config.context)
        if (ctx / "FAIL").exists():
            raise BuildFailed(
                "step 2/2 `RUN make` failed: exited with code 2",
                step="RUN make",
                exit_code=2,
                tail=("cc: error", "make: *** [all] Error 2"),
            )
        digest = hashlib.sha256()
        for f in sorted(ctx.rglob("*")):
            if f.is_file():
                digest.update(f.name.encode() + f.read_bytes())
        if progress is not None:
            progress(BuildEvent(1, 1, "RUN make", "done", seconds=0.1))
        image_id = "sha256:" + digest.hexdigest()
        for tag in config.tags:
            self.images_[tag] = ImageInfo(image_id, ("PATH=/bin",))
        return BuildResult(image_id, config.tags, 1, 0)


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.c").write_text("v1")
    return app


def stack_of(ctx: Path, *, pull_policy: str = "missing") -> Stack:
    web = ServiceSpec(
        name="web",
        image="shop-web",
        build=BuildSpec(
            context=str(ctx),
            tags=("reg.local/shop/web:1",),
            args=(("A", "1"),),
            location=Location("compose.yaml", 4, 12),
            path="services.web.build",
        ),
        pull_policy=pull_policy,  # type: ignore[arg-type]
    )
    db = ServiceSpec(name="db", image=BASE)
    return Stack(name="shop", services=(db, web))


def desired_of(stack: Stack) -> Desired:
    return desired_state(stack, revision="r1", file_contents={}, files_root="/tmp/files")


def plan_of(rt: FakeRuntime, stack: Stack) -> Plan:
    d = desired_of(stack)
    return build(d, diff(d, observe(rt, d.stack, d)))


@pytest.fixture
def rt() -> BuildingRuntime:
    return BuildingRuntime(images_={BASE: ImageInfo("sha256:base", ("PATH=/bin",))})


def test_a_missing_image_is_built_first_and_everything_waits_for_it(
    rt: BuildingRuntime, ctx: Path
) -> None:
    plan = plan_of(rt, stack_of(ctx))
    assert [(c.kind, c.object, c.name, c.service) for c in plan.changes][:1] == [
        ("build", "image", "shop-web", "web")
    ]
    assert "  + image shop-web: build (not present locally)" in plan_text(plan)
    (action,) = [a for a in plan.actions if a.op == "build"]
    assert action.id == "image:shop-web:build" and action.deps == ()
    assert action.build == BuildConfig(
        context=str(ctx), tags=("shop-web", "reg.local/shop/web:1"), args={"A": "1"}
    )
    others = [a for a in plan.actions if a.op != "build"]
    assert others and all(action.id in a.deps for a in others)
    assert not any(a.op == "pull" for a in plan.actions)  # built, never pulled

    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert outcome.ok, [r.error for r in outcome.failed]
    assert rt.containers["shop-web-1"].image_id == rt.images_["shop-web"].id
    assert plan_of(rt, stack_of(ctx)).empty  # idempotent: present now, nothing to build


def test_a_failed_build_touches_nothing_and_says_why(rt: BuildingRuntime, ctx: Path) -> None:
    (ctx / "FAIL").write_text("")
    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(plan_of(rt, stack_of(ctx)))
    (failed,) = outcome.failed
    assert failed.action.op == "build"
    assert failed.error == (
        "step 2/2 `RUN make` failed: exited with code 2\n  | cc: error\n  | make: *** [all] Error 2"
    )
    assert outcome.count("skipped") == len(outcome.results) - 1
    assert rt.containers == {} and rt.networks == {}


def test_a_rebuilt_image_recreates_only_its_service_with_the_reason(
    rt: BuildingRuntime, ctx: Path
) -> None:
    stack = stack_of(ctx)
    options = ApplyOptions(build=True)
    first = apply_stack(rt, desired_of(stack), options)
    assert first.ok
    before = {n: c.id for n, c in rt.containers.items()}
    # --build with the same context: the same image id, nothing to do
    again = apply_stack(rt, desired_of(stack), options)
    assert again.plan.empty and len(rt.builds) == 2
    (ctx / "main.c").write_text("v2")
    result = apply_stack(rt, desired_of(stack), options)
    assert result.ok
    (change,) = result.plan.changes
    assert (change.kind, change.name, change.reason) == (
        "recreate",
        "shop-web-1",
        "image id changed: the image was rebuilt",
    )
    assert [f.field for f in change.fields] == ["image_id"]
    after = {n: c.id for n, c in rt.containers.items()}
    assert after["shop-db-1"] == before["shop-db-1"]
    assert after["shop-web-1"] != before["shop-web-1"]
    # without --build an image that is present is used as it is: no build
    (ctx / "main.c").write_text("v3")
    quiet = apply_stack(rt, desired_of(stack), ApplyOptions())
    assert quiet.plan.empty and len(rt.builds) == 3


def test_a_moved_tag_of_a_pulled_image_keeps_its_own_reason(rt: BuildingRuntime, ctx: Path) -> None:
    stack = stack_of(ctx)
    assert apply_stack(rt, desired_of(stack), ApplyOptions()).ok
    rt.images_[BASE] = ImageInfo("sha256:moved", ("PATH=/bin",))
    (change,) = plan_of(rt, stack).changes
    assert (change.name, change.reason) == (
        "shop-db-1",
        "image tag now points to a different image",
    )


def test_pull_policy_build_always_builds_before_observing(rt: BuildingRuntime, ctx: Path) -> None:
    stack = stack_of(ctx, pull_policy="build")
    heard: list[tuple[str, str]] = []
    options = ApplyOptions(on_build=lambda image, e: heard.append((image, e.state)))
    assert apply_stack(rt, desired_of(stack), options).ok
    assert apply_stack(rt, desired_of(stack), options).plan.empty
    assert len(rt.builds) == 2  # built on each pass, not planned as missing
    assert heard == [("shop-web", "done"), ("shop-web", "done")]


def test_a_missing_context_is_located_and_nothing_is_done(
    rt: BuildingRuntime, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    with pytest.raises(engine_build.BuildError) as info:
        apply_stack(rt, desired_of(stack_of(gone)), ApplyOptions())
    assert str(info.value) == (
        f"compose.yaml:4:12: services.web.build: the build context {gone} does not exist: "
        "cannot build shop-web; nothing was changed"
    )
    assert rt.builds == [] and rt.containers == {} and rt.networks == {}
    # an image that is present is not built, so its context is not needed
    rt.images_["shop-web"] = ImageInfo("sha256:made-elsewhere", ("PATH=/bin",))
    assert apply_stack(rt, desired_of(stack_of(gone)), ApplyOptions()).ok


def test_a_failed_forced_build_raises_with_the_details(rt: BuildingRuntime, ctx: Path) -> None:
    (ctx / "FAIL").write_text("")
    with pytest.raises(engine_build.BuildError) as info:
        apply_stack(rt, desired_of(stack_of(ctx)), ApplyOptions(build=True))
    assert str(info.value).splitlines() == [
        "build of service web failed: step 2/2 `RUN make` failed: exited with code 2",
        "  | cc: error",
        "  | make: *** [all] Error 2",
    ]
    assert info.value.failure is not None and info.value.failure.exit_code == 2
    assert rt.containers == {} and rt.networks == {}


def test_build_config_adds_the_command_lines_flags(ctx: Path) -> None:
    web = stack_of(ctx).service("web")
    assert build_config(web, no_cache=True).no_cache
    assert build_config(web, pull=True).pull and not build_config(web).pull
    same_tag = msgspec.structs.replace(
        web, build=msgspec.structs.replace(web.build, tags=("shop-web",))
    )  # type: ignore[type-var]
    assert build_config(same_tag).tags == ("shop-web",)


def test_the_whole_plan_of_a_fresh_stack_with_a_build(rt: BuildingRuntime, ctx: Path) -> None:
    """As golden text (test_plan_golden's rendering): the build comes first, and every
    other action -- the network and both services' containers -- waits for it."""
    from test_plan_golden import render

    plain = stack_of(ctx)
    on_default = tuple(
        msgspec.structs.replace(s, networks=(ServiceNetwork("default"),)) for s in plain.services
    )
    stack = msgspec.structs.replace(plain, services=on_default, networks=(NetworkSpec("default"),))
    assert render(plan_of(rt, stack)) == (
        "stack shop (revision r1):\n"
        "  + image shop-web: build (not present locally)\n"
        "  + network shop_default: create (missing)\n"
        "  + container shop-db-1: create (missing)\n"
        "  + container shop-web-1: create (missing)\n"
        "  plan: 1 to build, 3 to create\n"
        "  actions:\n"
        "    #1 build shop-web\n"
        "    #2 create_network shop_default after #1\n"
        "    #3 create shop-db-1 after #1 #2\n"
        "    #4 create shop-web-1 after #1 #2\n"
    )


def pull_first(stack: Stack) -> Stack:
    """The stack with web's `build:` marked as the loader marks a service that names its
    `image:` and sets no `pull_policy`."""
    web = stack.service("web")
    assert web.build is not None
    web = msgspec.structs.replace(web, build=msgspec.structs.replace(web.build, pull_first=True))
    return msgspec.structs.replace(
        stack, services=tuple(web if s.name == "web" else s for s in stack.services)
    )


def test_build_with_image_and_no_pull_policy_pulls_first(rt: BuildingRuntime, ctx: Path) -> None:
    """The Compose Specification: with both `build:` and `image:` and no pull_policy, the
    image is pulled first; the build runs only if the pull fails."""
    plan = plan_of(rt, pull_first(stack_of(ctx)))
    assert (
        "  + image shop-web: build (not present locally; pulled first, built if the pull fails)"
        in plan_text(plan)
    )
    (action,) = [a for a in plan.actions if a.op == "build"]
    assert action.pull_first
    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    assert outcome.ok, [r.error for r in outcome.failed]
    assert "pull shop-web" in rt.calls and rt.builds == []  # the registry had it
    (done,) = [r for r in outcome.results if r.action.op == "build"]
    assert done.note == "pulled from its registry, not built"


def test_a_failed_pull_falls_back_to_the_build(rt: BuildingRuntime, ctx: Path) -> None:
    rt.fail_next["pull"] = 1  # the registry is not reachable
    outcome = Executor(rt, Settings(sleep=lambda s: None)).run(
        plan_of(rt, pull_first(stack_of(ctx)))
    )
    assert outcome.ok, [r.error for r in outcome.failed]
    assert [c.tags for c in rt.builds] == [("shop-web", "reg.local/shop/web:1")]
    (done,) = [r for r in outcome.results if r.action.op == "build"]
    assert done.note is not None and done.note.startswith("the pull failed first: pull shop-web")
    assert rt.containers["shop-web-1"].image_id == rt.images_["shop-web"].id


def test_without_pull_first_a_missing_image_is_never_pulled(rt: BuildingRuntime, ctx: Path) -> None:
    Executor(rt, Settings(sleep=lambda s: None)).run(plan_of(rt, stack_of(ctx)))
    assert not any(c.startswith("pull shop-web") for c in rt.calls) and len(rt.builds) == 1
