"""End-to-end tests of what a container may reach on the host: the host's loopback services
(CVE-2020-8558) and, on native, the containers of the other runtime (docker).

The attacker is a real container with the default capabilities (CAP_NET_RAW among them)
running `rawsend` (tests/e2e/probes/rawsend.c, built here with `gcc -static` and
bind-mounted in): it writes Ethernet frames by hand to the gateway's MAC, addressed to
127.0.0.1, exactly as the attack goes. Every check has a positive control, so that a probe
that cannot get anything through does not pass for isolation.

Traffic goes only to loopback, to the host's addresses on bridges this test made and to
containers this test made; the between-runtimes test runs in a network namespace of its
own with a private dockerd (see that test for why).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS, netns  # type: ignore[import-untyped]

from pyapply.runtime.native import firewall
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.dockerd import PrivateDockerd
from tests.e2e.helpers import TEST_IMAGE, http_get, new_stack_name
from tests.e2e.runtimes import RuntimeUnderTest, free_port, import_test_image

PROBE_SOURCE = Path(__file__).parent / "probes" / "rawsend.c"
MARKER = "isolation-marker"


@pytest.fixture(scope="module")
def rawsend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The probe, built static (the busybox image has no libc to link against)."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the raw-packet probe", pytrace=False)
    out = tmp_path_factory.mktemp("probe") / "rawsend"
    proc = subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(PROBE_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out.chmod(0o755)
    return out


def gateway_of(subnet: str) -> str:
    return str(next(IPv4Network(subnet).hosts()))


def mac_of_address(address: str) -> str:
    """The MAC of the host interface holding `address` (the bridge a network's gateway is)."""
    with IPRoute() as ipr:
        found = ipr.get_addr(family=socket.AF_INET, address=address)
        assert found, f"no host interface has {address}"
        link = ipr.get_links(found[0]["index"])[0]
        return str(link.get("address"))


class Listener:
    """A TCP and a UDP socket bound to `address` on one fresh port each, non-blocking."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp.bind((address, 0))
        self.tcp.listen(8)
        self.udp.bind((address, 0))
        for s in (self.tcp, self.udp):
            s.setblocking(False)
        self.tcp_port = int(self.tcp.getsockname()[1])
        self.udp_port = int(self.udp.getsockname()[1])

    def datagrams(self, wait: float = 0.0) -> list[bytes]:
        got = []
        if wait:
            select.select([self.udp], [], [], wait)
        while True:
            try:
                got.append(self.udp.recv(2048))
            except BlockingIOError:
                return got

    def connections(self, wait: float = 0.0) -> int:
        n = 0
        if wait:
            select.select([self.tcp], [], [], wait)
        while True:
            try:
                conn, _ = self.tcp.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()


@contextlib.contextmanager
def listening(address: str) -> Iterator[Listener]:
    listener = Listener(address)
    try:
        yield listener
    finally:
        listener.close()


def send(runtime: RuntimeUnderTest, container: str, *args: str) -> str:
    code, out = runtime.exec(container, "/rawsend", "eth0", *args)
    assert code == 0, f"rawsend {shlex.join(args)} in {container}: exit {code}: {out}"
    return out.strip()


def fetch(runtime: RuntimeUnderTest, container: str, url: str, seconds: int) -> tuple[int, str]:
    """busybox wget from a container, killed after `seconds` (this busybox's `wget -T`
    crashes)."""
    return runtime.exec(container, "timeout", "-s", "KILL", str(seconds), "wget", "-q", "-O-", url)


LOOPBACK_STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    web:
      image: {image}
      command: ["sh", "-c", "mkdir -p /w && echo {marker} > /w/index.html && exec httpd -f -p 80 -h /w"]
      init: true
      stop_grace_period: 1s
      ports: ["127.0.0.1:{local_port}:80", "{any_port}:80"]
      networks: [front]
    attacker:
      image: {image}
      command: ["sleep", "600"]
      init: true
      stop_grace_period: 1s
      volumes: ["{probe}:/rawsend:ro"]
      networks: [front]
    inside:
      image: {image}
      command: ["sleep", "600"]
      init: true
      stop_grace_period: 1s
      volumes: ["{probe}:/rawsend:ro"]
      networks: [back]
  networks:
    front: {{}}
    back: {{internal: true}}
"""


def test_raw_packets_from_containers_never_reach_host_loopback(
    runtime: RuntimeUnderTest, tmp_path: Path, rawsend: Path
) -> None:
    """A container with CAP_NET_RAW, on a plain and on an internal network, sends UDP and a
    TCP SYN to 127.0.0.1 through the gateway's MAC: the host's listeners on 127.0.0.1 get
    nothing, and a port published on 127.0.0.1 only does not answer either. Controls: the
    same frames to the gateway's own address arrive (the probe works); on native, with the
    network's guard rules deleted, the attacks get through (the guards are what stop them).
    Published ports still answer, on 127.0.0.1 from the host and on the host's address
    from a container (hairpin)."""
    local_port, any_port = free_port(), free_port()
    manifest = tmp_path / "stack" / "stack.yaml"
    manifest.parent.mkdir()
    manifest.write_text(
        LOOPBACK_STACK.format(
            stack=runtime.stack,
            image=TEST_IMAGE,
            marker=MARKER,
            local_port=local_port,
            any_port=any_port,
            probe=rawsend,
        )
    )
    cli = runtime.cli()
    s = runtime.stack
    rows: list[str] = []
    try:
        cli.ok("-f", str(manifest))
        networks = {
            "front": (f"{s}-attacker-1", runtime.observe.network(f"{s}_front")),
            "back (internal)": (f"{s}-inside-1", runtime.observe.network(f"{s}_back")),
        }
        # published ports: from the host on 127.0.0.1, from a container by hairpin
        assert http_get(f"http://127.0.0.1:{local_port}/")[1].strip() == MARKER
        gw_front = gateway_of(str(networks["front"][1].subnet))  # type: ignore[union-attr]
        code, out = fetch(runtime, f"{s}-attacker-1", f"http://{gw_front}:{any_port}/", 5)
        assert code == 0 and out.strip() == MARKER, (code, out)
        rows.append(f"{runtime.name}: published port on 127.0.0.1 from the host: reached")
        rows.append(f"{runtime.name}: published port from a container (hairpin): reached")

        with listening("127.0.0.1") as loop:
            for label, (container, net) in networks.items():
                assert net is not None and net.subnet, f"network {label}: {net}"
                gw = gateway_of(net.subnet)
                mac = mac_of_address(gw)
                # as an attacker would, first make the host learn the container's MAC: its
                # SYN-ACK from 127.0.0.1 cannot ARP for it (the container ignores an ARP
                # request from a loopback address)
                code, out = runtime.exec(container, "ping", "-c1", "-W2", gw)
                assert code == 0, f"{label}: the gateway does not answer: {out}"
                # the attacks
                udp = send(runtime, container, mac, "127.0.0.1", "udp", str(loop.udp_port))
                assert udp == "sent"
                tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(loop.tcp_port))
                assert tcp == "nosynack", f"{label}: the host answered a SYN to 127.0.0.1"
                tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(local_port))
                assert tcp == "nosynack", f"{label}: a 127.0.0.1-only published port answered"
                rows.append(f"{runtime.name} {label}: raw udp+tcp to 127.0.0.1 host: blocked")
                rows.append(f"{runtime.name} {label}: raw tcp to 127.0.0.1 published: blocked")
                # control: the probe's frames do reach the host, at the gateway's address
                with listening(gw) as ctl:
                    send(runtime, container, mac, gw, "udp", str(ctl.udp_port))
                    assert ctl.datagrams(wait=3) == [b"rawsend"], f"{label}: control UDP lost"
                    tcp = send(runtime, container, mac, gw, "tcp", str(ctl.tcp_port))
                    assert tcp == "synack", f"{label}: control SYN not answered"
                rows.append(f"{runtime.name} {label}: raw udp+tcp to the gateway: reached")
            # the TCP probes waited 1.5 s each for an answer; anything sent is in by now
            assert loop.datagrams(wait=0.5) == [], "a datagram reached 127.0.0.1"
            assert loop.connections() == 0, "a connection reached 127.0.0.1"

            if runtime.name == "native":
                # control: without the guards the attacks work (route_localnet is on)
                nm = NetworkManager(runtime.root)
                for label, (container, net) in networks.items():
                    assert net is not None and net.subnet
                    bridge = nm.bridge_name(net.name)
                    want = len(firewall.guard_rules(bridge, net.internal))
                    assert _delete_guards(bridge) == want, f"{label}: guard rules of {bridge}"
                    mac = mac_of_address(gateway_of(net.subnet))
                    send(runtime, container, mac, "127.0.0.1", "udp", str(loop.udp_port))
                    assert loop.datagrams(wait=3) == [b"rawsend"], f"{label}: control lost"
                    tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(loop.tcp_port))
                    assert tcp == "synack", f"{label}: unguarded SYN not answered"
                    assert loop.connections(wait=3) == 1, f"{label}: no unguarded connection"
                    rows.append(f"native {label}, guards deleted: raw to 127.0.0.1 host: reached")
                    if not net.internal:  # (an internal network's filter drop still holds)
                        tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(local_port))
                        assert tcp == "synack", f"{label}: unguarded published port silent"
                        rows.append(
                            f"native {label}, guards deleted: raw to 127.0.0.1 published: reached"
                        )
    finally:
        cli.run("down", "-f", str(manifest))
        print("\n" + "\n".join(rows))


