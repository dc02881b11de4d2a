"""Shared helpers of the fault-injection suite: converge and check, a marker in a named
volume, SIGKILL a `pyapply` run at a chosen point, and a short description of the state seen
(for failure messages). The `runtime` fixture of tests/e2e/conftest.py applies here too: it
gives each test a fresh stack and state root, and fails the test if anything of it is left
after the stack is removed.

Import the helpers as `from tests.e2e.faults.conftest import converge, kill_at, ...`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec

from tests.e2e.runtimes import PYAPPLY, Cli, NativeUnderTest, RuntimeUnderTest

SERVICE_LABEL = "io.pyapply.service"


def file_args(files: Sequence[Path]) -> list[str]:
    """`-f F` for each manifest file or directory."""
    return [arg for f in files for arg in ("-f", str(f))]


def converge(cli: Cli, files: Sequence[Path], what: str, options: Sequence[str] = ()) -> str:
    """`pyapply -f FILES OPTIONS` exits 0 and `pyapply diff -f FILES --exit-code` then says 0
    (no drift). `what` names the case in the failure message. Returns the apply's output."""
    args = file_args(files)
    out = cli.run(*args, *options)
    assert out.returncode == 0, (
        f"{what}: pyapply -f exited {out.returncode}\n{out.stdout}{out.stderr}"
    )
    diff = cli.run("diff", *args, "--exit-code")
    assert diff.returncode == 0, (
        f"{what}: after an apply that exited 0, diff --exit-code said {diff.returncode}\n"
        f"apply:\n{out.stdout}{out.stderr}\ndiff:\n{diff.stdout}{diff.stderr}"
    )
    return out.stdout


def state_seen(runtime: RuntimeUnderTest) -> str:
    """The stack's containers as `name=status` (sorted), for failure messages."""
    found = runtime.observe.containers(runtime.stack)
    return ", ".join(f"{n}={c.status}" for n, c in sorted(found.items())) or "no containers"


def running_by_service(runtime: RuntimeUnderTest) -> Counter[str]:
    """How many running containers each service of the stack has."""
    found = runtime.observe.containers(runtime.stack).values()
    return Counter(c.labels.get(SERVICE_LABEL, "?") for c in found if c.status == "running")


def kernel_objects(runtime: RuntimeUnderTest) -> list[str]:
    """On native, the kernel objects and processes of the state root, one line each (see
    NativeUnderTest.kernel_leftovers); nothing on docker, whose kernel objects are dockerd's."""
    return runtime.kernel_leftovers() if isinstance(runtime, NativeUnderTest) else []


def kernel_census(runtime: RuntimeUnderTest) -> Counter[str]:
    """How many kernel objects of each kind (link, netns, mount, iptables rule, cgroup) the
    state root has (see kernel_objects). Two censuses of the same converged stack must be
    equal: more is a leak. Processes are left out: the health checker comes and goes on its
    own."""
    kinds = Counter(line.split(" ", 1)[0] for line in kernel_objects(runtime))
    del kinds["process"]
    return kinds


class VolumeMarker:
    """A random token in a file of a named volume, written and read back through a container
    that mounts it: data that must survive every fault."""

    def __init__(self, runtime: RuntimeUnderTest, path: str) -> None:
        self.runtime = runtime
        self.path = path
        self.token = secrets.token_hex(16)

    def write(self, container: str) -> None:
        code, out = self.runtime.exec(
            container, "sh", "-c", f"printf %s {self.token} > {self.path} && sync"
        )
        assert code == 0, f"cannot write the marker {self.path} in {container}: {out}"

    def check(self, container: str, what: str) -> None:
        code, out = self.runtime.exec(container, "cat", self.path)
        assert (code, out) == (0, self.token), (
            f"{what}: the marker {self.path} in the volume is lost or changed: "
            f"cat exited {code} with {out[:200]!r}, expected {self.token!r}"
        )


class Killed(msgspec.Struct, frozen=True):
    """A `pyapply` run and the SIGKILL sent to it (or not: see `landed`)."""

    at_s: float  # when the kill was sent, or the run ended, in seconds after the start
    line_s: float | None  # when the line waited for appeared, in seconds after the start
    landed: bool  # the run was still going when the kill came: SIGKILL ended it
    returncode: int
    output: str  # stdout and stderr, as far as the run got

    def lines(self, containing: str = "") -> list[str]:
        return [line for line in self.output.splitlines() if containing in line]


def kill_at(
    cli: Cli,
    args: Sequence[str],
    *,
    after_s: float = 0.0,
    after_line: str | None = None,
    limit_s: float = 120.0,
    poll_s: float = 0.01,
) -> Killed:
    """Run `pyapply ARGS` and SIGKILL it `after_s` seconds after it printed a line containing
    `after_line` (after its start without one). Only its pid is killed, as `kill -9 PID`
    would: children it started carry on. A run that ends before is not killed (`landed` is
    False); `after_s=math.inf` never kills, to time a run. A run still going after `limit_s`
    is killed and is a failure.

    The output goes to a file, not a pipe: a process the run leaves behind (conmon, the
    health checker) could hold a pipe open and block the reader."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [PYAPPLY, *args], env=cli.env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
        line_s: float | None = None if after_line is not None else 0.0
        try:
            while proc.poll() is None:
                now = time.monotonic() - start
                if line_s is None:
                    out.seek(0)
                    if after_line is not None and after_line in out.read():
                        line_s = now
                if line_s is not None and now >= line_s + after_s:
                    break
                assert now < limit_s, f"pyapply {' '.join(args)} still running after {limit_s}s"
                time.sleep(poll_s)
            at = time.monotonic() - start
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:  # an assertion above: do not leave the run going
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        out.seek(0)
        text = out.read()
        if line_s is None and after_line is not None and after_line in text:
            line_s = at  # printed just before the end
        return Killed(at, line_s, code == -signal.SIGKILL, code, text)
