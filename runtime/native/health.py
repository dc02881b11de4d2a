"""Healthchecks of native containers, the rotation of their logs, and their restart policies.

Who runs them: one detached checker process per state root (the root's "keeper",
`python -m runtime.native.health --root ROOT --runc RUNC`), started on demand by `start` of
a container, and exiting by itself a few seconds after no container runs. It is supervised
by observation: a root whose containers run without it is reported (the driver's faults),
and starting a running container -- the repair -- starts it again. Besides the
probes, it rotates each running container's log once it reaches its size (supervise.
rotate_log), every LOG_CHECK_S seconds. conmon cannot run commands on a schedule, and the watch agent may not be
running (a plain `pyapply -f` exits), yet `service_healthy` and `get` must keep seeing fresh
status. One process for all containers (probes in a small thread pool) rather than one per
container, because a Python process costs ~15 MB resident and conmon ~2 MB: the
per-container overhead stays conmon's. A flock on `<root>/health.lock` keeps it single.

It also enforces restart policies (restarter.py): a container that ends and whose policy
says so is started again after dockerd's wait, with no pyapply process running; the keeper
stays while such a restart is owed, even when no container runs.

Each probe is `runc exec` of the test (CMD -> argv, CMD-SHELL -> /bin/sh -c), killed after
the timeout. The status follows Docker's rules: "starting" until the first success or until
`retries` consecutive failures after the start period; failures inside the start period do
not count. It is written atomically to `<dir>/health.json` so any process can read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from pyapply.runtime.base import Health, HealthConfig
from pyapply.runtime.native.container_state import REMOVED_PREFIX, STATE_SHAPE
from pyapply.runtime.native.statefile import (
    DamagedState,
    anything,
    integer,
    list_of,
    map_of,
    read_json,
    record,
    string,
)
from pyapply.runtime.native.supervise import (
    DEFAULT_LOG_FILES,
    DEFAULT_LOG_SIZE_MAX,
    DEFAULT_RUNC,
    Supervisor,
    conmon_pid,
    pid_alive,
    rotate_log,
)
from pyapply.runtime.statefs import atomic_write, open_private

HEALTH_FILE = "health.json"
HEALTH_SHAPE = record(
    {"status": string}, {"failing_streak": integer, "log": list_of(map_of(anything))}
)
PID_FILE = "health.pid"  # in the state root
LOCK_FILE = "health.lock"
# held while a checker is looked for and, if none runs, started and awaited: the parallel
# starts of a converge start one checker, not one each (each a Python start, ~0.2 s of CPU,
# then waiting on LOCK_FILE for nothing)
SPAWN_LOCK_FILE = "health.spawn.lock"
IDLE_EXIT_S = 3.0  # the checker exits after this long with nothing to check
ANNOUNCE_S = 5.0  # how long a start waits for a new checker to announce itself
_TICK = 0.05
LOG_CHECK_S = 0.25
_LOG_KEEP = 5
_MARKER = "pyapply.runtime.native.health"


class Probe(msgspec.Struct, frozen=True):
    start: float
    end: float
    exit_code: int
    output: str


def probe_argv(test: tuple[str, ...]) -> list[str] | None:
    """The command a healthcheck runs; None for ("NONE",) / empty."""
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return list(test[1:]) or None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return list(test)


def initial_status() -> dict[str, Any]:
    return {"status": "starting", "failing_streak": 0, "log": []}


def apply_probe(
    doc: dict[str, Any], probe: Probe, config: HealthConfig, started_at: float
) -> dict[str, Any]:
    """Docker's state machine, pure: returns the new status document."""
    status: str = doc.get("status", "starting")
    streak: int = int(doc.get("failing_streak", 0))
    log = [
        *doc.get("log", []),
        {
            "start": probe.start,
            "end": probe.end,
            "exit_code": probe.exit_code,
            "output": probe.output,
        },
    ][-_LOG_KEEP:]
    if probe.exit_code == 0:
        status, streak = "healthy", 0
    else:
        in_start_period = status == "starting" and probe.start - started_at < config.start_period_s
        if not in_start_period:
            streak += 1
            if streak >= max(1, config.retries):
                status = "unhealthy"
    return {"status": status, "failing_streak": streak, "log": log}


def write_status(cdir: Path, doc: dict[str, Any]) -> None:
    # 0600: a probe's output may show anything of the container's; written at every probe,
    # and the next probe rewrites it anyway, so no fsync
    atomic_write(cdir / HEALTH_FILE, json.dumps(doc), durable=False)


