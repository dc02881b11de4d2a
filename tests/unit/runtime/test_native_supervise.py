"""What conmon says on its sync pipe once `runc create` is done (supervise._read_sync and the
parsing of its message), and the hostname file a start writes again after a crash left it
empty. The whole launch runs end to end in tests/e2e/test_native_containers.py."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.runtime.native import supervise
from pyapply.runtime.native.containers import ContainerManager


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # closed by the test
            os.close(fd)


def test_the_pid_conmon_reports(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b'{"data": 4242}\n')
    reply = supervise._read_sync(r, 5)
    assert reply is not None and supervise._sync_reply(reply)[0] == 4242


def test_a_message_written_in_pieces_is_read_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe

    def write() -> None:
        os.write(w, b'{"data": -1, "mes')
        time.sleep(0.05)
        os.write(w, b'sage": "exec: \\"/nope\\": not found"}\n')

    threading.Thread(target=write).start()
    reply = supervise._read_sync(r, 5)
    assert reply is not None
    assert supervise._sync_reply(reply)[0] is None
    assert supervise._sync_reply(reply)[1] == 'exec: "/nope": not found'


def test_conmon_gone_without_a_word_is_a_failure(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.close(w)
    reply = supervise._read_sync(r, 5)
    assert reply == b"" and supervise._sync_reply(reply)[0] is None
    assert supervise._sync_reply(reply)[1] is None


def test_nothing_within_the_timeout(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    assert supervise._read_sync(r, 0.05) is None


def test_a_start_writes_an_empty_hostname_file_again(tmp_path: Path) -> None:
    (tmp_path / "hostname").write_text("")
    ContainerManager._etc_hostname(tmp_path, {"hostname": "web"})
    assert (tmp_path / "hostname").read_text() == "web\n"
    assert oct((tmp_path / "hostname").stat().st_mode & 0o777) == oct(0o644)
    (tmp_path / "hostname").unlink()
    ContainerManager._etc_hostname(tmp_path, {"hostname": "web"})
    assert (tmp_path / "hostname").read_text() == "web\n"
    (tmp_path / "hostname").write_text("kept\n")  # as the container sees it: left alone
    ContainerManager._etc_hostname(tmp_path, {"hostname": "web"})
    assert (tmp_path / "hostname").read_text() == "kept\n"
