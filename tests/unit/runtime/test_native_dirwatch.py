"""The native event poller's wake-up (runtime/native/dirwatch.py), on a real directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pyapply.runtime.native.dirwatch import DirWatch


def test_a_new_or_removed_entry_wakes_the_wait_early(tmp_path: Path) -> None:
    closed = threading.Event()
    watch = DirWatch(tmp_path, closed)
    try:
        assert watch.watching
        for change in (lambda: (tmp_path / "c1").mkdir(), lambda: (tmp_path / "c1").rmdir()):
            threading.Timer(0.05, change).start()
            begin = time.monotonic()
            watch.wait(5.0)
            assert time.monotonic() - begin < 2.5, "the change did not wake the wait"
        # nothing changed since: the wait lasts its timeout
        begin = time.monotonic()
        watch.wait(0.2)
        assert time.monotonic() - begin >= 0.19
    finally:
        watch.close()
    assert not watch.watching


def test_changes_below_the_directory_do_not_wake_it(tmp_path: Path) -> None:
    (tmp_path / "c1").mkdir()
    watch = DirWatch(tmp_path, threading.Event())
    try:
        (tmp_path / "c1" / "exit").write_text("0")
        begin = time.monotonic()
        watch.wait(0.2)
        assert time.monotonic() - begin >= 0.19
    finally:
        watch.close()


def test_without_the_directory_it_is_a_timed_wait_that_close_ends(tmp_path: Path) -> None:
    closed = threading.Event()
    watch = DirWatch(tmp_path / "missing", closed)
    assert not watch.watching
    threading.Timer(0.05, closed.set).start()
    begin = time.monotonic()
    watch.wait(5.0)
    assert time.monotonic() - begin < 2.5