def _announce(pid_file: Path) -> None:
    fd = open_private(pid_file, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)


def read_status(cdir: Path) -> Health | None:
    doc = read_document(cdir)
    s = (doc or {}).get("status")
    if s in ("healthy", "unhealthy", "starting"):
        return s  # type: ignore[no-any-return]
    return None


def read_document(cdir: Path) -> dict[str, Any] | None:
    """The health file; None when there is none or it is damaged (no result yet: the
    keeper writes it again at the next probe)."""
    try:
        doc: dict[str, Any] | None = read_json(cdir / HEALTH_FILE, HEALTH_SHAPE)
    except DamagedState:
        return None
    return doc


# ---------------------------------------------------------------------------------------------
# The checker process


def checker_pid(root: Path) -> int | None:
    """The pid of the root's checker, if it runs (verified by its command line)."""
    try:
        pid = int((root / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    ok = _MARKER.encode() in cmdline and str(root).encode() in cmdline
    return pid if ok else None


def ensure_checker(root: Path, runc: str, announce_timeout: float = ANNOUNCE_S) -> None:
    """Start the root's checker unless it runs; it survives our exit. Returns once it has
    announced itself (bounded by `announce_timeout`): observation reports a root whose
    containers run without a checker, and must not see one that is only starting."""
    if checker_pid(root) is not None:
        return
    with os.fdopen(open_private(root / SPAWN_LOCK_FILE), "rb") as spawning:
        fcntl.flock(spawning, fcntl.LOCK_EX)  # flock: between threads of one process too
        if checker_pid(root) is None:  # not started by the holder we waited for
            _spawn_checker(root, runc, announce_timeout)


def _spawn_checker(root: Path, runc: str, announce_timeout: float) -> None:
    pythonpath = [package_root(), os.environ.get("PYTHONPATH", "")]
    proc = subprocess.Popen(
        [sys.executable, "-m", _MARKER, "--root", str(root), "--runc", runc],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)},
    )
    # reap it in the background if we outlive it (it normally outlives us)
    threading.Thread(target=proc.wait, daemon=True).start()
    deadline = time.monotonic() + announce_timeout
    while checker_pid(root) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(_TICK)


