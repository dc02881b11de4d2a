"""The keeper's restarts (runtime/native/restarter.py) on state files in a temporary dir and
a fake driver: what it owes, when it restarts (after the policy's wait, from the exit's
time), once per exit, never for a container stopped on purpose, and a failing restart
retried later, not in a busy loop."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.native.restarter import FAILED_RETRY_S, Restarter
from pyapply.runtime.native.supervise import utc_iso


class FakeStarter:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.done = threading.Event()

    def start_by_policy(self, key: str, *, boot: bool = False) -> bool:
        self.calls.append(key)
        self.done.set()
        if self.fail:
            raise RuntimeError("port taken")
        return True


def container(
    root: Path,
    name: str,
    *,
    policy: str = "always",
    code: int | None = 1,
    ended_ago: float = 5.0,
    ran_for: float = 1.0,
    **books: Any,
) -> tuple[Path, dict[str, Any]]:
    """A container dir with its state and (if `code` is given) conmon's exit file."""
    cdir = root / "containers" / name
    cdir.mkdir(parents=True)
    ended = time.time() - ended_ago
    doc: dict[str, Any] = {
        "id": "c" * 64,
        "labels": {},
        "layer_dirs": [],
        "hostname": "h",
        "started_at": utc_iso(ended - ran_for),
        "pending": False,
        "restart": {"policy": policy, "max_retries": 0, **books},
    }
    (cdir / "state.json").write_text(json.dumps(doc))
    if code is not None:
        (cdir / "exit").write_text(str(code))
        os.utime(cdir / "exit", (ended, ended))
    return cdir, doc


def keeper(tmp_path: Path, starter: FakeStarter) -> Restarter:
    r = Restarter(tmp_path)
    r._starter = starter  # the driver, as the first restart would open it
    return r


def test_an_exit_past_its_wait_is_restarted_once(tmp_path: Path) -> None:
    starter = FakeStarter()
    r = keeper(tmp_path, starter)
    cdir, doc = container(tmp_path, "web", ended_ago=1.0)
    assert r.consider(cdir, doc) is True
    assert starter.done.wait(5)
    for _ in range(3):  # rescans while it is still being restarted: no second one
        r.consider(cdir, doc)
    time.sleep(0.1)
    assert starter.calls == ["web"]


def test_the_wait_counts_from_the_exit(tmp_path: Path) -> None:
    starter = FakeStarter()
    r = keeper(tmp_path, starter)
    # the last wait was 3.2 s, so the next is 6.4 s: owed, but not yet due
    cdir, doc = container(tmp_path, "web", ended_ago=0.5, count=5, delay_s=3.2)
    assert r.consider(cdir, doc) is True
    time.sleep(0.1)
    assert starter.calls == []
    # a run of 10 s or more starts the backoff anew: due after 100 ms
    cdir2, doc2 = container(tmp_path, "db", ended_ago=0.5, ran_for=30, count=5, delay_s=3.2)
    assert r.consider(cdir2, doc2) is True
    assert starter.done.wait(5) and starter.calls == ["db"]


@pytest.mark.parametrize(
    ("what", "kwargs"),
    [
        ("no policy", {"policy": "no"}),
        ("stopped on purpose", {"stopped": True}),
        ("on-failure after a success", {"policy": "on-failure", "code": 0}),
        ("unless-stopped, stopped", {"policy": "unless-stopped", "stopped": True}),
        ("no exit recorded (conmon gone): the pass's", {"code": None}),
    ],
)
def test_nothing_owed(tmp_path: Path, what: str, kwargs: dict[str, Any]) -> None:
    starter = FakeStarter()
    r = keeper(tmp_path, starter)
    cdir, doc = container(tmp_path, "web", **kwargs)
    assert r.consider(cdir, doc) is False, what
    time.sleep(0.05)
    assert starter.calls == []


def test_on_failure_gives_up(tmp_path: Path) -> None:
    starter = FakeStarter()
    r = keeper(tmp_path, starter)
    cdir, doc = container(tmp_path, "job", policy="on-failure", count=2)
    doc["restart"]["max_retries"] = 2
    assert r.consider(cdir, doc) is False
    doc["restart"]["count"] = 1
    assert r.consider(cdir, doc) is True
    assert starter.done.wait(5) and starter.calls == ["job"]


def test_a_failing_restart_is_tried_again_later(tmp_path: Path) -> None:
    starter = FakeStarter(fail=True)
    r = keeper(tmp_path, starter)
    cdir, doc = container(tmp_path, "web")
    assert r.consider(cdir, doc) is True
    assert starter.done.wait(5)
    deadline = time.monotonic() + 5
    while "web" in r._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(5):  # rescans within the retry wait: still owed, not tried again
        assert r.consider(cdir, doc) is True
    time.sleep(0.1)
    assert starter.calls == ["web"]
    retry_at, wait = r._failed["web"]
    assert wait == FAILED_RETRY_S and retry_at > time.time()
