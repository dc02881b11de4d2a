"""The agent's API: the server's checks of query values (pure), and the client against a
peer that is not a working agent -- it closes at once, answers garbage or nothing; the
commands say so in one line (exit 1), never a traceback. The server itself is tested
against a real agent in tests/e2e/test_api_fuzz.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.reconciler.agent.api import (
    AgentBusy,
    AgentClient,
    AgentError,
    AgentUnavailable,
    ApiError,
    Shared,
    _bool,
    _int,
    _seconds,
)

PYAPPLY = str(Path(sys.executable).parent / "pyapply")


@contextlib.contextmanager
def peer(tmp_path: Path, reply: bytes | None) -> Iterator[str]:
    """A UNIX socket server that reads a request and sends `reply` then closes (None:
    keeps the connection open without answering, until the test ends)."""
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
            if reply is None:
                held.append(conn)
                continue
            with contextlib.suppress(OSError):
                conn.sendall(reply)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
    ],
)
def test_a_broken_peer_is_an_agent_error(tmp_path: Path, reply: bytes) -> None:
    with peer(tmp_path, reply) as path:
        client = AgentClient(path, timeout=2)
        with pytest.raises(AgentError, match="failed to answer"):
            client.request("GET", "/v1/status")
        assert not client.available()
        out = subprocess.run(
            [PYAPPLY, "status", "--socket", path],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ},
        )
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: the agent on"), out


def test_a_silent_peer_times_out(tmp_path: Path) -> None:
    with (
        peer(tmp_path, None) as path,
        pytest.raises(AgentError, match=r"did not answer GET /v1/status within 0\.5s"),
    ):
        AgentClient(path, timeout=0.5).request("GET", "/v1/status")


def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable):
        AgentClient(str(tmp_path / "none.sock")).request("GET", "/v1/status")


@pytest.mark.parametrize("text", ["abc", "1e23", "-1", "", " 1", "+1", "1.0", "5001", "\u0661"])
def test_bad_limits_are_400(text: str) -> None:
    with pytest.raises(ApiError) as info:
        _int(text, "limit", 5000)
    assert info.value.status == 400 and "limit must be a whole number" in info.value.message


def test_good_limits() -> None:
    assert [_int(t, "limit", 5000) for t in ("0", "50", "5000", "007")] == [0, 50, 5000, 7]


@pytest.mark.parametrize("text", ["abc", "nan", "inf", "-inf", "-1", "0", "600.01", "1" * 40])
def test_bad_timeouts_are_400(text: str) -> None:
    with pytest.raises(ApiError) as info:
        _seconds(text, "timeout", 600)
    assert info.value.status == 400


def test_good_timeouts_and_booleans() -> None:
    assert _seconds(None, "timeout", 600) == 600
    assert _seconds("0.5", "timeout", 600) == 0.5
    assert [_bool(t, "wait") for t in ("true", "1", "YES", "", "no", "0")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(ApiError):
        _bool("maybe", "wait")


# -- a busy agent ------------------------------------------------------------------------------

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b'Connection: close\r\nContent-Length: 18\r\n\r\n{"error": "busy"}\n'
)
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'
STOPPING = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b'Content-Length: 21\r\n\r\n{"error": "stopping"}'
)


@contextlib.contextmanager
def replies(tmp_path: Path, answers: list[bytes]) -> Iterator[tuple[str, list[float]]]:
    """A peer that answers its n-th connection with answers[n] (the last one thereafter)
    as soon as it accepts, as the agent's busy path does; yields (path, accept times)."""
    path = str(tmp_path / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(0.1)
    stop = threading.Event()
    seen: list[float] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            seen.append(time.monotonic())
            with contextlib.suppress(OSError):
                conn.sendall(answers[min(len(seen), len(answers)) - 1])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, seen
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_503_with_retry_after_is_asked_again(tmp_path: Path) -> None:
    with replies(tmp_path, [BUSY, BUSY, OK]) as (path, seen):
        status, doc = AgentClient(path, busy_wait_s=10).request("POST", "/v1/sync", {"x": 1})
    assert (status, doc) == (200, {"ok": True})
    assert len(seen) == 3
    assert seen[1] - seen[0] >= 1.0 and seen[2] - seen[1] >= 1.0  # Retry-After respected


def test_an_agent_busy_for_too_long_is_busy_not_absent(tmp_path: Path) -> None:
    with replies(tmp_path, [BUSY]) as (path, _), pytest.raises(AgentBusy, match="is busy"):
        AgentClient(path, busy_wait_s=0.5).request("GET", "/v1/status")


def test_a_503_without_retry_after_is_an_answer(tmp_path: Path) -> None:
    with replies(tmp_path, [STOPPING, OK]) as (path, seen):
        status, doc = AgentClient(path, busy_wait_s=10).request("POST", "/v1/sync")
    assert (status, doc, len(seen)) == (503, {"error": "stopping"}, 1)


def test_a_full_listen_queue_is_busy_not_absent(tmp_path: Path) -> None:
    """Connects beyond the backlog of a UNIX socket fail with EAGAIN: the agent is there."""
    path = str(tmp_path / "full.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(0)  # never accepts
    waiting: list[socket.socket] = []
    try:
        for _ in range(64):  # fill the queue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            waiting.append(s)
        else:
            pytest.fail("the listen queue never filled")
        started = time.monotonic()
        with pytest.raises(AgentBusy, match="listen queue is full"):
            AgentClient(path, busy_wait_s=0.5).request("GET", "/v1/status")
        assert time.monotonic() - started >= 0.5
    finally:
        for s in waiting:
            s.close()
        server.close()


# -- requests that arrive together share one computation ---------------------------------------


def test_shared_callers_share_one_computation_and_never_get_an_older_answer() -> None:
    calls: list[int] = []
    running = threading.Event()
    release = threading.Event()

    def compute() -> int:
        calls.append(len(calls) + 1)
        running.set()
        release.wait(5)
        return len(calls)

    shared = Shared(compute)
    got: dict[str, int] = {}
    first = threading.Thread(target=lambda: got.setdefault("first", shared.get()))
    first.start()
    assert running.wait(5)
    # asked while computation 1 runs: served by computation 2, shared by all of them
    later = [
        threading.Thread(target=lambda i=i: got.setdefault(f"later{i}", shared.get()))
        for i in range(20)
    ]
    for t in later:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in [first, *later]:
        t.join(5)
    assert got["first"] == 1
    assert {got[f"later{i}"] for i in range(20)} == {2}
    assert calls == [1, 2]


def test_shared_errors_reach_their_callers_and_the_next_call_computes_again() -> None:
    outcomes = iter([RuntimeError("runtime down"), 7])

    def compute() -> int:
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    shared = Shared(compute)
    with pytest.raises(RuntimeError, match="runtime down"):
        shared.get()
    assert shared.get() == 7
