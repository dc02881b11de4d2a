"""Benchmark: the native runtime against raw runc, dockerd, podman and docker-compose (issue 3).

Not part of the test suite. Run directly, as root, with dockerd running and the test image
built (scripts/build-test-image.sh):

    .venv/bin/python tests/bench/bench_native.py [--runs 10] [--services 20]
        [--converge-runs 3] [--install] [--skip-podman] [--skip-converge] [--json]

1. Per-container create+start latency of one busybox `sleep 3600` container, --runs times per
   variant (after one untimed warm-up each), the variants interleaved (one of each per round,
   the order rotating between rounds). Every container stays up until the section ends.
   - runc (floor): `runc run -d` of a prepared bundle (rootfs copied once from the image,
     config.json from `runc spec`: no terminal, `sleep 3600`, rlimits clamped to the host's
     hard limits, cgroups under /pabench-<tag>), private --root; only that call is timed;
   - native: NativeRuntime.create_container + start_container (private state root, image
     imported from a `docker save`), with its own network namespace and no network; also
     "+ bridge" (attached to one native bridge network: veth, IPAM, hosts) and "no netns"
     (ContainerManager alone; runc makes the empty network namespace, as in the floor).
     In-process: no interpreter start-up is counted, but conmon, runc create and runc start
     (three processes) are;
   - docker: `docker run -d` (default bridge) and `--network none` (CLI wall time);
   - podman: `podman --runtime runc run -d --ulimit nofile=1024:1024 --ulimit
     nproc=1024:1024` (netavark bridge) and `--network none`; private --root/--runroot,
     cgroupfs manager (this host has hybrid cgroups), the image loaded from the same
     `docker save`. podman is installed with apt-get when missing and --install is given.
2. Cold converge (then no-op re-apply, then teardown) of the --services stack of bench_compose.py:
   `pyapply -f` with PYAPPLY_RUNTIME=native (private root, image present), the same with
   PYAPPLY_RUNTIME=docker, and `docker-compose up -d` on the same dockerd.
3. Supervisor memory per container, on the containers of section 1: VmRSS (and PSS) of the
   native runtime's conmon, of docker's containerd-shim-runc-v2 and of podman's conmon.

Targets (issue 3), printed beside the figures: native create+start median <= 2x runc's;
native cold converge faster than docker-compose; native supervisor RSS <= 5 MB.

Everything created is removed at the end, also on failure or Ctrl-C: containers of every
tool, runc containers and their cgroups, the native state root (overlays, netns, bridges,
iptables rules), podman containers, image and store, what podman leaves on the host on
first use (/run/containers, netavark's iptables chains, its bridge) when it was not there
before, compose projects and the temp dir. Names start with "pabench-<tag>".
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import common
import docker
import docker.errors
import msgspec
from common import BenchError, Tool, log
from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

from pyapply.runtime.base import Attachment, ContainerConfig, NetworkConfig, NotFound
from pyapply.runtime.native import oci, rootfs, seccomp
from pyapply.runtime.native.driver import NETNS_DIR, NativeRuntime
from pyapply.runtime.native.network import NetworkManager

SLEEP = ["sleep", "3600"]
BENCH_LABEL = "io.pyapply.bench"  # on the section-1 containers of docker, podman, native
RUNC = "/usr/sbin/runc"
CGROUP_FS = Path("/sys/fs/cgroup")
STEP_TIMEOUT_S = 120.0
RSS_TARGET_KB = 5 * 1024
LATENCY_TARGET = 2.0  # native median / runc median, at most

# What podman (with netavark) leaves on the host on first use, outside its --root/--runroot;
# removed at the end when it was not there before the benchmark.
PODMAN_HOST_PATHS = (
    "/run/containers",
    "/run/libpod",
    "/etc/containers/networks",
    "/etc/cni/net.d/cni.lock",
)
PODMAN_BRIDGE = "podman0"
NETAVARK_CHAIN_PREFIX = "NETAVARK"
IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")


# ---------------------------------------------------------------------------------------------
# Small helpers


def timed(argv: Sequence[str], what: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `argv`, return (wall seconds, stdout); raise BenchError if it fails."""
    code, elapsed, out, err = common.run_command(argv, env=env, timeout=STEP_TIMEOUT_S)
    if code != 0:
        tail = "\n".join((out + err).strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {code}): {shlex.join(argv)}\n{tail}")
    return elapsed, out


