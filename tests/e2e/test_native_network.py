"""End-to-end tests of the native runtime's networks (runtime/native/network.py).

Real bridges, veths and iptables rules; the "containers" are network namespaces made here
with pyroute2, running busybox through `nsenter`. Traffic goes only to loopback, to these
namespaces and to the host's own address. Every test uses its own state root and unique
names and cleans up (manager reset, namespaces, processes by pid) even when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS, netns  # type: ignore[import-untyped]

from pyapply.runtime.base import Conflict, NetworkConfig, NotFound, PortBinding
from pyapply.runtime.native import firewall
from pyapply.runtime.native.network import NetworkManager

pytestmark = pytest.mark.e2e

if os.geteuid() != 0:  # pragma: no cover - the e2e machine runs as root
    pytest.fail("the native network tests need root", pytrace=False)

MakeNs = Callable[[], str]
FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def mgr(tmp_path: Path) -> Iterator[NetworkManager]:
    manager = NetworkManager(tmp_path / "root")
    try:
        yield manager
    finally:
        manager.reset()


@pytest.fixture
def make_ns() -> Iterator[MakeNs]:
    made: list[str] = []

    def make() -> str:
        name = f"pat{_uid()}"
        netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            with contextlib.suppress(OSError):
                netns.remove(name)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def in_ns(ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ping(ns: str, target: str, hosts_file: Path | None = None) -> bool:
    """One ping from a namespace; with a hosts file, bind-mounted as /etc/hosts in a
    private mount namespace (as a container would have it)."""
    if hosts_file is None:
        return in_ns(ns, "busybox", "ping", "-c", "1", "-W", "2", target).returncode == 0
    script = 'mount --bind "$1" /etc/hosts && exec busybox ping -c 1 -W 2 "$2"'
    proc = in_ns(ns, "unshare", "-m", "sh", "-c", script, "sh", str(hosts_file), target)
    return proc.returncode == 0


def ns_routes(ns: str) -> list[tuple[int, str | None]]:
    with NetNS(f"/run/netns/{ns}", flags=0) as ipr:
        return [
            (r["dst_len"], r.get("gateway"))
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
        ]


def host_address() -> str:
    """The host's primary IPv4 address (the one on its default route's interface)."""
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            oif = route.get("oif")
            for addr in ipr.get_addr(index=oif, family=socket.AF_INET):
                return str(addr.get("address"))
    pytest.fail("the host has no default route with an IPv4 address")


def links_with_alias(prefix: str) -> list[str]:
    with IPRoute() as ipr:
        return [
            str(link.get("ifname"))
            for link in ipr.get_links()
            if (link.get("ifalias") or "").startswith(prefix)
        ]


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def iptables_dump() -> str:
    out = []
    for table in ("filter", "nat", "mangle"):
        out.append(
            subprocess.run(
                ["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True, check=True
            ).stdout
        )
    return "".join(out)


def http_get(url: str) -> str:
    last: Exception | None = None
    for _ in range(20):
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return str(resp.read().decode())
        except OSError as e:
            last = e
            time.sleep(0.25)
    raise AssertionError(f"GET {url} failed: {last}")


# ---------------------------------------------------------------------------------------------


def test_same_network_by_ip_and_by_name(
    mgr: NetworkManager, make_ns: MakeNs, tmp_path: Path
) -> None:
    net = f"a{_uid()}"
    mgr.create(NetworkConfig(net, labels={"test": "yes"}))
    ns1, ns2, ns3 = make_ns(), make_ns(), make_ns()
    h1, h2, h3 = (tmp_path / f"hosts{i}" for i in (1, 2, 3))
    ip1 = mgr.attach(
        net, "web-1", f"/run/netns/{ns1}", ["web"], hosts_path=str(h1), hostname="abc123"
    )
    ip2 = mgr.attach(net, "db-1", ns2, ["db", "database"], hosts_path=str(h2))
    assert ip1 != ip2

    # interfaces inside: eth0 with the address, lo up, default route via the gateway
    with NetNS(f"/run/netns/{ns1}", flags=0) as ipr:
        links = {link.get("ifname"): link.get("state") for link in ipr.get_links()}
        addrs = [a.get("address") for a in ipr.get_addr(family=socket.AF_INET)]
    assert links["eth0"] == "up" and links["lo"] == "up"
    assert ip1 in addrs
    assert any(dst_len == 0 for dst_len, _ in ns_routes(ns1))

    assert ping(ns1, ip2) and ping(ns2, ip1)

    # hosts content and name resolution through it
    content = mgr.hosts_for("web-1")
    assert f"{ip1}\tweb-1 web abc123" in content
    assert "abc123" not in mgr.hosts_for("db-1")
    assert f"{ip2}\tdb-1 database db" in content
    assert h1.read_text() == content
    assert ping(ns1, "db", h1) and ping(ns1, "database", h1) and ping(ns1, "db-1", h1)
    assert ping(ns2, "web", h2)

    # kept current: a newcomer appears in everyone's file, and disappears when it goes
    ip3 = mgr.attach(net, "cache-1", ns3, ["cache"], hosts_path=str(h3))
    assert f"{ip3}\tcache-1 cache" in h1.read_text()
    assert ping(ns1, "cache", h1)
    inode = h1.stat().st_ino
    mgr.detach(net, "cache-1")
    assert "cache" not in h1.read_text() and "cache" not in h2.read_text()
    assert h1.stat().st_ino == inode  # rewritten in place: a bind mount keeps seeing it
    assert not ping(ns1, ip3)

    state = mgr.get(net)
    assert state is not None and state.containers == ("db-1", "web-1")
    assert [s.name for s in mgr.list({"test": ""})] == [net]
    assert mgr.list({"test": "no"}) == []


def test_different_networks_are_isolated(mgr: NetworkManager, make_ns: MakeNs) -> None:
    a, b = f"a{_uid()}", f"b{_uid()}"
    mgr.create(NetworkConfig(a))
    mgr.create(NetworkConfig(b))
    ns_a1, ns_a2, ns_b = make_ns(), make_ns(), make_ns()
    ip_a1 = mgr.attach(a, "a1", ns_a1, [])
    ip_a2 = mgr.attach(a, "a2", ns_a2, [])
    ip_b = mgr.attach(b, "b1", ns_b, [])
    assert ping(ns_a2, ip_a1) and ping(ns_a1, ip_a2)
    # both have default routes, so only the firewall keeps them apart
    assert not ping(ns_b, ip_a1)
    assert not ping(ns_a1, ip_b)
    # the gateway of B does not hand out A's names either
    assert "a1" not in mgr.hosts_for("b1").split()  # a name, not part of a random one

    # a container on both networks reaches both; its second interface is eth1,
    # and only the first non-internal network gives it a default route
    ns_both = make_ns()
    mgr.attach(a, "both", ns_both, [])
    mgr.attach(b, "both", ns_both, [])
    with NetNS(f"/run/netns/{ns_both}", flags=0) as ipr:
        names = {link.get("ifname") for link in ipr.get_links()}
    assert {"eth0", "eth1"} <= names
    assert sum(1 for dst_len, _ in ns_routes(ns_both) if dst_len == 0) == 1
    assert ping(ns_both, ip_a1) and ping(ns_both, ip_b)
    # the network that gave the default route goes: the other one takes over
    gw_b = mgr.get(b)
    assert gw_b is not None
    mgr.detach(a, "both")
    defaults = [gw for dst_len, gw in ns_routes(ns_both) if dst_len == 0]
    assert len(defaults) == 1 and defaults[0] is not None
    assert IPv4Address(defaults[0]) in IPv4Network(str(gw_b.subnet))
    assert not ping(ns_both, ip_a1) and ping(ns_both, ip_b)

    with pytest.raises(NotFound):
        mgr.attach(a, "ghost", "/run/netns/does-not-exist-here", [])
    with pytest.raises(NotFound):
        mgr.attach(f"nonet{_uid()}", "ghost", ns_both, [])


def test_internal_network_has_no_way_out(mgr: NetworkManager, make_ns: MakeNs) -> None:
    internal, plain = f"i{_uid()}", f"p{_uid()}"
    st_i = mgr.create(NetworkConfig(internal, internal=True))
    st_p = mgr.create(NetworkConfig(plain))
    ns_i, ns_i2, ns_p = make_ns(), make_ns(), make_ns()
    ip_i = mgr.attach(internal, "i1", ns_i, [])
    ip_i2 = mgr.attach(internal, "i2", ns_i2, [])
    mgr.attach(plain, "p1", ns_p, [])

    assert all(dst_len != 0 for dst_len, _ in ns_routes(ns_i))
    assert ping(ns_i2, ip_i) and ping(ns_i, ip_i2)  # within the network: fine
    outside = host_address()
    assert not ping(ns_i, outside)
    assert ping(ns_p, outside)  # the non-internal one gets out (to the host's address)

    nat = subprocess.run(
        ["iptables", "-w", "-t", "nat", "-S", firewall.POSTROUTING_CHAIN],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    br_i, br_p = mgr.bridge_name(internal), mgr.bridge_name(plain)
    assert f"-A {firewall.POSTROUTING_CHAIN} -s {st_p.subnet} ! -o {br_p}" in nat
    assert "MASQUERADE" in nat
    assert f"-s {st_i.subnet} ! -o {br_i}" not in nat
    fwd = subprocess.run(
        ["iptables", "-w", "-S", firewall.FORWARD_CHAIN], capture_output=True, text=True, check=True
    ).stdout
    assert f"-i {br_p} ! -o pa-+" in fwd and f"-i {br_i} ! -o pa-+" not in fwd
    assert ip_i


def test_published_port_on_localhost_and_host_address(
    mgr: NetworkManager,
    make_ns: MakeNs,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # networks made before the web's, so their rules come first in our chain
    other, internal, net = f"o{_uid()}", f"i{_uid()}", f"w{_uid()}"
    mgr.create(NetworkConfig(other))
    internal_gw = "10.231.99.1"
    mgr.create(NetworkConfig(internal, internal=True, subnet="10.231.99.0/24", gateway=internal_gw))
    mgr.create(NetworkConfig(net))
    ns, ns_other, ns_internal = make_ns(), make_ns(), make_ns()
    ip = mgr.attach(net, "web", ns, [])
    mgr.attach(other, "client", ns_other, [])
    mgr.attach(internal, "shut-in", ns_internal, [])
    docroot = tmp_path / "www"
    docroot.mkdir()
    marker = f"hello {_uid()}"
    (docroot / "index.html").write_text(marker)
    httpd = ["busybox", "httpd", "-f", "-p", "80", "-h", str(docroot)]
    procs.append(subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", *httpd]))
    bound = mgr.publish("web", ip, PortBinding(80))
    assert bound.host_port is not None
    assert mgr.publish("web", ip, PortBinding(80)) == bound  # idempotent
    assert http_get(f"http://127.0.0.1:{bound.host_port}/") == marker
    assert http_get(f"http://{host_address()}:{bound.host_port}/") == marker

    # another network reaches the published port through the host, as on docker;
    # an internal one does not, not even through its own gateway address
    def wget(ns_name: str, url: str) -> subprocess.CompletedProcess[str]:
        # (busybox wget crashes on this kind of host; python is the client)
        return in_ns(ns_name, sys.executable, "-c", FETCH, url)

    got = wget(ns_other, f"http://{host_address()}:{bound.host_port}/")
    assert got.returncode == 0 and got.stdout == marker, got.stderr
    # hairpin: a member of the same network, and the container itself, through the host
    ns_peer = make_ns()
    mgr.attach(net, "peer", ns_peer, [])
    for hairpin in (ns_peer, ns):
        got = wget(hairpin, f"http://{host_address()}:{bound.host_port}/")
        assert got.returncode == 0 and got.stdout == marker, (hairpin == ns, got.stderr)
    assert wget(ns_internal, f"http://{internal_gw}:{bound.host_port}/").returncode != 0
    assert not ping(ns_other, ip)  # but not the container itself

    # the same host port cannot be published twice, not even from another state root
    with pytest.raises(Conflict):
        mgr.publish("web", ip, PortBinding(81, host_port=bound.host_port))
    elsewhere = NetworkManager(tmp_path / "other-root")
    try:
        elsewhere.create(NetworkConfig(net))
        ns_elsewhere = make_ns()
        ip_elsewhere = elsewhere.attach(net, "web", ns_elsewhere, [])
        assert elsewhere.bridge_name(net) != mgr.bridge_name(net)
        with pytest.raises(Conflict):
            elsewhere.publish("web", ip_elsewhere, PortBinding(80, host_port=bound.host_port))
    finally:
        elsewhere.reset()
    assert http_get(f"http://127.0.0.1:{bound.host_port}/") == marker  # untouched by that

    # a fixed port on 127.0.0.1 only
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fixed = s.getsockname()[1]
    mgr.publish("web", ip, PortBinding(80, "tcp", "127.0.0.1", fixed))
    assert http_get(f"http://127.0.0.1:{fixed}/") == marker

    mgr.unpublish("web", PortBinding(80))
    assert f"--dport {bound.host_port} " not in iptables_dump()
    assert f"--dport {fixed} " in iptables_dump()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{bound.host_port}/", timeout=2)
    mgr.unpublish("web")
    assert f"--dport {fixed} " not in iptables_dump()
    assert mgr.published() == []


def test_ipam_persists_across_managers_and_reclaims(
    mgr: NetworkManager, make_ns: MakeNs, tmp_path: Path
) -> None:
    net = f"m{_uid()}"
    mgr.create(NetworkConfig(net, subnet="10.231.77.0/24", gateway="10.231.77.1"))
    ns1, ns2, ns3 = make_ns(), make_ns(), make_ns()
    ip1 = mgr.attach(net, "c1", ns1, [])
    assert ip1 == "10.231.77.2"

    other = NetworkManager(tmp_path / "root")  # another process, same root
    state = other.get(net)
    assert state is not None and state.subnet == "10.231.77.0/24" and state.containers == ("c1",)
    ip2 = other.attach(net, "c2", ns2, [], ipv4_address="10.231.77.40")
    assert ip2 == "10.231.77.40"
    with pytest.raises(Conflict):
        mgr.attach(net, "c3", ns3, [], ipv4_address=ip1)
    ip3 = mgr.attach(net, "c3", ns3, [])
    assert len({ip1, ip2, ip3}) == 3

    # an overlapping explicit subnet is refused; an auto one avoids it
    with pytest.raises(Conflict):
        mgr.create(NetworkConfig(f"x{_uid()}", subnet="10.231.77.128/25"))
    # same name and labels again: success; other labels: Conflict
    mgr.create(NetworkConfig(net, subnet="10.231.77.0/24"))
    with pytest.raises(Conflict):
        mgr.create(NetworkConfig(net, labels={"other": "1"}))

    # a crash between the two state files: the network records win
    ipam_file = tmp_path / "root" / "networks" / "ipam.json"
    saved = ipam_file.read_text()
    ipam_file.write_text('{"networks": {}}')
    state = NetworkManager(tmp_path / "root").get(net)
    assert state is not None and state.containers == ("c1", "c2", "c3")
    with pytest.raises(Conflict):  # the lease of c2 is still known
        mgr.attach(net, "c9", make_ns(), [], ipv4_address=ip2)
    assert json.loads(ipam_file.read_text()) == json.loads(saved)

    # another state root picks another subnet from the same pool (the bridge's route is
    # seen), and has its own bridge name for the same network name
    root2 = NetworkManager(tmp_path / "root2")
    try:
        s1 = mgr.create(NetworkConfig(f"q{_uid()}"))
        s2 = root2.create(NetworkConfig(f"q{_uid()}"))
        assert s1.subnet != s2.subnet
    finally:
        root2.reset()

    # c1 no longer exists: reclaim frees its lease and its veth
    veth1 = mgr.veth_name(net, "c1")
    assert link_exists(veth1)
    assert NetworkManager(tmp_path / "root").reclaim(["c2", "c3"]) == [(net, "c1")]
    assert not link_exists(veth1)
    state = mgr.get(net)
    assert state is not None and state.containers == ("c2", "c3")
    ns4 = make_ns()
    assert mgr.attach(net, "c4", ns4, []) == ip1  # the freed address comes back


def test_remove_and_reset_leave_nothing(
    mgr: NetworkManager, make_ns: MakeNs, tmp_path: Path
) -> None:
    before_foreign = [line for line in iptables_dump().splitlines() if "PYAPPLY" not in line]
    a, b = f"r{_uid()}", f"s{_uid()}"
    mgr.create(NetworkConfig(a))
    ns1 = make_ns()
    ip1 = mgr.attach(a, "c1", ns1, [])
    bridge_a, veth1 = mgr.bridge_name(a), mgr.veth_name(a, "c1")
    assert link_exists(bridge_a) and link_exists(veth1)
    mgr.publish("c1", ip1, PortBinding(80))

    with pytest.raises(Conflict):
        mgr.remove(a)
    mgr.detach(a, "c1")
    assert not link_exists(veth1)
    assert "pyapply:" + bridge_a + ":c1" not in iptables_dump()
    mgr.remove(a)
    mgr.remove(a)  # gone is success
    assert not link_exists(bridge_a)
    assert f"pyapply:{bridge_a}" not in iptables_dump()
    assert mgr.get(a) is None

    # now leave things behind and reset
    mgr.create(NetworkConfig(a))
    mgr.create(NetworkConfig(b, internal=True))
    ns2 = make_ns()
    ip1 = mgr.attach(a, "c1", ns1, [])
    mgr.attach(b, "c2", ns2, [])
    mgr.publish("c1", ip1, PortBinding(80))
    bridges = [mgr.bridge_name(a), mgr.bridge_name(b)]
    veths = [mgr.veth_name(a, "c1"), mgr.veth_name(b, "c2")]
    assert links_with_alias(mgr.alias_prefix)
    mgr.reset()

    assert links_with_alias(mgr.alias_prefix) == []
    for name in bridges + veths:
        assert not link_exists(name)
    dump = iptables_dump()
    for bridge in bridges:
        assert bridge not in dump
    assert not (tmp_path / "root" / "networks").exists()
    # reset finds what a lost state forgot (interface aliases, rule comments)
    lost = f"l{_uid()}"
    mgr.create(NetworkConfig(lost))
    mgr.attach(lost, "c1", make_ns(), [])
    # (attached again from a new namespace, as a recreated container is: the veth moves)
    ip_lost = mgr.attach(lost, "c1", ns1, [])
    assert in_ns(ns1, "busybox", "ip", "-4", "addr").stdout.count(ip_lost) == 1
    mgr.publish("c1", ip_lost, PortBinding(80))
    for state_file in (tmp_path / "root" / "networks").glob("*.json"):
        state_file.unlink()
    mgr.reset()
    assert not link_exists(mgr.bridge_name(lost))
    assert not link_exists(mgr.veth_name(lost, "c1"))
    assert mgr.bridge_name(lost) not in iptables_dump()
    dump = iptables_dump()

    # our chains (and their jumps) are gone unless another state root still has rules
    fw = firewall.Firewall()
    if not any(fw.listed(t, c) for t, c in firewall.OUR_CHAINS):
        assert "PYAPPLY" not in dump
    # nothing outside our chains changed because of us (docker's rules are not ours to touch;
    # they may change meanwhile because of docker's own activity, so only compare ours)
    after_foreign = [line for line in dump.splitlines() if "PYAPPLY" not in line]
    assert not [line for line in after_foreign if "pyapply" in line or " pa-" in line]
    assert not [line for line in before_foreign if "pyapply" in line]


ATTACH = """
import sys
from pyapply.runtime.native.network import NetworkManager
print(NetworkManager(sys.argv[1]).attach(sys.argv[2], sys.argv[3], sys.argv[4], []))
"""


def test_concurrent_processes_never_share_an_address(
    mgr: NetworkManager, make_ns: MakeNs, tmp_path: Path
) -> None:
    net = f"k{_uid()}"
    mgr.create(NetworkConfig(net))
    spaces = [make_ns() for _ in range(6)]
    root = str(tmp_path / "root")
    repo = str(Path(__file__).resolve().parents[2])
    running = [
        subprocess.Popen(
            [sys.executable, "-c", ATTACH, root, net, f"c{i}", ns],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=repo,
        )
        for i, ns in enumerate(spaces)
    ]
    ips = []
    for proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        ips.append(out.strip())
    assert len(set(ips)) == 6
    state = mgr.get(net)
    assert state is not None and len(state.containers) == 6
    assert ping(spaces[0], ips[-1])


def test_recovers_after_bridges_and_rules_are_gone(mgr: NetworkManager, make_ns: MakeNs) -> None:
    """As after a reboot: bridge, veths, rules and namespaces gone; state kept."""
    net = f"b{_uid()}"
    mgr.create(NetworkConfig(net))
    ns_old = make_ns()
    ip = mgr.attach(net, "c1", ns_old, [])
    port = mgr.publish("c1", ip, PortBinding(80))
    bridge = mgr.bridge_name(net)
    netns.remove(ns_old)
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=bridge):
            ipr.link("del", index=index)
    mgr.firewall.delete_tagged(
        comments=[firewall.network_comment(bridge)],
        prefixes=[firewall.network_comment(bridge) + ":"],
    )
    assert bridge not in iptables_dump()

    mgr.create(NetworkConfig(net))  # the reconciler's converge: same config again
    assert link_exists(bridge)
    ns_new, ns_peer = make_ns(), make_ns()
    assert mgr.attach(net, "c1", ns_new, []) == ip  # same lease, new veth
    assert mgr.publish("c1", ip, PortBinding(80)) == port
    assert f"--dport {port.host_port} " in iptables_dump()
    peer_ip = mgr.attach(net, "c2", ns_peer, [])
    assert ping(ns_peer, ip) and ping(ns_new, peer_ip)


def test_a_rule_left_by_a_killed_publish_goes_with_the_container(
    mgr: NetworkManager, make_ns: MakeNs
) -> None:
    """publish adds its DNAT rule before the state is saved: a process killed in between
    leaves a rule no record knows. Unpublishing the container's ports removes it, so the
    port can be published again (by the container made anew)."""
    net = f"k{_uid()}"
    mgr.create(NetworkConfig(net))
    ns = make_ns()
    ip = mgr.attach(net, "web", ns, [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binding = PortBinding(80, "tcp", "127.0.0.1", port)
    bridge = mgr.bridge_name(net)
    mgr.firewall.add(firewall.port_rules(bridge, "web", IPv4Address(ip), binding))  # the orphan
    assert f"--dport {port} " in iptables_dump()
    with pytest.raises(Conflict):
        mgr.publish("web", ip, binding)
    mgr.unpublish("web")
    assert f"--dport {port} " not in iptables_dump()
    assert mgr.publish("web", ip, binding) == binding
    mgr.unpublish("web")
    assert f"--dport {port} " not in iptables_dump()
