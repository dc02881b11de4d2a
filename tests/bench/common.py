"""What the benchmarks in tests/bench/ share: the N-service stack (as a pyapply Stack and as a
compose file), a tool under test (its converge and teardown commands, and how its objects are
found), checks that a converge really converged, cleanup helpers and small statistics.

Not a test module; the benchmark scripts import it as `common` (their own directory is on
sys.path when they are run as scripts).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import docker.errors
import msgspec
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "pyapply-test/busybox:latest"
COMMAND = ["httpd", "-f", "-p", "80", "-h", "/www"]
NETWORKS = ("net-a", "net-b")
VOLUME = "shared"
PYAPPLY_LABEL = "io.pyapply.stack"
COMPOSE_LABEL = "com.docker.compose.project"
COMMAND_TIMEOUT_S = 600.0


class BenchError(Exception):
    """The benchmark cannot produce a meaningful number; abort."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The stack


def free_ports(count: int, exclude: set[int]) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that are free right now (and not in `exclude`),
    taken from 20000-29999, below the usual ephemeral range, so that outgoing connections do
    not grab them between now and the moment a container publishes them."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(100 * count):
        if len(ports) == count:
            return ports
        port = rng.randrange(20000, 30000)
        if port in exclude or port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) == count:
        return ports
    raise BenchError(f"cannot find {count} free ports in 20000-29999")


def services_spec(n: int, ports: Sequence[int]) -> dict[str, Any]:
    """The compose-shaped `services` mapping shared by every tool.

    Every third service (0, 3, 6, ...) publishes a port on 127.0.0.1; networks alternate
    (both / net-a / net-b); every fifth service mounts the shared named volume."""
    services: dict[str, Any] = {}
    port_iter = iter(ports)
    for i in range(n):
        name = f"svc{i:02d}"
        spec: dict[str, Any] = {
            "image": IMAGE,
            "command": list(COMMAND),
            "init": True,
            "stop_grace_period": "1s",
            "environment": {"BENCH_SERVICE": name, "BENCH_INDEX": str(i)},
            "labels": {"bench.pyapply.role": "web", "bench.pyapply.index": str(i)},
        }
        if i % 3 == 0:
            spec["networks"] = list(NETWORKS)
            spec["ports"] = [f"127.0.0.1:{next(port_iter)}:80"]
        else:
            spec["networks"] = [NETWORKS[(i % 3) - 1]]
        if i % 5 == 0:
            spec["volumes"] = [f"{VOLUME}:/data"]
        services[name] = spec
    return services


def published_count(n: int) -> int:
    return len(range(0, n, 3))


def compose_body(services: dict[str, Any]) -> dict[str, Any]:
    return {
        "services": services,
        "networks": {net: {} for net in NETWORKS},
        "volumes": {VOLUME: {}},
    }


