"""`exec` on this process's terminal for native containers: `runc exec` with its stdio
inherited, or, with a TTY, `runc exec -d --tty --console-socket`: runc makes the container's
pseudo-terminal and sends its master over a UNIX socket (SCM_RIGHTS); we relay between it and
the local terminal (raw mode, window size) until the process ends, and pass its exit code
through (reaped as its subreaper, since runc detaches)."""

from __future__ import annotations

import contextlib
import ctypes
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
# the exit code of a command that could not be started (docker exec's, the shell's)
CANNOT_INVOKE = 126
# prctl(2): orphaned descendants are reparented to this process
PR_SET_CHILD_SUBREAPER = 36


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
    # runc takes a console socket only when it detaches (`-d`), so the exec'd process is
    # no child of ours: as a child subreaper we inherit it when runc exits, and wait for it
    # ourselves to learn its exit code
    _become_subreaper()
    # a private dir for the socket (0700 from creation); short, since a UNIX socket's path
    # is limited to 108 bytes
    with tempfile.TemporaryDirectory(prefix="pyapply-tty-") as tmp:
        path = os.path.join(tmp, "console.sock")
        pid_file = os.path.join(tmp, "exec.pid")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with server:
            server.bind(path)
            server.listen(1)
            server.settimeout(terminal.TICK_S)
            detached = [*base, "-d", "--tty", "--console-socket", path, "--pid-file", pid_file]
            proc = subprocess.Popen([*detached, cid, *argv], stdin=subprocess.DEVNULL)
            try:
                master = _receive_master(server, proc)
                if master is None or proc.wait(timeout=HANDOVER_S) != 0:
                    # runc failed before starting the process (it said why on stderr):
                    # 126, "cannot be invoked", as docker exec says
                    if master is not None:
                        os.close(master)
                    proc.wait()
                    return CANNOT_INVOKE
                pid = int(Path(pid_file).read_text().strip())
                with contextlib.closing(_Fd(master)):
                    _relay(master, stdin)
                return _wait_child(pid)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"cannot become a child subreaper: {os.strerror(err)}")


def _wait_child(pid: int) -> int:
    """The exit code of the exec'd process, inherited as its subreaper; it closed its
    terminal, so it ends now or soon (killed after a bound if it lingers)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            raise RuntimeFailure(f"the exec'd process {pid} is not ours to wait for") from None
        if done:
            return _code(os.waitstatus_to_exitcode(status))
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
            deadline = time.monotonic() + 10
        time.sleep(0.02)


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
