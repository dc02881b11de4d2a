"""Benchmark: pushing a ~50 MB image to a registry: pyapply's native push vs `docker push`
vs `skopeo copy`, side by side.

Not part of the test suite. Run directly, as root (the native store unpacks layers):

    .venv/bin/python tests/bench/bench_push.py [--trials 3] [--mb 48] [--payload random|binary] [--json]

The image: the test image (pyapply-test/busybox) plus one layer of `--mb` MB of random
bytes (incompressible), or of copies of the busybox binary (`--payload binary`, compresses
about 2x: the compressors' real work), built once with dockerd's
classic builder and saved with `docker save` (layers uncompressed). Each tool starts from
that local image and pushes it to a fresh docker-registry on a free loopback port (its own
storage in a temporary directory), so no blob is ever already there:

- native cold: `pyapply image push` right after `pyapply image import` of the archive: the
  store gzips each uncompressed layer (reproducibly) and uploads;
- native warm: the same store pushing again, to a new registry: the gzip blobs are kept, so
  only the upload is left (what a pulled or once-pushed image costs);
- docker push: dockerd compresses and uploads (`docker push`);
- skopeo copy: `skopeo copy docker-archive:<the saved archive> docker://...` (compresses
  and uploads).

Wall time of each command, as a user runs it (process start included); the median of the
trials, and the median of the ratios to skopeo within each trial (the tools of one trial
run one after the other, so a change in the machine's load between trials falls on all). Target (issue 11): native push <= 1.0x skopeo's. Everything created (registries,
their storage, the native root, the docker image) is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYAPPLY = str(Path(sys.executable).parent / "pyapply")
BASE = "pyapply-test/busybox:latest"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def run(*argv: str, env: dict[str, str] | None = None) -> float:
    """Run a command; its wall time in seconds (a failure aborts the benchmark)."""
    started = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    took = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return took


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registry(tmp: Path) -> Iterator[str]:
    """A fresh docker-registry on loopback, killed (by pid) and removed afterwards."""
    d = Path(tempfile.mkdtemp(dir=tmp, prefix="reg-"))
    addr = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(d / "data")}},
        "http": {"addr": addr},
    }
    (d / "config.yml").write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(d / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for _ in range(100):
            try:
                with _OPENER.open(f"http://{addr}/v2/", timeout=2):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"docker-registry on {addr} did not answer")
        yield addr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def pushed_bytes(reg: str, repo: str) -> int:
    """The layer bytes the manifest under `repo:1` names: what the tool made and sent."""
    req = urllib.request.Request(
        f"http://{reg}/v2/{repo}/manifests/1",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json"
        },
    )
    with _OPENER.open(req, timeout=10) as r:
        return sum(int(layer["size"]) for layer in json.load(r)["layers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--mb", type=int, default=48, help="size of the random layer")
    parser.add_argument(
        "--payload",
        choices=["random", "binary"],
        default="random",
        help="random bytes (incompressible) or copies of the busybox binary (compresses ~2x)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tool in ("docker", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")

    load_before = load()
    tag = f"pyapply-bench/push:{secrets.token_hex(4)}"
    sizes: dict[str, int] = {}
    times: dict[str, list[float]] = {
        "native cold": [],
        "native warm": [],
        "docker push": [],
        "skopeo copy": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmpdir:
        tmp = Path(tmpdir)
        ctx = tmp / "ctx"
        ctx.mkdir()
        if args.payload == "random":
            make = f"head -c {args.mb}m /dev/urandom > /payload"
        else:  # busybox is ~1 MB: copies of it, up to the size asked
            make = f"for i in $(seq {args.mb}); do cat /bin/busybox; done | head -c {args.mb}m > /payload"
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\nRUN {make}\n")
        docker_refs = [tag]
        try:
            run(
                "docker",
                "build",
                "-q",
                "--network",  # the RUN needs none (and dockerd's bridge may be down)
                "none",
                "-t",
                tag,
                str(ctx),
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
            archive = tmp / "image.tar"
            run("docker", "save", "-o", str(archive), tag)
            size = archive.stat().st_size
            for trial in range(args.trials):
                root = tmp / f"root{trial}"
                env = {**os.environ, "PYAPPLY_ROOT": str(root), "PYAPPLY_RUNTIME": "native"}
                # measured as installed, with its bytecode compiled (pip does it at install
                # time): the sandbox this is developed in sets PYTHONDONTWRITEBYTECODE
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                with registry(tmp) as reg, registry(tmp) as reg2:
                    ref, ref2 = f"{reg}/bench/native:1", f"{reg2}/bench/native:1"
                    # both names before the first push (an import writes the record anew)
                    run(PYAPPLY, "image", "import", str(archive), "--ref", ref, env=env)
                    run(PYAPPLY, "image", "import", str(archive), "--ref", ref2, env=env)
                    times["native cold"].append(run(PYAPPLY, "image", "push", ref, env=env))
                    sizes["native cold"] = pushed_bytes(reg, "bench/native")
                    # the same store, a new registry: the layers are gzip blobs already
                    times["native warm"].append(run(PYAPPLY, "image", "push", ref2, env=env))
                    sizes["native warm"] = pushed_bytes(reg2, "bench/native")
                shutil.rmtree(root, ignore_errors=True)
                with registry(tmp) as reg:
                    dref = f"{reg}/bench/docker:1"
                    run("docker", "tag", tag, dref)
                    docker_refs.append(dref)
                    times["docker push"].append(run("docker", "push", "-q", dref))
                    sizes["docker push"] = pushed_bytes(reg, "bench/docker")
                with registry(tmp) as reg:
                    times["skopeo copy"].append(
                        run(
                            "skopeo",
                            "copy",
                            "--quiet",
                            "--dest-tls-verify=false",
                            f"docker-archive:{archive}",
                            f"docker://{reg}/bench/skopeo:1",
                        )
                    )
                    sizes["skopeo copy"] = pushed_bytes(reg, "bench/skopeo")
        finally:
            for ref in dict.fromkeys(docker_refs):
                subprocess.run(
                    ["docker", "image", "rm", "-f", ref], capture_output=True, check=False
                )

    medians = {k: statistics.median(v) for k, v in times.items()}
    # the ratio within each trial (its runs follow one another, so a change in the machine's
    # load between trials falls on both), then the median of those
    paired = {
        k: statistics.median(t / s for t, s in zip(v, times["skopeo copy"], strict=True))
        for k, v in times.items()
    }
    if args.json:
        doc = {
            "payload": args.payload,
            "image_bytes": size,
            "trials": times,
            "median_s": medians,
            "median_ratio_to_skopeo_per_trial": paired,
            "loadavg": os.getloadavg(),
            "layer_bytes_pushed": sizes,
        }
        print(json.dumps(doc, indent=2))
        return
    print(
        f"push of a {size / 1e6:.1f} MB image ({args.payload} payload, docker save size), "
        f"{args.trials} trials, median (load average {load_before} -> {load()}):"
    )
    for name, value in medians.items():
        ratio = value / medians["skopeo copy"]
        print(
            f"  {name:<12} {value:6.2f} s   ({ratio:.2f}x skopeo; per trial {paired[name]:.2f}x)"
            f"   {sizes[name] / 1e6:5.1f} MB sent   all: "
            + ", ".join(f"{t:.2f}" for t in times[name])
        )


if __name__ == "__main__":
    main()