def _delete_guards(bridge: str) -> int:
    """Delete the network's rules in our mangle chains (the test's own network)."""
    fw = firewall.Firewall()
    n = 0
    for chain in (firewall.INPUT_CHAIN, firewall.ISOLATION_CHAIN):
        for args in fw.listed("mangle", chain):
            if f"{firewall.COMMENT_PREFIX}{bridge}" in args:
                subprocess.run(
                    ["iptables", "-w", "-t", "mangle", "-D", chain, *args], check=True, timeout=60
                )
                n += 1
    return n


# -- between runtimes ---------------------------------------------------------------------


def in_netns(netns_name: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns_name}", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env},
    )


def serve(marker: str) -> str:
    """A container command: the marker over HTTP on port 81 (to be published) and on port 80
    (not published)."""
    return (
        f"mkdir -p /w && echo {marker} > /w/index.html && httpd -p 81 -h /w "
        "&& exec httpd -f -p 80 -h /w"
    )


NATIVE_STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    web:
      image: {image}
      command: ["sh", "-c", "{command}"]
      init: true
      stop_grace_period: 1s
      ports: ["{port}:81"]
      networks: [net]
    sealed:
      image: {image}
      command: ["sleep", "600"]
      init: true
      stop_grace_period: 1s
      networks: [inner]
  networks: {{net: {{}}, inner: {{internal: true}}}}
