"""`pyapply image ...` and `pyapply system reset` on the native runtime, through the real
command line under a private PYAPPLY_ROOT.

Images come from the local registry (127.0.0.1:5000, filled by `make setup`) and from
`docker save` of the local test image. The leftover tests apply a stack with two services,
two networks (one internal), a published loopback port, a named volume and a healthcheck,
take it down (or reset the root, or reset it after losing its state files) and then look
in the kernel for anything of the root's: interfaces, overlay mounts, cgroups, firewall
rules, leases, processes, network namespaces.

Every test resets its root afterwards, pass or fail, and then removes by hand whatever the
reset left (and fails), so a broken reset never leaves kernel objects behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]

from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.helpers import http_get, new_stack_name

pytestmark = pytest.mark.e2e

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
BUSYBOX = "pyapply-test/busybox:latest"  # in dockerd (make setup)
TOOLS = ("runc", "conmon", "iptables", "iptables-save", "docker")
CGROUP_FS = Path("/sys/fs/cgroup")

STACK_YAML = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    db:
      image: IMAGE
      command: ["sh", "-c", "echo ready > /data/ready && exec httpd -f -p 5432 -h /data"]
      init: true
      stop_grace_period: 1s
      volumes: ["data:/data"]
      networks: [back]
      healthcheck:
        test: ["CMD", "wget", "-q", "-O-", "http://localhost:5432/ready"]
        interval: 1s
        timeout: 2s
        retries: 10
    web:
      image: IMAGE
      command: ["httpd", "-f", "-p", "80", "-h", "/www"]
      init: true
      stop_grace_period: 1s
      ports: ["127.0.0.1:${WEB_PORT}:80"]
      networks: [front, back]
      depends_on: {db: {condition: service_healthy}}
  networks:
    front: {}
    back: {internal: true}
  volumes:
    data: {}
"""

