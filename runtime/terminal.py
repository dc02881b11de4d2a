"""The local end of an attached exec, shared by the drivers: raw mode on this process's
terminal, its window size, and the relay of bytes between it and a container's stream (a
pseudo-terminal master on native, the Engine's hijacked socket on docker)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from types import FrameType

# how long one select waits before the relay looks at whether the process is done
TICK_S = 0.2


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on `fd` while inside, restored after, when it is a terminal (keys such as
    ^C reach the container's terminal instead of killing pyapply)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on `fd`, or None when it is none."""
    if not os.isatty(fd):
        return None
    with contextlib.suppress(OSError):
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        if rows and cols:
            return rows, cols
    return None


def set_window_size(fd: int, size: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


@contextlib.contextmanager
def on_resize(resize: Callable[[tuple[int, int]], None], fd: int) -> Iterator[None]:
    """Call `resize` with the terminal's size now and on every SIGWINCH while inside."""
    size = window_size(fd)
    if size is not None:
        resize(size)

    def handler(signum: int, frame: FrameType | None) -> None:
        new = window_size(fd)
        if new is not None:
            resize(new)

    try:
        old = signal.signal(signal.SIGWINCH, handler)
    except ValueError:  # not the main thread: no resizes, the first size stands
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def relay(
    remote: int,
    *,
    send: Callable[[bytes], None],
    close_send: Callable[[], None],
    receive: Callable[[bytes], None],
    stdin: bool,
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Copy this process's stdin to the container (`send`; `close_send` at its end) while
    `stdin`, and what `remote` (a readable fd) yields to `receive`, until `remote` ends
    (EOF, or EIO from a pty master whose other side closed) or `done()` says the process
    is gone and nothing is left to read."""
    local = sys.stdin.fileno() if stdin else None
    while True:
        fds = [remote] if local is None else [remote, local]
        try:
            ready, _, _ = select.select(fds, [], [], TICK_S)
        except InterruptedError:  # a SIGWINCH: go round again
            continue
        if remote in ready:
            try:
                data = os.read(remote, 65536)
            except OSError:  # EIO: the terminal's other side is closed, the process gone
                return
            if not data:
                return
            receive(data)
        if local is not None and local in ready:
            data = os.read(local, 65536)
            if data:
                send(data)
            else:
                close_send()
                local = None
        if not ready and done():
            return


def write_out(data: bytes, fd: int | None = None) -> None:
    """Write all of `data` to stdout (or `fd`), unbuffered."""
    out = sys.stdout.fileno() if fd is None else fd
    view = memoryview(data)
    while view:
        n = os.write(out, view)
        view = view[n:]
