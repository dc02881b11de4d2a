"""Benchmark: the no-op apply of two pyapply builds, side by side (issue 10's startup check).

Not part of the test suite. Run directly, with the console script of another checkout:

    .venv/bin/python tests/bench/bench_startup.py --other /path/to/old/.venv/bin/pyapply \
        [--runs 15] [--services 30] [--runtime docker|native]

It applies one N-service stack (the stack of bench_compose.py) with this checkout's pyapply,
then times `pyapply -f DIR` -- a no-op, since everything already runs -- alternately with
the other build and with this one, so that both see the same machine load, and prints the
medians, min/max and the ratio this/other. Each no-op must report no changes (a build that
would act is not measuring startup). The stack is removed at the end, also on failure.
`--runtime native` uses a private state root under a temporary directory and imports the
test image into it first.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import REPO_ROOT, BenchError, free_ports, log, services_spec, write_pyapply_manifest

THIS = str(REPO_ROOT / ".venv" / "bin" / "pyapply")


def run(exe: str, args: Sequence[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{exe} {' '.join(args)}: exit {proc.returncode}: {proc.stderr[-2000:]}")
    return took, proc.stdout + proc.stderr


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--other", required=True, help="the other build's pyapply executable")
    p.add_argument("--runs", type=int, default=15, help="timed no-ops per build (default 15)")
    p.add_argument("--services", type=int, default=30, help="services in the stack (default 30)")
    p.add_argument("--runtime", default="docker", choices=("docker", "native"))
    a = p.parse_args(argv)
    stack = "bstart" + secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="pyapply-bench-startup-") as tmp:
        env = dict(os.environ, PYAPPLY_RUNTIME=a.runtime)
        if a.runtime == "native":
            env["PYAPPLY_ROOT"] = str(Path(tmp) / "root")
            tar = Path(tmp) / "busybox.tar"
            subprocess.run(
                ["bash", str(REPO_ROOT / "scripts" / "build-test-image.sh"), "--tar", str(tar)],
                check=True,
                capture_output=True,
            )
            run(THIS, ["image", "import", str(tar), "--ref", "pyapply-test/busybox:latest"], env)
        manifest = Path(tmp) / "stack" / "stack.yaml"
        write_pyapply_manifest(
            manifest, stack, services_spec(a.services, free_ports(a.services, set()))
        )
        target = ["-f", str(manifest.parent)]
        times: dict[str, list[float]] = {"this": [], "other": []}
        try:
            log(f"cold apply of {a.services} services ({a.runtime})")
            run(THIS, target, env)
            for i in range(a.runs):
                order = ("other", "this") if i % 2 == 0 else ("this", "other")
                for who in order:
                    took, out = run(THIS if who == "this" else a.other, target, env)
                    if "no changes" not in out:
                        raise BenchError(f"{who}: the re-apply was not a no-op:\n{out[-2000:]}")
                    times[who].append(took)
        finally:
            subprocess.run(
                [THIS, "down", *target, "--volumes"], env=env, capture_output=True, check=False
            )
            if a.runtime == "native":
                subprocess.run(
                    [THIS, "system", "reset", "--force"], env=env, capture_output=True, check=False
                )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"no-op apply, {a.services} services, {a.runtime}, {a.runs} runs each (seconds)")
    print(f"{'build':8} {'median':>8} {'min':>8} {'max':>8}")
    for who in ("other", "this"):
        v = times[who]
        print(f"{who:8} {med[who]:8.3f} {min(v):8.3f} {max(v):8.3f}")
    print(f"ratio this/other: {med['this'] / med['other']:.3f}  (target <= 1.05)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_startup: {exc}", file=sys.stderr)
        sys.exit(1)
