"""End-to-end: the DNS server of native networks (runtime/native/dns.py, aardvark-dns).

A real stack through the CLI on a private state root: `web` (two replicas, alias `www`) and
`client` on one network, `stranger` on another. busybox's `nslookup` in the containers asks
the server named in their resolv.conf (their network's gateway) and never reads /etc/hosts,
so every answer comes from the DNS server; the expected addresses come from the containers'
/etc/hosts, which the runtime writes apart from it.

Other names are forwarded: the test starts a resolver of its own on a loopback address and
points the runtime at it ($PYAPPLY_DNS_UPSTREAM), so nothing leaves the machine. A query
sent from the stranger's network namespace straight to the other network's gateway checks
the firewall guard (dns_rules), with the same query from the client's namespace as the
positive control.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RR, A, DNSRecord  # type: ignore[import-untyped]

from pyapply.runtime.native.supervise import pid_alive
from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import NativeUnderTest
from tests.e2e.test_ipv6 import forwarding  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

OUTSIDE = "outside.pyapply.test"
OUTSIDE_IP = "192.0.2.77"  # TEST-NET-1: only ever an answer, never a destination

STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  x-idle: &idle ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]  # stops at once
  services:
    web:
      image: {image}
      command: *idle
      deploy: {{replicas: {replicas}}}
      networks:
        front: {{aliases: [{alias}]}}
    client:
      image: {image}
      command: *idle
      networks: [front]
    stranger:
      image: {image}
      command: *idle
      networks: [back]
    both:
      image: {image}
      command: *idle
      networks: [front, back]
  networks: {{front: {{}}, back: {{}}}}
"""

# run in a container's network namespace (nsenter): one A query, the answers or "timeout"
PROBE = """
import socket, sys
from dnslib import DNSRecord
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(DNSRecord.question(sys.argv[2]).pack(), (sys.argv[1], 53))
try:
    reply = DNSRecord.parse(s.recv(4096))
except socket.timeout:
    print("timeout")
else:
    print("rcode", reply.header.rcode, *sorted(str(r.rdata) for r in reply.rr))
"""

DUAL_STACK = """\
name: {stack}
x-idle: &idle ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
services:
  web: {{image: {image}, command: *idle, networks: [front]}}
  client: {{image: {image}, command: *idle, networks: [front]}}
  stranger: {{image: {image}, command: *idle, networks: [back]}}
networks: {{front: {{enable_ipv6: true}}, back: {{enable_ipv6: true}}}}
"""


