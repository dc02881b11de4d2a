"""The pure parts of an attached exec: the Engine's multiplexed frames (docker without a
TTY) split back into stdout and stderr however the bytes arrive, the relay between a
stream and this process, and the terminal helpers on a real pseudo-terminal pair."""

from __future__ import annotations

import os
import pty
import struct
import termios

from pyapply.runtime import terminal
from pyapply.runtime.docker.driver import ExecFrames


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


def test_frames_are_split_by_stream_whatever_the_chunking() -> None:
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"x" * 70000)
    for size in (1, 3, 8, 9, 4096, len(data)):
        frames = ExecFrames()
        got = [f for i in range(0, len(data), size) for f in frames.feed(data[i : i + size])]
        assert got == [(1, b"out\n"), (2, b"err\n"), (1, b""), (1, b"x" * 70000)], size
        assert frames.buf == b""


def test_a_partial_frame_waits_for_the_rest() -> None:
    frames = ExecFrames()
    assert list(frames.feed(frame(1, b"hello")[:10])) == []
    assert list(frames.feed(b"llo")) == [(1, b"hello")]


def test_relay_copies_the_stream_until_it_ends() -> None:
    r, w = os.pipe()
    os.write(w, b"one two")
    os.close(w)
    got: list[bytes] = []
    terminal.relay(r, send=got.append, close_send=lambda: None, receive=got.append, stdin=False)
    os.close(r)
    assert b"".join(got) == b"one two"


def test_relay_ends_on_eio_of_a_pty_master() -> None:
    master, slave = pty.openpty()
    os.write(slave, b"last words")
    os.close(slave)  # the process's side gone: the master reads the rest, then EIO
    got: list[bytes] = []
    terminal.relay(
        master, send=got.append, close_send=lambda: None, receive=got.append, stdin=False
    )
    os.close(master)
    assert b"".join(got).replace(b"\r", b"") == b"last words"


def test_window_size_and_raw_mode_on_a_pty() -> None:
    master, slave = pty.openpty()
    try:
        terminal.set_window_size(slave, (42, 132))
        assert terminal.window_size(slave) == (42, 132)

        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO
        with terminal.raw_terminal(slave):
            assert not termios.tcgetattr(slave)[3] & termios.ECHO
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_no_terminal_has_no_size() -> None:
    r, w = os.pipe()
    try:
        assert terminal.window_size(r) is None
        with terminal.raw_terminal(r):  # not a terminal: left alone
            pass
    finally:
        os.close(r)
        os.close(w)
