"""One pass of the engine (`engine.apply.apply_all`) and the down flow
(`engine.down.down_stack`) on the in-memory runtime: the loop `pyapply apply`, the agent
and `rollback` share, and the teardown `down` and the agent's removal share."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeRuntime

from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.apply import (
    Hooks,
    PassResult,
    Unprepared,
    apply_all,
    failed_actions,
    prepare_all,
)
from pyapply.reconciler.engine.down import down_stack, files_dir
from pyapply.reconciler.engine.reconcile import ApplyOptions, PassError, StackResult
from pyapply.reconciler.manifest.loader import load
from pyapply.runtime.base import ImageInfo, RuntimeFailure

IMAGE = "pyapply-test/busybox:latest"


def stack(name: str, secret: str = "s3cr3t") -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {name}}}
spec:
  secrets:
    token: {{content: "{secret}"}}
  services:
    app:
      image: {IMAGE}
      command: ["sleep", "1000"]
      secrets: [token]
"""


def prepared(tmp_path: Path, *names: str) -> list[Desired | Unprepared]:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    for name in names:
        (d / f"{name}.yaml").write_text(stack(name))
    return prepare_all(load([str(d)]), revision="r1", root=str(tmp_path / "root"))


def runtime() -> FakeRuntime:
    return FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ())})


def test_a_pass_applies_each_stack_in_order_and_a_second_pass_does_nothing(
    tmp_path: Path,
) -> None:
    rt = runtime()
    wanted = prepared(tmp_path, "a", "b")
    seen: list[str] = []
    asked: list[str] = []
    hooks = Hooks(
        reporter=lambda s: asked.append(s) or None,  # type: ignore[func-returns-value]
        on_plan=lambda p: seen.append(f"plan {p.stack}") or None,  # type: ignore[func-returns-value]
        on_result=lambda r: seen.append(f"result {r.stack} {r.ok}"),
    )
    done = apply_all(rt, wanted, ApplyOptions(), root=str(tmp_path / "root"), hooks=hooks)
    assert seen == ["plan a", "result a True", "plan b", "result b True"]
    assert asked == ["a", "b"]  # a reporter only for a stack with work
    assert [d.stack for d in done.applied] == ["a", "b"] and done.stopped_before is None
    assert sorted(rt.containers) == ["a-app-1", "b-app-1"]
    assert (Path(files_dir(str(tmp_path / "root"), "a"))).is_dir()
    asked.clear()
    again = apply_all(rt, wanted, ApplyOptions(), root=str(tmp_path / "root"), hooks=hooks)
    assert all(r.plan.empty and r.outcome is None for r in again.results)
    assert asked == []  # a no-op pass makes no progress display


def test_a_stack_that_cannot_be_prepared_fails_in_its_turn(tmp_path: Path) -> None:
    rt = runtime()
    wanted = prepared(tmp_path, "a", "b")
    wanted[1] = Unprepared("b", PassError("secret token: cannot read /nowhere"))
    into = PassResult()
    with pytest.raises(PassError, match="cannot read"):
        apply_all(rt, wanted, ApplyOptions(), root=str(tmp_path / "root"), into=into)
    assert [d.stack for d in into.applied] == ["a"]  # kept although the pass raised
    assert sorted(rt.containers) == ["a-app-1"]


def test_a_pass_asked_to_stop_starts_no_further_stack_and_removes_nothing(
    tmp_path: Path,
) -> None:
    rt = runtime()
    root = str(tmp_path / "root")
    apply_all(rt, prepared(tmp_path, "a", "gone"), ApplyOptions(), root=root)
    calls = iter([False, True, True])
    done = apply_all(
        rt,
        prepared(tmp_path, "a", "b"),
        ApplyOptions(),
        root=root,
        remove=["gone"],
        hooks=Hooks(stopping=lambda: next(calls)),
    )
    assert done.stopped_before == "b" and not done.removed
    assert sorted(rt.containers) == ["a-app-1", "gone-app-1"]


def test_a_gone_stack_is_removed_with_its_files(tmp_path: Path) -> None:
    rt = runtime()
    root = str(tmp_path / "root")
    apply_all(rt, prepared(tmp_path, "a", "gone"), ApplyOptions(), root=root)
    told: list[str] = []
    (tmp_path / "m" / "gone.yaml").unlink()
    done = apply_all(
        rt,
        prepared(tmp_path, "a"),
        ApplyOptions(),
        root=root,
        remove=["gone"],
        hooks=Hooks(on_remove=told.append),
    )
    assert told == ["gone"] and done.removed == ["gone"]
    assert sorted(rt.containers) == ["a-app-1"]
    assert not [n for n in rt.networks if n.startswith("gone")]
    assert not Path(files_dir(root, "gone")).exists()
    assert Path(files_dir(root, "a")).is_dir()


class NoRemove(FakeRuntime):
    def remove_container(self, name: str) -> None:
        raise RuntimeFailure(f"cannot remove {name}: device busy")


def test_down_keeps_the_files_while_objects_are_left(tmp_path: Path) -> None:
    rt = NoRemove(images_={IMAGE: ImageInfo("sha256:one", ())})
    root = str(tmp_path / "root")
    apply_all(rt, prepared(tmp_path, "a"), ApplyOptions(), root=root)
    plans: list[str] = []
    result = down_stack(rt, "a", root, volumes=False, on_plan=lambda p: plans.append(p.stack))
    assert plans == ["a"] and not result.ok
    assert failed_actions(result.outcome) == ["remove a-app-1: cannot remove a-app-1: device busy"]
    assert Path(files_dir(root, "a")).is_dir()  # still mounted by what is left


def test_down_of_a_stack_with_nothing_left_removes_stray_files(tmp_path: Path) -> None:
    rt = runtime()
    root = str(tmp_path / "root")
    stray = Path(files_dir(root, "old"))
    stray.mkdir(parents=True)
    (stray / "secret-x").write_text("x")
    result = down_stack(rt, "old", root, volumes=False)
    assert result == StackResult("old", result.plan) and result.plan.empty
    assert not stray.exists()