class Upstream:
    """A resolver on a loopback address, port 53: answers OUTSIDE's A record, NXDOMAIN for
    other names, and remembers what it was asked."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(20):
            self.address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
            try:
                self.sock.bind((self.address, 53))
                break
            except OSError:
                continue
        else:
            raise AssertionError("no free loopback address for the test resolver")
        self.sock.settimeout(0.2)
        self.asked: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = DNSRecord.parse(data)
            name = str(query.q.qname).rstrip(".")
            self.asked.append(name)
            reply = query.reply()
            if name != OUTSIDE:
                reply.header.rcode = 3  # NXDOMAIN
            elif query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(OUTSIDE_IP), ttl=5))
            # (OUTSIDE has no other record: an empty answer, as for its AAAA)
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[Upstream]:
    server = Upstream()
    # the in-process runtime (the fixture's cleanup) forwards to it as the CLI does
    monkeypatch.setenv("PYAPPLY_DNS_UPSTREAM", server.address)
    try:
        yield server
    finally:
        server.close()


def lookup(native: NativeUnderTest, container: str, name: str) -> tuple[int, list[str]]:
    """busybox nslookup in the container: its exit code and the addresses it printed for
    `name` (not the server's own "Address: IP:53" line)."""
    code, out = native.exec(container, "nslookup", name)
    return code, sorted(re.findall(r"^Address:\s*(\d+\.\d+\.\d+\.\d+)\s*$", out, re.M))


def hosts_of(native: NativeUnderTest, container: str) -> dict[str, set[str]]:
    """name -> addresses in the container's /etc/hosts."""
    code, out = native.exec(container, "cat", "/etc/hosts")
    assert code == 0, out
    found: dict[str, set[str]] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and not line.startswith("#"):
            for n in parts[1:]:
                found.setdefault(n, set()).add(parts[0])
    return found


def probe(native: NativeUnderTest, container: str, server: str, name: str) -> str:
    """One query sent from the container's network namespace, by a process of this test."""
    key = native.native.key(container)
    assert key is not None
    netns = native.native.netns_path(key)
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", PROBE, server, name],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def server_pid(root: Path) -> int | None:
    """The root's aardvark-dns, from the pid file it writes, checked against /proc."""
    try:
        pid = int((root / "networks" / "dns" / "aardvark.pid").read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(root / "networks" / "dns").encode() in args else None


def dns_processes(networks_dir: Path) -> list[int]:
    """Every process whose command line names the DNS directory in `networks_dir`."""
    want = str(networks_dir / "dns").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if want in (proc / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_names_resolve_by_dns_on_their_own_networks_only(
    native: NativeUnderTest, upstream: Upstream, tmp_path: Path
) -> None:
    """Peers, aliases and services resolve, other networks' names do not (a container on
    both networks sees both), other names are forwarded, scale and recreate show at once; then the server's life: one per root, a
    crash seen and repaired, stopped by down (one stack for all: applies are the cost)."""
    stack = native.stack
    manifest = tmp_path / "stack.yaml"
    cli = native.cli()
    env = {"PYAPPLY_DNS_UPSTREAM": upstream.address}

    def apply(replicas: int, alias: str = "www") -> None:
        manifest.write_text(
            STACK.format(stack=stack, image=TEST_IMAGE, replicas=replicas, alias=alias)
        )
        cli.ok("-f", str(manifest), **env)

    apply(2)
    client, stranger = f"{stack}-client-1", f"{stack}-stranger-1"
    web = [f"{stack}-web-1", f"{stack}-web-2"]
    hosts = hosts_of(native, client)
    web_ips = sorted(ip for w in web for ip in hosts[w])
    assert len(web_ips) == 2

    # resolv.conf names the network's gateway, the server that answers
    code, resolv = native.exec(client, "cat", "/etc/resolv.conf")
    gateway = resolv.split()[1]
    assert resolv.startswith(f"nameserver {gateway}\n") and gateway.endswith(".1"), resolv

    # on two networks: both gateways (as podman lists them), and either answers for both
    # networks; the stranger still sees only its own, though it shares one with this one
    both = f"{stack}-both-1"
    code, resolv = native.exec(both, "cat", "/etc/resolv.conf")
    servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver ")]
    assert len(servers) == 2 and gateway in servers, resolv
    assert lookup(native, both, "web") == (0, web_ips)
    assert lookup(native, both, "stranger")[1] == sorted(hosts_of(native, both)[stranger])
    for server in servers:
        assert probe(native, both, server, "www") == f"rcode 0 {' '.join(web_ips)}"

    # a peer, an alias, the service (every replica)
    assert lookup(native, client, web[1]) == (0, sorted(hosts[web[1]]))
    assert lookup(native, client, "www") == (0, web_ips)
    assert lookup(native, client, "web") == (0, web_ips)
    assert lookup(native, client, "WEB.") == (0, web_ips)  # case and the root dot

    # the other network's container cannot resolve them through its own server ...
    code, found = lookup(native, stranger, "web")
    assert code != 0 and found == []
    assert lookup(native, stranger, web[0])[1] == []
    assert lookup(native, stranger, "stranger")[1] == sorted(hosts_of(native, stranger)[stranger])
    # ... nor by asking the first network's server directly (the client can: the control)
    assert probe(native, client, gateway, "web") == f"rcode 0 {' '.join(web_ips)}"
    assert probe(native, stranger, gateway, "web") == "timeout"

    # other names go to the upstream resolver, which saw the query
    assert lookup(native, client, OUTSIDE) == (0, [OUTSIDE_IP])
    assert OUTSIDE in upstream.asked
    code, found = lookup(native, client, "nowhere.pyapply.test")
    assert code != 0 and found == []

    # a scale and a recreate are visible at once: no wait, no retry
    apply(3)
    hosts = hosts_of(native, client)
    three = sorted(ip for n in range(1, 4) for ip in hosts[f"{stack}-web-{n}"])
    assert lookup(native, client, "web") == (0, three)
    apply(1, alias="www2")  # an alias change recreates the replica that stays
    one = sorted(hosts_of(native, client)[f"{stack}-web-1"])
    assert lookup(native, client, "web") == (0, one)
    assert lookup(native, client, "www2") == (0, one)
    assert lookup(native, client, "www")[1] == []
    assert lookup(native, client, f"{stack}-web-3")[1] == []

    # one server for the root's two networks, in a 0700 directory; killed, it is a fault
    # of both networks, which the next apply repairs; down stops it
    root = native.root
    assert (root / "networks" / "dns").stat().st_mode & 0o777 == 0o700
    pid = server_pid(root)
    assert pid is not None and dns_processes(root / "networks") == [pid]
    os.kill(pid, signal.SIGKILL)  # the server this test's stack started, by its pid
    deadline = time.monotonic() + 5
    while server_pid(root) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    out = cli.run("diff", "-f", str(manifest), "--exit-code", **env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout.count("no DNS server on") == 2
    cli.ok("-f", str(manifest), **env)
    again = server_pid(root)
    assert again is not None and again != pid
    assert lookup(native, client, "www2") == (0, one)

    cli.ok("down", "-f", str(manifest), **env)
    assert dns_processes(root / "networks") == []
    assert not (root / "networks" / "dns").exists()


def ask(server: str, name: str) -> list[str] | None:
    """One A query from the host (an asker the server does not know: it answers with the
    names of the network whose address was asked); None when nothing answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(DNSRecord.question(name).pack(), (server, 53))
        try:
            reply = DNSRecord.parse(s.recv(4096))
        except TimeoutError:
            return None
    return sorted(str(r.rdata) for r in reply.rr)


def test_the_server_follows_its_files_and_its_pid_is_checked(tmp_path: Path) -> None:
    """DnsServer alone, on loopback addresses (no bridge, no container): started by the
    first network, reloaded by each sync so that a query right after it sees the change,
    listening on a second network's address, started again after a crash, never
    signalling a process that is not its own, stopped with its last network."""
    from pyapply.runtime.native.dns import PID_FILE, DnsServer

    base = f"127.54.{random.randint(1, 254)}"
    a, b = f"{base}.1", f"{base}.2"

    def net(bridge: str, gateway: str, **members: str) -> dict[str, object]:
        endpoints = {k: {"ip": ip, "aliases": [f"{k}-alias"]} for k, ip in members.items()}
        return {"bridge": bridge, "gateway": gateway, "endpoints": endpoints}

    server = DnsServer(tmp_path / "dns", tmp_path / "dns.log")
    try:
        server.sync({"one": net("pa-1", a, c1="10.9.0.2")})
        first = server.pid()
        assert first is not None and dns_processes(tmp_path) == [first]
        assert (tmp_path / "dns").stat().st_mode & 0o777 == 0o700
        assert ask(a, "c1-alias") == ["10.9.0.2"]

        server.sync({"one": net("pa-1", a, c1="10.9.0.2", c2="10.9.0.3")})
        assert ask(a, "c2") == ["10.9.0.3"]  # no wait: the sync waited for nothing
        assert server.pid() == first  # reloaded, not restarted
        server.sync({"one": net("pa-1", a, c2="10.9.0.3"), "two": net("pa-2", b, c9="10.9.1.9")})
        assert ask(a, "c1") == []
        assert ask(b, "c9") == ["10.9.1.9"]

        os.kill(first, signal.SIGKILL)  # the server this test started
        deadline = time.monotonic() + 5
        while server.pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.pid() is None
        assert ask(b, "c9") is None
        server.sync({"two": net("pa-2", b, c9="10.9.1.9")}, check=True)
        second = server.pid()
        assert second is not None and second != first
        assert ask(b, "c9") == ["10.9.1.9"] and ask(a, "c2") is None

        # a pid file naming a live process that is not the server: not ours to signal
        (tmp_path / "dns" / PID_FILE).write_text(str(os.getpid()))
        assert server.pid() is None
        (tmp_path / "dns" / PID_FILE).write_text(str(second))
    finally:
        server.sync({})
    assert dns_processes(tmp_path) == []
    assert not (tmp_path / "dns").exists() and not (tmp_path / "dns.log").exists()


def test_a_sync_does_not_wait_for_a_gateway_that_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync runs with the state its transaction saved; a later transaction may delete a
    network's bridge (its gateway address) meanwhile, as the second of two networks removed
    together does. The sync serves the networks that are left and does not wait, to its
    deadline, for an address no server can listen on (it did: ten seconds of each `down`)."""
    from pyapply.runtime.native import dns

    base = f"127.55.{random.randint(1, 254)}"
    here = f"{base}.1"
    gone = "192.0.2.1"  # TEST-NET-1: on no interface of this host
    monkeypatch.setattr(dns, "LISTEN_WAIT_S", 3.0)  # the bug's wait, kept short
    server = dns.DnsServer(tmp_path / "dns", tmp_path / "dns.log")

    def net(bridge: str, gateway: str, **members: str) -> dict[str, object]:
        endpoints = {k: {"ip": ip, "aliases": []} for k, ip in members.items()}
        return {"bridge": bridge, "gateway": gateway, "endpoints": endpoints}

    try:
        server.sync({"one": net("pa-1", here, c1="10.9.0.2")})
        # the state of a transaction whose second network was removed since
        server.sync({"one": net("pa-1", here, c2="10.9.0.3"), "two": net("pa-2", gone)})
        assert ask(here, "c2") == ["10.9.0.3"]
        assert ask(here, "c1") == []
        # and a state whose every gateway went: nothing to wait for
        server.sync({"two": net("pa-2", gone, c3="10.9.1.3")})
    finally:
        server.sync({})
    assert dns_processes(tmp_path) == []


class _Killed(BaseException):
    """Stands for the SIGKILL of the process that syncs, at the point it would reload."""


def test_a_sync_killed_before_its_reload_is_made_good_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that dies after writing the files and before the SIGHUP leaves files the
    server has not read. The next sync, with the same state, finds nothing to write; it
    must still reload the server (and, with `check`, not wait in vain for the canary: it
    failed an apply after a SIGKILL in CI with "does not answer from its files")."""
    from pyapply.runtime.native import dns

    here = f"127.56.{random.randint(1, 254)}.1"
    monkeypatch.setattr(dns, "LISTEN_WAIT_S", 3.0)
    server = dns.DnsServer(tmp_path / "dns", tmp_path / "dns.log")

    def net(**members: str) -> dict[str, object]:
        endpoints = {k: {"ip": ip, "aliases": []} for k, ip in members.items()}
        return {"one": {"bridge": "pa-1", "gateway": here, "endpoints": endpoints}}

    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig == signal.SIGHUP:
            raise _Killed
        real_kill(pid, sig)

    try:
        server.sync(net(c1="10.9.0.2"))
        for check in (False, True):
            name = f"c{2 + check}"
            with monkeypatch.context() as m:
                m.setattr(dns.os, "kill", kill)
                with pytest.raises(_Killed):
                    server.sync(net(**{name: "10.9.0.9"}))
            assert server.owed.exists() and server.unheard()
            assert ask(here, name) == []  # the server still serves the files it read
            server.sync(net(**{name: "10.9.0.9"}), check=check)
            assert ask(here, name) == ["10.9.0.9"]
            assert not server.owed.exists() and not server.unheard()
    finally:
        server.sync({})
    assert dns_processes(tmp_path) == []
    assert not server.owed.exists()


LINGERING = """\
apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    web:
      image: {image}
      # SIGTERM ignored: its stop lasts the grace period
      command: ["sh", "-c", "trap '' TERM; sleep 3600 & wait"]
      stop_grace_period: 8s
      deploy: {{replicas: {replicas}}}
    client:
      image: {image}
      command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
"""


def test_a_container_leaves_name_resolution_before_it_is_stopped(
    native: NativeUnderTest, tmp_path: Path
) -> None:
    """A replica being removed is out of its service's DNS answers and its peers' hosts
    files before its stop begins, while its process still runs (a start-first update's
    clients are no longer sent to the old replica as it stops: that lost requests under
    load). A removal killed then leaves it running out of resolution: a fault that the
    next apply repairs in place."""
    stack = native.stack
    cli = native.cli()
    manifest = tmp_path / "stack.yaml"

    def write(replicas: int) -> None:
        manifest.write_text(LINGERING.format(stack=stack, image=TEST_IMAGE, replicas=replicas))

    write(2)
    cli.ok("-f", str(manifest))
    client, web1, web2 = f"{stack}-client-1", f"{stack}-web-1", f"{stack}-web-2"
    hosts = hosts_of(native, client)
    ip1, ip2 = sorted(hosts[web1]), sorted(hosts[web2])
    assert lookup(native, client, "web") == (0, sorted(ip1 + ip2))
    web2_id = native.observe.must(web2).id

    write(1)
    scale_down = cli.spawn("-f", str(manifest))
    try:
        deadline = time.monotonic() + 30
        while lookup(native, client, "web")[1] != ip1:
            assert time.monotonic() < deadline, "web-2 was never taken out of the DNS answers"
            assert scale_down.poll() is None, scale_down.communicate()[0]
            time.sleep(0.1)
        # out of resolution, and still running: its stop's grace period is 8 s
        assert native.observe.must(web2).running
        assert lookup(native, client, web2)[1] == []
        assert web2 not in hosts_of(native, client)
        assert scale_down.poll() is None
    finally:
        scale_down.kill()  # the apply this test started, by its pid
        scale_down.communicate(timeout=30)
    assert native.observe.must(web2).running  # nobody will stop it now

    write(2)
    diff = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert diff.returncode == 2, diff.stdout + diff.stderr
    assert "withdrawn from the names" in diff.stdout, diff.stdout
    cli.ok("-f", str(manifest))
    assert native.observe.must(web2).id == web2_id  # repaired in place, not recreated
    assert lookup(native, client, "web") == (0, sorted(ip1 + ip2))
    assert sorted(hosts_of(native, client)[web2]) == ip2
    diff = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert diff.returncode == 0, diff.stdout + diff.stderr


INPUT_DROPS = """\
set -u
export PYAPPLY_RUNTIME=native PYAPPLY_ROOT="$ROOT"
ip link set lo up
iptables -w -P INPUT DROP  # this namespace's INPUT, as ufw leaves a host's
iptables -w -A INPUT -i lo -j ACCEPT
trap '"$PYAPPLY" down -f "$MANIFEST" >/dev/null 2>&1; echo DOWN $?' EXIT
"$PYAPPLY" -f "$MANIFEST" >/dev/null || { echo APPLY failed; exit 1; }
ask() { "$PYTHON" -c "$EXEC" "$1"; }
ask first
for rule in $(iptables -w -S PYAPPLY-DNS | grep -c ACCEPT); do echo RULES $rule; done
iptables -w -F PYAPPLY-DNS  # the control: without our accept, the host's policy drops
ask second
"""
EXEC_IN = """
import sys
from pyapply.runtime.native.driver import NativeRuntime
rt = NativeRuntime()
out = rt.exec("{stack}-web-1", ["timeout", "3", "nslookup", "web"], timeout=30)
print(sys.argv[1].upper(), out.exit_code, out.output.decode().count("Name:"))
"""


def test_dns_works_on_a_host_whose_input_drops(native: NativeUnderTest, tmp_path: Path) -> None:
    """The whole runtime in a network namespace of the test's own whose filter INPUT drops
    what it does not know: the containers still resolve (firewall.dns_rules accepts their
    queries ahead of the host's rules), and not without that accept (the control)."""
    stack = native.stack
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        "apiVersion: pyapply/v1\nkind: Stack\n"
        f"metadata: {{name: {stack}}}\n"
        "spec:\n  services:\n    web:\n"
        f"      image: {TEST_IMAGE}\n"
        """      command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]\n"""
        "      networks: [front]\n"
        "  networks: {front: {}}\n"
    )
    script = tmp_path / "input-drops.sh"
    script.write_text(INPUT_DROPS)
    env = {
        **native.env,
        "ROOT": str(native.root),
        "MANIFEST": str(manifest),
        "PYAPPLY": str(Path(sys.executable).parent / "pyapply"),
        "PYTHON": sys.executable,
        "EXEC": EXEC_IN.format(stack=stack),
    }
    proc = subprocess.run(
        ["unshare", "--net", "--fork", "bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert "FIRST 0 1" in lines, proc.stdout + proc.stderr  # web resolved: one name
    assert "RULES 2" in lines, proc.stdout  # udp and tcp
    # the same query, the accept gone: no answer until busybox's timeout ends it (143)
    assert "SECOND 143 0" in lines, proc.stdout + proc.stderr
    assert "DOWN 0" in lines, proc.stdout + proc.stderr


@pytest.mark.usefixtures("forwarding")
def test_a_dual_stack_network_is_resolved_over_ipv6_too(
    native: NativeUnderTest, upstream: Upstream, tmp_path: Path
) -> None:
    """On dual-stack networks the server listens on the IPv6 gateway too, and containers
    have it as a nameserver: busybox's nslookup asks it over IPv6 and gets the peer's A and
    AAAA records; another network's container cannot ask it (the ip6tables guard), the
    network's own can (the control)."""
    stack = native.stack
    manifest = tmp_path / "compose.yaml"
    manifest.write_text(DUAL_STACK.format(stack=stack, image=TEST_IMAGE))
    native.cli().ok("-f", str(manifest), PYAPPLY_DNS_UPSTREAM=upstream.address)
    client, stranger, web = (f"{stack}-{s}-1" for s in ("client", "stranger", "web"))
    nets = {n.name: n for n in native.rt.list_networks({"io.pyapply.stack": stack})}
    front = nets[f"{stack}_front"]
    assert front.gateway6 is not None and front.subnet6 is not None
    gw6 = front.gateway6

    code, resolv = native.exec(client, "cat", "/etc/resolv.conf")
    servers = [ln.split()[1] for ln in resolv.splitlines() if ln.startswith("nameserver ")]
    assert front.subnet is not None
    gw4 = str(ipaddress.ip_network(front.subnet).network_address + 1)
    assert servers == [gw4, gw6], resolv

    web_addrs = hosts_of(native, client)[web]
    code, out = native.exec(client, "nslookup", "web", gw6)
    assert code == 0, out
    assert re.search(rf"^Server:\s*{re.escape(gw6)}$", out, re.M), out
    answers = set(re.findall(r"^Address:\s*(\S+)\s*$", out, re.M)) - {f"[{gw6}]:53", gw6}
    web6 = [a for a in answers if ":" in a]
    assert {a for a in answers if ":" not in a} == web_addrs and len(web6) == 1, out
    # the name of a container that is not on the network is not answered there
    code, out = native.exec(client, "nslookup", "stranger", gw6)
    assert code != 0, out

    # the guard on the IPv6 gateway: the network's own container asks, another's cannot
    assert probe(native, client, gw6, "web") == f"rcode 0 {' '.join(sorted(web_addrs))}"
    assert probe(native, stranger, gw6, "web") == "timeout"
    native.cli().ok("down", "-f", str(manifest), PYAPPLY_DNS_UPSTREAM=upstream.address)


INTERNAL = """\
name: {stack}
x-idle: &idle ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
services:
  lonely: {{image: {image}, command: *idle, networks: [inner]}}
  both: {{image: {image}, command: *idle, networks: [inner, front]}}
  client: {{image: {image}, command: *idle, networks: [front]}}
networks: {{inner: {{internal: true}}, front: {{}}}}
"""


def test_a_container_on_internal_networks_only_gets_no_other_names(
    native: NativeUnderTest, upstream: Upstream, tmp_path: Path
) -> None:
    """Other names are not forwarded for a container whose networks are all internal: the
    root's second server (no forwarding) answers them as nonexistent and the upstream
    resolver never hears of them; its peers still resolve. A container also on a network
    with a way out, and one on that network only, still get them forwarded (the control)."""
    stack = native.stack
    manifest = tmp_path / "compose.yaml"
    manifest.write_text(INTERNAL.format(stack=stack, image=TEST_IMAGE))
    env = {"PYAPPLY_DNS_UPSTREAM": upstream.address}
    native.cli().ok("-f", str(manifest), **env)
    lonely, both, client = (f"{stack}-{s}-1" for s in ("lonely", "both", "client"))

    code, found = lookup(native, lonely, OUTSIDE)
    assert code != 0 and found == [], found
    assert OUTSIDE not in upstream.asked, upstream.asked
    code, out = native.exec(lonely, "nslookup", OUTSIDE)
    assert "NXDOMAIN" in out, out  # answered at once, not left to time out
    inner_ips = hosts_of(native, lonely)[both]
    assert lookup(native, lonely, "both") == (0, sorted(inner_ips & hosts_of(native, both)[both]))

    for container in (both, client):
        assert lookup(native, container, OUTSIDE) == (0, [OUTSIDE_IP]), container
    assert OUTSIDE in upstream.asked

    # the second server: a process of its own; killed, it is a fault of the internal
    # network, which the next apply repairs; stopped by down with the first
    local = native.root / "networks" / "dns-local"
    pid = int((local / "aardvark.pid").read_text())
    assert str(local).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    os.kill(pid, signal.SIGKILL)  # the server this test's stack started, by its pid
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    out = native.cli().run("diff", "-f", str(manifest), "--exit-code", **env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout.count("no DNS server for its names only on 127.") == 1, out.stdout
    native.cli().ok("-f", str(manifest), **env)
    pid = int((local / "aardvark.pid").read_text())
    assert pid_alive(pid)
    code, out = native.exec(lonely, "nslookup", OUTSIDE)
    assert "NXDOMAIN" in out, out
    native.cli().ok("diff", "-f", str(manifest), "--exit-code", **env)
    native.cli().ok("down", "-f", str(manifest), **env)
    assert not local.exists() and not pid_alive(pid)
    assert dns_processes(native.root / "networks") == []
