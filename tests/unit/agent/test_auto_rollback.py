"""Automatic rollback (`watch --progress-deadline`) with a real git work tree as the source
and the in-memory runtime: which revision is judged bad, what is applied and pinned, and
when the agent follows the source again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.agent.agent import Agent, AgentOptions
from pyapply.reconciler.agent.history import History, UnknownRevision
from pyapply.reconciler.agent.notify import Event
from pyapply.reconciler.agent.rollback import (
    Probation,
    after_pass,
    check_every,
    judge,
    lift_auto_pin,
    remember,
)
from pyapply.reconciler.agent.sources import Source
from pyapply.reconciler.view.agent_text import history_lines, status_lines
from pyapply.runtime.base import ImageInfo, PermanentError

IMAGE = "pyapply-test/busybox:latest"


def stack(value: str, *, healthcheck: bool = False) -> str:
    check = '      healthcheck: {test: ["CMD", "true"], interval: 1s}\n' if healthcheck else ""
    return (
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: st}\nspec:\n  services:\n"
        f'    s0:\n      image: {IMAGE}\n      command: ["sleep", "1000"]\n'
        f'      environment: {{V: "{value}"}}\n{check}'
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(repo: Path, text: str, message: str) -> str:
    (repo / "s.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")[:12]


class Runtime(FakeRuntime):
    """The fake runtime, whose starts of the containers named in `refuse` fail for good
    (not retried: a bad image's entrypoint, say)."""

    refuse: set[str] = msgspec.field(default_factory=set)

    def start_container(self, name: str) -> None:
        if name in self.refuse:
            self.calls.append(f"start {name}")
            raise PermanentError(f"cannot start container {name}: exec format error")
        super().start_container(name)


class Notes(msgspec.Struct):
    """Stands in for the notifier: the events emitted."""

    events: list[Event] = msgspec.field(default_factory=list)

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def succeeded(self) -> None:
        pass

    def to_json(self) -> dict[str, object]:
        return {"targets": []}


def setup(tmp_path: Path) -> tuple[Agent, Runtime, Path, str, Notes]:
    """An agent with a 30 s progress deadline on a repository whose first commit was
    applied and became Healthy."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    good = commit(repo, stack("1"), "good")
    rt = Runtime(images_={IMAGE: ImageInfo("sha256:one", ())})
    agent = Agent(
        Source.of(str(repo)),
        str(tmp_path / "root"),
        AgentOptions(runtime_events=False, progress_deadline_s=30.0),
        lambda: rt,
    )
    notes = Notes()
    agent.notifier = notes  # type: ignore[assignment]
    agent.reconcile({"start"})
    assert agent.probation is not None and agent.probation.revision == good
    agent.check_progress()
    assert agent.probation is None
    assert agent.history.last_healthy() == good
    return agent, rt, repo, good, notes


def env(rt: FakeRuntime) -> list[str]:
    return list(rt.containers["st-s0-1"].env)


def pending(agent: Agent) -> set[str]:
    return agent.triggers.take(0)


def test_a_healthy_revision_is_not_rolled_back(tmp_path: Path) -> None:
    agent, rt, repo, _, notes = setup(tmp_path)
    second = commit(repo, stack("2"), "also good")
    agent.reconcile({"file"})
    agent.check_progress()
    assert agent.history.last_healthy() == second
    assert agent.history.pinned() is None and agent.probation is None
    assert "V=2" in env(rt)
    assert [p.outcome for p in agent.history.passes()] == ["succeeded", "succeeded"]
    assert pending(agent) == set()
    assert [e.kind for e in notes.events] == ["applied", "applied"]


def test_an_apply_failure_rolls_back_to_the_last_healthy_revision(tmp_path: Path) -> None:
    agent, rt, repo, good, notes = setup(tmp_path)
    rt.refuse.add("st-s0-1")  # the new container cannot start
    bad = commit(repo, stack("2"), "cannot start")
    agent.reconcile({"file"})
    assert agent.history.pinned() == good and agent.history.pin_reason() == "auto"
    assert agent.history.passes()[0].revision == bad
    assert agent.history.passes()[0].outcome == "rolled-back"
    assert "apply failed" in agent.history.passes()[0].errors[-1]
    assert pending(agent) == {"rollback:auto"}
    rt.refuse.clear()
    agent.reconcile({"rollback:auto"})
    assert "V=1" in env(rt)
    assert agent.history.passes()[0].revision == good
    assert agent.history.passes()[0].outcome == "succeeded"
    event = notes.events[-1]
    assert (event.kind, event.revision, event.previous) == ("rollback", good, bad)
    assert "apply failed" in event.message and bad in event.message
    status = agent.status(rt)
    assert status["revision"]["pinned"] == good
    assert status["revision"]["pin_reason"] == "auto"
    assert status["rollback"]["last"]["revision"] == bad
    assert status["rollback"]["last"]["to"] == good
    schema = json.loads(
        (Path(__file__).parents[3] / "schemas" / "v1" / "agent-api.openapi.json").read_text()
    )
    for name, document in (
        ("Status", dict(status, notifications=None)),  # (the stand-in notifier's own)
        ("Pass", agent.history.passes()[1].to_json()),
    ):
        jsonschema.Draft202012Validator(
            {"$ref": f"#/components/schemas/{name}", "components": schema["components"]}
        ).validate(document)
    text = "\n".join(status_lines(status))
    assert "pinned by an automatic rollback until a newer revision arrives" in text
    assert f"{bad} rolled back to {good}" in text
    table = history_lines([p.to_json() for p in agent.history.passes()])
    assert any(bad in line and "rolled-back" in line for line in table)


def test_an_unhealthy_revision_is_rolled_back_at_its_deadline_not_before(
    tmp_path: Path,
) -> None:
    agent, rt, repo, good, notes = setup(tmp_path)
    rt.healthy_after_start = False
    bad = commit(repo, stack("2", healthcheck=True), "never healthy")
    agent.reconcile({"file"})
    assert "V=2" in env(rt)
    agent.check_progress()  # starting: Progressing, within the deadline
    assert agent.probation is not None and agent.history.pinned() is None
    rt.mutate("st-s0-1", health="unhealthy")
    agent.check_progress()  # Degraded, but still within the deadline
    assert agent.probation is not None and agent.history.pinned() is None
    agent.probation = msgspec.structs.replace(agent.probation, deadline=agent.probation.applied_at)
    agent.check_progress()
    assert agent.probation is None
    assert agent.history.pinned() == good and agent.history.pin_reason() == "auto"
    rec = agent.history.passes(revision=bad)[0]
    assert rec.outcome == "rolled-back"
    assert "not Healthy within 0s" in rec.errors[-1] and "stack st: Degraded" in rec.errors[-1]
    agent.reconcile(pending(agent))
    assert "V=1" in env(rt)
    assert notes.events[-1].kind == "rollback" and notes.events[-1].previous == bad


def test_after_an_auto_rollback_the_bad_revision_is_never_retried_and_a_newer_one_is_followed(
    tmp_path: Path,
) -> None:
    agent, rt, repo, good, _ = setup(tmp_path)
    rt.refuse.add("st-s0-1")
    bad = commit(repo, stack("2"), "cannot start")
    agent.reconcile({"file"})
    rt.refuse.clear()
    agent.reconcile(pending(agent))
    assert "V=1" in env(rt)
    # a file event without a new revision: nothing at all
    calls = len(rt.calls)
    agent.reconcile({"file"})
    assert len(rt.calls) == calls
    # a resync (and a drift repair) applies the pinned good revision, not the bad one
    rt.remove_container("st-s0-1")
    agent.reconcile({"resync"})
    assert "V=1" in env(rt)
    assert agent.history.pinned() == good
    assert all(p.revision != bad or p.outcome == "rolled-back" for p in agent.history.passes())
    # an agent started afresh on the same state keeps the pin and the verdict
    again = Agent(
        Source.of(str(repo)),
        str(tmp_path / "root"),
        AgentOptions(runtime_events=False, progress_deadline_s=30.0),
        lambda: rt,
    )
    again.reconcile({"start"})
    assert "V=1" in env(rt) and again.history.pinned() == good
    # a newer commit lifts the automatic pin
    newer = commit(repo, stack("3"), "fixed")
    again.reconcile({"file"})
    assert "V=3" in env(rt)
    assert again.history.pinned() is None and again.history.pin_reason() is None
    assert again.history.passes()[0].revision == newer
    again.check_progress()
    assert again.history.last_healthy() == newer


def test_a_manual_pin_is_not_lifted_by_a_new_commit(tmp_path: Path) -> None:
    agent, rt, repo, good, _ = setup(tmp_path)
    commit(repo, stack("2"), "two")
    agent.reconcile({"file"})
    agent.check_progress()
    agent.rollback(good)
    agent.reconcile({"rollback"})
    assert "V=1" in env(rt) and agent.history.pin_reason() == "manual"
    assert agent.probation is None
    commit(repo, stack("3"), "three")
    agent.reconcile({"file"})
    agent.reconcile({"resync"})
    assert "V=1" in env(rt)
    assert agent.history.pinned() == good and agent.history.pin_reason() == "manual"
    agent.resume()
    agent.reconcile({"resume"})
    assert "V=3" in env(rt) and agent.history.pinned() is None


def test_a_revision_that_does_not_load_is_failed_not_rolled_back(tmp_path: Path) -> None:
    agent, rt, repo, _, _ = setup(tmp_path)
    before = rt.containers["st-s0-1"].id
    broken = commit(repo, stack("2").replace(f"image: {IMAGE}", "image: 3"), "broken")
    agent.reconcile({"file"})
    assert agent.history.passes()[0].revision == broken
    assert agent.history.passes()[0].outcome == "failed"
    assert agent.history.pinned() is None and pending(agent) == set()
    assert rt.containers["st-s0-1"].id == before
    fix = commit(repo, stack("3"), "fix")
    agent.reconcile({"file"})
    assert "V=3" in env(rt) and agent.history.passes()[0].revision == fix


def test_without_a_deadline_nothing_is_judged(tmp_path: Path) -> None:
    agent, rt, repo, _, _ = setup(tmp_path)
    agent.options.progress_deadline_s = None
    rt.refuse.add("st-s0-1")
    commit(repo, stack("2"), "cannot start")
    agent.reconcile({"file"})
    assert agent.history.passes()[0].outcome == "failed"
    assert agent.history.pinned() is None and pending(agent) == set()


def test_the_decisions() -> None:
    assert after_pass(
        deadline_s=None, pinned=False, new_revision=True, outcome="failed", errors=["x"]
    ).action == ("none")
    assert (
        after_pass(deadline_s=5, pinned=True, new_revision=True, outcome="failed", errors=[]).action
        == "none"
    )
    assert (
        after_pass(
            deadline_s=5, pinned=False, new_revision=False, outcome="failed", errors=[]
        ).action
        == "none"
    )
    failed = after_pass(
        deadline_s=5, pinned=False, new_revision=True, outcome="failed", errors=["boom"]
    )
    assert (failed.action, failed.reason) == ("rollback", "apply failed: boom")
    assert (
        after_pass(
            deadline_s=5, pinned=False, new_revision=True, outcome="succeeded", errors=[]
        ).action
        == "wait"
    )
    p = Probation("abc", 100.0, 110.0)
    assert judge(p, {"a": "Healthy", "b": "Healthy"}, 200.0).action == "healthy"
    assert judge(p, {}, 200.0).action == "healthy"
    assert judge(p, {"a": "Healthy", "b": "Degraded"}, 105.0).action == "wait"
    late = judge(p, {"a": "Progressing", "b": "Healthy"}, 110.0)
    assert (late.action, late.reason) == (
        "rollback",
        "not Healthy within 10s of its apply (stack a: Progressing)",
    )
    assert lift_auto_pin("auto", "new", "good", ["bad"])
    assert not lift_auto_pin("auto", "bad", "good", ["bad"])
    assert not lift_auto_pin("auto", "good", "good", ["bad"])
    assert not lift_auto_pin("manual", "new", "good", ["bad"])
    assert remember(["a", "b"], "a") == ["b", "a"]
    assert len(remember([str(i) for i in range(60)], "x")) == 50
    assert check_every(1.0) == 0.2 and check_every(600) == 2.0 and check_every(10) == 1.0


def test_the_record_keeps_pin_reasons_verdicts_and_the_rollback_target(tmp_path: Path) -> None:
    h = History(str(tmp_path / "root"))
    assert h.pin_reason() is None
    h.set_state("pinned", "abc")  # a pin of an earlier version, without a reason
    assert h.pin_reason() == "manual"
    h.pin("abc", "auto")
    assert (h.pinned(), h.pin_reason()) == ("abc", "auto")
    h.pin(None)
    assert h.pinned() is None and h.pin_reason() is None and h.get_state("pin_reason") is None
    # a rolled-back pass keeps its errors and gets the reason
    first = h.begin("good", "s", "file")
    h.finish(first, "succeeded")
    bad = h.begin("bad", "s", "file")
    h.finish(bad, "failed", {}, ["create x: boom"])
    assert h.mark_rolled_back("bad", "apply failed: boom") == bad
    assert h.mark_rolled_back("never-seen", "why") is None
    rec = h.get(bad)
    assert rec is not None and rec.outcome == "rolled-back"
    assert rec.errors == ("create x: boom", "apply failed: boom")
    # the last healthy revision's files outlive the pruning of its passes
    h.store_revision("good", "s", "/src", {"s.yaml": b"x"})
    h.store_revision("bad", "s", "/src", {"s.yaml": b"y"})
    h.set_last_healthy("good")
    for _ in range(3):
        h.finish(h.begin("other", "s", "file"), "succeeded")
    h.prune(keep=1)
    assert h.revision_files("good")[2] == {"s.yaml": b"x"}
    with pytest.raises(UnknownRevision):
        h.revision_files("bad")
