"""Running a bundle detached, supervised by conmon, and reading what it recorded.

Why conmon (Debian's 2.1.6) rather than a shim of ours: it is a ~2 MB C process per
container that outlives us, holds the container's stdio pipes, writes stdout/stderr to a
k8s-file log with a size cap, and writes the exit code to a file the moment the process ends,
whoever is (or is not) watching -- which is exactly the supervision contract. A Python shim
would cost ~10 MB per container and re-implement all of it.

Sequence (conmon 2.1.6 only runs `runc create`): spawn conmon (it forks, setsids and the
parent returns at once); read the container's pid from its sync pipe, written once `runc
create` is done; then start the container as `runc start` does (`Supervisor._release`).
When the process ends conmon writes `<dir>/exit` (and `<dir>/exits/<id>`) and runs its exit
command, which we set to `runc delete <id>`, so the cgroups go away without anyone watching.

In a plain chroot (a directory of another file system as "/", as in a debootstrap'd system
entered with `chroot`), "/" is not a mount point and `runc create` fails making it a slave
mount ("mount /, flags: 0x84000: invalid argument"). There conmon is started in a mount
namespace of its own whose root is the chroot's directory (`in_root_mount`); on a booted
system nothing changes.

Per-container files (in the container dir): config.json, pidfile (container pid), conmon.pid,
ctr.log (k8s-file lines), exit (code as text; its mtime is the finish time), runc.log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from pyapply.runtime.base import PermanentError, RuntimeFailure, TransientError
from pyapply.runtime.native import runc_files
from pyapply.runtime.native.hostbins import CONMON, RUNC, HostBinary
from pyapply.runtime.statefs import private_dir

DEFAULT_RUNC = RUNC.paths[0]
DEFAULT_CONMON = CONMON.paths[0]
DEFAULT_LOG_SIZE_MAX = 10 * 1024 * 1024  # rotated at this size ...
DEFAULT_LOG_FILES = 3  # ... keeping this many files (the live one and two before it)
LOG_FILE = "ctr.log"
# conmon is given no --log-size-max: its cap counts bytes since it started, not since its
# last reopen, and at the cap it replaces the live file, so it would drop lines between our
# rotations. The root's keeper (health.py) does the rotation.

# runc's fifo between `runc create` and `runc start` (in its state dir of the container)
EXEC_FIFO = "exec.fifo"
_FIFO_TICK_MS = 100  # how often a wait on it looks whether runc init is still alive

# Files conmon leaves in the bundle dir, removed before the next start.
_STALE = ("exit", "oom", "pidfile", "conmon.pid", "attach", "ctl", "winsz", "runc.log")


def utc_iso(ts: float | None = None) -> str:
    """Docker's timestamp form: RFC 3339, UTC, with a Z."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class ExitRecord(msgspec.Struct, frozen=True):
    code: int
    finished_at: str


class ExecResult(msgspec.Struct, frozen=True):
    exit_code: int
    output: bytes
    timed_out: bool = False


@functools.cache
def root_is_mount_point() -> bool:
    """Whether this process's "/" is a mount point: /proc/self/mountinfo lists only mounts
    reachable from our root, so in a plain chroot no line has "/" as its mount point. Taken
    as true when /proc is not there to say (runc needs it anyway)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return any(line.split(" ", 5)[4:5] == ["/"] for line in f)
    except OSError:
        return True


# The plain-chroot case. A container's mount namespace must have its root at the namespace's
# "/" (a `runc exec` or health check joining it lands there, not at the chroot), so making
# the chroot a mount point is not enough. In a new mount namespace (unshare), this script steps
# out of the chroot to the namespace's root (chroot into a subdirectory, then climb with ".."
# from the working directory left outside it), makes it a slave (nothing mounted in here goes
# back out), binds the chroot's directory onto itself and pivots into it, as a booted system's
# "/" is; then it runs the command. The namespace's mounts start as copies of ours, so the
# container's rootfs and netns mounts are there; they stay ours to unmount (the copies go
# with the container and its conmon). Python with ctypes, as nothing in Debian's essential
# set does the step out and pivot_root in one process.
_ROOT_MOUNT_SCRIPT = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(rc, what):
    if rc != 0:
        sys.stderr.write(f"pyapply: chroot: {what}: {os.strerror(ctypes.get_errno())}\n")
        sys.exit(125)
top = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
os.chdir("/")
os.chroot("/proc")
for _ in range(256):
    os.chdir("..")
os.chroot(".")
root = os.readlink(f"/proc/self/fd/{top}").encode()
os.close(top)
check(libc.mount(b"none", b"/", None, (1 << 19) | 16384, None), "make / a slave")
check(libc.mount(root, root, None, 4096 | 16384, None), "bind the root")
os.chdir(root)
nr = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
check(libc.syscall(nr, b".", b"."), "pivot_root")
check(libc.umount2(b".", 2), "detach the old root")
os.chdir("/")
os.execvp(sys.argv[1], sys.argv[1:])
"""