"""

DOCKER_PORT, NATIVE_PORT = 18081, 18090  # inside the test's own network namespace


def test_native_and_docker_are_isolated_both_ways_across_a_dockerd_restart(
    busybox_archive: Path,
) -> None:
    """Native containers cannot reach docker containers' unpublished ports (on docker0 and on
    a user network), nor they ours, before and after dockerd restarts; both reach the
    other's published ports through a host address (the control), except from an internal
    network. `system reset` takes our rules away and leaves docker's.

    Why a private dockerd in a network namespace of the test's: a restart must be real to
    show that our rules survive it (dockerd deletes and re-creates its chains and puts its
    jumps back at the head of FORWARD), and restarting the shared dockerd would disturb every
    other test; a second dockerd with --iptables=true in the host's namespace would flush
    the shared DOCKER chains too. In a namespace of its own, it and the native runtime (run
    there through the real CLI) have a firewall, bridges and a docker0 that are the test's
    alone, and all of it goes with the namespace."""
    stack = new_stack_name()
    ns = f"patd{uuid.uuid4().hex[:8]}"
    base = Path(tempfile.mkdtemp(prefix="patd", dir="/tmp"))  # short: socket paths
    root = base / "root"
    root.mkdir()
    import_test_image(root, busybox_archive, TEST_IMAGE)
    manifest = base / "stack.yaml"
    manifest.write_text(
        NATIVE_STACK.format(
            stack=stack, image=TEST_IMAGE, command=serve("native"), port=NATIVE_PORT
        )
    )
    env = {"PYAPPLY_ROOT": str(root), "PYAPPLY_RUNTIME": "native"}
    pyapply = str(Path(sys.executable).parent / "pyapply")
    netns.create(ns)
    dockerd = PrivateDockerd(base, ns)
    rt = NativeRuntime(root)
    reset_done = False
    try:
        with NetNS(ns) as nsr:
            nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        dockerd.start()
        dockerd.docker("load", "-i", str(busybox_archive))
        dockerd.docker("network", "create", "usernet")
        for name, network in (("d0", "bridge"), ("d1", "usernet")):
            dockerd.docker(
                "run", "-d", "--name", name, "--network", network, "--restart", "always",
                "--init", "--stop-timeout", "1", "-p", f"{DOCKER_PORT + (name == 'd1')}:81",
                TEST_IMAGE, "sh", "-c", serve(f"docker-{name}"),
            )  # fmt: skip
        applied = in_netns(ns, pyapply, "-f", str(manifest), **env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        [port] = NetworkManager(root).published(f"{stack}-web-1")
        native_ip = port.ip
        native_gw = gateway_of(str(NetworkManager(root).get(f"{stack}_net").subnet))  # type: ignore[union-attr]
        inner_gw = gateway_of(str(NetworkManager(root).get(f"{stack}_inner").subnet))  # type: ignore[union-attr]

        def fetch_native(url: str, service: str = "web") -> tuple[int, str]:
            out = rt.exec(
                f"{stack}-{service}-1",
                ["timeout", "-s", "KILL", "2", "wget", "-q", "-O-", url],
                timeout=30,
            )
            return out.exit_code, out.output.decode(errors="replace")

        def fetch_docker(name: str, url: str) -> tuple[int, str]:
            out = dockerd.docker(
                "exec", name, "timeout", "-s", "KILL", "2", "wget", "-q", "-O-", url, check=False
            )
            return out.returncode, out.stdout + out.stderr

        def matrix() -> dict[str, tuple[bool, bool, str]]:
            """who reaches what: name -> (reached, expected to reach, output)"""
            ips = {
                n: dockerd.inspect(n, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
                for n in ("d0", "d1")
            }
            gws = {
                n: dockerd.inspect(n, "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}")
                for n in ("d0", "d1")
            }
            # (what, whether it must get through, the check)
            checks: list[tuple[str, bool, Callable[[], tuple[int, str]]]] = [
                ("native -> docker0 container, unpublished", False, lambda: fetch_native(f"http://{ips['d0']}:80/")),
                ("native -> user-network container, unpublished", False, lambda: fetch_native(f"http://{ips['d1']}:80/")),
                ("native -> docker0 container, published", True, lambda: fetch_native(f"http://{native_gw}:{DOCKER_PORT}/")),
                ("native -> user-network container, published", True, lambda: fetch_native(f"http://{native_gw}:{DOCKER_PORT + 1}/")),
                ("native internal -> docker0 container, published", False, lambda: fetch_native(f"http://{inner_gw}:{DOCKER_PORT}/", "sealed")),
                ("docker0 container -> native, unpublished", False, lambda: fetch_docker("d0", f"http://{native_ip}:80/")),
                ("user-network container -> native, unpublished", False, lambda: fetch_docker("d1", f"http://{native_ip}:80/")),
                ("docker0 container -> native, published", True, lambda: fetch_docker("d0", f"http://{gws['d0']}:{NATIVE_PORT}/")),
                ("user-network container -> native, published", True, lambda: fetch_docker("d1", f"http://{gws['d1']}:{NATIVE_PORT}/")),
            ]  # fmt: skip
            with ThreadPoolExecutor(len(checks)) as pool:
                futures = [(k, want, pool.submit(fn)) for k, want, fn in checks]
                results = [(k, want, *f.result()) for k, want, f in futures]
            return {
                k: (code == 0 and ("native" in out or "docker-" in out), want, out)
                for k, want, code, out in results
            }

        def settled(phase: str) -> None:
            # the published ports answer (servers up after a restart), then the whole matrix
            for _ in range(40):
                got = matrix()
                if all(reached for reached, want, _ in got.values() if want):
                    break
                time.sleep(0.5)
            print(f"\n{phase}:")
            for k, (reached, _want, _out) in got.items():
                print(f"  {k}: {'reached' if reached else 'blocked'}")
            wrong = {k: out for k, (reached, want, out) in got.items() if reached != want}
            assert not wrong, f"{phase}: {wrong}"

        forward = in_netns(ns, "iptables", "-w", "-S", "FORWARD").stdout
        assert forward.index("-j PYAPPLY-FORWARD") < forward.index("-j DOCKER-USER"), forward
        settled("dockerd started before the native network")

        dockerd.stop()
        dockerd.start()
        for name in ("d0", "d1"):
            for _ in range(60):
                if dockerd.inspect(name, "{{.State.Running}}") == "true":
                    break
                time.sleep(0.5)
        # the restart put docker's jumps and ACCEPTs back above our filter chain
        forward = in_netns(ns, "iptables", "-w", "-S", "FORWARD").stdout
        assert forward.index("-j DOCKER-USER") < forward.index("-j PYAPPLY-FORWARD"), forward
        settled("after a dockerd restart")

        docker_rules = _foreign_rules(ns)
        reset = in_netns(ns, pyapply, "system", "reset", "-y", **env)
        reset_done = True
        assert reset.returncode == 0, reset.stdout + reset.stderr
        saved = in_netns(ns, "iptables-save").stdout
        assert "PYAPPLY" not in saved and "pyapply" not in saved, saved
        assert _foreign_rules(ns) == docker_rules  # docker's rules untouched
    finally:
        with contextlib.suppress(Exception):
            for name in ("d0", "d1"):
                dockerd.docker("rm", "-f", name, check=False)
            dockerd.docker("network", "rm", "usernet", check=False)
        dockerd.stop()
        if not reset_done:
            in_netns(ns, pyapply, "system", "reset", "-y", **env)
        rt.close()
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(f"{base}/")]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, timeout=30)
        with contextlib.suppress(OSError):
            netns.remove(ns)
        shutil.rmtree(base, ignore_errors=True)


def _foreign_rules(ns: str) -> list[str]:
    saved = in_netns(ns, "iptables-save").stdout.splitlines()
    return [
        line
        for line in saved
        if not line.startswith("#") and "PYAPPLY" not in line and line[:1] != ":"
    ]


def test_networks_made_before_the_guards_get_them_at_the_first_look(tmp_path: Path) -> None:
    """A network whose record predates the guards (no `guards` field, no mangle rules, as
    an older pyapply left it) gets its guard rules at the first read of the state, once."""
    from pyapply.runtime.base import NetworkConfig

    nm = NetworkManager(tmp_path / "root")
    name = f"{new_stack_name()}_old"
    try:
        nm.create(NetworkConfig(name, internal=True))
        bridge = nm.bridge_name(name)
        want = firewall.guard_rules(bridge, internal=True)
        assert len(_guards_of(bridge)) == len(want)
        # make it look old: its guard rules and the record's mark gone
        assert _delete_guards(bridge) == len(want)
        state_file = tmp_path / "root" / "networks" / "networks.json"
        doc = json.loads(state_file.read_text())
        del doc["networks"][name]["guards"]
        state_file.write_text(json.dumps(doc))
        assert _guards_of(bridge) == []

        assert nm.get(name) is not None  # a look
        assert len(_guards_of(bridge)) == len(want)
        assert json.loads(state_file.read_text())["networks"][name]["guards"] == 1
    finally:
        nm.reset()
    assert _guards_of(bridge) == []


def _guards_of(bridge: str) -> list[list[str]]:
    fw = firewall.Firewall()
    return [
        args
        for chain in (firewall.INPUT_CHAIN, firewall.ISOLATION_CHAIN)
        for args in fw.listed("mangle", chain)
        if f"{firewall.COMMENT_PREFIX}{bridge}" in args
    ]
