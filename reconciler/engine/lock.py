"""The host-wide locks of a state root, flocks the kernel releases when their holder dies (a
killed process never leaves the root locked); the holder's pid is written into the file to
say who waits on whom.

- `host_lock`, `<root>/lock`: one apply (or agent pass) at a time.
- `agent_lock`, `<root>/agent.lock`: held by a watch agent for its whole life. It keeps a
  second agent off the root, and tells the CLI that an agent runs there even when its
  socket does not answer (busy, starting, stopping, or another socket path): the CLI then
  never acts behind the agent's back (`agent_holder`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.runtime.statefs import open_private, private_dir


class LockTimeout(PyapplyError):
    pass


@contextlib.contextmanager
def host_lock(
    root: str,
    *,
    timeout_s: float,
    on_wait: Callable[[str], None] | None = None,
    poll_s: float = 0.1,
) -> Iterator[None]:
    private_dir(root)  # 0700; a root an older version made 0755 is tightened here
    path = os.path.join(root, "lock")
    fd = open_private(path)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    on_wait(
                        f"waiting for another pyapply (pid {holder}) holding {path} "
                        f"(up to {timeout_s:g}s, --lock-timeout)"
                    )
                    told = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"another pyapply holds {path}; gave up after {timeout_s:g}s "
                        "(--lock-timeout)"
                    ) from None
                time.sleep(poll_s)
        with _held(fd):
            yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _held(fd: int) -> Iterator[None]:
    """A lock just taken on `fd`: our pid written in it for whoever waits, and on the way out
    the file emptied and the lock given back."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)


AGENT_LOCK = "agent.lock"


class AgentRunning(PyapplyError):
    """Another agent holds the state root."""


@contextlib.contextmanager
def agent_lock(root: str, *, settle_s: float = 1.0) -> Iterator[None]:
    """Hold `<root>/agent.lock` for the agent's life. Raises AgentRunning when another
    agent holds it (tried for `settle_s`: a CLI's probe holds it shared for an instant)."""
    private_dir(root)
    path = os.path.join(root, AGENT_LOCK)
    fd = open_private(path)
    try:
        deadline = time.monotonic() + settle_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _pid(os.pread(fd, 32, 0))
                    raise AgentRunning(
                        f"another agent (pid {holder or '?'}) runs on {root} ({path})"
                    ) from None
                time.sleep(0.05)
        with _held(fd):
            yield
    finally:
        os.close(fd)


def agent_holder(root: str) -> int | None:
    """Whether an agent runs on `root`: its pid (0 when it has not written it yet), or None.
    Never creates anything."""
    try:
        fd = os.open(os.path.join(root, AGENT_LOCK), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid(os.pread(fd, 32, 0))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _pid(raw: bytes) -> int:
    text = raw.decode(errors="replace").strip()
    return int(text) if text.isdigit() and len(text) < 10 else 0
