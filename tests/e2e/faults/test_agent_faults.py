"""The watch agent under faults, end to end, on each real runtime: a real `pyapply watch`
process, real file events, real forks by the libraries it uses, a busy API.

- The file watch survives the native runtime's netns work: pyroute2 forks a child for each
  netns it enters and ends it with SIGTERM; that child must not run the agent's handlers
  (which stopped the agent's inotify watches, shared with the child).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.runtimes import Observer, RuntimeUnderTest
from tests.e2e.test_agent import AgentProc, Repo, git, label, running, stack_yaml, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    proc = AgentProc(tmp_path, runtime)
    try:
        yield proc
    finally:
        with contextlib.suppress(AssertionError):
            proc.stop(timeout=30)
        print(f"--- agent log ({proc.log}):\n{proc.logs()}")  # shown when the test fails


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