def write_pyapply_manifest(path: Path, stack: str, services: dict[str, Any]) -> None:
    doc = {
        "apiVersion": "pyapply/v1",
        "kind": "Stack",
        "metadata": {"name": stack},
        "spec": compose_body(services),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def write_compose_file(path: Path, services: dict[str, Any]) -> None:
    doc = {"version": "3.8", **compose_body(services)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# The tools


class StackObjects(Protocol):
    """How a benchmark sees the objects one tool made for its stack (and only those)."""

    def containers(self) -> dict[str, tuple[str, str]]:
        """{container name: (id, status)} of the stack's containers."""
        ...

    def leftovers(self) -> list[str]:
        """Everything of the stack that still exists, as "kind name" strings."""
        ...

    def sweep(self) -> list[str]:
        """Force-remove whatever is left of the stack; returns what was removed."""
        ...


class DockerObjects:
    """A stack's objects on dockerd: those whose label `label` has the value `stack`."""

    def __init__(self, client: Any, label: str, stack: str) -> None:
        self.client = client
        self.filters = {"label": f"{label}={stack}"}

    def containers(self) -> dict[str, tuple[str, str]]:
        found = self.client.containers.list(all=True, filters=self.filters)
        return {c.name: (c.id, c.status) for c in found}

    def leftovers(self) -> list[str]:
        flt = self.filters
        return (
            [f"container {c.name}" for c in self.client.containers.list(all=True, filters=flt)]
            + [f"network {n.name}" for n in self.client.networks.list(filters=flt)]
            + [f"volume {v.name}" for v in self.client.volumes.list(filters=flt)]
        )

    def sweep(self) -> list[str]:
        removed: list[str] = []
        flt = self.filters
        for c in self.client.containers.list(all=True, filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
                removed.append(f"container {c.name}")
        for n in self.client.networks.list(filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                n.remove()
                removed.append(f"network {n.name}")
        for v in self.client.volumes.list(filters=flt):
            with contextlib.suppress(docker.errors.NotFound):
                v.remove(force=True)
                removed.append(f"volume {v.name}")
        return removed


class Tool(msgspec.Struct):
    """One tool under test: how to converge and tear down, and how to find its objects."""

    name: str
    stack: str
    up_cmd: list[str]
    down_cmd: list[str]
    env: dict[str, str]
    ports: list[int]
    objects: StackObjects
    samples: dict[str, list[float]] = msgspec.field(default_factory=dict)

    def run(self, argv: list[str], what: str, shielded: bool = False) -> float:
        """Run `argv`, return its wall time; raise BenchError if it fails. `shielded` runs it
        in its own session, so a Ctrl-C at the terminal does not interrupt it (cleanup)."""
        code, elapsed, out, err = run_command(argv, env=self.env, shielded=shielded)
        if code != 0:
            tail = "\n".join((out + err).strip().splitlines()[-25:])
            raise BenchError(f"{self.name} {what} failed (exit {code}): {' '.join(argv)}\n{tail}")
        return elapsed

    def record(self, metric: str, seconds: float) -> None:
        self.samples.setdefault(metric, []).append(seconds)


def start_private(kind: str) -> tuple[str, Path, dict[str, str]] | None:
    """For a benchmark of pyapply on a private native root: its random tag, a fresh scratch
    dir, and the environment its commands get (pyapply as installed: bytecode compiled,
    whatever PYTHONDONTWRITEBYTECODE this shell has; no colours). None, said, unless root."""
    if os.geteuid() != 0:
        log("run as root")
        return None
    tag = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"pabench-{kind}-{tag}-"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NO_COLOR"] = "1"
    return tag, tmp, env


def compose_tool(
    client: Any,
    compose: str,
    project: str,
    compose_file: Path,
    env: Mapping[str, str],
    ports: list[int],
) -> Tool:
    """docker-compose bringing `compose_file` up as `project` (down with its volumes)."""
    return Tool(
        name="docker-compose",
        stack=project,
        up_cmd=[compose, "-p", project, "-f", str(compose_file), "up", "-d"],
        down_cmd=[compose, "-p", project, "-f", str(compose_file), "down", "-v"],
        env={**env, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
        ports=ports,
        objects=DockerObjects(client, COMPOSE_LABEL, project),
    )


def remove_native(pyapply: str, stack_dir: Path, env: Mapping[str, str]) -> None:
    """Best-effort end of a private native root (PYAPPLY_ROOT in `env`): the stack down
    with its volumes, then `system reset --force`; failures are logged."""
    for argv in (
        [pyapply, "down", "-f", str(stack_dir), "--volumes"],
        [pyapply, "system", "reset", "--force"],
    ):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log(f"  {' '.join(argv[1:3])} failed: {proc.stderr.strip()[-500:]}")


def verify_running(tool: Tool, expected: int) -> dict[str, str]:
    """Every container of the tool's stack runs, there are `expected` of them and every
    published port accepts a connection. Returns {container name: id}."""
    found = tool.objects.containers()
    running = [name for name, (_, status) in found.items() if status == "running"]
    if len(found) != expected or len(running) != expected:
        states = sorted(f"{name}={status}" for name, (_, status) in found.items())
        raise BenchError(
            f"{tool.name}: expected {expected} running containers of {tool.stack!r}, found "
            f"{len(running)} running of {len(found)}: {', '.join(states) or 'none'}"
        )
    for port in tool.ports:
        wait_port(port, tool)
    return {name: cid for name, (cid, _) in found.items()}


def wait_port(port: int, tool: Tool, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{tool.name}: published port 127.0.0.1:{port} does not accept "
                    f"connections: {exc}"
                ) from exc
            time.sleep(0.05)


def teardown(tool: Tool) -> float:
    """Full teardown, its wall time; afterwards nothing of the stack may be left."""
    elapsed = tool.run(tool.down_cmd, "teardown")
    left = tool.objects.leftovers()
    if left:
        raise BenchError(f"{tool.name}: teardown left {', '.join(left)}")
    return elapsed


def one_run(tool: Tool, n: int) -> None:
    """Cold converge, check, no-op re-apply, check that nothing was replaced, teardown
    (timed too: `down` with volumes, as each tool says it)."""
    cold = tool.run(tool.up_cmd, "cold converge")
    ids = verify_running(tool, n)
    tool.record("cold converge", cold)
    noop = tool.run(tool.up_cmd, "no-op re-apply")
    after = verify_running(tool, n)
    if after != ids:
        changed = sorted(k for k in set(ids) | set(after) if ids.get(k) != after.get(k))
        raise BenchError(
            f"{tool.name}: the no-op re-apply replaced containers: {', '.join(changed)}"
        )
    tool.record("no-op re-apply", noop)
    down = teardown(tool)
    tool.record("teardown", down)
    log(f"  {tool.name:<17} cold {cold:7.3f}s   no-op {noop:7.3f}s   down {down:7.3f}s")


def final_cleanup(tool: Tool) -> None:
    """Best-effort: the tool's own teardown, then a sweep of anything still there."""
    if not tool.objects.leftovers():
        return
    try:
        tool.run(tool.down_cmd, "cleanup", shielded=True)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"cleanup: {exc}")
    removed = tool.objects.sweep()
    if removed:
        log(f"cleanup: force-removed {', '.join(removed)}")
    left = tool.objects.leftovers()
    if left:
        log(f"cleanup: could NOT remove {', '.join(left)}")


# ---------------------------------------------------------------------------------------------
# Small helpers


def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
    shielded: bool = False,
) -> tuple[int, float, str, str]:
    """Run `argv` with no stdin; returns (exit code, wall seconds, stdout, stderr). Output goes
    to files, not pipes: a detached container (`runc run -d`, conmon) may inherit them and
    would hold a pipe open. `shielded`: in a session of its own, out of reach of a Ctrl-C.

    The end is seen the moment the child exits (`wait_exact`): `subprocess.run(timeout=)`
    with no pipes polls with sleeps that grow to 50 ms, which rounded every short command up
    to the next poll (a 40 ms `runc run -d` read as 66 ms, a 67 ms one as 116 ms)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=None if env is None else dict(env),
            start_new_session=shielded,
        )
        code = wait_exact(proc, timeout)
        elapsed = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return code, elapsed, *text


def wait_exact(proc: subprocess.Popen[Any], timeout: float) -> int:
    """The exit code of `proc`, waking when it exits (a pidfd becomes readable) rather than
    at a poll; kill it and raise subprocess.TimeoutExpired after `timeout` seconds."""
    pidfd = os.pidfd_open(proc.pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            proc.kill()
            proc.wait()
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(pidfd)
    return proc.wait()


def find_exe(given: str | None, candidates: Sequence[str]) -> str:
    for c in [given, *candidates] if given else candidates:
        if not c:
            continue
        path = c if os.sep in c else shutil.which(c)
        if path and os.access(path, os.X_OK):
            return path
    raise BenchError(f"cannot find an executable among {[given, *candidates]}")


@contextlib.contextmanager
def no_interrupt() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C during it is reported, not obeyed."""

    def handler(signum: int, frame: Any) -> None:
        log("cleanup in progress; please wait")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, linearly interpolated; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def proc_kb(pid: int, key: str = "VmRSS", source: str = "status") -> int | None:
    """A "Key:   N kB" figure of /proc/<pid>/<source> (status: VmRSS...; smaps_rollup: Pss,
    Rss...), or None if the process or the key is gone."""
    try:
        with open(f"/proc/{pid}/{source}", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
