"""Benchmark: pyapply vs docker-compose (v1) on the same N-service stack.

Not part of the test suite. Run directly:

    .venv/bin/python tests/bench/bench_compose.py [--runs 5] [--services 30] [--json]

For each run and each tool (the order alternates between runs so neither tool always goes
first on a cold cache) it measures:

- cold converge: from nothing to every container running
  (`pyapply -f DIR` vs `docker-compose -p NAME -f FILE up -d`);
- no-op re-apply: the same command again while everything already runs.

After each cold converge it checks that every container runs and every published port
accepts connections; after each no-op it checks that no container was replaced. A failed
check aborts the benchmark (a timing of a failed run is worthless). Between runs each tool
tears its stack down fully (`pyapply down -f DIR --volumes` / `docker-compose down -v`),
untimed. The two tools use distinct stack/project names and ports, so they never touch each
other's objects. Everything created is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "pyapply-test/busybox:latest"
COMMAND = ["httpd", "-f", "-p", "80", "-h", "/www"]
NETWORKS = ("net-a", "net-b")
VOLUME = "shared"
PYAPPLY_LABEL = "io.pyapply.stack"
COMPOSE_LABEL = "com.docker.compose.project"
COMMAND_TIMEOUT_S = 600.0

# metric -> target ratio pyapply/compose (at most)
TARGETS: dict[str, float] = {"cold converge": 0.5, "no-op re-apply": 0.2}


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
    raise BenchError(f"cannot find {count} free ports in 20000-29999")


def services_spec(n: int, ports: Sequence[int]) -> dict[str, Any]:
    """The compose-shaped `services` mapping shared by both tools.

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


@dataclass
class Tool:
    """One tool under test: how to converge and tear down, and how to find its objects."""

    name: str
    stack: str
    label: str  # label key whose value is `stack` on every object the tool creates
    up_cmd: list[str]
    down_cmd: list[str]
    env: dict[str, str]
    ports: list[int]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def run(self, argv: list[str], what: str, shielded: bool = False) -> float:
        """Run `argv`, return its wall time; raise BenchError if it fails. `shielded` runs it
        in its own session, so a Ctrl-C at the terminal does not interrupt it (cleanup)."""
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            start_new_session=shielded,
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise BenchError(
                f"{self.name} {what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}"
            )
        return elapsed

    def record(self, metric: str, seconds: float) -> None:
        self.samples.setdefault(metric, []).append(seconds)


def containers(client: Any, tool: Tool) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{tool.label}={tool.stack}"}))


def verify_running(client: Any, tool: Tool, expected: int) -> dict[str, str]:
    """Every container of the tool's stack runs, there are `expected` of them and every
    published port accepts a connection. Returns {container name: id}."""
    found = containers(client, tool)
    running = [c for c in found if c.status == "running"]
    if len(found) != expected or len(running) != expected:
        states = sorted(f"{c.name}={c.status}" for c in found)
        raise BenchError(
            f"{tool.name}: expected {expected} running containers of {tool.stack!r}, found "
            f"{len(running)} running of {len(found)}: {', '.join(states) or 'none'}"
        )
    for port in tool.ports:
        wait_port(port, tool)
    return {c.name: c.id for c in found}


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


def sweep(client: Any, tool: Tool) -> list[str]:
    """Force-remove whatever is still labelled with the tool's stack (only those objects)."""
    removed: list[str] = []
    flt = {"label": f"{tool.label}={tool.stack}"}
    for c in client.containers.list(all=True, filters=flt):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)
            removed.append(f"container {c.name}")
    for n in client.networks.list(filters=flt):
        with contextlib.suppress(docker.errors.NotFound):
            n.remove()
            removed.append(f"network {n.name}")
    for v in client.volumes.list(filters=flt):
        with contextlib.suppress(docker.errors.NotFound):
            v.remove(force=True)
            removed.append(f"volume {v.name}")
    return removed


def leftovers(client: Any, tool: Tool) -> list[str]:
    flt = {"label": f"{tool.label}={tool.stack}"}
    return (
        [f"container {c.name}" for c in client.containers.list(all=True, filters=flt)]
        + [f"network {n.name}" for n in client.networks.list(filters=flt)]
        + [f"volume {v.name}" for v in client.volumes.list(filters=flt)]
    )


def teardown(client: Any, tool: Tool) -> None:
    """Untimed full teardown; afterwards nothing of the stack may be left."""
    tool.run(tool.down_cmd, "teardown")
    left = leftovers(client, tool)
    if left:
        raise BenchError(f"{tool.name}: teardown left {', '.join(left)}")


def one_run(client: Any, tool: Tool, n: int) -> None:
    cold = tool.run(tool.up_cmd, "cold converge")
    ids = verify_running(client, tool, n)
    tool.record("cold converge", cold)
    noop = tool.run(tool.up_cmd, "no-op re-apply")
    after = verify_running(client, tool, n)
    if after != ids:
        changed = sorted(k for k in set(ids) | set(after) if ids.get(k) != after.get(k))
        raise BenchError(
            f"{tool.name}: the no-op re-apply replaced containers: {', '.join(changed)}"
        )
    tool.record("no-op re-apply", noop)
    log(f"  {tool.name:<15} cold {cold:7.3f}s   no-op {noop:7.3f}s")
    teardown(client, tool)


# ---------------------------------------------------------------------------------------------
# Results


