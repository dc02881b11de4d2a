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
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.api import (
    AgentClient,
    AgentError,
    AgentUnavailable,
    ApiError,
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
