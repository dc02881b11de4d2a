"""The detached helper processes of a state root (the DNS server, the port proxy), found and
ended by the pid file each writes: one way to tell a live one from a reused pid, and one way
to end it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path


def cmdline(pid: int) -> list[str]:
    """The process's arguments ([] when it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def is_zombie(pid: int) -> bool:
    """Whether the process has ended and is not reaped yet (gone counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def terminate(pid_of: Callable[[], int | None], wait_s: float) -> None:
    """End the process `pid_of` names (it checks the pid file against the command line, so
    a reused pid is never signalled): SIGTERM, then SIGKILL after `wait_s`. Not running is
    success."""
    pid = pid_of()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while pid_of() == pid and time.monotonic() < deadline:
        time.sleep(0.01)
    if pid_of() == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def log_tail(path: Path, skip: str | None = None) -> str:
    """The last three lines of a helper's log, on one line, for an error message (lines
    holding `skip` left out)."""
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").splitlines()
        kept = [ln for ln in lines if skip is None or skip not in ln]
        return " / ".join(kept[-3:]) or "no message"
    return "no message"
