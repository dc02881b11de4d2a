"""The swarm test harness: a swarm on the main dockerd, and a second dockerd in its own network
namespace that joins it as a worker.

Layout, all of it made and removed here (names carry a random test prefix):

    host netns                               netns <prefix>-ns
    main dockerd (manager)                   second dockerd (worker), own hostname (UTS ns),
      advertises 10.254.14.1  <-- veth /30 -->  10.254.14.2, own data/exec root, socket, pidfile,
                                                iptables off, no default bridge

The manager advertises the veth's host-side address (not 127.0.0.1): a worker reaches the
manager, and both nodes reach each other's gossip (7946) and VXLAN (4789) ports, at the
addresses they advertise, and 127.0.0.1 means the worker itself inside its namespace.

The swarm's image path is the local registry at 127.0.0.1:5000, which listens on the host's
loopback only. Inside the namespace, 127.0.0.1:5000 is forwarded to it by `NetnsForwarder`
(a listening socket made in the namespace, connections relayed from the host), so a service
pinned to `127.0.0.1:5000/...@sha256:...` pulls on both nodes.

Clean-up leaves the main dockerd's swarm as it was: it leaves the swarm only if `SwarmHost`
initialised it, and removes docker_gwbridge only if that did not exist before.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import msgspec

from tests.streams import STREAM_ENV

REGISTRY = "127.0.0.1:5000"
TEST_REPO = f"{REGISTRY}/pyapply-test/busybox"
TEST_REF = f"{TEST_REPO}:latest"
# A /30 of our own: nothing else on this machine routes 10.254.14.0/30 (docker's bridge pools
# are 172.17-31/16 and 192.168/20; the swarm's overlay pool counts up from 10.0.0.0/24).
HOST_ADDR = "10.254.14.1"
PEER_ADDR = "10.254.14.2"
PREFIX_LEN = 30
_CLONE_NEWNET = 0x40000000
# Present while the main dockerd is in a swarm that these tests initialised (for `clean`).
MARKER = Path("/run/pyapply-test-swarm-initialised")


def new_prefix() -> str:
    """A random prefix for every object of one test run ("pyasw" + 6 hex digits)."""
    return "pyasw" + uuid.uuid4().hex[:6]


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def docker(*argv: str, host: str | None = None, check: bool = True) -> str:
    """The docker CLI on the main dockerd (or `host`); stdout, stripped."""
    prefix = ["docker", "-H", host] if host else ["docker"]
    return run(*prefix, *argv, check=check).stdout.strip()


def pinned_test_image() -> str:
    """The test image by digest in the local registry ("127.0.0.1:5000/...@sha256:..."),
    pushed there first if the registry lacks it."""
    digest = _registry_digest()
    if digest is None:
        docker("tag", "pyapply-test/busybox:latest", TEST_REF)
        docker("push", TEST_REF)
        digest = _registry_digest()
    assert digest, f"the registry at {REGISTRY} has no {TEST_REF}"
    return f"{TEST_REPO}@{digest}"


def _registry_digest() -> str | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://{REGISTRY}/v2/pyapply-test/busybox/manifests/latest",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError:
        return None


# ---------------------------------------------------------------------------------------------
# The network namespace and its veth


class HostLink(msgspec.Struct):
    """A network namespace joined to the host by a veth pair on a private /30."""

    prefix: str
    netns: str = ""
    host_if: str = ""
    peer_if: str = ""
    made: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        self.netns = f"{self.prefix}-ns"
        self.host_if = f"{self.prefix}h"
        self.peer_if = f"{self.prefix}p"

    def create(self) -> None:
        taken = run("ip", "-4", "-o", "addr", "show").stdout
        if f" {HOST_ADDR}/" in taken:
            raise AssertionError(
                f"{HOST_ADDR} is already on an interface here (a left-over of an interrupted "
                f"run? `ip -4 -o addr | grep {HOST_ADDR}`):\n{taken}"
            )
        run("ip", "netns", "add", self.netns)
        self.made.append("netns")
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        self.made.append("veth")
        run("ip", "link", "set", self.peer_if, "netns", self.netns)
        run("ip", "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.netns)
        run(*inside, "ip", "addr", "add", f"{PEER_ADDR}/{PREFIX_LEN}", "dev", self.peer_if)
        run(*inside, "ip", "link", "set", self.peer_if, "up")
        run(*inside, "ip", "link", "set", "lo", "up")

    def remove(self) -> None:
        if "veth" in self.made:
            run("ip", "link", "del", self.host_if, check=False)
        if "netns" in self.made:
            run("ip", "netns", "del", self.netns, check=False)
        self.made.clear()


class NetnsForwarder:
    """Relays TCP connections made to `listen` inside a network namespace to `target` on the
    host (both loopback addresses). Threads; stopped by `close`."""

    def __init__(self, netns: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self._closed = threading.Event()
        self._listener = _socket_in_netns(netns, listen)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                inner, _ = self._listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(self.target, timeout=10)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            with self._lock:
                self._conns += [inner, outer]
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self._thread.join(timeout=5)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _socket_in_netns(netns: str, addr: tuple[str, int]) -> socket.socket:
    """A listening TCP socket in network namespace `netns` (a socket stays in the namespace it
    was made in; the namespace is switched for one short-lived thread only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{netns}") as there:
                if libc.setns(there.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(addr)
                    sock.listen(16)
                    result.append(sock)
                finally:
                    if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns back to the host")
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join(timeout=10)
    if not result:
        raise AssertionError(f"could not make a socket in netns {netns}")
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


# ---------------------------------------------------------------------------------------------
# The swarm on the main dockerd


def swarm_info(host: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(docker("info", "--format", "{{json .Swarm}}", host=host))
    return info


class SwarmHost(msgspec.Struct):
    """The main dockerd as a swarm manager: initialised here (advertising `advertise`) when it
    is not in a swarm, used as it is when it is a manager already."""

    advertise: str
    initialised: bool = False
    had_gwbridge: bool = True
    node_addr: str = ""

    def start(self) -> None:
        stream = os.environ.get(STREAM_ENV)
        if stream not in (None, "dockerd"):
            # one swarm per host, the host dockerd's: its tests must not overlap
            raise AssertionError(
                f"a swarm test ran in the {stream!r} stream of tests/streams.py, beside "
                "the dockerd stream's swarm tests: mark it dockerd (tests/conftest.py)"
            )
        info = swarm_info()
        state = info.get("LocalNodeState")
        if state == "active":
            if not info.get("ControlAvailable"):
                raise AssertionError("the main dockerd is a swarm worker, not a manager")
            self.node_addr = str(info.get("NodeAddr") or "")
            return
        if state != "inactive":
            raise AssertionError(f"the main dockerd's swarm state is {state!r}")
        self.had_gwbridge = bool(
            docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$")
        )
        docker(
            "swarm",
            "init",
            "--advertise-addr",
            self.advertise,
            "--listen-addr",
            f"{self.advertise}:2377",
            # a stopped node is reported down after a few missed heartbeats (default 5 s)
            "--dispatcher-heartbeat",
            "2s",
        )
        self.initialised = True
        self.node_addr = self.advertise
        MARKER.write_text(json.dumps({"pid": os.getpid(), "had_gwbridge": self.had_gwbridge}))

    def stop(self) -> None:
        if not self.initialised:
            return
        docker("swarm", "leave", "--force", check=False)
        if not self.had_gwbridge:
            # The swarm's gateway bridge outlives the swarm; the ingress sandbox (and the
            # containers of tasks still stopping) let go of it a moment after leaving.
            for _ in range(60):
                if not docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$"):
                    break
                if run("docker", "network", "rm", "docker_gwbridge", check=False).returncode == 0:
                    break
                time.sleep(0.5)
        self.initialised = False
        MARKER.unlink(missing_ok=True)

    def worker_token(self) -> str:
        return docker("swarm", "join-token", "-q", "worker")


# ---------------------------------------------------------------------------------------------
# The second dockerd


class SecondDaemon(msgspec.Struct):
    """A dockerd in the namespace of `link`, with its own roots, socket, pidfile and hostname."""

    link: HostLink
    hostname: str
    root: Path = msgspec.field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="pyasw-dockerd-"))
    )
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def socket(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def start(self, timeout_s: float = 30) -> float:
        """Start it; returns the seconds until it answered."""
        os.chmod(self.root, 0o700)
        log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 -- the daemon keeps it
        argv = [
            # nsenter, not `ip netns exec`: that remounts /sys for the namespace, which hides
            # the cgroup mounts dockerd needs ("Devices cgroup isn't mounted")
            "nsenter", f"--net=/run/netns/{self.link.netns}",
            "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname,
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "--host", self.socket,
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ]  # fmt: skip
        start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        while time.monotonic() - start < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"the second dockerd exited:\n{self.log_tail()}")
            if run("docker", "-H", self.socket, "version", check=False, timeout=10).returncode == 0:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(
            f"the second dockerd did not answer in {timeout_s}s\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        with suppress(OSError):
            return "\n".join((self.root / "dockerd.log").read_text().splitlines()[-lines:])
        return ""

    def join(self, token: str, manager_addr: str) -> float:
        start = time.monotonic()
        result = run(
            "docker", "-H", self.socket, "swarm", "join",
            "--token", token,
            "--advertise-addr", PEER_ADDR,
            "--listen-addr", f"{PEER_ADDR}:2377",
            f"{manager_addr}:2377",
            check=False, timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(
                f"the second dockerd could not join the swarm: {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )
        self.node_id = str(swarm_info(self.socket).get("NodeID") or "")
        return time.monotonic() - start

    def stop_daemon(self, timeout_s: float = 20) -> None:
        """Stop the dockerd (SIGTERM, then SIGKILL), by the pid we started."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            run("docker", "-H", self.socket, "swarm", "leave", "--force", check=False)
        self.stop_daemon()
        if self.node_id:
            docker("node", "rm", "--force", self.node_id, check=False)
        _unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    """Unmount whatever the stopped daemon left mounted under `root` (deepest first)."""
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        run("umount", "-l", point, check=False)


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll `predicate` until it returns something true (returned), bounded by `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def remove_prefixed(prefix: str) -> list[str]:
    """Remove every swarm service, config, secret and network whose name starts with
    `prefix`, services first; returns what was removed."""
    removed = []
    for kind in ("service", "config", "secret"):
        names = docker(kind, "ls", "--format", "{{.Name}}", check=False).split()
        for name in names:
            if name.startswith(prefix):
                docker(kind, "rm", name, check=False)
                removed.append(f"{kind} {name}")
    names = docker("network", "ls", "--format", "{{.Name}}", check=False).split()
    for name in names:
        if name.startswith(prefix):
            for _ in range(20):  # tasks leave a network a moment after their service
                if run("docker", "network", "rm", name, check=False).returncode == 0:
                    break
                time.sleep(0.5)
            removed.append(f"network {name}")
    return removed


def swarm_objects(prefix: str) -> dict[str, list[str]]:
    """The names of the main dockerd's swarm objects by kind (swarm-scoped networks only:
    other tests on this dockerd make local ones meanwhile), and its volumes named `prefix`*."""
    out = {
        k: sorted(docker(k, "ls", "--format", "{{.Name}}", *filters).split())
        for k, filters in (
            ("service", ()),
            ("config", ()),
            ("secret", ()),
            ("network", ("--filter", "scope=swarm")),
        )
    }
    out["volume"] = sorted(
        n for n in docker("volume", "ls", "--format", "{{.Name}}").split() if n.startswith(prefix)
    )
    return out


@contextmanager
def single_node_swarm(prefix: str) -> Iterator[None]:
    """The main dockerd as a single-node swarm manager for the block (initialised and left
    here unless it was one already); what the block made with `prefix` is removed after it,
    and the block must leave no other object behind (asserted)."""
    link = HostLink(prefix)
    swarm = SwarmHost(HOST_ADDR)
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    try:
        link.create()
        swarm.start()
        before = swarm_objects(prefix)
        pinned_test_image()  # the image in the local registry: what a swarm pulls from
        yield
        after = swarm_objects(prefix)
    finally:
        remove_prefixed(prefix)
        for name in docker("volume", "ls", "-q", check=False).split():
            if name.startswith(prefix):
                docker("volume", "rm", "-f", name, check=False)
        swarm.stop()
        link.remove()
    assert after == before, f"left behind: {after} (before: {before})"


def clean_leftovers() -> list[str]:
    """Remove what an interrupted run left (run by hand: `python -m tests.e2e.swarm`):
    second dockerds (by the pid in their pidfile, when that process is a dockerd of that
    root), their directories, pyasw* veths and namespaces, pyasw* swarm objects, and the
    swarm itself when the tests had initialised it (the marker file)."""
    done = []
    for root in Path(tempfile.gettempdir()).glob("pyasw-dockerd-*"):
        with suppress(OSError, ValueError):
            pid = int((root / "dockerd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"dockerd" in cmdline and str(root).encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                for _ in range(40):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.5)
                done.append(f"dockerd {pid}")
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        done.append(f"dir {root}")
    if swarm_info().get("ControlAvailable"):
        done += remove_prefixed("pyasw")
        # check=False: the swarm may be left by a run that ends while this one looks
        for node in docker(
            "node", "ls", "--format", "{{.ID}} {{.Hostname}}", check=False
        ).splitlines():
            node_id, _, hostname = node.partition(" ")
            if hostname.startswith("pyasw"):
                docker("node", "rm", "--force", node_id, check=False)
                done.append(f"node {hostname}")
    for line in run("ip", "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("pyasw") and name.endswith("h"):
            run("ip", "link", "del", name, check=False)
            done.append(f"veth {name}")
    for line in run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("pyasw") and name.endswith("-ns"):
            run("ip", "netns", "del", name, check=False)
            done.append(f"netns {name}")
    if MARKER.exists():
        had = json.loads(MARKER.read_text()).get("had_gwbridge", True)
        swarm = SwarmHost(HOST_ADDR, initialised=True, had_gwbridge=bool(had))
        swarm.stop()
        done.append("swarm (initialised by the tests)")
    return done


if __name__ == "__main__":
    for item in clean_leftovers():
        print("removed", item)