ONE_BOX_YAML = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    box:
      image: IMAGE
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env(msgspec.Struct):
    """One test's state root, stack name, port and the way to run pyapply on them."""

    root: Path
    work: Path
    stack: str
    port: int
    image: str
    networks: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    env: dict[str, str] = msgspec.field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str) -> str:
        out = self.run(*args)
        assert out.returncode == 0, (
            f"pyapply {shlex.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out.stdout

    def user_error(self, *args: str) -> str:
        """Run a command that must fail as a user error: exit 1, one line, no traceback."""
        out = self.run(*args)
        assert out.returncode == 1, (args, out.returncode, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
        return lines[0]

    def manifest(self, text: str) -> str:
        path = self.work / "stack.yaml"
        path.write_text(text.replace("IMAGE", self.image))
        return str(path)

    @property
    def tag(self) -> str:
        return NetworkManager(self.root).tag

    def bridges(self) -> set[str]:
        nm = NetworkManager(self.root)
        return {nm.bridge_name(n) for n in self.networks}

    def veths(self) -> set[str]:
        nm = NetworkManager(self.root)
        return {nm.veth_name(n, c) for n in self.networks for c in self.containers}


# ---------------------------------------------------------------------------------------------
# looking in the kernel


def _links() -> dict[str, str]:
    with IPRoute() as ipr:
        return {str(link.get("ifname")): str(link.get("ifalias") or "") for link in ipr.get_links()}


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(f"{root}/")]


def _cgroups(names: tuple[str, ...]) -> list[Path]:
    # /pyapply/<root tag>/<container>, in every hierarchy
    return [p for n in names for p in CGROUP_FS.glob(f"*/pyapply/*/{n}") if p.is_dir()]


def _rules(bridges: set[str]) -> list[str]:
    out = subprocess.run(
        ["iptables-save"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [line for line in out.splitlines() if any(f"pyapply:{b}" in line for b in bridges)]


def _leases(root: Path) -> list[str]:
    """Subnets and leases still held in the root's IPAM state."""
    try:
        doc = json.loads((root / "networks" / "ipam.json").read_text())
    except FileNotFoundError:
        return []
    out = []
    for name, alloc in (doc.get("networks") or {}).items():
        out.append(f"subnet {alloc.get('subnet')} of {name}")
        out += [f"lease {ip} of {c} on {name}" for c, ip in (alloc.get("leases") or {}).items()]
    return out


def _processes(root: Path) -> dict[int, str]:
    """Processes naming the root on their command line (conmon, the health checker) and
    the container processes in our cgroups."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == str(root).encode() or f"{root}/".encode() in a for a in argv):
            found[int(entry)] = b" ".join(argv).decode(errors="replace")[:200]
    return found


def _netns(tag: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(f"pyapply-{tag}-")]
    except FileNotFoundError:
        return []


def leftovers(env: Env, *, wait_s: float = 0.0) -> list[str]:
    """Everything of the root's still in the kernel, as readable lines. Processes get
    `wait_s` to go (the health checker exits by itself a few seconds after its last
    container)."""
    deadline = time.monotonic() + wait_s
    while _processes(env.root) and time.monotonic() < deadline:
        time.sleep(0.2)
    problems = [f"process {pid}: {cmd}" for pid, cmd in _processes(env.root).items()]
    ours = env.bridges() | env.veths()
    alias = f"pyapply:{env.tag}:"
    for ifname, ifalias in _links().items():
        if ifname in ours or ifalias.startswith(alias):
            problems.append(f"interface {ifname} ({ifalias})")
    problems += [f"mount {m}" for m in _mounts_under(env.root)]
    problems += [f"cgroup {p}" for p in _cgroups(env.containers)]
    problems += [f"firewall rule {r}" for r in _rules(env.bridges())]
    problems += _leases(env.root)
    problems += [f"netns {n}" for n in _netns(env.tag)]
    for pidfile in env.root.glob("containers/*/conmon.pid"):
        problems.append(f"conmon pid file {pidfile}")
    return problems


def scrub(env: Env) -> None:
    """Remove by hand what a failed reset left (only objects of this test's root)."""
    for n in env.containers:
        for cg in _cgroups((n,)):
            for procs in cg.rglob("cgroup.procs"):
                for text in procs.read_text().split():
                    _kill(int(text))
    for pid in _processes(env.root):
        _kill(pid)
    time.sleep(0.5)
    for m in sorted(_mounts_under(env.root), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], check=False, timeout=30)
    for n in _netns(env.tag):
        subprocess.run(["ip", "netns", "delete", n], check=False, timeout=30)
    ours = env.bridges() | env.veths()
    alias = f"pyapply:{env.tag}:"
    for ifname, ifalias in _links().items():
        if ifname in ours or ifalias.startswith(alias):
            subprocess.run(["ip", "link", "delete", ifname], check=False, timeout=30)
    for table in ("filter", "nat", "mangle"):
        out = subprocess.run(
            ["iptables-save", "-t", table], capture_output=True, text=True, timeout=60
        ).stdout
        for line in out.splitlines():
            if line.startswith("-A ") and any(f"pyapply:{b}" in line for b in env.bridges()):
                args = shlex.split(line)
                subprocess.run(
                    ["iptables", "-w", "-t", table, "-D", *args[1:]], check=False, timeout=60
                )
    for cg in _cgroups(env.containers):
        with contextlib.suppress(OSError):
            cg.rmdir()


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def env(registry: str, tmp_path: Path) -> Iterator[Env]:
    """A private state root and stack; afterwards `system reset --force`, checked, and a
    scrub by hand (and a failure) if the reset left anything."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing; run `make setup`", pytrace=False)
    root = (tmp_path / "root").resolve()
    work = tmp_path / "work"
    work.mkdir()
    stack = new_stack_name()
    port = free_port()
    e = Env(
        root=root,
        work=work,
        stack=stack,
        port=port,
        image=f"{registry}/{BUSYBOX}",
        env={
            **os.environ,
            "STACK": stack,
            "WEB_PORT": str(port),
            "PYAPPLY_ROOT": str(root),
            "PYAPPLY_RUNTIME": "native",
        },
    )
    yield e
    out = e.run("system", "reset", "--force")
    left = leftovers(e, wait_s=5)
    if left:
        scrub(e)
    shutil.rmtree(root, ignore_errors=True)
    if out.returncode != 0 or left:
        pytest.fail(
            f"cleanup: system reset -> {out.returncode}\n{out.stderr}\nleft behind:\n"
            + "\n".join(left),
            pytrace=False,
        )


def _docker_save(dest: Path) -> Path:
    subprocess.run(["docker", "save", "-o", str(dest), BUSYBOX], check=True, timeout=120)
    return dest


def _rootfs_tarball(dest: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return dest


def _images(env: Env) -> dict[str, dict[str, object]]:
    """`image ls -o json`, by reference."""
    rows = json.loads(env.ok("image", "ls", "-o", "json"))
    return {ref: row for row in rows for ref in row["refs"]}


# ---------------------------------------------------------------------------------------------
# images


def test_pull_ls_and_user_errors(env: Env) -> None:
    out = env.ok("image", "pull", env.image)
    assert f"pulled {env.image}" in out, out
    assert "unpacked" in out or "already" in out, out  # per-layer lines off a terminal

    images = _images(env)
    assert set(images) == {env.image}
    row = images[env.image]
    assert str(row["id"]).startswith("sha256:") and int(str(row["size"])) > 0
    assert row["in_use"] is False and row["containers"] == []
    table = env.ok("image", "ls")
    assert f"{env.image.rsplit(':', 1)[0]}  latest" in table and " no" in table, table

    again = env.ok("image", "pull", env.image)  # nothing new to fetch
    assert "already" in again, again

    assert "unreachable" in env.user_error("image", "pull", f"127.0.0.1:{free_port()}/x/y:1")
    assert "invalid image reference" in env.user_error("image", "pull", "Not A Ref!")
    assert "not found" in env.user_error("image", "pull", f"{env.image.rsplit(':', 1)[0]}:nope")
    assert "no such image" in env.user_error("image", "rm", "never/pulled:1")
    assert "docker image" in env.user_error("image", "ls", "--runtime", "docker")


def test_import_docker_save_and_rootfs_tarball(env: Env) -> None:
    archive = _docker_save(env.work / "busybox.tar")
    out = env.ok("image", "import", str(archive))
    assert "imported docker.io/pyapply-test/busybox:latest" in out, out
    docker_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", BUSYBOX],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    assert _images(env)["docker.io/pyapply-test/busybox:latest"]["id"] == docker_id

    tarball = _rootfs_tarball(env.work / "rootfs.tar.gz", {"etc/motd": b"hello\n"})
    assert "give it a reference" in env.user_error("image", "import", str(tarball))
    out = env.ok("image", "import", str(tarball), "--ref", "local/rootfs:1")
    assert "imported docker.io/local/rootfs:1" in out, out
    images = _images(env)
    assert set(images) == {"docker.io/pyapply-test/busybox:latest", "docker.io/local/rootfs:1"}

    assert "no such file" in env.user_error("image", "import", str(env.work / "missing.tar"))
    junk = env.work / "junk.tar"
    junk.write_bytes(b"not a tar archive at all")
    assert "not a tar archive" in env.user_error("image", "import", str(junk))


def test_rm_refused_while_in_use_and_prune_removes_unused_only(env: Env) -> None:
    env.containers = (f"{env.stack}-box-1",)
    env.networks = (f"{env.stack}_default",)
    unused = _rootfs_tarball(env.work / "unused.tar.gz", {"only-here": b"1"})
    gone = _rootfs_tarball(env.work / "gone.tar.gz", {"only-there": b"2"})
    env.ok("image", "import", str(unused), "--ref", "local/unused:1")
    env.ok("image", "import", str(gone), "--ref", "local/gone:1")
    manifest = env.manifest(ONE_BOX_YAML)
    env.ok("-f", manifest)  # pulls the image, creates and starts the container
    box = env.containers[0]

    row = _images(env)[env.image]
    assert row["in_use"] is True and row["containers"] == [box], row
    line = env.user_error("image", "rm", env.image)
    assert "in use" in line and box in line, line

    NativeRuntime(env.root).stop_container(box, 1.0)  # any state counts, exited too
    line = env.user_error("image", "rm", str(row["id"])[7:19])
    assert "in use" in line and box in line, line

    # a second name of the image in use (the same image, from `docker save`) may go: the
    # image stays under its first name
    archive = _docker_save(env.work / "busybox.tar")
    env.ok("image", "import", str(archive), "--ref", "local/bb:1")
    assert _images(env)["docker.io/local/bb:1"]["id"] == row["id"]
    out = env.ok("image", "rm", "local/bb:1")
    assert "untagged: docker.io/local/bb:1" in out and "deleted" not in out, out

    out = env.ok("image", "rm", "local/gone:1")
    assert "untagged: docker.io/local/gone:1" in out and "deleted: sha256:" in out, out

    out = env.ok("image", "prune")
    assert "local/unused:1" in out and "1 image removed" in out, out
    assert set(_images(env)) == {env.image}
    assert "nothing to prune" in env.ok("image", "prune")

    env.ok("down", "-f", manifest)
    out = env.ok("image", "rm", env.image)
    assert f"untagged: {env.image}" in out and "deleted: sha256:" in out, out
    assert _images(env) == {}
    assert "nothing to prune" in env.ok("image", "prune")
    layers = env.root / "images" / "layers"
    assert not layers.exists() or list(layers.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# leftovers


def _apply_stack(env: Env) -> str:
    env.containers = (f"{env.stack}-db-1", f"{env.stack}-web-1")
    env.networks = (f"{env.stack}_front", f"{env.stack}_back")
    manifest = env.manifest(STACK_YAML)
    env.ok("-f", manifest)
    status, body = http_get(f"http://127.0.0.1:{env.port}/")
    assert status == 200, (status, body)
    # what the leftover checks look for is really there while the stack runs
    links = _links()
    assert env.bridges() <= set(links) and env.veths() & set(links), links
    assert len(_mounts_under(env.root)) == 2
    assert {p.name for p in _cgroups(env.containers)} == set(env.containers)
    assert _rules(env.bridges()) and _netns(env.tag)
    assert any(line.startswith("lease ") for line in _leases(env.root))
    assert any("conmon" in cmd for cmd in _processes(env.root).values())
    return manifest


def test_down_then_reset_leave_nothing_behind(env: Env) -> None:
    manifest = _apply_stack(env)
    env.ok("down", "-f", manifest, "--volumes")
    assert leftovers(env, wait_s=15) == []
    assert not (env.root / "volumes" / f"{env.stack}_data").exists()

    _apply_stack(env)
    line = env.user_error("system", "reset")  # stdin is not a terminal
    assert "--force" in line, line
    assert len(_mounts_under(env.root)) == 2, "a refused reset removed something"

    out = env.ok("system", "reset", "--force")
    for c in env.containers:
        assert f"removed container {c}" in out, out
    for n in env.networks:
        assert f"removed network {n}" in out, out
    assert f"removed volume {env.stack}_data" in out, out
    assert f"removed image {env.image}" in out, out
    assert leftovers(env) == []
    assert list(env.root.iterdir()) == []

    again = env.ok("system", "reset", "--force")  # idempotent
    assert "no containers, networks, volumes or images" in again, again
    assert list(env.root.iterdir()) == []

    (env.root / "notes.txt").write_text("not pyapply's\n")  # a root shared with other files
    out = env.ok("system", "reset", "--force")
    assert "(not made by pyapply): notes.txt" in out, out
    assert [p.name for p in env.root.iterdir()] == ["notes.txt"]


def test_reset_after_losing_the_state_leaves_nothing_behind(env: Env) -> None:
    _apply_stack(env)
    # a half-broken root: the network state and a container's record gone
    (env.root / "networks" / "networks.json").unlink()
    (env.root / "networks" / "ipam.json").unlink()
    (env.root / "containers" / env.containers[0] / "state.json").unlink()
    # ... and another container's runc state too
    rt = NativeRuntime(env.root)
    web = rt.get_container(env.containers[1])
    assert web is not None
    shutil.rmtree(env.root / "runc" / web.id)

    out = env.ok("system", "reset", "--force")
    assert leftovers(env) == [], out
    assert list(env.root.iterdir()) == []
