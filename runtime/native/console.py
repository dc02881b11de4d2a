"""`exec` on this process's terminal for native containers: `runc exec` with its stdio
inherited, or, with a TTY, `runc exec --tty --console-socket`: runc makes the container's
pseudo-terminal and sends its master over a UNIX socket (SCM_RIGHTS); we relay between it and
the local terminal (raw mode, window size) until the process ends, and pass its exit code
through."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pyapply.runtime import terminal
from pyapply.runtime.base import RuntimeFailure

# how long runc may take to hand over the terminal before the exec is given up
HANDOVER_S = 30.0


def _code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def exec_attached(
    runc: str, runc_root: Path, cid: str, argv: Sequence[str], *, stdin: bool, tty: bool
) -> int:
    """Run argv in the container `cid` on this process's stdio; its exit code."""
    if not argv:
        raise RuntimeFailure("exec needs a command")
    base = [runc, f"--root={runc_root}", "exec"]
    if not tty:
        done = subprocess.run(
            [*base, cid, *argv], stdin=None if stdin else subprocess.DEVNULL, check=False
        )
        return _code(done.returncode)
    # a private dir for the socket (0700 from creation); short, since a UNIX socket's path
    # is limited to 108 bytes
    with tempfile.TemporaryDirectory(prefix="pyapply-tty-") as tmp:
        path = os.path.join(tmp, "console.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with server:
            server.bind(path)
            server.listen(1)
            server.settimeout(terminal.TICK_S)
            proc = subprocess.Popen(
                [*base, "--tty", "--console-socket", path, cid, *argv],
                stdin=subprocess.DEVNULL,
            )
            try:
                master = _receive_master(server, proc)
                if master is None:  # runc failed before making the terminal (said why)
                    return _code(proc.wait())
                with contextlib.closing(_Fd(master)):
                    _relay(master, stdin)
                return _code(proc.wait())
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _receive_master(server: socket.socket, proc: subprocess.Popen[bytes]) -> int | None:
    """The pty master runc sends, or None when runc ended without sending one."""
    deadline = time.monotonic() + HANDOVER_S
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if proc.poll() is not None:
                return None
            continue
        with conn:
            conn.settimeout(HANDOVER_S)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise RuntimeFailure("runc sent no terminal over the console socket")
        return fds[0]
    raise RuntimeFailure(f"runc did not hand over a terminal within {HANDOVER_S:.0f}s")


def _relay(master: int, stdin: bool) -> None:
    local_in = sys.stdin.fileno()
    sized = local_in if os.isatty(local_in) else sys.stdout.fileno()
    sent_eof = False

    def send(data: bytes) -> None:
        terminal.write_out(data, master)

    def close_send() -> None:
        # stdin ended (not a terminal, e.g. a pipe): the terminal's end-of-file character
        nonlocal sent_eof
        if not sent_eof:
            sent_eof = True
            with contextlib.suppress(OSError):
                os.write(master, b"\x04")

    with (
        terminal.raw_terminal(local_in) if stdin else contextlib.nullcontext(),
        terminal.on_resize(lambda size: terminal.set_window_size(master, size), sized),
    ):
        terminal.relay(
            master, send=send, close_send=close_send, receive=terminal.write_out, stdin=stdin
        )
