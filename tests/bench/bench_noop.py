"""Benchmark: what a look at an up-to-date native stack costs (issue 15).

Not part of the test suite. Run directly, as root, with dockerd running and the test image
built (scripts/build-test-image.sh):

    .venv/bin/python tests/bench/bench_noop.py [--services 20] [--runs 10]

The --services stack of bench_compose.py is converged once on a private native state root
(the image imported from a `docker save`); then `pyapply -f` (the no-op re-apply),
`pyapply diff` and `pyapply get` run --runs times each, interleaved, and each is reported as
its median wall time and median CPU time (user + sys of the process and its children: what
the command costs, whatever else the machine is doing). Beside them, the floor every
command pays: the interpreter starting (`python -c pass`), and one `python -X importtime`
of the no-op: the sum of its imports and the modules that cost most.

pyapply runs as installed: with its bytecode compiled (PYTHONDONTWRITEBYTECODE is dropped
from the environment the commands see). Everything made is removed at the end, also on
failure (`pyapply down`, then `pyapply system reset --force` of the private root).
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
from common import BenchError, log

from pyapply.runtime.native.driver import NativeRuntime

REPO = Path(__file__).resolve().parents[2]
PYAPPLY = str(Path(sys.executable).parent / "pyapply")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one successful run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchError(f"{' '.join(argv)} failed ({proc.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def import_profile(argv: list[str], env: dict[str, str], top: int) -> tuple[float, list[str]]:
    """(sum of the imports' own times in seconds, the `top` costliest modules as lines) of
    one run under `python -X importtime`."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=env, capture_output=True, text=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    total = sum(r[0] for r in rows) / 1e6
    lines = [
        f"    {own / 1000:6.1f} ms own {cum / 1000:7.1f} ms with its imports  {name}"
        for own, cum, name in sorted(rows, reverse=True)[:top]
    ]
    return total, lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--services", type=int, default=20)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=12, help="modules listed from -X importtime")
    args = p.parse_args()
    started = common.start_private("noop")
    if started is None:
        return 2
    tag, tmp, env = started
    root = tmp / "native"
    stack_dir = tmp / "stack"
    env.update(PYAPPLY_RUNTIME="native", PYAPPLY_ROOT=str(root))
    ports = common.free_ports(common.published_count(args.services), set())
    common.write_pyapply_manifest(
        stack_dir / "stack.yaml", f"pabench-noop-{tag}", common.services_spec(args.services, ports)
    )
    made = False
    try:
        archive = tmp / "image.tar"
        subprocess.run(["docker", "save", "-o", str(archive), common.IMAGE], check=True)
        NativeRuntime(root).image_store.import_archive(str(archive), common.IMAGE)
        made = True
        log(f"converging {args.services} services")
        timed([PYAPPLY, "-f", str(stack_dir)], env)
        commands = {
            "no-op apply (pyapply -f)": [PYAPPLY, "-f", str(stack_dir)],
            "pyapply diff": [PYAPPLY, "diff", "-f", str(stack_dir)],
            "pyapply get": [PYAPPLY, "get", "-f", str(stack_dir)],
            "floor: python -c pass": [sys.executable, "-c", "pass"],
        }
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        names = list(commands)
        for i in range(args.runs):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(timed(commands[name], env))
        print(f"\nlooks at an up-to-date stack of {args.services} services, {args.runs} runs each")
        print(f"{'command':<28} {'wall med':>9} {'cpu med':>9} {'wall min':>9}")
        for name, got in samples.items():
            walls, cpus = [w for w, _ in got], [c for _, c in got]
            print(
                f"{name:<28} {statistics.median(walls) * 1000:7.1f}ms "
                f"{statistics.median(cpus) * 1000:7.1f}ms {min(walls) * 1000:7.1f}ms"
            )
        total, lines = import_profile([PYAPPLY, "-f", str(stack_dir)], env, args.top)
        print(f"\nimports of one no-op apply (python -X importtime): {total * 1000:.1f} ms in all")
        print("\n".join(lines))
        return 0
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if made:
            log("cleanup")
            common.remove_native(PYAPPLY, stack_dir, env)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
