"""The watch agent under faults, end to end, on each real runtime: a real `pyapply watch`
process, real file events, real forks by the libraries it uses, a busy API.

- The file watch survives the native runtime's netns work: pyroute2 forks a child for each
  netns it enters and ends it with SIGTERM; that child must not run the agent's handlers
  (which stopped the agent's inotify watches, shared with the child).
- The API holds a burst: 100 clients at once (and real `pyapply status` processes among
  them) all get their answer; a busy agent is never reported as no agent.
- Revision arguments are ids or unambiguous prefixes of 7+ hex digits, never patterns.
- The CLI never acts behind an agent's back: an agent that holds the state root but does
  not answer on the socket given is waited for, then reported, and nothing is applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyapply.reconciler.agent.api import AgentClient, AgentError, AgentUnavailable
from tests.e2e.runtimes import PYAPPLY, Observer, RuntimeUnderTest
from tests.e2e.test_agent import (
    AgentProc,
    Repo,
    agent_on,
    git,
    label,
    running,
    stack_yaml,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, runtime) as proc:
        yield proc


class GitSync:
    """git-sync's layout: `<root>/.worktrees/<sha>` checkouts and `<root>/current`, a symlink
    replaced by an atomic rename."""

    def __init__(self, tmp: Path) -> None:
        self.repo = Repo(tmp / "upstream")
        self.root = tmp / "git"
        (self.root / ".worktrees").mkdir(parents=True)
        self.link = self.root / "current"

    def commit(self, text: str, message: str) -> str:
        sha = self.repo.commit({"stack.yaml": text}, message)
        git(
            self.repo.path,
            "worktree",
            "add",
            "-q",
            "--detach",
            str(self.root / ".worktrees" / sha),
            sha,
        )
        return sha

    def flip(self, sha: str) -> float:
        """Publish `sha`; returns the wall-clock time of the rename."""
        tmp = self.root / "current.tmp"
        os.symlink(f".worktrees/{sha}", tmp)
        at = time.time()
        os.replace(tmp, self.link)
        return at


def recorded(agent: AgentProc, sha: str) -> dict[str, Any] | None:
    """The finished pass of revision `sha`, if there is one."""
    for p in agent.history():
        if p["revision"] == sha[:12] and p["outcome"] != "running":
            return p
    return None


FLIPS = 10


def test_every_flip_is_seen_by_the_file_watch_through_netns_work(
    agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    """10 flips, each recreating a container (on native: a new netns, entered by pyroute2's
    forked children). The poll is 60 s and the resync 300 s, so a pass that starts within
    5 s of a flip can only come from the file watch; the pass's recorded trigger says so
    too ("file", where the poll records "poll"). No forked child may log the agent's
    "signal SIGTERM: stopping"."""
    obs: Observer = runtime.observe
    stack = runtime.stack
    sync = GitSync(tmp_path)
    app = f"{stack}-app-1"
    first = sync.commit(stack_yaml(stack, {"app": "0"}), "v0")
    sync.flip(first)
    agent.start(sync.link, "--poll", "60", "--interval", "300")
    wait_for("the first revision", lambda: running(obs, app) and label(obs, app) == first[:12])
    ids = {obs.must(app).id}
    seen: list[tuple[str, float]] = []
    for i in range(1, FLIPS + 1):
        sha = sync.commit(stack_yaml(stack, {"app": str(i)}), f"v{i}")
        at = sync.flip(sha)
        rec = wait_for(f"flip {i} recorded", lambda s=sha: recorded(agent, s), timeout=30)  # type: ignore[misc]
        assert rec["outcome"] == "succeeded", rec
        seen.append((rec["trigger"], rec["started"] - at))
        assert rec["trigger"] == "file", (i, rec, agent.logs()[-3000:])
        assert rec["started"] - at < 5.0, (i, rec)
        assert label(obs, app) == sha[:12] and running(obs, app)
        ids.add(obs.must(app).id)
    assert len(ids) == FLIPS + 1, "every flip recreates the container"
    logs = agent.logs()
    assert "SIGTERM" not in logs, logs
    assert agent.stop() == 0
    stops = [line for line in agent.logs().splitlines() if "signal SIGTERM" in line]
    assert len(stops) == 1, stops  # the agent's own, once
    print("flip -> pass start:", [(t, round(s, 2)) for t, s in seen])


CLIENTS = 100


def test_a_burst_of_clients_is_answered(
    agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    """100 clients ask /v1/status at the same instant while 4 `pyapply status` processes
    run: every client gets 200 within 30 s (served at once, or after the agent's 503 with
    Retry-After, which the client honours), every process exits 0."""
    obs = runtime.observe
    stack = runtime.stack
    repo = Repo(tmp_path / "repo")
    sha = repo.commit({"stack.yaml": stack_yaml(stack, {"app": "1", "db": "1"})}, "one")
    agent.start(repo.path)
    wait_for("running", lambda: running(obs, f"{stack}-app-1") and running(obs, f"{stack}-db-1"))
    wait_for("applied", lambda: agent.api("GET", "/v1/status")["revision"]["applied"] == sha[:12])
    gate = threading.Barrier(CLIENTS + 1)
    results: list[tuple[int | str, float, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        gate.wait()
        started = time.monotonic()
        try:
            status, doc = AgentClient(agent.socket).request("GET", "/v1/status", timeout=60)
            outcome: tuple[int | str, float, Any] = (status, time.monotonic() - started, doc)
        except (AgentError, AgentUnavailable) as exc:
            outcome = (type(exc).__name__, time.monotonic() - started, str(exc))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    procs = [
        subprocess.Popen(
            [PYAPPLY, "status", "-o", "json"],
            env=agent.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    gate.wait()
    for t in threads:
        t.join(90)
    outs = [p.communicate(timeout=90) for p in procs]
    assert len(results) == CLIENTS
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    slowest = max(r[1] for r in results)
    assert slowest < 30, slowest
    assert all(r[2]["revision"]["applied"] == sha[:12] for r in results)
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "no agent" not in err
        assert json.loads(out)["revision"]["applied"] == sha[:12]
    print(f"{CLIENTS} clients: slowest answer {slowest:.2f}s")
    agent.alive()


@pytest.fixture
def native_agent(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, native) as proc:
        yield proc


def test_revisions_are_ids_or_prefixes_and_the_cli_never_acts_behind_the_agent(
    native_agent: AgentProc, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    """On the default runtime (native) only: what is checked is the API's and the CLI's,
    the same on both runtimes."""
    agent = native_agent
    obs = native.observe
    stack = native.stack
    app = f"{stack}-app-1"
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": stack_yaml(stack, {"app": "1"})}, "one")
    agent.start(repo.path)
    wait_for("one", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    sha2 = repo.commit({"stack.yaml": stack_yaml(stack, {"app": "2"})}, "two")
    wait_for("two", lambda: label(obs, app) == sha2[:12] and running(obs, app))
    wait_for("two recorded", lambda: recorded(agent, sha2))

    # patterns and short prefixes name nothing, through the API and the CLI
    for bad in ("%", "_", sha1[:3] + "%", sha1[:6]):
        status, doc = agent.client.request("POST", "/v1/rollback", {"revision": bad})
        assert status == 400 and "at least 7 hex digits" in doc["error"], (bad, doc)
        status, doc = agent.client.request("GET", f"/v1/history?revision={bad.replace('%', '%25')}")
        assert status == 400, (bad, doc)
    for args in (["rollback", "%"], ["history", "--revision", "%"]):
        out = agent.cli(*args, ok=False)
        assert out.returncode == 1 and "at least 7 hex digits" in out.stderr, out
    assert label(obs, app) == sha2[:12]
    assert agent.api("GET", "/v1/status")["revision"]["pinned"] is None
    # an unambiguous prefix of 7 does name it
    doc = agent.api("GET", f"/v1/history?revision={sha1[:7]}")
    assert {p["revision"] for p in doc["passes"]} == {sha1[:12]}

    # the agent holds the root, but the CLI is given a socket nobody serves: it waits, says
    # so, exits 1, and applies nothing (before, it rolled back behind the agent's back)
    passes = len(agent.history())
    elsewhere = str(tmp_path / "elsewhere.sock")
    for args in (["rollback", sha1[:12]], ["sync"]):
        started = time.monotonic()
        out = agent.cli(*args, "--socket", elsewhere, "--agent-wait", "1", ok=False)
        assert out.returncode == 1, out
        assert "runs on" in out.stderr and "not acting behind its back" in out.stderr, out
        assert "Traceback" not in out.stderr
        assert time.monotonic() - started >= 1
    time.sleep(0.5)
    assert label(obs, app) == sha2[:12] and running(obs, app)
    assert len(agent.history()) == passes
    assert agent.api("GET", "/v1/status")["revision"]["pinned"] is None
    # through the agent's own socket the same rollback works
    out = agent.cli("rollback", sha1[:7])
    assert "pinned to " + sha1[:12] in out.stdout
    assert label(obs, app) == sha1[:12]
    assert agent.stop() == 0
