"""The agent's lifetime lock, and the commands that would act without an agent: while an
agent holds the state root they wait for it or fail, and never act behind its back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyapply.reconciler.agent.history import History
from pyapply.reconciler.engine.lock import AgentRunning, agent_holder, agent_lock

PYAPPLY = str(Path(sys.executable).parent / "pyapply")


def test_the_agent_lock_says_who_runs_and_keeps_a_second_agent_off(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    assert agent_holder(root) is None  # nothing there: nothing made either
    assert not os.path.exists(root)
    with agent_lock(root):
        assert agent_holder(root) == os.getpid()
        assert os.stat(os.path.join(root, "agent.lock")).st_mode & 0o777 == 0o600
        with (
            pytest.raises(AgentRunning, match=f"pid {os.getpid()}"),
            agent_lock(root, settle_s=0.2),
        ):
            pass
    assert agent_holder(root) is None
    with agent_lock(root):  # free again
        pass


@pytest.fixture
def root(tmp_path: Path) -> str:
    h = History(str(tmp_path / "root"))
    h.store_revision("0123456789ab", "one", "", {"s.yaml": b"not: [applied"})
    h.finish(h.begin("0123456789ab", "one", "file"), "succeeded")
    h.pin("0123456789ab")
    return str(tmp_path / "root")


def run(root: str, *args: str) -> tuple[int, str]:
    """The real CLI, as a user runs it: (exit code, stdout + stderr)."""
    env = {**os.environ, "PYAPPLY_ROOT": root, "PYAPPLY_SOCKET": os.path.join(root, "none.sock")}
    out = subprocess.run([PYAPPLY, *args], env=env, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["rollback", "0123456789ab"],
        ["resume"],
        ["sync"],
        ["status"],
    ],
)
def test_an_agent_that_holds_the_root_but_does_not_answer_is_never_bypassed(
    root: str, args: list[str]
) -> None:
    passes = len(History(root).passes())
    with agent_lock(root):
        started = time.monotonic()
        code, output = run(root, *args, "--agent-wait", "0.5")
        waited = time.monotonic() - started
    assert code == 1, output
    assert f"an agent (pid {os.getpid()}) runs on {root}" in output
    assert "not acting behind its back" in output and "no agent" not in output
    assert waited >= 0.5
    # nothing done: no pass recorded, the pin as it was
    h = History(root)
    assert len(h.passes()) == passes and h.pinned() == "0123456789ab"


def test_an_agent_that_ends_while_the_command_waits_lets_it_act(root: str) -> None:
    held = agent_lock(root)
    held.__enter__()
    timer = threading.Timer(1.5, lambda: held.__exit__(None, None, None))
    timer.start()
    try:
        code, output = run(root, "resume", "--agent-wait", "20")
    finally:
        timer.join()
    assert code == 0, output
    assert "waiting up to 20s" in output and "unpinned" in output
    assert History(root).pinned() is None


def test_without_an_agent_status_says_none_runs(root: str) -> None:
    code, output = run(root, "status", "--agent-wait", "5")
    assert code == 1 and f"no agent runs on {root}" in output, output


def test_a_second_watch_on_the_same_root_is_refused(root: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with agent_lock(root):
        code, output = run(root, "watch", str(tmp_path / "src"))
    assert code == 1
    assert f"another agent (pid {os.getpid()}) runs on {root}" in output
    assert "one agent per state root" in output