def quiet(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a cleanup/inspection command (shielded from Ctrl-C); its failure is logged."""
    try:
        code, _, out, err = common.run_command(argv, env=env, timeout=120, shielded=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"  {shlex.join(argv)}: {exc}")
        return ""
    if code != 0:
        log(f"  {shlex.join(argv)}: exit {code}: {err.strip()[-300:]}")
    return out


def first_line(argv: Sequence[str]) -> str:
    """The first line a command prints (a version), or "?"."""
    try:
        _, _, out, err = common.run_command(argv, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out or err).strip().splitlines()
    return lines[0] if lines else "?"


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    found = [m for m in rootfs.mountpoints() if m == prefix or m.startswith(prefix + "/")]
    return sorted(found, key=lambda m: -m.count("/"))


def remove_cgroup_tree(rel: str) -> list[str]:
    """rmdir /sys/fs/cgroup/<hierarchy>/<rel> and everything below it, in every hierarchy;
    returns what could not be removed."""
    failed: list[str] = []
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_FS.iterdir():
            top = hierarchy / rel.strip("/")
            if not top.is_dir():
                continue
            dirs = [d for d in top.rglob("*") if d.is_dir()]
            for d in [*sorted(dirs, key=lambda d: -len(d.parts)), top]:
                try:
                    d.rmdir()
                except OSError:
                    failed.append(str(d))
    return failed


def shim_pids() -> dict[str, int]:
    """containerd shims by the container id they serve (`-id <id>` on their command line)."""
    out: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if not comm.startswith("containerd-shim"):
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "-id" in argv and argv.index("-id") + 1 < len(argv):
            out[argv[argv.index("-id") + 1]] = int(entry)
    return out


def iptables_chains(prefix: str) -> set[tuple[str, str, str]]:
    """(binary, table, chain) of every chain whose name starts with `prefix`."""
    found: set[tuple[str, str, str]] = set()
    for binary in IPTABLES:
        if shutil.which(binary) is None:
            continue
        for table in IPTABLES_TABLES:
            for line in quiet([binary, "-w", "-t", table, "-S"]).splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "-N" and parts[1].startswith(prefix):
                    found.add((binary, table, parts[1]))
    return found


def drop_chains(chains: Iterable[tuple[str, str, str]]) -> None:
    """Delete the jumps to these chains from other chains, then flush and delete them."""
    by_table: dict[tuple[str, str], set[str]] = {}
    for binary, table, chain in chains:
        by_table.setdefault((binary, table), set()).add(chain)
    for (binary, table), names in sorted(by_table.items()):
        rules = quiet([binary, "-w", "-t", table, "-S"])
        for line in rules.splitlines():
            tokens = shlex.split(line)
            if len(tokens) < 2 or tokens[0] != "-A" or tokens[1] in names or "-j" not in tokens:
                continue
            j = tokens.index("-j")
            if j + 1 < len(tokens) and tokens[j + 1] in names:
                quiet([binary, "-w", "-t", table, "-D", *tokens[1:]])
        for name in sorted(names):
            quiet([binary, "-w", "-t", table, "-F", name])
        for name in sorted(names):
            quiet([binary, "-w", "-t", table, "-X", name])


def link_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def delete_link(ifname: str) -> None:
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=index)


# ---------------------------------------------------------------------------------------------
# Section 1: latency variants


class Variant(msgspec.Struct):
    key: str
    label: str
    measure: Callable[[str], dict[str, float]]  # container name -> {"total": s, phases...}
    samples: list[float] = msgspec.field(default_factory=list)
    phases: dict[str, list[float]] = msgspec.field(default_factory=dict)
    note: str = ""


class Created(msgspec.Struct):
    """Everything section 1 made, for the cleanup (entries go once they are removed)."""

    runc: list[str] = msgspec.field(default_factory=list)
    native: list[str] = msgspec.field(default_factory=list)
    docker: list[str] = msgspec.field(default_factory=list)
    podman: list[str] = msgspec.field(default_factory=list)


class NativeObjects:
    """A stack's objects in one native state root (and the netns of its containers)."""

    def __init__(self, root: Path, stack: str) -> None:
        self.root = root
        self.stack = stack
        self.labels = {common.PYAPPLY_LABEL: stack}

    def _netns(self, rt: NativeRuntime) -> list[str]:
        prefix = rt.netns_name(f"{self.stack}-")
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
        return []

    def containers(self) -> dict[str, tuple[str, str]]:
        rt = NativeRuntime(self.root)
        return {s.name: (s.id, s.status) for s in rt.list_containers(self.labels)}

    def leftovers(self) -> list[str]:
        rt = NativeRuntime(self.root)
        return (
            [f"container {s.name}" for s in rt.list_containers(self.labels)]
            + [f"network {n.name}" for n in rt.list_networks(self.labels)]
            + [f"volume {v.name}" for v in rt.list_volumes(self.labels)]
            + [f"netns {n}" for n in self._netns(rt)]
        )

    def sweep(self) -> list[str]:
        rt = NativeRuntime(self.root)
        removed: list[str] = []
        for s in rt.list_containers(self.labels):
            rt.remove_container(s.name)
            removed.append(f"container {s.name}")
        for n in rt.list_networks(self.labels):
            rt.remove_network(n.name)
            removed.append(f"network {n.name}")
        for v in rt.list_volumes(self.labels):
            rt.remove_volume(v.name)
            removed.append(f"volume {v.name}")
        for name in self._netns(rt):
            netns.remove(name)
            removed.append(f"netns {name}")
        return removed


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = "pabench-" + secrets.token_hex(3)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.tag + "-")).resolve()
        self.client = docker.from_env(timeout=STEP_TIMEOUT_S)
        self.created = Created()
        self.native_root = self.tmp / "native"
        self.rt: NativeRuntime | None = None
        self.native_net = f"{self.tag}-net"
        self.runc_root = self.tmp / "runc-root"
        self.bundle = self.tmp / "runc-bundle"
        self.runc_spec: dict[str, Any] = {}
        self.seccomp_section: dict[str, Any] | None = None
        self.archive = self.tmp / "busybox.tar"
        self.podman: list[str] | None = None
        self.podman_env: dict[str, str] = {}
        self.podman_status = ""
        self.podman_before: dict[str, Any] | None = None
        self.tools: list[Tool] = []
        self.results: dict[str, Any] = {}

    # -- set-up --------------------------------------------------------------------------

    def setup_images(self) -> None:
        try:
            self.client.images.get(common.IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise BenchError(
                f"image {common.IMAGE} is missing (scripts/build-test-image.sh)"
            ) from exc
        timed(["docker", "save", "-o", str(self.archive), common.IMAGE], "docker save")
        self.rt = NativeRuntime(self.native_root)
        [record] = self.rt.image_store.import_archive(str(self.archive), common.IMAGE)
        layers = self.rt.image_store.layer_dirs(record)
        # the runc floor's bundle: the image's layers copied into one rootfs
        rootfs_dir = self.bundle / "rootfs"
        rootfs_dir.mkdir(parents=True)
        if len(layers) > 1:
            log(f"note: {common.IMAGE} has {len(layers)} layers; copied in order (no whiteouts)")
        for layer in layers:
            timed(["cp", "-a", f"{layer}/.", str(rootfs_dir)], "copy the rootfs")
        timed([RUNC, "spec", "--bundle", str(self.bundle)], "runc spec")
        spec = json.loads((self.bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(SLEEP)
        for rl in spec["process"].get("rlimits") or []:
            name = str(rl["type"])
            host_hard = resource.getrlimit(getattr(resource, name))[1]
            if host_hard != resource.RLIM_INFINITY:
                rl["hard"] = min(int(rl["hard"]), host_hard)
                rl["soft"] = min(int(rl["soft"]), int(rl["hard"]))
        self.runc_spec = spec

    def setup_podman(self) -> None:
        if self.args.skip_podman:
            self.podman_status = "skipped (--skip-podman)"
            return
        exe = shutil.which("podman")
        if exe is None and self.args.install:
            log("installing podman (apt-get install -y podman)")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            code, _, _, err = common.run_command(
                ["apt-get", "install", "-y", "podman"], env=env, timeout=900
            )
            if code != 0:
                log(f"apt-get install podman failed: {err.strip()[-500:]}")
            exe = shutil.which("podman")
        if exe is None:
            self.podman_status = "not installed" + ("" if self.args.install else " (--install)")
            return
        home = self.tmp / "podman"
        conf = home / "containers.conf"
        home.mkdir()
        conf.write_text(
            f'[network]\nnetwork_config_dir = "{home / "netconf"}"\n'
            f'[engine]\ntmp_dir = "{home / "tmp"}"\n'
        )
        self.podman_env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.podman_before = {
            "paths": {p for p in PODMAN_HOST_PATHS if os.path.lexists(p)},
            "chains": iptables_chains(NETAVARK_CHAIN_PREFIX),
            "bridge": link_exists(PODMAN_BRIDGE),
        }
        self.podman = [
            exe,
            "--root", str(home / "root"),
            "--runroot", str(home / "run"),
            "--runtime", RUNC,
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip
        try:
            timed(
                [*self.podman, "load", "-q", "-i", str(self.archive)],
                "podman load",
                self.podman_env,
            )
        except BenchError as exc:  # no podman rows, but the rest of the benchmark runs
            log(f"podman: {exc}")
            self.podman_status = "podman load failed"
            self.podman = None
            return
        self.podman_status = first_line([exe, "--version"])

    # -- the variants ----------------------------------------------------------------------

    def native_rt(self) -> NativeRuntime:
        assert self.rt is not None
        return self.rt

    def m_runc(self, name: str) -> dict[str, float]:
        return self._run_floor(name, copy.deepcopy(self.runc_spec))

    def _run_floor(self, name: str, spec: dict[str, Any]) -> dict[str, float]:
        spec.setdefault("linux", {})["cgroupsPath"] = f"/{self.tag}/{name}"
        (self.bundle / "config.json").write_text(json.dumps(spec))
        self.created.runc.append(name)
        argv = [RUNC, "--root", str(self.runc_root), "run", "-d", "--bundle", str(self.bundle)]
        elapsed, _ = timed([*argv, name], "runc run -d")
        state = json.loads(timed([RUNC, "--root", str(self.runc_root), "state", name], "")[1])
        if state.get("status") != "running":
            raise BenchError(f"runc container {name} is {state.get('status')}")
        return {"total": elapsed}

    def m_runc_seccomp(self, name: str) -> dict[str, float]:
        """The floor with the filter every native (and docker) container gets: Docker's
        default seccomp profile, as pyapply compiles it for this host's capabilities."""
        if self.seccomp_section is None:
            caps = oci.capabilities((), ())  # a native container's default set
            self.seccomp_section = seccomp.section_for(
                None, caps, os.uname().machine, os.uname().release
            )
        spec = copy.deepcopy(self.runc_spec)
        spec.setdefault("linux", {})["seccomp"] = self.seccomp_section
        return self._run_floor(name, spec)

    def m_native(self, name: str, mode: str) -> dict[str, float]:
        rt = self.native_rt()
        nets = (Attachment(self.native_net),) if mode == "bridge" else ()
        config = ContainerConfig(
            name=name,
            image=common.IMAGE,
            command=tuple(SLEEP),
            labels={BENCH_LABEL: self.tag},
            networks=nets,
        )
        self.created.native.append(name)
        t0 = time.perf_counter()
        if mode == "nonetns":
            record = rt.image_store.resolve(common.IMAGE)
            assert record is not None
            layers = rt.image_store.layer_dirs(record)
            rt.containers.create(config, layers, record.config.to_json(), image_id=record.id)
            t1 = time.perf_counter()
            rt.containers.start(name)
        else:
            rt.create_container(config)
            t1 = time.perf_counter()
            rt.start_container(name)
        t2 = time.perf_counter()
        state = rt.get_container(name)
        if state is None or state.status != "running":
            raise BenchError(f"native container {name} is {state.status if state else 'gone'}")
        return {"total": t2 - t0, "create": t1 - t0, "start": t2 - t1}

    def m_docker(self, name: str, network: str | None) -> dict[str, float]:
        self.created.docker.append(name)
        argv = ["docker", "run", "-d", "--name", name, "--label", f"{BENCH_LABEL}={self.tag}"]
        if network:
            argv += ["--network", network]
        elapsed, _ = timed([*argv, common.IMAGE, *SLEEP], "docker run -d")
        if self.client.containers.get(name).status != "running":
            raise BenchError(f"docker container {name} is not running")
        return {"total": elapsed}

    def m_podman(self, name: str, network: str | None) -> dict[str, float]:
        assert self.podman is not None
        self.created.podman.append(name)
        argv = [
            *self.podman,
            "run", "-d", "--name", name,
            "--label", f"{BENCH_LABEL}={self.tag}",
            "--cgroup-parent", f"/{self.tag}/podman",
            "--ulimit", "nofile=1024:1024",
            "--ulimit", "nproc=1024:1024",
        ]  # fmt: skip
        if network:
            argv += ["--network", network]
        elapsed, _ = timed(
            [*argv, f"localhost/{common.IMAGE}", *SLEEP], "podman run -d", self.podman_env
        )
        _, out = timed(
            [*self.podman, "inspect", "--format", "{{.State.Running}}", name],
            "podman inspect",
            self.podman_env,
        )
        if out.strip() != "true":
            raise BenchError(f"podman container {name} is not running")
        return {"total": elapsed}

    def variants(self) -> list[Variant]:
        out = [
            Variant("runc", "runc run -d (floor)", self.m_runc),
            Variant("runc-seccomp", "runc run -d + default seccomp", self.m_runc_seccomp),
            Variant(
                "native",
                "native (own netns, no network)",
                functools.partial(self.m_native, mode="netns"),
            ),
            Variant(
                "native-bridge",
                "native + bridge network",
                functools.partial(self.m_native, mode="bridge"),
            ),
            Variant(
                "native-nonetns",
                "native, no netns (runc's)",
                functools.partial(self.m_native, mode="nonetns"),
            ),
            Variant(
                "docker", "docker run -d (bridge)", functools.partial(self.m_docker, network=None)
            ),
            Variant(
                "docker-none",
                "docker run -d --network none",
                functools.partial(self.m_docker, network="none"),
            ),
        ]
        if self.podman is not None:
            out += [
                Variant(
                    "podman",
                    "podman run -d (netavark bridge)",
                    functools.partial(self.m_podman, network=None),
                ),
                Variant(
                    "podman-none",
                    "podman run -d --network none",
                    functools.partial(self.m_podman, network="none"),
                ),
            ]
        return out

    # -- section 1 + 3 -------------------------------------------------------------------

    def latency(self) -> list[Variant]:
        rt = self.native_rt()
        rt.create_network(NetworkConfig(name=self.native_net, labels={BENCH_LABEL: self.tag}))
        variants = self.variants()
        rounds = self.args.warmup + self.args.runs
        for r in range(rounds):
            warm = r < self.args.warmup
            shift = r % len(variants)
            order = variants[shift:] + variants[:shift]
            for v in order:
                time.sleep(self.args.pause)  # let the previous tool's background work settle
                result = v.measure(f"{self.tag}-{v.key}-{r}")
                if warm:
                    continue
                v.samples.append(result["total"])
                for phase, secs in result.items():
                    if phase != "total":
                        v.phases.setdefault(phase, []).append(secs)
            if not warm:
                done = r - self.args.warmup + 1
                log(f"  round {done}/{self.args.runs}: " + "  ".join(
                    f"{v.key} {v.samples[-1] * 1000:.0f}" for v in variants
                ) + " ms")  # fmt: skip
        return variants

    def supervisors(self) -> list[dict[str, Any]]:
        """Section 3, on the containers section 1 left running."""
        rows: list[dict[str, Any]] = []
        rt = self.native_rt()
        native_pids = [rt.containers.supervisor_pid(n) for n in self.created.native]
        rows.append(self.memory_row("conmon 2.1.6 (native)", native_pids))
        shims = shim_pids()
        docker_pids: list[int | None] = []
        for name in self.created.docker:
            with contextlib.suppress(docker.errors.NotFound):
                docker_pids.append(shims.get(self.client.containers.get(name).id))
        rows.append(self.memory_row("containerd-shim-runc-v2 (docker)", docker_pids))
        if self.podman is not None and self.created.podman:
            out = quiet(
                [
                    *self.podman,
                    "inspect",
                    "--format",
                    "{{.State.ConmonPid}}",
                    *self.created.podman,
                ],
                env=self.podman_env,
            )
            pids = [int(p) if p.strip().isdigit() else None for p in out.split()]
            rows.append(self.memory_row("conmon (podman)", pids))
        return rows

    @staticmethod
    def memory_row(label: str, pids: Sequence[int | None]) -> dict[str, Any]:
        rss = [kb for kb in (common.proc_kb(p) for p in pids if p) if kb is not None]
        pss = [
            kb
            for kb in (common.proc_kb(p, "Pss", "smaps_rollup") for p in pids if p)
            if kb is not None
        ]
        return {
            "supervisor": label,
            "containers": len(pids),
            "found": len(rss),
            "rss_kb_median": statistics.median(rss) if rss else None,
            "rss_kb_max": max(rss) if rss else None,
            "pss_kb_median": statistics.median(pss) if pss else None,
        }

    def remove_latency_containers(self) -> None:
        c = self.created
        for name in list(c.runc):
            quiet([RUNC, "--root", str(self.runc_root), "delete", "--force", name])
            c.runc.remove(name)
        rt = self.rt
        for name in list(c.native):
            if rt is not None:
                try:
                    with contextlib.suppress(NotFound):
                        rt.stop_container(name, 0)  # sleep as pid 1 ignores SIGTERM
                    rt.remove_container(name)
                except Exception as exc:
                    log(f"  native remove {name}: {exc}")
            c.native.remove(name)
        if rt is not None:
            with contextlib.suppress(Exception):
                rt.remove_network(self.native_net)
        for name in list(c.docker):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.containers.get(name).remove(force=True, v=True)
            c.docker.remove(name)
        if c.podman and self.podman is not None:
            quiet([*self.podman, "rm", "-f", "-t", "0", *c.podman], env=self.podman_env)
        c.podman.clear()

    # -- section 2 -----------------------------------------------------------------------

    def converge(self) -> list[Tool]:
        n = self.args.services
        pyapply = common.find_exe(
            self.args.pyapply, [str(common.REPO_ROOT / ".venv/bin/pyapply"), "pyapply"]
        )
        compose = common.find_exe(self.args.compose, ["docker-compose", "/usr/bin/docker-compose"])
        self.results["tools"] = {"pyapply": pyapply, "docker-compose": compose}
        k = common.published_count(n)
        used: set[int] = set()
        ports = []
        for _ in range(3):
            ports.append(common.free_ports(k, used))
            used |= set(ports[-1])
        suffix = self.tag.removeprefix("pabench-")
        na_stack, pd_stack, dc_project = f"pbna{suffix}", f"pbpd{suffix}", f"pbdc{suffix}"
        na_dir, pd_dir = self.tmp / "stack-native", self.tmp / "stack-docker"
        dc_file = self.tmp / "compose" / "docker-compose.yml"
        common.write_pyapply_manifest(
            na_dir / "stack.yaml", na_stack, common.services_spec(n, ports[0])
        )
        common.write_pyapply_manifest(
            pd_dir / "stack.yaml", pd_stack, common.services_spec(n, ports[1])
        )
        common.write_compose_file(dc_file, common.services_spec(n, ports[2]))
        env = {**os.environ, "NO_COLOR": "1"}
        # pyapply as installed, its bytecode compiled (pip does it at install time): the
        # sandbox this is developed in may say PYTHONDONTWRITEBYTECODE, and every pyapply
        # start would then compile its modules and time that
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        native = Tool(
            name="pyapply (native)",
            stack=na_stack,
            up_cmd=[pyapply, "-f", str(na_dir)],
            down_cmd=[pyapply, "down", "-f", str(na_dir), "--volumes"],
            env={**env, "PYAPPLY_RUNTIME": "native", "PYAPPLY_ROOT": str(self.native_root)},
            ports=ports[0],
            objects=NativeObjects(self.native_root, na_stack),
        )
        pa_docker = Tool(
            name="pyapply (docker)",
            stack=pd_stack,
            up_cmd=[pyapply, "-f", str(pd_dir)],
            down_cmd=[pyapply, "down", "-f", str(pd_dir), "--volumes"],
            env={**env, "PYAPPLY_RUNTIME": "docker", "PYAPPLY_ROOT": str(self.tmp / "pa-docker")},
            ports=ports[1],
            objects=common.DockerObjects(self.client, common.PYAPPLY_LABEL, pd_stack),
        )
        dc = common.compose_tool(self.client, compose, dc_project, dc_file, env, ports[2])
        tools = [native, pa_docker, dc]
        self.tools = tools
        for t in tools:
            if t.objects.leftovers():
                raise BenchError(f"{t.name}: objects of {t.stack!r} exist before the start")
        for run in range(self.args.converge_runs):
            log(f"  run {run + 1}/{self.args.converge_runs}")
            shift = run % len(tools)
            for t in tools[shift:] + tools[:shift]:
                common.one_run(t, n)
        return tools

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        log("cleanup")
        steps: list[tuple[str, Callable[[], None]]] = [
            ("section-1 containers", self.remove_latency_containers),
            *(
                (f"stack of {t.name}", functools.partial(common.final_cleanup, t))
                for t in self.tools
            ),
            ("native state root", self.cleanup_native),
            ("podman", self.cleanup_podman),
            ("cgroups", self.cleanup_cgroups),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # keep going: every later step still has its own job
                log(f"  cleanup of {what} failed: {exc!r}")
        try:
            left = self.leftovers()
            log("  cleanup left " + ", ".join(left) if left else "  nothing left behind")
            self.client.close()
        finally:
            self.remove_tmp()

    def leftovers(self) -> list[str]:
        """What of ours is still there after the cleanup (the temp dir aside)."""
        left: list[str] = []
        for t in self.tools:
            left += [f"{t.name}: {x}" for x in t.objects.leftovers()]
        flt = {"label": f"{BENCH_LABEL}={self.tag}"}
        left += [
            f"docker container {c.name}" for c in self.client.containers.list(True, filters=flt)
        ]
        if self.runc_root.is_dir():
            out = quiet([RUNC, "--root", str(self.runc_root), "list", "-q"])
            left += [f"runc container {cid}" for cid in out.split()]
        if self.rt is not None:
            nm = NetworkManager(self.native_root)
            with contextlib.suppress(FileNotFoundError):
                ours = f"pyapply-{nm.tag}-"
                left += [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(ours)]
            with IPRoute() as ipr:
                for link in ipr.get_links():
                    if str(link.get("ifalias") or "").startswith(nm.alias_prefix):
                        left.append(f"link {link.get('ifname')}")
        with contextlib.suppress(OSError):
            for hierarchy in CGROUP_FS.iterdir():
                left += [f"cgroup {d}" for d in hierarchy.glob(f"{self.tag}*")]
                for prefix in [self.tag, *(t.stack for t in self.tools)]:
                    left += [f"cgroup {d}" for d in hierarchy.glob(f"pyapply/{prefix}*")]
        return left

    def cleanup_native(self) -> None:
        if self.rt is None:
            return
        nm = NetworkManager(self.native_root)
        nm.reset()
        prefix = f"pyapply-{nm.tag}-"
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(NETNS_DIR):
                if name.startswith(prefix):
                    netns.remove(name)
                    log(f"  removed netns {name}")

    def cleanup_podman(self) -> None:
        if self.podman_before is None:
            return
        if self.podman is not None:
            label = f"label={BENCH_LABEL}={self.tag}"
            left = quiet([*self.podman, "ps", "-aq", "--filter", label], env=self.podman_env)
            if left.split():
                quiet([*self.podman, "rm", "-f", "-t", "0", *left.split()], env=self.podman_env)
            quiet([*self.podman, "rmi", "-af"], env=self.podman_env)
        before = self.podman_before
        new_chains = iptables_chains(NETAVARK_CHAIN_PREFIX) - before["chains"]
        if new_chains:
            drop_chains(new_chains)
            log(f"  removed podman's iptables chains {sorted(c for _, _, c in new_chains)}")
        if not before["bridge"] and link_exists(PODMAN_BRIDGE):
            delete_link(PODMAN_BRIDGE)
            log(f"  removed podman's bridge {PODMAN_BRIDGE}")
        for path in PODMAN_HOST_PATHS:
            if path not in before["paths"] and os.path.lexists(path):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                log(f"  removed {path} (made by podman during the benchmark)")

    def cleanup_cgroups(self) -> None:
        failed = remove_cgroup_tree(self.tag)
        if failed:
            log(f"  could NOT remove cgroups: {', '.join(failed[:5])}")

    def remove_tmp(self) -> None:
        for m in mounts_under(self.tmp):
            try:
                rootfs.unmount(m)
            except Exception as exc:
                log(f"  unmount {m}: {exc}")
        left = mounts_under(self.tmp)
        if left:
            log(f"  NOT removing {self.tmp}: still mounted: {', '.join(left)}")
        elif self.args.keep_tmp:
            log(f"  kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Output


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def latency_rows(variants: Sequence[Variant]) -> list[dict[str, Any]]:
    floor = next((v for v in variants if v.key == "runc"), None)
    f_med = statistics.median(floor.samples) if floor and floor.samples else None
    f_p95 = common.pct(floor.samples, 0.95) if floor and floor.samples else None
    rows = []
    for v in variants:
        med, p95 = statistics.median(v.samples), common.pct(v.samples, 0.95)
        rows.append(
            {
                "variant": v.key,
                "label": v.label,
                "n": len(v.samples),
                "median_s": med,
                "p95_s": p95,
                "min_s": min(v.samples),
                "max_s": max(v.samples),
                "median_ratio_to_runc": med / f_med if f_med else None,
                "p95_ratio_to_runc": p95 / f_p95 if f_p95 else None,
                "phases_median_s": {k: statistics.median(s) for k, s in v.phases.items()},
                "samples_s": v.samples,
            }
        )
    return rows


def converge_rows(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    compose = next((t for t in tools if t.name == "docker-compose"), None)
    base = statistics.median(compose.samples["cold converge"]) if compose else None
    rows = []
    for t in tools:
        cold = t.samples.get("cold converge", [])
        noop = t.samples.get("no-op re-apply", [])
        down = t.samples.get("teardown", [])
        if not cold:
            continue
        med = statistics.median(cold)
        rows.append(
            {
                "tool": t.name,
                "cold_median_s": med,
                "cold_min_s": min(cold),
                "cold_max_s": max(cold),
                "noop_median_s": statistics.median(noop) if noop else None,
                "down_median_s": statistics.median(down) if down else None,
                "cold_ratio_to_compose": med / base if base else None,
                "cold_samples_s": cold,
            }
        )
    return rows


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def report(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    h = doc["host"]
    lines.append(
        f"host: {h['cpus']} CPUs, load {h['load_start']} at start, {h['load_end']} at end; "
        f"{h['runc']}; {h['conmon']}; docker {h['docker']}; {h['podman']}; "
        f"docker-compose {h['compose']}"
    )
    lat = doc.get("latency")
    if lat:
        lines += ["", f"1. create+start of one busybox `sleep 3600` container, {doc['runs']} runs "]
        lines[-1] += "each (ms, wall clock)"
        head = (
            f"{'variant':<32} {'median':>7} {'p95':>7} {'min':>7} {'max':>7} "
            f"{'med/runc':>8} {'p95/runc':>8}  phases (median)"
        )
        lines += [head, "-" * len(head)]
        for r in lat:
            phases = "  ".join(f"{k} {ms(v)}" for k, v in r["phases_median_s"].items())
            lines.append(
                f"{r['label']:<32} {ms(r['median_s']):>7} {ms(r['p95_s']):>7} "
                f"{ms(r['min_s']):>7} {ms(r['max_s']):>7} "
                f"{ratio(r['median_ratio_to_runc']):>8} {ratio(r['p95_ratio_to_runc']):>8}  {phases}"
            )
        if doc.get("podman_status") and not any(r["variant"].startswith("podman") for r in lat):
            lines.append(f"podman: {doc['podman_status']}")
    conv = doc.get("converge")
    if conv:
        lines += [
            "",
            f"2. cold converge of a {doc['services']}-service stack, {doc['converge_runs']} "
            "runs each (s, wall clock)",
        ]
        head = (
            f"{'tool':<20} {'cold med':>8} {'min':>7} {'max':>7} {'no-op med':>9} "
            f"{'down med':>8} {'cold/compose':>12}"
        )
        lines += [head, "-" * len(head)]
        for r in conv:
            noop = "-" if r["noop_median_s"] is None else f"{r['noop_median_s']:.3f}"
            down = "-" if r.get("down_median_s") is None else f"{r['down_median_s']:.3f}"
            lines.append(
                f"{r['tool']:<20} {r['cold_median_s']:>8.3f} {r['cold_min_s']:>7.3f} "
                f"{r['cold_max_s']:>7.3f} {noop:>9} {down:>8} "
                f"{ratio(r['cold_ratio_to_compose']):>12}"
            )
    mem = doc.get("memory")
    if mem:
        lines += ["", "3. supervisor memory per container (MB; PSS shares libraries out)"]
        head = f"{'supervisor':<34} {'found':>7} {'RSS med':>8} {'RSS max':>8} {'PSS med':>8}"
        lines += [head, "-" * len(head)]
        for r in mem:

            def mb(kb: float | None) -> str:
                return "-" if kb is None else f"{kb / 1024:.2f}"

            lines.append(
                f"{r['supervisor']:<34} {r['found']:>3}/{r['containers']:<3} "
                f"{mb(r['rss_kb_median']):>8} {mb(r['rss_kb_max']):>8} {mb(r['pss_kb_median']):>8}"
            )
    t = doc["targets"]
    lines += [
        "",
        "targets (issue 3):",
        f"  native create+start <= {LATENCY_TARGET:.0f}x raw runc (median):      "
        f"{ratio(t['latency_ratio'])}  {met(t['latency_met'])}",
        f"  native cold converge faster than docker-compose: "
        f"{ratio(t['converge_ratio'])}  {met(t['converge_met'])}",
        f"  native supervisor RSS <= 5 MB (max):             "
        f"{'-' if t['rss_max_kb'] is None else format(t['rss_max_kb'] / 1024, '.2f') + ' MB'}"
        f"  {met(t['rss_met'])}",
        "targets (issue 15; medians):",
    ]
    for label, key, limit in ISSUE15_TARGETS:
        r = t["issue15"].get(key)
        lines.append(
            f"  {label:<47} {ratio(r)}  {met(None if r is None else r <= limit)}  (<= {limit:.2f}x)"
        )
    seccomp_floor = t["issue15"].get("seccomp")
    if seccomp_floor:
        lines.append(
            "  the same against runc with the default seccomp filter (the isolation native "
            "gives): " + ", ".join(f"{k} {ratio(v)}" for k, v in seccomp_floor.items())
        )
    return "\n".join(lines)


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    lat = {r["variant"]: r for r in doc.get("latency") or []}
    conv = {r["tool"]: r for r in doc.get("converge") or []}
    mem = (doc.get("memory") or [{}])[0]
    lr = lat["native"]["median_ratio_to_runc"] if "native" in lat else None
    cr = conv["pyapply (native)"]["cold_ratio_to_compose"] if "pyapply (native)" in conv else None
    rss = mem.get("rss_kb_max")
    return {
        "latency_ratio": lr,
        "latency_met": None if lr is None else lr <= LATENCY_TARGET,
        "converge_ratio": cr,
        "converge_met": None if cr is None else cr < 1.0,
        "rss_max_kb": rss,
        "rss_met": None if rss is None else rss <= RSS_TARGET_KB,
        "issue15": issue15_ratios(lat, conv),
    }


# (label, key, limit): issue 15's speed targets, each a ratio to runc's floor or to compose
ISSUE15_TARGETS = (
    ("create+start, own netns / raw runc", "netns", 1.2),
    ("create+start + bridge / raw runc", "bridge", 1.6),
    ("20-service cold converge / docker-compose", "cold", 0.3),
    ("no-op re-apply / docker-compose", "noop", 0.15),
)


def issue15_ratios(lat: dict[str, Any], conv: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def med(key: str) -> float | None:
        return lat[key]["median_s"] if key in lat else None

    floor, sec = med("runc"), med("runc-seccomp")
    for key, variant in (("netns", "native"), ("bridge", "native-bridge")):
        m = med(variant)
        if m is not None and floor:
            out[key] = m / floor
        if m is not None and sec:
            out.setdefault("seccomp", {})[key] = m / sec
    na, dc = conv.get("pyapply (native)"), conv.get("docker-compose")
    if na and dc:
        out["cold"] = na["cold_median_s"] / dc["cold_median_s"]
        if na["noop_median_s"] is not None and dc["noop_median_s"]:
            out["noop"] = na["noop_median_s"] / dc["noop_median_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="timed containers per variant (10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed ones first (1)")
    p.add_argument(
        "--pause", type=float, default=0.5, help="seconds between two measurements (0.5)"
    )
    p.add_argument("--services", type=int, default=20, help="services in the stack (20)")
    p.add_argument("--converge-runs", type=int, default=3, help="converges per tool (3)")
    p.add_argument("--install", action="store_true", help="apt-get install podman if missing")
    p.add_argument("--skip-podman", action="store_true", help="no podman rows")
    p.add_argument("--skip-latency", action="store_true", help="no sections 1 and 3")
    p.add_argument("--skip-converge", action="store_true", help="no section 2")
    p.add_argument("--json", action="store_true", help="print machine-readable results")
    p.add_argument("--pyapply", default=None, help="pyapply executable (default: .venv's)")
    p.add_argument("--compose", default=None, help="docker-compose executable")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (debugging)")
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 200 or not 0 <= args.warmup <= 10 or not 0 <= args.pause <= 10:
        p.error("--runs must be in 1..200, --warmup in 0..10, --pause in 0..10")
    if not 1 <= args.services <= 200 or not 1 <= args.converge_runs <= 20:
        p.error("--services must be in 1..200 and --converge-runs in 1..20")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("ABORT: the native runtime, runc and netns need root")
        return 1
    bench = Bench(args)
    doc: dict[str, Any] = {
        "runs": args.runs,
        "services": args.services,
        "converge_runs": args.converge_runs,
    }
    load_start = load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        log(f"bench: {bench.tag}; temp dir {bench.tmp}")
        bench.setup_images()
        if not args.skip_latency:
            bench.setup_podman()
            doc["podman_status"] = bench.podman_status
            log(f"1. create+start latency ({args.runs} runs, {args.warmup} warm-up)")
            variants = bench.latency()
            doc["latency"] = latency_rows(variants)
            log("3. supervisor memory")
            doc["memory"] = bench.supervisors()
            bench.remove_latency_containers()
        if not args.skip_converge:
            log(f"2. cold converge, {args.services} services ({args.converge_runs} runs)")
            doc["converge"] = converge_rows(bench.converge())
            doc.update(bench.results)
        load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rc = 0
    except BenchError as exc:
        log(f"ABORT: {exc}")
        rc = 1
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    finally:
        with common.no_interrupt():
            bench.cleanup()
    if rc != 0:
        return rc
    podman_exe = shutil.which("podman")
    doc["host"] = {
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": load_end,
        "runc": first_line([RUNC, "--version"]),
        "conmon": first_line(["conmon", "--version"]),
        "docker": first_line(["docker", "version", "--format", "{{.Server.Version}}"]),
        "podman": first_line([podman_exe, "--version"]) if podman_exe else "podman: none",
        "compose": first_line(["docker-compose", "version", "--short"]),
    }
    doc["targets"] = targets(doc)
    print(json.dumps(doc, indent=2) if args.json else report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
