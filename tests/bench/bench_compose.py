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
import functools
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
from common import (
    COMPOSE_LABEL,
    IMAGE,
    NETWORKS,
    PYAPPLY_LABEL,
    REPO_ROOT,
    BenchError,
    DockerObjects,
    Tool,
    final_cleanup,
    find_exe,
    free_ports,
    log,
    no_interrupt,
    one_run,
    published_count,
    services_spec,
    write_compose_file,
    write_pyapply_manifest,
)

# metric -> target ratio pyapply/compose (at most)
TARGETS: dict[str, float] = {"cold converge": 0.5, "no-op re-apply": 0.2}


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
        pa_env = {
            **env,
            "PYAPPLY_ROOT": str(tmp / "root"),
            "PYAPPLY_RUNTIME": "docker",
            "NO_COLOR": "1",
        }
        dc_env = {**env, "COMPOSE_INTERACTIVE_NO_CLI": "1"}
        pa = Tool(
            name="pyapply",
            stack=pa_stack,
            up_cmd=[pyapply, "-f", str(pa_dir)],
            down_cmd=[pyapply, "down", "-f", str(pa_dir), "--volumes"],
            env=pa_env,
            ports=pa_ports,
            objects=DockerObjects(client, PYAPPLY_LABEL, pa_stack),
        )
        dc = Tool(
            name="docker-compose",
            stack=dc_project,
            up_cmd=[compose, "-p", dc_project, "-f", str(dc_file), "up", "-d"],
            down_cmd=[compose, "-p", dc_project, "-f", str(dc_file), "down", "-v"],
            env=dc_env,
            ports=dc_ports,
            objects=DockerObjects(client, COMPOSE_LABEL, dc_project),
        )
        tools = [pa, dc]
        for t in tools:
            cleanups.append(functools.partial(final_cleanup, t))
        log(f"bench: {n} services, {args.runs} runs; stacks {pa_stack} / {dc_project}; {tmp}")

        for t in tools:  # start from nothing (names are fresh, so this is a formality)
            if t.objects.leftovers():
                raise BenchError(f"{t.name}: objects of {t.stack!r} exist before the start")
        for run in range(args.runs):
            log(f"run {run + 1}/{args.runs}")
            order = tools if run % 2 == 0 else tools[::-1]
            for t in order:
                one_run(t, n)

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
        with no_interrupt():
            for fn in cleanups:
                fn()
            if args.keep_tmp:
                log(f"kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            client.close()


if __name__ == "__main__":
    sys.exit(main())
