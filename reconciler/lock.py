"""The host-wide lock: one apply (or agent pass) at a time per state root.

An flock on `<root>/lock`, released by the kernel when the holder dies, so a killed apply
never leaves the host locked. The holder's pid is written into the file to say who waits on
whom.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator

from runtime.statefs import open_private, private_dir


class LockTimeout(Exception):
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
