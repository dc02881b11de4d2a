"""Forked children of the agent: default signal actions, and no hold on the agent's watchers.

Real forks (os.fork, and pyroute2's own ChildProcess, which the native runtime's netns work
uses), real signals, real inotify. Every child ends with os._exit and is reaped by pid.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest
from test_watch import Recorder, fake_agent

from pyapply.reconciler.agent.agent import STOP_SIGNALS
from pyapply.reconciler.agent.sources import FileWatcher, Source
from pyapply.reconciler.engine.forks import default_signals_in_children

# a regression leaves children running the handler instead of ending: fail, do not hang
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def handler_pipe() -> Iterator[int]:
    """A SIGTERM/SIGINT handler, as the agent's, that writes "H<pid>" to a pipe; yields the
    pipe's read end. The previous handlers are restored afterwards."""
    r, w = os.pipe()
    os.set_blocking(r, False)

    def on_term(signum: int, frame: FrameType | None) -> None:
        os.write(w, f"H{os.getpid()};".encode())

    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, on_term)
    default_signals_in_children(STOP_SIGNALS)
    try:
        yield r
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        os.close(r)
        os.close(w)


def drain(fd: int) -> str:
    try:
        return os.read(fd, 4096).decode()
    except BlockingIOError:
        return ""


def fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            child()
        except BaseException:
            code = 70
        os._exit(code)
    return pid


def reap(pid: int, timeout: float = 10.0) -> int:
    """The child's exit code (negative: the signal that ended it); SIGKILLed at `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not end within {timeout}s")


def test_a_forked_child_has_the_default_action_for_sigterm(handler_pipe: int) -> None:
    ready_r, ready_w = os.pipe()

    def child() -> None:
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        os.write(ready_w, b"r")
        time.sleep(10)

    pid = fork(child)
    try:
        assert os.read(ready_r, 1) == b"r"
        os.kill(pid, signal.SIGTERM)
        assert reap(pid) == -signal.SIGTERM  # ended by the default action, not the handler
    finally:
        os.close(ready_r)
        os.close(ready_w)
    assert drain(handler_pipe) == ""
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # parent: unblocked


def test_a_sigterm_sent_right_after_the_fork_still_ends_the_child(handler_pipe: int) -> None:
    """The window between fork and the child's reset: the signal is held, then delivered to
    the default action (without the block it would trip the inherited handler's flag, be
    dropped, and the child would sleep on)."""
    for _ in range(5):
        started = time.monotonic()
        pid = fork(lambda: time.sleep(10))
        os.kill(pid, signal.SIGTERM)
        assert reap(pid) == -signal.SIGTERM
        assert time.monotonic() - started < 5
    assert drain(handler_pipe) == ""


def test_pyroute2s_child_process_is_ended_by_its_sigterm(handler_pipe: int) -> None:
    """pyroute2 forks a ChildProcess for netns work and stops it with SIGTERM: the handler
    the agent installed never runs there."""
    from pyroute2.process import ChildProcess  # type: ignore[import-untyped]

    def work() -> bytes:
        time.sleep(0.05)  # still running Python when the SIGTERM comes
        return b"done"

    for _ in range(5):
        proc = ChildProcess(target=work, args=[])
        proc.run()
        time.sleep(0.01)
        proc.stop()  # SIGTERM, as after a NetNS socket was handed over
        assert proc.exitcode == -signal.SIGTERM
    assert drain(handler_pipe) == ""


def test_a_forked_child_stopping_the_file_watch_leaves_the_parents_alone(tmp_path: Path) -> None:
    """The child's copy of the watcher shares the inotify instance: stopping it there would
    remove the watches for the agent too."""
    rec = Recorder()
    watcher = FileWatcher(Source.of(str(tmp_path)), rec, debounce_s=0.1, poll_s=60)
    watcher.start()
    try:
        time.sleep(0.2)
        assert reap(fork(watcher.stop)) == 0
        (tmp_path / "a.yaml").write_text("x")
        assert rec.wait(5), "the file watch died with the child's stop"
        assert rec.calls[-1][1] == "file"
    finally:
        watcher.stop()


def test_the_agents_shutdown_is_a_no_op_in_a_forked_child(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    agent, _ = fake_agent(tmp_path, tmp_path / "src")
    rec = Recorder()
    agent.file_watcher = FileWatcher(Source.of(str(tmp_path / "src")), rec, debounce_s=0.1)
    agent.file_watcher.start()
    try:
        time.sleep(0.2)

        def child() -> None:
            agent.shutdown("signal SIGTERM")
            assert not agent.stopping.is_set()

        assert reap(fork(child)) == 0
        assert not agent.stopping.is_set() and not agent.triggers.closed
        (tmp_path / "src" / "a.yaml").write_text("x")
        assert rec.wait(5)
    finally:
        agent.shutdown("test")
    assert agent.stopping.is_set()
