"""A wake-up when an entry of one directory is made, removed or renamed: inotify through
libc, so that the native event poller looks at once rather than at its next tick.

watchdog (the agent's file watcher) is not used here: its inotify buffer holds every event
for half a second to pair renames, longer than the poll it would shorten."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
from pathlib import Path

_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO
# after a wake-up, the rest of the burst (an rmtree, a create's files) is let in first
SETTLE_S = 0.01


class DirWatch:
    """Entries of `path` (not below): `wait` returns early when one changes. Without inotify
    (no such directory, no watches left) it is a plain timed wait on `closed`."""

    def __init__(self, path: Path, closed: threading.Event) -> None:
        self._closed = closed
        self._fd: int | None = None
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            return
        if libc.inotify_add_watch(fd, os.fsencode(path), _MASK) < 0:
            os.close(fd)
            return
        self._fd = fd

    @property
    def watching(self) -> bool:
        return self._fd is not None

    def wait(self, timeout: float) -> None:
        """Until a change, `timeout` seconds, or `closed` (noticed within `timeout`)."""
        if self._fd is None:
            self._closed.wait(timeout)
            return
        poller = select.poll()  # not select(): a descriptor may be above FD_SETSIZE
        poller.register(self._fd, select.POLLIN)
        if poller.poll(timeout * 1000):
            self._closed.wait(SETTLE_S)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._fd, 65536):  # one look serves the whole burst
                    pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
