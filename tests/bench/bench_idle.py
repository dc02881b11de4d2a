"""Benchmark: what each runtime's resident processes cost while nothing happens (issue 15).

Not part of the test suite. Run directly, as root, with dockerd running and the test image
built (scripts/build-test-image.sh):

    .venv/bin/python tests/bench/bench_idle.py [--services 20] [--seconds 20] [--windows 3]

The --services stack of bench_compose.py is brought up twice: on a private native state root
by `pyapply -f`, and on dockerd by docker-compose. Once every container runs, the CPU time
(user + system, from /proc/PID/stat) that each side's resident processes spend over
--seconds of wall time is read, in --windows windows taken in turn:

- native: the root's keeper (healthchecks, log rotation, restart policies: one Python
  process per root) and the containers' conmons;
- docker: dockerd, containerd and the stack's containerd-shims (the daemons serve the whole
  host, so whatever else they do in the window counts against them: run it on a quiet host).

Each is printed as the median share of one core, beside the other. Everything made is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import common
import docker
from bench_native import NativeObjects, shim_pids
from common import BenchError, Tool, log

from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.health import PID_FILE
from pyapply.runtime.native.supervise import read_pid

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def pids_named(comm: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", encoding="ascii") as f:
                    if f.read().strip() == comm:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def share(pids: Sequence[int], seconds: float) -> float:
    """The share of one core that `pids` together use over `seconds` of wall time (a pid
    that ends in the window counts until it ended)."""
    before = {p: cpu_seconds(p) for p in pids}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    used = 0.0
    for p, b in before.items():
        a = cpu_seconds(p)
        if a is not None and b is not None:
            used += a - b
    return used / wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=20)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--windows", type=int, default=3)
    args = p.parse_args()
    started = common.start_private("idle")
    if started is None:
        return 2
    tag, tmp, env = started
    root = tmp / "native"
    client = docker.from_env()
    pyapply = str(Path(sys.executable).parent / "pyapply")
    compose = common.find_exe(None, ["docker-compose", "/usr/bin/docker-compose"])
    ports = common.free_ports(2 * common.published_count(args.services), set())
    half = len(ports) // 2
    na_stack, dc_project = f"pbidna{tag}", f"pbiddc{tag}"
    common.write_pyapply_manifest(
        tmp / "stack" / "stack.yaml", na_stack, common.services_spec(args.services, ports[:half])
    )
    dc_file = tmp / "compose" / "docker-compose.yml"
    common.write_compose_file(dc_file, common.services_spec(args.services, ports[half:]))
    native = Tool(
        name="pyapply (native)",
        stack=na_stack,
        up_cmd=[pyapply, "-f", str(tmp / "stack")],
        down_cmd=[pyapply, "down", "-f", str(tmp / "stack"), "--volumes"],
        env={**env, "PYAPPLY_RUNTIME": "native", "PYAPPLY_ROOT": str(root)},
        ports=ports[:half],
        objects=NativeObjects(root, na_stack),
    )
    dc = common.compose_tool(client, compose, dc_project, dc_file, env, ports[half:])
    made = False
    try:
        archive = tmp / "image.tar"
        subprocess.run(["docker", "save", "-o", str(archive), common.IMAGE], check=True)
        NativeRuntime(root).image_store.import_archive(str(archive), common.IMAGE)
        made = True
        for tool in (native, dc):
            log(f"{tool.name}: up {args.services} services")
            tool.run(tool.up_cmd, "converge")
            common.verify_running(tool, args.services)
        time.sleep(2.0)  # the converges' own work settles
        keeper = read_pid(root / PID_FILE)
        if keeper is None:
            raise BenchError("the native root's keeper is not running")
        rt = NativeRuntime(root)
        conmons = [
            pid
            for pid in (rt.containers.supervisor_pid(n) for n in native.objects.containers())
            if pid is not None
        ]
        ids = {cid for cid, _ in dc.objects.containers().values()}
        by_id = shim_pids()
        shims = [by_id[cid] for cid in ids if cid in by_id]
        daemons = pids_named("dockerd") + pids_named("containerd")
        sides = {
            f"native: keeper + {len(conmons)} conmons": [keeper, *conmons],
            "native: keeper alone": [keeper],
            f"docker: dockerd + containerd + {len(shims)} shims": [*daemons, *shims],
        }
        got: dict[str, list[float]] = {k: [] for k in sides}
        for w in range(args.windows):
            log(f"window {w + 1}/{args.windows} ({args.seconds:.0f} s each side)")
            for name, pids in sides.items():
                got[name].append(share(pids, args.seconds))
        print(f"\nidle CPU with {args.services} running services, {args.windows} windows")
        print(f"{'resident processes':<44} {'median':>9} {'max':>9}  (share of one core)")
        for name, values in got.items():
            print(f"{name:<44} {statistics.median(values):8.2%} {max(values):8.2%}")
        return 0
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        common.final_cleanup(dc)
        if made:
            log("cleanup")
            common.remove_native(pyapply, tmp / "stack", native.env)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
