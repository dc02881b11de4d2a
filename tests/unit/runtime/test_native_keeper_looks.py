"""What the keeper's scan keeps between its looks (runtime/native/health.py `Looks`): a
container's state is read again exactly when its state.json changed (or REREAD_S passed),
and conmon is followed through a pidfd: alive while that process runs, dead once it ended,
never another process that took its pid file's place. Real files and real processes (a copy
of sleep named conmon, ended by pid)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.native.health import Looks
from pyapply.runtime.statefs import atomic_write


def state_doc(**more: Any) -> dict[str, Any]:
    return {
        "id": "c" * 64,
        "labels": {},
        "layer_dirs": [],
        "hostname": "h",
        "started_at": "2026-12-03T07:00:00Z",
        "pending": False,
        **more,
    }


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    d = tmp_path / "containers" / "web"
    d.mkdir(parents=True)
    atomic_write(d / "state.json", json.dumps(state_doc()))
    return d


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start a process whose name (comm) is `name`: a copy of sleep; all ended at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        exe = tmp_path / "bin" / name
        if not exe.exists():
            exe.parent.mkdir(exist_ok=True)
            shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
        proc = subprocess.Popen([str(exe), "60"])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_state_is_read_again_only_when_its_file_changed(cdir: Path) -> None:
    looks = Looks()
    first = looks.state(str(cdir), "web", 100.0)
    assert first is not None and first["hostname"] == "h"
    assert looks.state(str(cdir), "web", 101.0) is first  # unchanged: not read again
    atomic_write(cdir / "state.json", json.dumps(state_doc(hostname="other")))
    changed = looks.state(str(cdir), "web", 102.0)
    assert changed is not None and changed["hostname"] == "other"
    # the safety net: read again once REREAD_S passed, even with the file unchanged
    assert looks.state(str(cdir), "web", 102.0 + Looks.REREAD_S) is not changed
    (cdir / "state.json").unlink()
    assert looks.state(str(cdir), "web", 200.0) is None
    assert "web" not in looks.states


def test_a_damaged_state_reads_as_none_until_it_is_rewritten(cdir: Path) -> None:
    looks = Looks()
    atomic_write(cdir / "state.json", "[]")
    assert looks.state(str(cdir), "web", 1.0) is None
    atomic_write(cdir / "state.json", json.dumps(state_doc()))
    assert looks.state(str(cdir), "web", 2.0) is not None


def test_conmon_is_followed_by_its_pidfd(cdir: Path, spawn: Any) -> None:
    looks = Looks()
    assert not looks.conmon_alive(str(cdir), "web", 1.0)  # no pid file
    conmon = spawn("conmon")
    (cdir / "conmon.pid").write_text(str(conmon.pid))
    fds = open_fds()
    assert looks.conmon_alive(str(cdir), "web", 2.0)
    assert open_fds() == fds + 1  # the pidfd held
    assert looks.conmon_alive(str(cdir), "web", 3.0)
    conmon.kill()
    conmon.wait()
    assert not looks.conmon_alive(str(cdir), "web", 4.0)  # the same pid file: the pidfd says
    assert open_fds() == fds  # and it is closed


def test_a_pid_file_naming_another_program_is_not_conmon(cdir: Path, spawn: Any) -> None:
    looks = Looks()
    other = spawn("notconmon")
    (cdir / "conmon.pid").write_text(str(other.pid))
    assert not looks.conmon_alive(str(cdir), "web", 1.0)
    # a new conmon writes its pid file: the new file is looked at at once
    conmon = spawn("conmon")
    atomic_write(cdir / "conmon.pid", str(conmon.pid))
    assert looks.conmon_alive(str(cdir), "web", 2.0)


def test_a_dead_answer_is_looked_at_again_after_the_reread_time(cdir: Path, spawn: Any) -> None:
    looks = Looks()
    # a process that renames itself "conmon" when told to (a process may set only its own)
    rename = "; ".join(
        (
            "import sys, time",
            "sys.stdin.readline()",
            "open('/proc/self/comm', 'w').write('conmon')",
            "print(flush=True)",
            "time.sleep(60)",
        )
    )
    other = subprocess.Popen(
        [sys.executable, "-c", rename], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        (cdir / "conmon.pid").write_text(str(other.pid))
        assert not looks.conmon_alive(str(cdir), "web", 1.0)
        # the process the unchanged pid file names becomes "conmon": the kept answer stands
        # until REREAD_S has passed, then the full check is made again
        assert other.stdin is not None and other.stdout is not None
        other.stdin.write("\n")
        other.stdin.flush()
        other.stdout.readline()
        assert not looks.conmon_alive(str(cdir), "web", 2.0)
        assert looks.conmon_alive(str(cdir), "web", 1.0 + Looks.REREAD_S)
    finally:
        other.kill()
        other.wait()


def test_forgetting_removed_containers_closes_their_pidfds(cdir: Path, spawn: Any) -> None:
    looks = Looks()
    conmon = spawn("conmon")
    (cdir / "conmon.pid").write_text(str(conmon.pid))
    fds = open_fds()
    assert looks.conmon_alive(str(cdir), "web", 1.0)
    assert looks.state(str(cdir), "web", 1.0) is not None
    looks.forget_except({"web"})
    assert open_fds() == fds + 1
    looks.forget_except(set())
    assert open_fds() == fds
    assert not looks.states and not looks.conmons


def test_an_entry_without_a_state_reads_as_none(tmp_path: Path) -> None:
    looks = Looks()
    containers = tmp_path / "containers"
    (containers / "being-made").mkdir(parents=True)
    (containers / "a-file").write_text("not a container")
    for name in ("being-made", "a-file", "gone"):
        assert looks.state(str(containers / name), name, 1.0) is None
        assert not looks.conmon_alive(str(containers / name), name, 1.0)
    assert not looks.states and not looks.conmons