def in_root_mount(cmd: list[str]) -> list[str]:
    """`cmd` as run where "/" is a mount point: unchanged on a booted system; in a plain
    chroot, wrapped as above (util-linux's unshare, in Debian's essential set, and this
    Python without site packages)."""
    if root_is_mount_point():
        return cmd
    return [
        "unshare", "--mount", "--propagation", "unchanged", "--",
        sys.executable, "-I", "-S", "-c", _ROOT_MOUNT_SCRIPT, *cmd,
    ]  # fmt: skip


def _not_found(binary: HostBinary, path: str) -> PermanentError:
    """A program we were told to run is not there: a permanent error (a retry cannot help)
    that says which package brings it, or which path was given."""
    if path in binary.paths:
        return PermanentError(binary.missing())
    return PermanentError(f"{binary.name} not found at {path}")


class Supervisor:
    """runc + conmon, with a private runc state root."""

    def __init__(
        self,
        runc_root: str | Path,
        *,
        runc: str = DEFAULT_RUNC,
        conmon: str = DEFAULT_CONMON,
    ) -> None:
        self.runc_root = Path(runc_root)
        self.runc = runc
        self.conmon = conmon

    def check_installed(self) -> None:
        """Raise, naming the package, when runc or conmon is not there: before anything of a
        container is made, rather than half-way through."""
        for binary, path in ((RUNC, self.runc), (CONMON, self.conmon)):
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise _not_found(binary, path)

    # -- runc ----------------------------------------------------------------------------

    def _runc(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                [self.runc, f"--root={self.runc_root}", *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as e:
            raise _not_found(RUNC, self.runc) from e
        except subprocess.TimeoutExpired as e:
            raise TransientError(f"runc {args[0]} timed out") from e
        if check and proc.returncode != 0:
            raise RuntimeFailure(f"runc {args[0]} failed: {_runc_error(proc.stderr)}")
        return proc

    def runc_state(self, cid: str) -> dict[str, Any] | None:
        """runc's view of the container (status created/running/stopped/paused), or None."""
        proc = self._runc("state", cid, check=False)
        if proc.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    def runc_list(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every container in our runc root (or those of `ids`), by id: read from runc's
        files when they say it all (`runc_files`), else in one runc call."""
        found = runc_files.list_states(self.runc_root, ids)
        if found is not None:
            return found
        proc = self._runc("list", "--format=json", check=False)
        if proc.returncode != 0:
            return {}
        items = json.loads(proc.stdout or "null") or []
        return {str(i["id"]): i for i in items}

    def kill(self, cid: str, sig: int) -> bool:
        """Send `sig` to the container's init; False if it was not running."""
        return self._runc("kill", cid, str(sig), check=False).returncode == 0

    def resume(self, cid: str) -> None:
        self._runc("resume", cid, check=False)

    def delete(self, cid: str) -> None:
        """`runc delete --force`; absent is success."""
        proc = self._runc("delete", "--force", cid, check=False)
        if (
            proc.returncode != 0
            and "not exist" not in proc.stderr
            and self.runc_state(cid) is not None
        ):
            raise RuntimeFailure(f"runc delete {cid} failed: {_runc_error(proc.stderr)}")

    # -- launching -----------------------------------------------------------------------

    def launch(
        self,
        cid: str,
        name: str,
        bundle: Path,
        *,
        timeout: float = 30,
        terminal: bool = False,
        stdin: bool = False,
    ) -> int:
        """Create the container under conmon and start it; returns the container's pid.
        `terminal`: conmon gets the pseudo-terminal runc makes (the spec says
        process.terminal) and logs what it shows; `stdin`: conmon keeps the process's
        stdin open (a pipe nobody closes) instead of /dev/null."""
        private_dir(self.runc_root)  # runc makes its state 0600; keep its directory ours too
        clear_run_files(bundle)
        (bundle / "exits").mkdir(mode=0o700, exist_ok=True)
        runc_log = bundle / "runc.log"
        cmd = [
            self.conmon,
            "--api-version", "1",
            "-c", cid,
            "-u", cid,
            "-n", name,
            "-r", self.runc,
            "--runtime-arg", f"--root={self.runc_root}",
            "--runtime-arg", f"--log={runc_log}",
            "--runtime-arg", "--log-format=json",
            "-b", str(bundle),
            "-p", str(bundle / "pidfile"),
            "-P", str(bundle / "conmon.pid"),
            "-l", f"k8s-file:{bundle / LOG_FILE}",
            "--exit-dir", str(bundle / "exits"),
            "-0", str(bundle),
            "--socket-dir-path", str(bundle),
            "--log-level", "error",
            "--exit-command", self.runc,
            "--exit-command-arg", f"--root={self.runc_root}",
            "--exit-command-arg", "delete",
            "--exit-command-arg", cid,
        ]  # fmt: skip
        if terminal:
            cmd.append("--terminal")
        if stdin:
            cmd.append("--stdin")
        # conmon reports on this pipe (_OCI_SYNCPIPE) once `runc create` is done: the
        # container's pid, or -1 and runc's message; it closes the pipe if it dies first.
        # A blocking read wakes us the moment it writes, where polling its pid file
        # overshot by up to a tick.
        sync_r, sync_w = os.pipe()
        try:
            try:
                proc = subprocess.Popen(
                    in_root_mount(cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    pass_fds=(sync_w,),
                    cwd=bundle,
                    # runc would relay sd-notify / socket activation meant for us
                    env={
                        **{
                            k: v
                            for k, v in os.environ.items()
                            if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")
                        },
                        "_OCI_SYNCPIPE": str(sync_w),
                    },
                )
            finally:
                os.close(sync_w)
            reply = _read_sync(sync_r, timeout)
        except FileNotFoundError as e:
            raise _not_found(CONMON, self.conmon) from e
        finally:
            os.close(sync_r)
        # conmon's first process exits as soon as it has forked the one that stays
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if reply is None:
            cpid = read_pid(bundle / "conmon.pid")
            if cpid is not None:
                with contextlib.suppress(OSError):
                    os.kill(cpid, signal.SIGKILL)
            self.delete(cid)
            raise TransientError(f"container {name}: runc create did not finish in {timeout}s")
        pid, message = _sync_reply(reply)
        if pid is None:
            if code != 0:
                raise RuntimeFailure(f"conmon failed to start ({code}) for {name}")
            err = _runc_log_error(runc_log) or message or "see runc.log"
            raise RuntimeFailure(f"runc create failed for {name}: {err}")
        if self._release(cid, pid, deadline=time.monotonic() + timeout):
            return pid
        started = self._runc("start", cid, check=False)
        if started.returncode != 0:
            err = _runc_log_error(runc_log) or _runc_error(started.stderr)
            if "exec.fifo" in err and read_exit(bundle) is not None:
                # A process that ends at once races `runc start`: conmon records its exit and
                # its exit command (`runc delete`) removes the state, exec.fifo included,
                # before runc start removes the fifo itself. The process did start and end.
                return pid
            self.delete(cid)
            raise RuntimeFailure(f"runc start failed for {name}: {err}")
        return pid

    def _release(self, cid: str, pid: int, *, deadline: float) -> bool:
        """Start a created container as `runc start` does, without its process: runc init
        waits, before it execs the container's program, until someone opens the container's
        exec.fifo (in runc's state dir) for reading and takes the byte it writes there;
        runc start does that and removes the fifo, which is what then makes runc's state say
        "running". One Go program's start less per container start. False when the fifo is
        not there (the process already ended, or a runc that works otherwise): the caller
        runs `runc start`, which says what is wrong."""
        fifo = self.runc_root / cid / EXEC_FIFO
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return False
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll(_FIFO_TICK_MS):
                # runc init writes once it has opened the fifo; one that died never does
                if not pid_alive(pid) or time.monotonic() > deadline:
                    return False
            if not os.read(fd, 1):
                return False
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        return True

    # -- exec ----------------------------------------------------------------------------

    def exec(
        self,
        cid: str,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        max_output: int = 64 * 1024,
        user: str | None = None,
        env: Sequence[str] = (),
        cwd: str | None = None,
        caps: Sequence[str] = (),
    ) -> ExecResult:
        """Run argv inside the container (as its user, env, caps, unless `user` "uid:gid",
        `env` "KEY=value" items, `cwd` or more `caps` say otherwise); output is
        stdout+stderr."""
        if not argv:
            raise RuntimeFailure("exec needs a command")
        pid_file = self.runc_root / f"exec-{cid}-{os.getpid()}-{time.monotonic_ns()}.pid"
        private_dir(self.runc_root)
        proc = subprocess.Popen(
            [
                self.runc,
                f"--root={self.runc_root}",
                "exec",
                "--pid-file",
                str(pid_file),
                *(["--user", user] if user else []),
                *(["--cwd", cwd] if cwd else []),
                *(a for e in env for a in ("--env", e)),
                *(a for c in caps for a in ("--cap", c)),
                cid,
                *argv,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            inner = read_pid(pid_file)
            if inner is not None:
                with contextlib.suppress(OSError):
                    os.kill(inner, signal.SIGKILL)
            proc.kill()
            out, _ = proc.communicate()
        finally:
            with contextlib.suppress(OSError):
                pid_file.unlink()
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        return ExecResult(
            exit_code=-1 if timed_out else code, output=out[-max_output:], timed_out=timed_out
        )


# ---------------------------------------------------------------------------------------------
# Records


def clear_run_files(bundle: Path) -> None:
    for n in _STALE:
        with contextlib.suppress(FileNotFoundError):
            (bundle / n).unlink()
    exits = bundle / "exits"
    if exits.is_dir():
        for p in exits.iterdir():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def read_exit(bundle: Path) -> ExitRecord | None:
    """The exit conmon recorded: code, and the file's mtime as the finish time."""
    path = bundle / "exit"
    try:
        text = path.read_text().strip()
        mtime = path.stat().st_mtime
    except OSError:
        return None
    if not text.lstrip("-").isdigit():
        return None
    return ExitRecord(code=int(text), finished_at=utc_iso(mtime))


def conmon_pid(bundle: Path) -> int | None:
    """conmon's pid, if it is alive and really conmon."""
    pid = read_pid(bundle / "conmon.pid")
    if pid is None or not pid_alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm == "conmon" else None


def wait_exit(bundle: Path, timeout: float) -> ExitRecord | None:
    deadline = time.monotonic() + timeout
    while True:
        rec = read_exit(bundle)
        if rec is not None or time.monotonic() >= deadline:
            return rec
        time.sleep(0.02)


def _read_sync(fd: int, timeout: float) -> bytes | None:
    """conmon's one line on the sync pipe (b"" when it closed the pipe without one), or
    None when nothing came within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _sync_reply(reply: bytes) -> tuple[int | None, str | None]:
    """conmon's sync message, read once: the container pid ({"data": pid}), None for a
    failure ({"data": -1, "message": ...}) or no message at all; and runc's message of a
    failure, if it has one."""
    try:
        doc = json.loads(reply)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    pid, msg = doc.get("data"), doc.get("message")
    return (
        pid if isinstance(pid, int) and pid > 0 else None,
        (str(msg).strip() or None) if msg is not None else None,
    )


def _runc_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if not lines:
        return "no message"
    last = lines[-1]
    if 'msg="' in last:
        last = last.split('msg="', 1)[1].rstrip('"')
    return last


def _runc_log_error(path: Path) -> str | None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("level") in ("error", "fatal"):
            return str(doc.get("msg"))
    return None


# ---------------------------------------------------------------------------------------------
# Logs (conmon's k8s-file format: "<time> <stream> <P|F> <content>")


def _parse_lines(data: bytes, partial: dict[bytes, bytearray]) -> Iterator[bytes]:
    """Whole lines from k8s-file records; a line conmon wrote in pieces ("P" records) is
    put together per stream, so stderr pieces never end up in a stdout line."""
    for raw in data.split(b"\n"):
        if not raw:
            continue
        parts = raw.split(b" ", 3)
        if len(parts) < 3:
            continue
        content = parts[3] if len(parts) == 4 else b""
        pending = partial.setdefault(parts[1], bytearray())
        pending.extend(content)
        if parts[2] == b"F":
            yield bytes(pending) + b"\n"
            pending.clear()


def log_generations(path: Path) -> list[Path]:
    """The rotated files of a log, oldest first (path.N ... path.1)."""
    out: list[Path] = []
    n = 1
    while (older := path.with_name(f"{path.name}.{n}")).exists():
        out.append(older)
        n += 1
    return out[::-1]


def rotate_log(bundle: str | Path, max_size: int, files: int) -> bool:
    """Rotate the container's log once it has reached `max_size`: ctr.log becomes ctr.log.1
    (older ones shift up, the oldest beyond `files` goes), then conmon is told on its control
    FIFO to reopen its log (message type 2), so it starts a new ctr.log. Nothing is lost:
    what conmon writes between the rename and the reopen lands in ctr.log.1."""
    try:
        if os.stat(os.path.join(bundle, LOG_FILE)).st_size < max_size:
            return False  # the keeper asks four times a second: one stat, no Path
    except FileNotFoundError:
        return False
    bundle = Path(bundle)
    log = bundle / LOG_FILE
    keep = max(files, 1) - 1
    for n in range(len(log_generations(log)), 0, -1):
        older = log.with_name(f"{log.name}.{n}")
        if n >= keep:
            older.unlink(missing_ok=True)
        else:
            older.rename(log.with_name(f"{log.name}.{n + 1}"))
    if keep:
        log.rename(log.with_name(f"{log.name}.1"))
    else:
        log.unlink(missing_ok=True)
    try:
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no conmon reading it: the next start makes a new file anyway
        return True
    try:
        os.write(fd, b"2 0 0\n")
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


def read_log(
    path: Path,
    *,
    tail: int | None = None,
    follow: bool = False,
    done: Any = None,
    poll: float = 0.1,
) -> Iterator[bytes]:
    """The container's output, one bytes line (with "\\n") at a time, the rotated files
    first. With `follow`, keeps reading until `done()` is true and nothing more arrives; a
    rotation (a new file under the name, or one started anew) is noticed and followed."""
    partial: dict[bytes, bytearray] = {}
    try:
        f = path.open("rb")
    except FileNotFoundError:
        if not follow:
            return
        while not path.exists():
            if done is not None and done():
                return
            time.sleep(poll)
        f = path.open("rb")
    try:
        data = f.read()
        end = data.rfind(b"\n") + 1
        buf = data[end:]
        lines = list(_parse_lines(data[:end], partial))
        for older in reversed(log_generations(path)):
            if tail is not None and len(lines) >= tail:
                break
            with contextlib.suppress(OSError):
                lines[:0] = _parse_lines(older.read_bytes(), {})
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        yield from lines
        if not follow:
            return
        ino = os.fstat(f.fileno()).st_ino
        while True:
            chunk = f.read()
            if chunk:
                data = buf + chunk
                end = data.rfind(b"\n") + 1
                buf = data[end:]
                yield from _parse_lines(data[:end], partial)
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != ino or st.st_size < f.tell()):
                if st.st_ino != ino:  # rotated: what reached the old file before it counts
                    rest = buf + f.read()
                    yield from _parse_lines(rest, partial)
                f.close()
                f = path.open("rb")
                ino = os.fstat(f.fileno()).st_ino
                buf = b""
                continue
            if done is not None and done():
                rest = f.read()
                if not rest:
                    return
                buf += rest
                continue
            time.sleep(poll)
    finally:
        f.close()
