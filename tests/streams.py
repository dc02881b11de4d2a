"""`make test`'s runner: the suite as two pytest processes at once, on this 2-core host.

Most of an end-to-end test's time is spent waiting (a container starting, a daemon
answering, a grace period), so two at a time take about half as long. The split is by what
they share: the tests of the host dockerd and its swarm (marked `dockerd` in
tests/conftest.py; a swarm is one per host, so those must not overlap each other) run in one
stream, everything else (unit tests, the native runtime, the fresh machine) in the other.
Two native roots side by side are a supported case (the host lock serialises their network
changes), and so are a native root and dockerd.

Usage: python -m tests.streams [pytest arguments...]. The second stream prints as it goes;
the dockerd stream's output is kept in a file and printed when both have ended; then the
FAILED and ERROR lines of both (pytest's short summary, with -ra), and one line per stream.
The exit status is the first failing stream's (0 if both passed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

# (name, pytest -m expression): together they select every test, each once
STREAMS = (("dockerd", "dockerd"), ("rest", "not dockerd"))
STREAM_ENV = "PYAPPLY_TEST_STREAM"  # the stream's name, for the checks of what may run where


def relay(source: IO[bytes], failures: list[bytes]) -> None:
    """Copy `source` to standard output line by line, keeping its short-summary lines."""
    for line in source:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        if line.startswith((b"FAILED ", b"ERROR ")):
            failures.append(line)


def main(args: list[str]) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    failures: list[bytes] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)  # pytest ends a run on SIGINT after its teardowns
    fd, log_name = tempfile.mkstemp(prefix="pyapply-test-dockerd-", suffix=".log")
    log = Path(log_name)
    began = time.monotonic()
    ended: dict[str, float] = {}
    try:
        for name, expr in STREAMS:
            out = fd if name == "dockerd" else subprocess.PIPE
            cmd = [sys.executable, "-m", "pytest", "-m", expr, *args]
            env = {**os.environ, STREAM_ENV: name}
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
        os.close(fd)
        live = procs[-1].stdout
        assert live is not None
        copier = threading.Thread(target=relay, args=(live, failures), daemon=True)
        copier.start()
        codes: dict[str, int] = {}
        while len(codes) < len(procs):
            for (name, _), p in zip(STREAMS, procs, strict=True):
                if name not in codes and p.poll() is not None:
                    codes[name] = p.returncode
                    ended[name] = time.monotonic() - began
            time.sleep(0.2)
        copier.join()
        print(f"\n{'=' * 30} the dockerd stream ({log}) {'=' * 30}", flush=True)
        with log.open("rb") as fh:
            relay(fh, failures)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.unlink(missing_ok=True)
    if failures:
        print(f"{'=' * 30} failures of both streams {'=' * 30}", flush=True)
        sys.stdout.buffer.write(b"".join(failures))
        sys.stdout.buffer.flush()
    for name, _ in STREAMS:
        print(f"stream {name}: exit {codes[name]} after {ended[name]:.0f} s")
    return next((c for c in codes.values() if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
