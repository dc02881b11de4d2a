"""Benchmark: a 10-step Dockerfile built cold (`--no-cache`, base image present) and warm
(everything cached), by the native builder (`pyapply image build` on a private state root)
and, side by side in the same run on the same machine, by dockerd's legacy builder
(`DOCKER_BUILDKIT=0`), dockerd's BuildKit (`DOCKER_BUILDKIT=1`) and `buildah bud`, each
when it runs here (a builder that cannot run is left out with the reason printed).

    .venv/bin/python tests/bench/bench_build.py [--runs 5]

Runs are interleaved (run 1 of every builder, then run 2, ...) so a change in the machine's
load falls on every builder alike; each builder first builds once untimed (page cache, and
for pyapply the bytecode cache an installed package has). Prints one row per builder (the
median of `--runs` runs, cold and warm, wall time of the command as a user runs it), the
ratios to BuildKit (the median of the ratios run by run), the issue's targets (native warm
<= 0.5x BuildKit's, cold <= 1.0x), the time `pyapply --version` takes (what any pyapply
command costs before it does anything) and the load average before and after. Everything it makes is removed: the state root (through
`pyapply system reset`), the context, the images it tagged in dockerd, buildah's private
storage. Needs root (the native runtime).
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
from collections.abc import Callable
from pathlib import Path

import msgspec

REPO_ROOT = Path(__file__).resolve().parents[2]
PYAPPLY = str(Path(sys.executable).parent / "pyapply")
IMAGE = "pyapply-test/busybox:latest"
TAG = "pyapply-bench/build:latest"
# Debian's own docker client (package docker.io, 20.10): with DOCKER_BUILDKIT=1 it drives the
# BuildKit built into dockerd through the Engine API's session endpoint. A newer client that
# may come first on PATH (/usr/local/bin/docker, 28.x) hands BuildKit builds to the buildx
# plugin only, and refuses without it ("BuildKit is enabled but the buildx component is
# missing"): this one measures the same dockerd's BuildKit without that plugin.
DOCKER = "/usr/bin/docker"

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


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = run(argv, env)
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


class Builder(msgspec.Struct):
    """One builder under test: its cold and warm command lines, its environment, and what
    removes what it made (run at the end, also after a failure)."""

    name: str
    cold: list[str]
    warm: list[str]
    env: dict[str, str]
    cleanup: Callable[[], None]


def first_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def native(tmp: Path, ctx: Path) -> Builder:
    root = tmp / "root"
    env = {**os.environ, "PYAPPLY_ROOT": str(root), "PYAPPLY_RUNTIME": "native"}
    # The sandbox this is developed in sets PYTHONDONTWRITEBYTECODE, so every command would
    # compile all its modules from source; an installed package has its bytecode compiled
    # (pip does it at install time). Measured as installed.
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def cleanup() -> None:
        run([PYAPPLY, "system", "reset", "--force"], env)

    tar = tmp / "busybox.tar"
    subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-test-image.sh"), "--tar", str(tar)],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [PYAPPLY, "image", "import", str(tar), "--ref", IMAGE],
            env=env,
            check=True,
            capture_output=True,
        )
    except BaseException:
        cleanup()
        raise
    argv = [PYAPPLY, "image", "build", "-t", TAG]
    return Builder("native", [*argv, "--no-cache", str(ctx)], [*argv, str(ctx)], env, cleanup)


def docker(kit: str, ctx: Path) -> Builder | str:
    """dockerd's legacy builder (kit "0") or its BuildKit ("1"), or why it cannot run."""
    name = "docker BuildKit" if kit == "1" else "docker legacy"
    if not os.access(DOCKER, os.X_OK):
        return f"{name}: {DOCKER} is not installed (Debian package docker.io)"
    env = {**os.environ, "DOCKER_BUILDKIT": kit}
    argv = [DOCKER, "build", "-q", "-t", TAG]

    def cleanup() -> None:
        run([DOCKER, "image", "rm", "-f", TAG], env)

    return Builder(name, [*argv, "--no-cache", str(ctx)], [*argv, str(ctx)], env, cleanup)