def stop_checker(root: Path, timeout: float = 5.0) -> None:
    """Kill the root's checker (system reset, tests); not running is success."""
    pid = checker_pid(root)
    if pid is None:
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_alive(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def reset(cdir: Path) -> None:
    """A (re)started container's health begins as "starting"."""
    write_status(cdir, initial_status())


def package_root() -> str:
    """The directory that holds the package `pyapply` (site-packages, or the checkout): what
    the checker's Python needs on its path to import us. Not this file's resolved path: in
    the checkout pyapply/runtime is a link to runtime/, and installed, parents of this file
    would be pyapply/ itself, either of which puts top-level `runtime`, `reconciler` and
    `schemas` on the checker's path."""
    import pyapply

    return os.path.dirname(os.path.dirname(os.path.abspath(pyapply.__file__)))


class _Watched(msgspec.Struct):
    started_at: str
    config: HealthConfig
    argv: list[str]
    cid: str
    t0: float  # when we first saw this run: the start period and first probe count from here
    due: float
    doc: dict[str, Any]
    busy: bool = False


def _read_state(cdir: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] | None = read_json(cdir / "state.json", STATE_SHAPE)
    except DamagedState:
        return None  # the next apply replaces it (containers.py)
    return doc


def _is_running(cdir: str | Path, doc: dict[str, Any]) -> bool:
    """Started, with no exit recorded."""
    return bool(doc.get("started_at")) and not os.path.exists(os.path.join(cdir, "exit"))


def _read_running(cdir: Path) -> dict[str, Any] | None:
    """The state of a started container with no exit recorded (else None)."""
    doc = _read_state(cdir)
    return doc if doc is not None and _is_running(cdir, doc) else None


def _read_container(cdir: Path) -> dict[str, Any] | None:
    """The state of a running container that has a healthcheck (else None)."""
    doc = _read_running(cdir)
    return doc if doc is not None and doc.get("health") else None


class Looks:
    """What the keeper's scan reads of each container, kept between scans while the files
    say nothing changed: the scan runs four times a second over every container of the
    root, and reading each state.json and conmon's /proc files every time cost ~0.1 % of a
    core per container (8 % at 80 containers) for a root where nothing happens.

    - A state is read again when its state.json's (inode, mtime, ctime, size) change, which
      every write does (a new file renamed into place), and at the latest REREAD_S after it
      was read: a safety net for the one case the signature misses, two writes of one size
      within one tick of the file system's clock onto a reused inode.
    - conmon is checked once (its pid file, alive, named conmon) and then held by a pidfd,
      which becomes readable when that process ends: one poll per scan, and a pid reused
      by another process is never taken for it. Without a pidfd (the keeper out of file
      descriptors) the check is the full one each time."""

    REREAD_S = 5.0

    def __init__(self) -> None:
        self.states: dict[str, tuple[tuple[int, ...], float, dict[str, Any] | None]] = {}
        self.conmons: dict[str, tuple[tuple[int, ...], float, int | None]] = {}

    @staticmethod
    def _signature(path: str) -> tuple[int, ...] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def state(self, cdir: str, name: str, now: float) -> dict[str, Any] | None:
        """`_read_state` of the container directory `cdir` (a string, as the scan's paths
        are: pathlib's objects were half of its cost), from the last read while its
        state.json is unchanged."""
        sig = self._signature(f"{cdir}/state.json")
        if sig is None:  # no state.json (a container being made, not a directory...)
            self.states.pop(name, None)
            return None
        seen = self.states.get(name)
        if seen is not None and seen[0] == sig and now - seen[1] < self.REREAD_S:
            return seen[2]
        doc = _read_state(Path(cdir))
        self.states[name] = (sig, now, doc)
        return doc

    def conmon_alive(self, cdir: str, name: str, now: float) -> bool:
        """Whether the container's conmon runs (`conmon_pid`), through its pidfd; an answer
        "no" is looked at again after REREAD_S, as a state is."""
        sig = self._signature(f"{cdir}/conmon.pid")
        seen = self.conmons.get(name)
        if (
            seen is not None
            and seen[0] == sig
            and (seen[2] is not None or now - seen[1] < self.REREAD_S)
        ):
            fd = seen[2]
            if fd is None:
                return False
            if fd < 0:
                return conmon_pid(Path(cdir)) is not None
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                return True
            # ended: nothing more to learn from this pid file
            self._close(name)
            self.conmons[name] = (sig, now, None)
            return False
        self._close(name)
        pid = conmon_pid(Path(cdir)) if sig is not None else None
        fd = None
        if pid is not None:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                pid = None
            except OSError:
                fd = -1  # out of descriptors (or no pidfds): the full check each time
            if fd is not None and fd >= 0 and conmon_pid(Path(cdir)) != pid:
                os.close(fd)  # it ended (and its pid went) between the check and the open
                fd, pid = None, None
        if sig is not None:
            self.conmons[name] = (sig, now, fd)
        return pid is not None

    def _close(self, name: str) -> None:
        seen = self.conmons.pop(name, None)
        if seen is not None and seen[2] is not None and seen[2] >= 0:
            os.close(seen[2])

    def forget_except(self, names: set[str]) -> None:
        """Drop what is kept of containers not in `names` (removed)."""
        for name in set(self.states) - names:
            del self.states[name]
        for name in set(self.conmons) - names:
            self._close(name)


def _entries(containers: Path) -> list[tuple[str, str]]:
    """(name, path) of each entry of the containers directory; none when it is not there."""
    try:
        with os.scandir(containers) as found:
            return [(e.name, e.path) for e in found]
    except FileNotFoundError:
        return []


def _keep_log(cdir: str, name: str, doc: dict[str, Any], looks: Looks, now: float) -> bool:
    """Rotate the log if it is due; whether its conmon is still there (the container runs)."""
    if not looks.conmon_alive(cdir, name, now):
        return False
    log = doc.get("log") or {}
    with contextlib.suppress(OSError):
        rotate_log(
            cdir,
            int(log.get("max_size") or DEFAULT_LOG_SIZE_MAX),
            int(log.get("files") or DEFAULT_LOG_FILES),
        )
    return True


def _config(h: dict[str, Any]) -> HealthConfig:
    return HealthConfig(
        test=tuple(h.get("test", ())),
        interval_s=float(h.get("interval_s", 30.0)) or 30.0,
        timeout_s=float(h.get("timeout_s", 30.0)) or 30.0,
        retries=int(h.get("retries", 3)),
        start_period_s=float(h.get("start_period_s", 0.0)),
    )


def run(root: Path, runc: str) -> int:
    """The checker: probe every watched container on its interval; exit when idle."""
    # imported here, in the keeper's own process: the commands that only read this
    # module (a container's health, whether the keeper runs) never pay for them
    import concurrent.futures
    import queue

    from pyapply.runtime.native.restarter import Restarter

    # One checker per root. A second one (a start racing with an idle exit) waits here and
    # takes over when the first is gone, so a container is never left without a checker.
    lock = open_private(root / LOCK_FILE)
    fcntl.flock(lock, fcntl.LOCK_EX)
    pid_file = root / PID_FILE
    _announce(pid_file)
    announced = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sup = Supervisor(root / "runc", runc=runc)
    restarter = Restarter(root)
    containers = root / "containers"
    watched: dict[str, _Watched] = {}
    looks = Looks()
    arrived: list[tuple[str, str, Probe]] = []
    results: queue.SimpleQueue[tuple[str, str, Probe]] = queue.SimpleQueue()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    idle_since = time.monotonic()
    next_scan = 0.0
    next_logs = 0.0
    running = False  # a container of the root ran at the last log check

    def probe(name: str, w: _Watched) -> None:
        t0 = time.time()
        try:
            res = sup.exec(w.cid, w.argv, timeout=w.config.timeout_s, max_output=4096)
            code, out = res.exit_code, res.output.decode(errors="replace")
            if res.timed_out:
                out = f"Health check exceeded timeout ({w.config.timeout_s}s)"
        except Exception as e:  # a probe that cannot run is a failed probe
            code, out = -1, str(e)
        results.put((name, w.started_at, Probe(t0, time.time(), code, out)))

    try:
        while True:
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + 0.25
                seen = set()
                keep_logs = now >= next_logs
                if keep_logs:
                    next_logs = now + LOG_CHECK_S
                    running = False
                owed = False  # a restart the policy owes keeps the keeper here
                present: set[str] = set()
                for name, cdir in _entries(containers):
                    if name.startswith(REMOVED_PREFIX):
                        continue  # a removed container, being deleted
                    present.add(name)
                    doc = looks.state(cdir, name, now)
                    if doc is None:
                        continue
                    if not _is_running(cdir, doc):
                        owed = restarter.consider(Path(cdir), doc) or owed
                        continue
                    if keep_logs and _keep_log(cdir, name, doc, looks, now):
                        running = True
                    argv = probe_argv(_config(doc["health"]).test) if doc.get("health") else None
                    if argv is None:
                        continue
                    seen.add(name)
                    w = watched.get(name)
                    if w is None or w.started_at != doc["started_at"]:
                        cfg = _config(doc["health"])
                        watched[name] = _Watched(
                            started_at=doc["started_at"],
                            config=cfg,
                            argv=argv,
                            cid=str(doc["id"]),
                            t0=time.time(),
                            due=now + cfg.interval_s,
                            doc=read_document(Path(cdir)) or initial_status(),
                        )
                for gone in set(watched) - seen:
                    del watched[gone]
                looks.forget_except(present)
                if watched or running or owed:
                    idle_since = now
                    if not announced:
                        _announce(pid_file)
                        announced = True
                elif now - idle_since > IDLE_EXIT_S:
                    if announced:
                        # withdraw first, then look once more: a start that saw our pid
                        # file saved its container before, so the rescan finds it
                        with contextlib.suppress(OSError):
                            pid_file.unlink()
                        announced = False
                        next_scan = 0.0
                        continue
                    return 0
            while arrived or not results.empty():
                name, started_at, p = arrived.pop() if arrived else results.get()
                w = watched.get(name)
                if w is None or w.started_at != started_at:
                    continue
                w.busy = False
                w.due = time.monotonic() + w.config.interval_s
                probed = containers / name
                current = _read_container(probed)
                if current is None or current.get("started_at") != started_at:
                    continue  # stopped or restarted meanwhile: the result is stale
                w.doc = apply_probe(w.doc, p, w.config, w.t0)
                with contextlib.suppress(OSError):  # removed meanwhile
                    write_status(probed, w.doc)
            for name, w in watched.items():
                if not w.busy and now >= w.due:
                    w.busy = True
                    pool.submit(probe, name, w)
            # asleep until the next scan, the next probe due, or a probe's result
            wake = min([next_scan, *(w.due for w in watched.values() if not w.busy)])
            with contextlib.suppress(queue.Empty):
                arrived.append(results.get(timeout=max(0.0, wake - time.monotonic())))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=_MARKER)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--runc", default=DEFAULT_RUNC)
    args = parser.parse_args(argv)
    return run(args.root, args.runc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
