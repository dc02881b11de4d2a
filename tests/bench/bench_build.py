"""Benchmark: a 10-step Dockerfile built cold (`--no-cache`, base image present) and warm
(everything cached), by the native builder (`pyapply image build` on a private state root)
and, side by side on the same machine, by dockerd's legacy builder and BuildKit
(`DOCKER_BUILDKIT=0/1 docker build`) when docker is there.

    .venv/bin/python tests/bench/bench_build.py [--runs 5]

Prints one row per builder (median seconds of `--runs` runs, cold and warm) and the ratios
to BuildKit. Everything it makes is removed: the state root (through `pyapply system
reset`), the context, the images it tagged in dockerd. Needs root (the native runtime).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYAPPLY = str(Path(sys.executable).parent / "pyapply")
IMAGE = "pyapply-test/busybox:latest"
TAG = "pyapply-bench/build:latest"

DOCKERFILE = f"""\
FROM {IMAGE}
ARG N=200
ENV APP=/app
WORKDIR /app
COPY files/ /app/files/
RUN for i in $(seq 1 $N); do echo $i > /app/n$i; done
RUN cat /app/files/* > /app/all
COPY more.txt /app/
RUN rm -f /app/n1 && echo done > /app/ok
CMD ["cat", "/app/ok"]
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    (ctx / "files").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for i in range(50):
        (ctx / "files" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    (ctx / "more.txt").write_text("more\n")
    return ctx


def works(argv: list[str], env: dict[str, str]) -> bool:
    """Whether a builder runs here at all (docker's BuildKit needs the buildx plugin)."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        log(f"{' '.join(argv)}: {proc.stderr.strip().splitlines()[:1]}; left out")
    return proc.returncode == 0


def measure(name: str, argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    cold = [timed([*argv, "--no-cache"], env) for _ in range(runs)]
    timed(argv, env)  # fills the cache of whatever the last cold run left
    warm = [timed(argv, env) for _ in range(runs)]
    row = {"cold": statistics.median(cold), "warm": statistics.median(warm)}
    log(f"{name}: cold {row['cold']:.2f}s, warm {row['warm']:.2f}s")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the native runtime needs root")
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="pyapply-bench-build-") as tmpdir:
        tmp = Path(tmpdir)
        ctx = context(tmp)
        root = tmp / "root"
        env = {**os.environ, "PYAPPLY_ROOT": str(root), "PYAPPLY_RUNTIME": "native"}
        tar = tmp / "busybox.tar"
        subprocess.run(
            [str(REPO_ROOT / "scripts" / "build-test-image.sh"), "--tar", str(tar)],
            check=True,
            capture_output=True,
        )
        subprocess.run([PYAPPLY, "image", "import", str(tar), "--ref", IMAGE], env=env, check=True)
        try:
            native = [PYAPPLY, "image", "build", str(ctx), "-t", TAG]
            rows["native"] = measure("native", native, env, args.runs)
        finally:
            subprocess.run(
                [PYAPPLY, "system", "reset", "--force"], env=env, capture_output=True, check=False
            )
        docker = shutil.which("docker")
        if docker is not None:
            try:
                for name, kit in (("docker legacy", "0"), ("docker BuildKit", "1")):
                    denv = {**os.environ, "DOCKER_BUILDKIT": kit}
                    argv = [docker, "build", "-q", "-t", TAG, str(ctx)]
                    if works(argv, denv):
                        rows[name] = measure(name, argv, denv, args.runs)
            finally:
                subprocess.run([docker, "rmi", "-f", TAG], capture_output=True, check=False)
    kit = rows.get("docker BuildKit")
    print(f"{'builder':<18}{'cold s':>9}{'warm s':>9}{'cold/BK':>9}{'warm/BK':>9}")
    for name, row in rows.items():
        rc = f"{row['cold'] / kit['cold']:.2f}" if kit else "-"
        rw = f"{row['warm'] / kit['warm']:.2f}" if kit else "-"
        print(f"{name:<18}{row['cold']:>9.2f}{row['warm']:>9.2f}{rc:>9}{rw:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
