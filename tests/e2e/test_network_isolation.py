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
import select
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]

from runtime.native import firewall
from runtime.native.network import NetworkManager
from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.runtimes import RuntimeUnderTest, free_port

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
    nothing. Controls: the same frames to the gateway's own address arrive (the probe
    works); on native, with the loopback guard of the network deleted, the attack gets
    through (the guard is what stops it). Published ports still answer, on 127.0.0.1 from
    the host and on the host's address from a container (hairpin)."""
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
            "back": (f"{s}-inside-1", runtime.observe.network(f"{s}_back")),
        }
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
                # the attack
                assert send(runtime, container, mac, "127.0.0.1", "udp", str(loop.udp_port)) == (
                    "sent"
                )
                tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(loop.tcp_port))
                assert tcp == "nosynack", f"{label}: the host answered a SYN to 127.0.0.1"
                rows.append(f"{runtime.name} {label}: 127.0.0.1 udp+tcp blocked")
                # control: the probe's frames do reach the host, at the gateway's address
                with listening(gw) as ctl:
                    send(runtime, container, mac, gw, "udp", str(ctl.udp_port))
                    assert ctl.datagrams(wait=3) == [b"rawsend"], f"{label}: control UDP lost"
                    tcp = send(runtime, container, mac, gw, "tcp", str(ctl.tcp_port))
                    assert tcp == "synack", f"{label}: control SYN not answered"
            # the TCP probes waited 1.5 s each for an answer; anything sent is in by now
            assert loop.datagrams(wait=0.5) == [], "a datagram reached 127.0.0.1"
            assert loop.connections() == 0, "a connection reached 127.0.0.1"

            # published ports: from the host on 127.0.0.1, from a container by hairpin
            assert http_get(f"http://127.0.0.1:{local_port}/")[1].strip() == MARKER
            gw_front = gateway_of(str(networks["front"][1].subnet))  # type: ignore[union-attr]
            code, out = fetch(runtime, f"{s}-attacker-1", f"http://{gw_front}:{any_port}/", 5)
            assert code == 0 and out.strip() == MARKER, (code, out)
            rows.append(f"{runtime.name}: published 127.0.0.1 port from host, hairpin: ok")

            if runtime.name == "native":
                # control: without the guard the attack works (route_localnet is on)
                nm = NetworkManager(runtime.root)
                for label, (container, net) in networks.items():
                    assert net is not None and net.subnet
                    bridge = nm.bridge_name(net.name)
                    dropped = _delete_loopback_guard(bridge)
                    assert dropped == 1, f"{label}: {dropped} guard rules for {bridge}"
                    mac = mac_of_address(gateway_of(net.subnet))
                    send(runtime, container, mac, "127.0.0.1", "udp", str(loop.udp_port))
                    assert loop.datagrams(wait=3) == [b"rawsend"], f"{label}: control lost"
                    tcp = send(runtime, container, mac, "127.0.0.1", "tcp", str(loop.tcp_port))
                    assert tcp == "synack", f"{label}: unguarded SYN not answered"
                    assert loop.connections(wait=3) == 1, f"{label}: no unguarded connection"
                    rows.append(f"native {label}: without the guard 127.0.0.1 udp+tcp reached")
    finally:
        cli.run("down", "-f", str(manifest))
        print("\n".join(rows))


def _delete_loopback_guard(bridge: str) -> int:
    """Delete the network's rule in our mangle INPUT chain (the test's own network)."""
    fw = firewall.Firewall()
    n = 0
    for args in fw.listed("mangle", firewall.INPUT_CHAIN):
        if f"{firewall.COMMENT_PREFIX}{bridge}" in args:
            subprocess.run(
                ["iptables", "-w", "-t", "mangle", "-D", firewall.INPUT_CHAIN, *args],
                check=True,
                timeout=60,
            )
            n += 1
    return n