def summarise(pa: Tool, dc: Tool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for metric, target in TARGETS.items():
        a, b = pa.samples.get(metric, []), dc.samples.get(metric, [])
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = ma / mb if mb > 0 else float("inf")
        rows.append(
            {
                "metric": metric,
                "pyapply": {"median": ma, "min": min(a), "max": max(a), "samples": a},
                "docker-compose": {"median": mb, "min": min(b), "max": max(b), "samples": b},
                "ratio": ratio,
                "target": target,
                "met": ratio <= target,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], runs: int, services: int) -> str:
    head = (
        f"{'metric':<15} {'pyapply med':>11} {'compose med':>11} {'ratio':>6} "
        f"{'target':>7} {'met':>4}  {'pyapply min/max':>16}  {'compose min/max':>16}"
    )
    lines = [f"{services} services, {runs} runs, times in seconds (wall clock)", head]
    lines.append("-" * len(head))
    for r in rows:
        a, b = r["pyapply"], r["docker-compose"]
        lines.append(
            f"{r['metric']:<15} {a['median']:>11.3f} {b['median']:>11.3f} {r['ratio']:>5.2f}x "
            f"{'<=' + format(r['target'], '.1f') + 'x':>7} {'yes' if r['met'] else 'no':>4}  "
            f"{a['min']:>7.3f}/{a['max']:<8.3f}  {b['min']:>7.3f}/{b['max']:.3f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main


def find_exe(given: str | None, candidates: Sequence[str]) -> str:
    for c in [given, *candidates] if given else candidates:
        if not c:
            continue
        path = c if os.sep in c else shutil.which(c)
        if path and os.access(path, os.X_OK):
            return path
    raise BenchError(f"cannot find an executable among {[given, *candidates]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="measured runs per tool (default 5)")
    p.add_argument("--services", type=int, default=30, help="services in the stack (default 30)")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--pyapply", default=None, help="pyapply executable (default: .venv's)")
    p.add_argument("--compose", default=None, help="docker-compose executable")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (for debugging)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.services < 1:
        p.error("--runs and --services must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n: int = args.services
    client = docker.from_env()
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        log(f"ABORT: image {IMAGE} is missing (scripts/build-test-image.sh builds it)")
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="pyapply-bench-"))
    tag = secrets.token_hex(3)
    tools: list[Tool] = []
    cleanups: list[Callable[[], None]] = []
    try:
        pyapply = find_exe(args.pyapply, [str(REPO_ROOT / ".venv/bin/pyapply"), "pyapply"])
        compose = find_exe(args.compose, ["docker-compose", "/usr/bin/docker-compose"])
        k = published_count(n)
        pa_ports = free_ports(k, set())
        dc_ports = free_ports(k, set(pa_ports))

        pa_stack, dc_project = f"benchpa{tag}", f"benchdc{tag}"
        pa_dir = tmp / "pyapply"
        dc_file = tmp / "compose" / "docker-compose.yml"
        write_pyapply_manifest(pa_dir / "stack.yaml", pa_stack, services_spec(n, pa_ports))
        write_compose_file(dc_file, services_spec(n, dc_ports))

        env = dict(os.environ)
        pa_env = {**env, "PYAPPLY_ROOT": str(tmp / "root"), "NO_COLOR": "1"}
        dc_env = {**env, "COMPOSE_INTERACTIVE_NO_CLI": "1"}
        pa = Tool(
            name="pyapply",
            stack=pa_stack,
            label=PYAPPLY_LABEL,
            up_cmd=[pyapply, "-f", str(pa_dir)],
            down_cmd=[pyapply, "down", "-f", str(pa_dir), "--volumes"],
            env=pa_env,
            ports=pa_ports,
        )
        dc = Tool(
            name="docker-compose",
            stack=dc_project,
            label=COMPOSE_LABEL,
            up_cmd=[compose, "-p", dc_project, "-f", str(dc_file), "up", "-d"],
            down_cmd=[compose, "-p", dc_project, "-f", str(dc_file), "down", "-v"],
            env=dc_env,
            ports=dc_ports,
        )
        tools = [pa, dc]
        for t in tools:
            cleanups.append(functools.partial(final_cleanup, client, t))
        log(f"bench: {n} services, {args.runs} runs; stacks {pa_stack} / {dc_project}; {tmp}")

        for t in tools:  # start from nothing (names are fresh, so this is a formality)
            if leftovers(client, t):
                raise BenchError(f"{t.name}: objects of {t.stack!r} exist before the start")
        for run in range(args.runs):
            log(f"run {run + 1}/{args.runs}")
            order = tools if run % 2 == 0 else tools[::-1]
            for t in order:
                one_run(client, t, n)

        rows = summarise(pa, dc)
        if args.json:
            doc = {
                "services": n,
                "runs": args.runs,
                "published_ports": k,
                "networks": len(NETWORKS),
                "pyapply": pyapply,
                "docker_compose": compose,
                "metrics": rows,
            }
            print(json.dumps(doc, indent=2))
        else:
            print(table(rows, args.runs, n))
        return 0
    except BenchError as exc:
        log(f"ABORT: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    finally:
        with _no_interrupt():
            for fn in cleanups:
                fn()
            if args.keep_tmp:
                log(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            client.close()


def final_cleanup(client: Any, tool: Tool) -> None:
    """Best-effort: the tool's own teardown, then a sweep of anything still labelled."""
    if not leftovers(client, tool):
        return
    try:
        tool.run(tool.down_cmd, "cleanup", shielded=True)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        log(f"cleanup: {exc}")
    removed = sweep(client, tool)
    if removed:
        log(f"cleanup: force-removed {', '.join(removed)}")
    left = leftovers(client, tool)
    if left:
        log(f"cleanup: could NOT remove {', '.join(left)}")


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
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


if __name__ == "__main__":
    sys.exit(main())