def buildah(tmp: Path, ctx: Path) -> Builder | str:
    """`buildah bud` with its own storage under `tmp` (overlay, else vfs), the base image
    copied from dockerd (`docker-daemon:`), chroot isolation; or why it cannot run."""
    exe = shutil.which("buildah")
    if exe is None:
        return "buildah: not installed (Debian package buildah)"
    why = "buildah: no storage driver worked"
    for driver in ("overlay", "vfs"):
        store = tmp / f"buildah-{driver}"
        base = [
            exe,
            "--root",
            str(store / "root"),
            "--runroot",
            str(store / "run"),
            "--storage-driver",
            driver,
        ]
        env = dict(os.environ)

        def cleanup(base: list[str] = base, store: Path = store, env: dict[str, str] = env) -> None:
            run([*base, "rmi", "--all", "--force"], env)
            unmount_below(store)
            shutil.rmtree(store, ignore_errors=True)

        pulled = run([*base, "pull", "--quiet", f"docker-daemon:{IMAGE}"], env)
        if pulled.returncode != 0:
            why = f"buildah ({driver}): cannot take {IMAGE} from dockerd: {first_line(pulled)}"
            cleanup()
            continue
        # buildah takes no option after the context: --no-cache goes before it
        argv = [*base, "bud", "--layers", "--pull-never", "--isolation", "chroot", "-q"]
        argv += ["-t", TAG]
        probe = run([*argv, "--no-cache", str(ctx)], env)
        if probe.returncode != 0:
            why = f"buildah ({driver}): bud failed: {first_line(probe)}"
            cleanup()
            continue
        cold = [*argv, "--no-cache", str(ctx)]
        return Builder(f"buildah ({driver})", cold, [*argv, str(ctx)], env, cleanup)
    return why


def unmount_below(path: Path) -> None:
    """Unmount whatever buildah left mounted below its private storage `path` (deepest
    first); nothing outside it is touched."""
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


Runs = dict[str, dict[str, list[float]]]  # builder -> "cold"/"warm" -> seconds of each run


def measure(builders: list[Builder], runs: int, floor: list[str], env: dict[str, str]) -> Runs:
    """Every builder's cold and warm runs, interleaved; with the warm runs, `floor` (a
    command that only starts pyapply) under the name "floor"."""
    for b in builders:  # untimed: page cache, bytecode, and a cache for the warm runs
        timed(b.warm, b.env)
    out: Runs = {b.name: {"cold": [], "warm": []} for b in builders}
    out["floor"] = {"cold": [], "warm": []}
    for _ in range(runs):
        for b in builders:
            out[b.name]["cold"].append(timed(b.cold, b.env))
    for b in builders:  # the last cold build of each left its cache filled: warm from here
        timed(b.warm, b.env)
    for _ in range(runs):
        for b in builders:
            out[b.name]["warm"].append(timed(b.warm, b.env))
        out["floor"]["warm"].append(timed(floor, env))
    for name, row in out.items():
        log(
            f"{name}: cold {' '.join(f'{t:.2f}' for t in row['cold'])}; "
            f"warm {' '.join(f'{t:.3f}' for t in row['warm'])}"
        )
    return out


def ratio(runs: Runs, name: str, kind: str, base: str = "docker BuildKit") -> float | None:
    """The median of the ratios to `base` run by run (the builders of one run go one after
    the other, so a change in the machine's load between runs falls on both)."""
    if base not in runs or not runs[name][kind]:
        return None
    pairs = zip(runs[name][kind], runs[base][kind], strict=True)
    return statistics.median(t / b for t, b in pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the native runtime needs root")
    load_before = load()
    builders: list[Builder] = []
    left_out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pyapply-bench-build-") as tmpdir:
        tmp = Path(tmpdir)
        ctx = context(tmp)
        try:
            builders.append(native(tmp, ctx))
            for made in (docker("0", ctx), docker("1", ctx), buildah(tmp, ctx)):
                if isinstance(made, str):
                    left_out.append(made)
                else:
                    builders.append(made)
            runs = measure(builders, args.runs, [PYAPPLY, "--version"], builders[0].env)
        finally:
            for b in builders:
                b.cleanup()
    print(f"10-step Dockerfile, {args.runs} runs, wall s; load {load_before} -> {load()}")
    print(
        f"{'builder':<18}{'cold s':>9}{'warm s':>9}{'cold/BK':>9}{'warm/BK':>9}"
        "   (medians; /BK: median of the ratios run by run)"
    )
    for name, row in runs.items():
        if name == "floor":
            continue
        cells = []
        for kind in ("cold", "warm"):
            r = ratio(runs, name, kind)
            cells.append("-" if r is None else f"{r:.2f}")
        cold, warm = statistics.median(row["cold"]), statistics.median(row["warm"])
        print(f"{name:<18}{cold:>9.2f}{warm:>9.3f}{cells[0]:>9}{cells[1]:>9}")
    floor = statistics.median(runs["floor"]["warm"])
    print(f"(`pyapply --version`, the start of the interpreter and the CLI alone: {floor:.3f} s)")
    for why in left_out:
        print(f"left out: {why}")
    cold_r, warm_r = ratio(runs, "native", "cold"), ratio(runs, "native", "warm")
    if cold_r is not None and warm_r is not None:
        print(
            f"targets (issue 11): native warm {warm_r:.2f}x BuildKit's (<= 0.5: "
            f"{'met' if warm_r <= 0.5 else 'missed'}), cold {cold_r:.2f}x (<= 1.0: "
            f"{'met' if cold_r <= 1.0 else 'missed'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
