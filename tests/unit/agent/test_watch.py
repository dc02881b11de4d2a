"""The watch side of the agent on real files, real git and an in-memory runtime:
sources (dir, git, git-sync link), debounce, back-off, trigger coalescing, one pass."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeRuntime

from pyapply.reconciler.agent.agent import Agent, AgentOptions
from pyapply.reconciler.agent.api import AgentClient, Api
from pyapply.reconciler.agent.sources import (
    Backoff,
    EventWatcher,
    FileWatcher,
    Source,
    directory_revision,
)
from pyapply.reconciler.agent.triggers import Triggers
from pyapply.reconciler.manifest.policy import builtin
from pyapply.runtime.base import Event, ImageInfo, RuntimeFailure

IMAGE = "pyapply-test/busybox:latest"


def stack_yaml(name: str, value: str = "1", services: int = 1) -> str:
    svcs = "".join(
        f"""    s{i}:
      image: {IMAGE}
      command: ["sleep", "1000"]
      environment: {{V: "{value}"}}
"""
        for i in range(services)
    )
    return f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  services:\n{svcs}"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.invalid")
    git(path, "config", "user.name", "t")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def flip(link: Path, target: str) -> None:
    tmp = link.parent / (link.name + ".tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


# -- sources ----------------------------------------------------------------------------------


def test_source_kinds(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert Source.of(str(plain)).kind == "dir"
    repo = make_repo(tmp_path / "repo")
    assert Source.of(str(repo)).kind == "git"
    (tmp_path / "wt" / "abc" / "deploy").mkdir(parents=True)
    os.symlink("wt/abc", tmp_path / "current")
    src = Source.of(str(tmp_path / "current" / "deploy"))
    assert src.kind == "link"
    assert src.link == str(tmp_path / "current") and src.sub == "deploy"
    assert src.resolve() == str(tmp_path / "wt" / "abc" / "deploy")
    assert src.watch_dirs() == [(str(tmp_path), False)]
    assert src.relevant(str(tmp_path / "current"))
    assert not src.relevant(str(tmp_path / "other"))


def test_relevant_ignores_dot_directories(tmp_path: Path) -> None:
    src = Source.of(str(tmp_path))
    assert src.relevant(str(tmp_path / "a.yaml"))
    assert src.relevant(str(tmp_path / ".env"))
    assert not src.relevant(str(tmp_path / ".git" / "index"))
    assert not src.relevant(str(tmp_path / ".git"))
    assert not src.relevant("/elsewhere/a.yaml")


def test_revision_is_the_commit_else_a_content_hash(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sha = commit(repo, {"s.yaml": stack_yaml("a")}, "add a")
    rev = directory_revision(str(repo))
    assert (rev.id, rev.subject, rev.commit) == (sha[:12], "add a", sha)
    (repo / "s.yaml").write_text(stack_yaml("a", "2"))
    assert directory_revision(str(repo)).id.startswith(sha[:12] + "+")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "s.yaml").write_text(stack_yaml("a"))
    first = directory_revision(str(plain)).id
    assert first.startswith("sha256:")
    (plain / "s.yaml").write_text(stack_yaml("a", "2"))
    assert directory_revision(str(plain)).id not in (first,)
    # a git-sync link without git: the target's name is the commit
    wt = tmp_path / "sync" / ".worktrees" / ("ab" * 20)
    wt.mkdir(parents=True)
    (wt / "s.yaml").write_text(stack_yaml("a"))
    os.symlink(f".worktrees/{'ab' * 20}", tmp_path / "sync" / "current")
    rev = directory_revision(str(wt), str(tmp_path / "sync" / "current"))
    assert rev.id == ("ab" * 20)[:12]


# -- file events ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.calls.append((time.monotonic(), reason))
        self.event.set()

    def wait(self, timeout: float = 5.0) -> bool:
        ok = self.event.wait(timeout)
        self.event.clear()
        return ok


def test_a_burst_of_writes_fires_once_after_the_debounce(tmp_path: Path) -> None:
    rec = Recorder()
    watcher = FileWatcher(Source.of(str(tmp_path)), rec, debounce_s=0.3, poll_s=60)
    watcher.start()
    try:
        time.sleep(0.2)
        start = time.monotonic()
        for i in range(5):
            (tmp_path / f"f{i}.yaml").write_text("x")
            time.sleep(0.05)
        assert rec.wait()
        assert rec.calls[0][0] - start >= 0.3
        time.sleep(0.6)
        assert len(rec.calls) == 1
        (tmp_path / ".git").mkdir()
        (tmp_path / ".git" / "index").write_text("x")  # ignored
        time.sleep(0.6)
        assert len(rec.calls) == 1
    finally:
        watcher.stop()


def test_a_symlink_flip_is_seen_in_the_parent_directory(tmp_path: Path) -> None:
    for sha in ("a" * 40, "b" * 40):
        (tmp_path / ".worktrees" / sha).mkdir(parents=True)
    link = tmp_path / "current"
    os.symlink(f".worktrees/{'a' * 40}", link)
    rec = Recorder()
    watcher = FileWatcher(Source.of(str(link)), rec, debounce_s=0.1, poll_s=60)
    watcher.start()
    try:
        time.sleep(0.2)
        (tmp_path / ".worktrees" / ("a" * 40) / "x.yaml").write_text("ignored: inside target")
        (tmp_path / "unrelated").write_text("x")
        assert not rec.wait(0.5)
        flip(link, f".worktrees/{'b' * 40}")
        assert rec.wait()
    finally:
        watcher.stop()


def test_the_poll_catches_what_events_missed(tmp_path: Path) -> None:
    (tmp_path / "wt1").mkdir()
    (tmp_path / "wt2").mkdir()
    link = tmp_path / "current"
    os.symlink("wt1", link)
    rec = Recorder()
    watcher = FileWatcher(Source.of(str(link)), rec, debounce_s=0.1, poll_s=0.3)
    watcher._start_observer = lambda: None  # type: ignore[method-assign]  # no inotify
    watcher.start()
    try:
        time.sleep(0.1)
        flip(link, "wt2")
        assert rec.wait(3)
    finally:
        watcher.stop()


def test_backoff_after_repeated_deaths() -> None:
    b = Backoff(free=3, window_s=60, max_s=8)
    assert [b.delay("c", now=t) for t in range(3)] == [0, 0, 0]
    assert [b.delay("c", now=3 + t) for t in range(5)] == [1, 2, 4, 8, 8]
    assert b.delay("other", now=10) == 0
    assert b.delay("c", now=1000) == 0  # the window forgot


def test_death_events_of_managed_stacks_fire() -> None:
    rec = Recorder()
    w = EventWatcher(FakeRuntime, rec, lambda: {"mine"}, backoff=Backoff(free=1, max_s=0.2))
    w.handle("container", "die", "mine-a-1", {"io.pyapply.stack": "mine"})
    w.handle("container", "die", "x-a-1", {"io.pyapply.stack": "theirs"})
    w.handle("container", "start", "mine-a-1", {"io.pyapply.stack": "mine"})
    assert [r for _, r in rec.calls] == ["event:mine-a-1"]
    rec.event.clear()
    w.handle("container", "die", "mine-a-1", {"io.pyapply.stack": "mine"})  # backed off
    assert len(rec.calls) == 1
    assert rec.wait(2) and len(rec.calls) == 2


def test_start_returns_once_the_event_stream_is_open() -> None:
    # a death right after the agent's first pass must not wait for the resync: the stream is
    # subscribed (the runtime's events() called) before start() returns
    called = threading.Event()

    class Slow(FakeRuntime):
        def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
            time.sleep(0.3)
            called.set()
            return iter(())

    w = EventWatcher(Slow, Recorder(), lambda: {"mine"})
    try:
        w.start()
        assert called.is_set()
    finally:
        w.stop()


def test_start_gives_up_waiting_on_a_runtime_without_events() -> None:
    class Broken(FakeRuntime):
        def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
            raise RuntimeFailure("no events here")

    w = EventWatcher(Broken, Recorder(), lambda: {"mine"})
    started = time.monotonic()
    try:
        w.start(wait_s=0.2)
    finally:
        w.stop()
    assert time.monotonic() - started < 5  # bounded: the agent goes on


# -- triggers ---------------------------------------------------------------------------------


def test_triggers_during_a_pass_make_exactly_one_more() -> None:
    t = Triggers()
    ticket = t.put("file")
    assert ticket == 1
    assert t.take(0) == {"file"}
    assert t.put("event:a") == 2 and t.put("resync") == 2 and t.put("api") == 2
    t.done()
    assert t.take(0) == {"event:a", "resync", "api"}
    t.done()
    assert t.take(0.01) == set()
    assert t.wait_for(2, 0.1)
    t.close()
    assert t.put("x") == -1


# -- the agent on an in-memory runtime ---------------------------------------------------------


def fake_agent(tmp_path: Path, path: Path, **options: object) -> tuple[Agent, FakeRuntime]:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ())})
    agent = Agent(
        Source.of(str(path)),
        str(tmp_path / "root"),
        AgentOptions(runtime_events=False, **options),  # type: ignore[arg-type]
        lambda: rt,
    )
    return agent, rt


def test_agent_applies_rejects_bad_revisions_and_skips_seen_ones(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sha1 = commit(repo, {"s.yaml": stack_yaml("st", "1", services=2)}, "two services")
    agent, rt = fake_agent(tmp_path, repo)
    agent.reconcile({"start"})
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    assert agent.history.passes()[0].outcome == "succeeded"
    assert agent.history.passes()[0].revision == sha1[:12]
    # a file event with the same revision: nothing happens, nothing is recorded
    calls = len(rt.calls)
    agent.reconcile({"file"})
    assert len(rt.calls) == calls and len(agent.history.passes()) == 1
    # a bad commit: recorded as failed, nothing torn down
    sha2 = commit(
        repo,
        {
            "s.yaml": "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: st}\nspec:\n  services:\n    s0: {image: 3}\n"
        },
        "broken",
    )
    agent.reconcile({"file"})
    bad = agent.history.passes()[0]
    assert (bad.revision, bad.outcome) == (sha2[:12], "failed") and bad.errors
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    # self-heal goes on with the last good revision
    rt.remove_container("st-s1-1")
    agent.reconcile({"resync"})
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    # the next good commit applies
    sha3 = commit(repo, {"s.yaml": stack_yaml("st", "3", services=1)}, "one service")
    agent.reconcile({"file"})
    assert agent.history.passes()[0].revision == sha3[:12]
    assert agent.history.passes()[0].outcome == "succeeded"
    assert sorted(rt.containers) == ["st-s0-1"]
    assert any("V=3" in e for e in rt.containers["st-s0-1"].env)


def test_vanished_manifests_are_refused_without_allow_empty(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("keep"))
    (d / "b.yaml").write_text(stack_yaml("gone"))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    assert sorted(rt.containers) == ["gone-s0-1", "keep-s0-1"]
    (d / "b.yaml").unlink()
    agent.reconcile({"file"})
    rec = agent.history.passes()[0]
    assert rec.outcome == "refused" and "gone" in rec.errors[0]
    assert sorted(rt.containers) == ["gone-s0-1", "keep-s0-1"]
    agent.options.allow_empty = True
    (d / "c.yaml").write_text("# touch\n")
    agent.reconcile({"file"})
    assert agent.history.passes()[0].outcome == "succeeded"
    assert sorted(rt.containers) == ["keep-s0-1"]
    assert agent.history.managed_stacks() == {"keep"}


def test_a_revision_the_policy_denies_is_refused_with_located_errors(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("pol"))
    agent, rt = fake_agent(tmp_path, d)  # the restricted policy by default
    agent.reconcile({"start"})
    assert sorted(rt.containers) == ["pol-s0-1"]
    before = rt.containers["pol-s0-1"].id
    (d / "a.yaml").write_text(
        stack_yaml("pol", "2").replace("      command:", "      privileged: true\n      command:")
    )
    agent.reconcile({"file"})
    rec = agent.history.passes()[0]
    assert rec.outcome == "failed"
    assert rec.errors == (
        f"{d}/a.yaml:8:7: spec.services.s0.privileged: a privileged container has every "
        'capability and the host\'s devices; the policy denies this (rule "privileged")',
    )
    assert rt.containers["pol-s0-1"].id == before
    assert not any("V=2" in e for e in rt.containers["pol-s0-1"].env)
    # the same revision under a policy that only warns is applied
    warn_agent, warn_rt = fake_agent(tmp_path / "w", d, policy=builtin("warn"))
    warn_agent.reconcile({"start"})
    assert warn_agent.history.passes()[0].outcome == "succeeded"
    assert any("V=2" in e for e in warn_rt.containers["pol-s0-1"].env)


def test_rollback_pins_until_resume(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sha1 = commit(repo, {"s.yaml": stack_yaml("st", "1")}, "one")
    agent, rt = fake_agent(tmp_path, repo)
    agent.reconcile({"start"})
    commit(repo, {"s.yaml": stack_yaml("st", "2")}, "two")
    agent.reconcile({"file"})
    assert any("V=2" in e for e in rt.containers["st-s0-1"].env)
    full, _ = agent.rollback(sha1[:8])
    assert full == sha1[:12]
    agent.reconcile({"rollback"})
    assert any("V=1" in e for e in rt.containers["st-s0-1"].env)
    commit(repo, {"s.yaml": stack_yaml("st", "3")}, "three")
    agent.reconcile({"file"})  # pinned: git is not followed
    assert any("V=1" in e for e in rt.containers["st-s0-1"].env)
    agent.resume()
    agent.reconcile({"resume"})
    assert any("V=3" in e for e in rt.containers["st-s0-1"].env)


def openapi_validator(name: str) -> Any:
    import jsonschema

    doc = json.loads(
        (Path(__file__).parents[3] / "schemas" / "v1" / "agent-api.openapi.json").read_text()
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def test_api_over_the_unix_socket(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("apist"))
    agent, rt = fake_agent(tmp_path, d)
    sock = str(tmp_path / "run" / "agent.sock")
    api = Api(agent, sock, lambda: rt)
    api.start()
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()
    try:
        client = AgentClient(sock)
        assert client.available()
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        status, doc = client.request("POST", "/v1/sync?wait=true")
        assert status == 200 and doc["result"]["outcome"] == "succeeded"
        status, doc = client.request("GET", "/v1/status")
        assert status == 200 and doc["sync"] == "Synced"
        openapi_validator("Status").validate(doc)
        assert doc["stacks"][0]["health"] == "Healthy"
        rt.remove_container("apist-s0-1")
        status, doc = client.request("GET", "/v1/status")
        assert doc["sync"] == "OutOfSync" and doc["stacks"][0]["health"] == "Degraded"
        status, doc = client.request("GET", "/v1/diff")
        assert status == 200 and doc["drift"] is True
        status, doc = client.request("GET", "/v1/history")
        assert status == 200 and doc["passes"][0]["outcome"] == "succeeded"
        for record in doc["passes"]:
            openapi_validator("Pass").validate(record)
        status, doc = client.request("POST", "/v1/rollback", {"revision": "0000000"})
        assert status == 404 and "no recorded revision" in doc["error"]
        for bad in ("nope", "%", "abc"):  # not an id, nor 7+ hex digits of one
            status, doc = client.request("POST", "/v1/rollback", {"revision": bad})
            assert status == 400 and "at least 7 hex digits" in doc["error"], (bad, doc)
        status, doc = client.request("GET", "/v1/history?revision=%25")
        assert status == 400 and "at least 7 hex digits" in doc["error"]
        status, doc = client.request("POST", "/v1/rollback", {})
        assert status == 400
        status, doc = client.request("GET", "/v1/sync")
        assert status == 405
        status, doc = client.request("POST", "/v1/resume")
        assert status == 202 and doc["pinned"] is False
        assert json.dumps(doc)
    finally:
        agent.shutdown("test")
        loop.join(10)
        api.stop()
    assert not loop.is_alive()
    assert not os.path.exists(sock)


def test_a_second_agent_refuses_a_live_socket(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    agent, rt = fake_agent(tmp_path, d)
    sock = str(tmp_path / "agent.sock")
    api = Api(agent, sock, lambda: rt)
    api.start()
    try:
        with pytest.raises(OSError, match="another agent"):
            Api(agent, sock, lambda: rt).start()
    finally:
        api.stop()


def test_metrics_count_passes_and_actions(tmp_path: Path) -> None:
    from pyapply.reconciler.agent.metrics import Metrics

    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("met", services=2))
    agent, _ = fake_agent(tmp_path, d)
    agent.metrics = Metrics()
    agent.reconcile({"start"})
    (d / "b.yaml").write_text("not: [valid")
    agent.reconcile({"file"})
    text = agent.metrics.render().decode()
    assert 'pyapply_reconcile_passes_total{outcome="succeeded",trigger="start"} 1.0' in text
    assert 'pyapply_actions_total{kind="create",status="done"} 2.0' in text
    assert 'pyapply_objects_drifted{stack="met"} 3.0' in text  # 2 containers + 1 network
    assert 'pyapply_reconcile_errors_total{kind="load"} 1.0' in text
    assert "pyapply_last_applied_revision_timestamp_seconds " in text
    assert "pyapply_reconcile_duration_seconds_count 1.0" in text


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from pyapply.reconciler.agent.logs import setup_logging

    setup_logging("json")
    try:
        logging.getLogger("pyapply.agent").info(
            "hello %s", "x", extra={"fields": {"revision": "r1"}}
        )
        line = capsys.readouterr().err.strip().splitlines()[-1]
    finally:
        root = logging.getLogger("pyapply")
        root.handlers.clear()
        root.propagate = True
    doc = json.loads(line)
    assert doc["msg"] == "hello x" and doc["revision"] == "r1" and doc["level"] == "info"
    assert isinstance(doc["ts"], float)


def test_a_restarted_agent_on_a_bad_revision_heals_with_the_last_good(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("heal"))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    (d / "a.yaml").write_text("apiVersion: pyapply/v1\nkind: Stack\n")
    rt.remove_container("heal-s0-1")
    again = Agent(
        Source.of(str(d)), str(tmp_path / "root"), AgentOptions(runtime_events=False), lambda: rt
    )
    good = agent.history.passes()[0].revision
    again.reconcile({"start"})
    healed, failed = again.history.passes()[:2]
    assert failed.outcome == "failed" and failed.revision != good
    assert (healed.outcome, healed.revision) == ("succeeded", good)
    assert "heal-s0-1" in rt.containers


def test_a_commit_that_changes_no_file_is_seen_through_the_branch_ref(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    commit(repo, {"s.yaml": stack_yaml("a")}, "one")
    src = Source.of(str(repo / "."))
    assert src.git_dir == str(repo / ".git")
    assert src.relevant(str(repo / ".git" / "refs" / "heads" / "main"))
    assert src.relevant(str(repo / ".git" / "HEAD"))
    assert not src.relevant(str(repo / ".git" / "objects" / "ab" / "cdef"))
    rec = Recorder()
    watcher = FileWatcher(src, rec, debounce_s=0.1, poll_s=60)
    watcher.start()
    try:
        time.sleep(0.2)
        git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
        assert rec.wait(3)
    finally:
        watcher.stop()


@pytest.mark.parametrize(
    ("restart", "exit_code", "restarted"),
    [
        ("on-failure", 0, False),  # success is not a failure: completed
        ("on-failure", 137, True),  # killed by hand: the agent starts it
        ("no", 0, False),
        ("always", 0, True),
        ("unless-stopped", 143, True),  # docker stop by hand
    ],
)
def test_what_the_agent_does_with_a_dead_container(
    tmp_path: Path, restart: str, exit_code: int, restarted: bool
) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(
        stack_yaml("dead").replace(
            '      command: ["sleep", "1000"]\n', f"      restart: {restart}\n"
        )
    )
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    rt.mutate("dead-s0-1", status="exited", exit_code=exit_code)
    agent.reconcile({"event:dead-s0-1"})
    assert rt.containers["dead-s0-1"].running is restarted


def test_deaths_the_agent_causes_are_not_crashes() -> None:
    from pyapply.reconciler.agent.actions import OwnStops

    own = OwnStops(grace_s=0.2)
    rec = Recorder()
    w = EventWatcher(FakeRuntime, rec, lambda: {"mine"}, ours=own)
    labels = {"io.pyapply.stack": "mine"}
    own.begin("mine-a-1")
    w.handle("container", "die", "mine-a-1", labels)
    own.end("mine-a-1")
    w.handle("container", "destroy", "mine-a-1", labels)  # late, within the grace
    assert rec.calls == []
    w.handle("container", "die", "mine-b-1", labels)  # someone else's doing
    assert [r for _, r in rec.calls] == ["event:mine-b-1"]
    time.sleep(0.3)
    w.handle("container", "die", "mine-a-1", labels)  # after the grace: a crash
    assert [r for _, r in rec.calls] == ["event:mine-b-1", "event:mine-a-1"]


def test_a_recreating_pass_marks_its_own_stops(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("own", "1"))
    agent, _ = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    (d / "a.yaml").write_text(stack_yaml("own", "2"))
    agent.reconcile({"file"})
    assert agent.own_stops("own-s0-1")  # removed for the recreate, moments ago
    assert not agent.own_stops("own-s1-1")


# -- the guard against emptying, and a record that fails ------------------------------------


def test_services_emptied_is_refused_shown_and_allowed_with_allow_empty(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("st", services=2))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    empty = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: st}\nspec:\n  services: {}\n"
    (d / "a.yaml").write_text(empty)
    agent.reconcile({"file"})
    rec = agent.history.passes()[0]
    assert rec.outcome == "refused"
    assert "stack st would be left with no containers while it has 2" in rec.errors[0]
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    # self-healing goes on with the last good revision, and the status still says why the
    # source is not applied
    rt.remove_container("st-s1-1")
    agent.reconcile({"resync"})
    assert sorted(rt.containers) == ["st-s0-1", "st-s1-1"]
    status = agent.status(rt)
    assert status["last_result"]["outcome"] == "succeeded"
    assert status["rejected"]["outcome"] == "refused"
    assert "--allow-empty" in status["rejected"]["errors"][0]
    openapi_validator("Status").validate(status)
    agent.options.allow_empty = True
    agent.reconcile({"api"})
    assert agent.history.passes()[0].outcome == "succeeded"
    assert rt.containers == {}
    assert agent.status(rt)["rejected"] is None


def test_replicas_zero_everywhere_is_applied(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("st", services=2))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    zero = stack_yaml("st", services=2).replace("      command:", "      scale: 0\n      command:")
    (d / "a.yaml").write_text(zero)
    agent.reconcile({"file"})
    assert agent.history.passes()[0].outcome == "succeeded"
    assert rt.containers == {}


def test_garbage_over_the_history_is_moved_aside_and_reconciling_goes_on(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("st"))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    db = Path(agent.history.path)
    db.write_bytes(os.urandom(3000))
    rt.remove_container("st-s0-1")
    agent.reconcile({"resync"})
    assert sorted(rt.containers) == ["st-s0-1"]
    moved = sorted(p.name for p in db.parent.glob("history.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].startswith("history.db.corrupt-2")
    status = agent.status(rt)
    reset = status["history_reset"]
    assert reset["path"] == str(db) and reset["moved_to"].endswith(moved[0])
    assert "not a database" in reset["reason"]
    openapi_validator("Status").validate(status)
    # the new record goes on; the managed stacks were kept in memory and written again
    assert [p.trigger for p in agent.history.passes()] == ["resync"]
    assert agent.history.managed_stacks() == {"st"}


def test_a_history_that_cannot_be_written_never_stops_a_pass(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.yaml").write_text(stack_yaml("st"))
    agent, rt = fake_agent(tmp_path, d)
    agent.reconcile({"start"})
    db = Path(agent.history.path)
    db.unlink()
    db.mkdir()  # unopenable: neither damaged (nothing to move aside) nor writable
    try:
        rt.remove_container("st-s0-1")
        agent.reconcile({"resync"})
        assert sorted(rt.containers) == ["st-s0-1"]
        status = agent.status(rt)
        assert status["history"]["write_failures"] >= 1
        assert status["history_reset"] is None
        assert status["last_result"]["outcome"] == "succeeded"
        assert status["last_result"]["pass"] is None  # not recorded
        assert agent.history.managed_stacks() == {"st"}  # from memory
    finally:
        db.rmdir()


def test_a_pin_whose_files_went_with_a_damaged_revisions_db_is_dropped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    sha1 = commit(repo, {"s.yaml": stack_yaml("st", "1")}, "one")
    agent, rt = fake_agent(tmp_path, repo)
    agent.reconcile({"start"})
    commit(repo, {"s.yaml": stack_yaml("st", "2")}, "two")
    agent.reconcile({"file"})
    agent.rollback(sha1[:8])
    agent.reconcile({"rollback"})
    assert any("V=1" in e for e in rt.containers["st-s0-1"].env)
    Path(agent.history.revisions_path).write_bytes(os.urandom(5000))
    # a new agent (a restart): revisions.db is moved aside, the pin cannot be honoured, and
    # the source is followed rather than nothing reconciled at all
    again = Agent(
        Source.of(str(repo)), str(tmp_path / "root"), AgentOptions(runtime_events=False), lambda: rt
    )
    assert [os.path.basename(r.path) for r in again.history_resets] == ["revisions.db"]
    assert again.history.pinned() == sha1[:12]
    again.reconcile({"start"})
    assert again.history.pinned() is None
    assert any("V=2" in e for e in rt.containers["st-s0-1"].env)
