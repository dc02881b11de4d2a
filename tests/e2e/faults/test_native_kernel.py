"""Faults of the native runtime's kernel side, through the real CLI: the kernel is observed,
not remembered.

A stack of two containers on one network (`web`, serving its hostname on a published port
on 127.0.0.1, with a healthcheck; `client`, which reaches web by name) is deployed; one
kernel object is then taken away as an operator's mistake or a crash would: the network's
bridge (`ip link del`), web's veth, the network's firewall rules (isolation, NAT, guards, its DNS server's
rules and web's DNAT), web's netns file (`ip netns del`), web's conmon (SIGKILL), the
root's keeper (SIGKILL), the root's DNS server (SIGKILL), or its reload (a sync killed
between its writes and the SIGHUP). Each time `diff --exit-code`
must exit 2 with the reason, `pyapply -f` must repair in place (same container ids; only a
container whose conmon died restarts), the published port and container-to-container
traffic must work again, `diff` must exit 0, and (the `native` fixture) nothing of the root
may be left in the kernel afterwards.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

from pyapply.runtime.native import firewall, health, network
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.supervise import pid_alive
from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.runtimes import Cli, RuntimeUnderTest
from tests.e2e.test_native_dns import ask

pytestmark = pytest.mark.e2e

STACK = f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${{STACK}}
spec:
  services:
    web:
      image: {TEST_IMAGE}
      command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
      init: true
      stop_grace_period: 1s
      ports: ["127.0.0.1:${{WEB_PORT}}:80"]
      networks: [back]
      healthcheck:
        test: ["CMD", "true"]
        interval: 1s
    client:
      image: {TEST_IMAGE}
      command: ["sleep", "3600"]
      init: true
      stop_grace_period: 1s
      networks: [back]
  networks:
    back: {{}}
"""


class Deployed:
    """The deployed stack, as the faults and the checks need it."""

    def __init__(self, rut: RuntimeUnderTest, cli: Cli, manifest: Path) -> None:
        self.rut = rut
        self.cli = cli
        self.manifest = manifest
        rt = rut.rt
        assert isinstance(rt, NativeRuntime)
        self.rt = rt
        self.web = f"{rut.stack}-web-1"
        self.client = f"{rut.stack}-client-1"
        self.network = f"{rut.stack}_back"
        key = rt.key(self.web)
        assert key is not None
        self.web_key = key
        self.bridge = rt.networks.bridge_name(self.network)

    def diff(self) -> tuple[int, str]:
        out = self.cli.run("diff", "-f", str(self.manifest), "--exit-code")
        return out.returncode, out.stdout + out.stderr

    def states(self) -> dict[str, tuple[str, str | None]]:
        """Container name -> (id, started_at)."""
        return {
            c.name: (c.id, c.started_at)
            for c in self.rt.list_containers({"io.pyapply.stack": self.rut.stack})
        }

    def published(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.cli.port}/hostname", attempts=20)
        assert status == 200, (status, body)
        return body

    def published_is_dead(self) -> bool:
        try:
            http_get(f"http://127.0.0.1:{self.cli.port}/hostname", timeout=1, attempts=1)
        except OSError:
            return True
        return False

    def client_reaches_web(self) -> str:
        """web's hostname, fetched by client over the network, by web's name (this
        busybox's wget crashes on -T: `timeout` bounds it instead)."""
        code, out = 1, ""
        for _ in range(20):
            code, out = self.rut.exec(
                self.client,
                "timeout",
                "-s",
                "KILL",
                "3",
                "wget",
                "-q",
                "-O-",
                "http://web/hostname",
            )
            if code == 0:
                return out
            time.sleep(0.25)
        raise AssertionError(f"client cannot reach web: {code} {out}")


def _del_link(name: str) -> None:
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=name)
        assert indexes, f"no link {name}"
        ipr.link("del", index=indexes[0])


def _kill(pid: int | None) -> None:
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def delete_bridge(d: Deployed) -> tuple[str, ...]:
    _del_link(d.bridge)
    return (f"bridge {d.bridge} missing", f"not on bridge {d.bridge}")


def delete_veth(d: Deployed) -> tuple[str, ...]:
    veth = d.rt.networks.veth_name(d.network, d.web_key)
    _del_link(veth)
    return (f"veth {veth} on {d.network} missing",)


def delete_rules(d: Deployed) -> tuple[str, ...]:
    comment = firewall.network_comment(d.bridge)
    # every rule of the network: filter isolation, nat, the mangle guards, its DNS server's
    # guard and accept, web's DNAT
    deleted = d.rt.networks.firewall.delete_tagged(comments=[comment], prefixes=[comment + ":"])
    assert deleted == 22, deleted
    return (
        f"rule for 127.0.0.1:{d.cli.port} missing",
        f"21 of 21 firewall rules of {d.bridge} missing",
    )


def kill_dns(d: Deployed) -> tuple[str, ...]:
    _kill(d.rt.networks.dns.pid())  # the root's aardvark-dns, by the pid it wrote
    net = d.rt.get_network(d.network)
    assert net is not None and net.subnet
    gateway = next(IPv4Network(net.subnet).hosts())  # the allocated subnet's gateway
    return (f"no DNS server on {gateway}:53",)


def dns_unread(d: Deployed) -> tuple[str, ...]:
    """What a sync killed between its writes and the reload leaves (`DnsServer.sync`): the
    server answers from an older generation of the files than the directory holds, which
    is what the state wants, so the next sync finds nothing to write. Made here by serving
    a generation without web, then putting the files back with the marker the sync makes
    before its writes."""
    server = d.rt.networks.dns
    path = server.dir / d.bridge
    text = path.read_text()
    assert d.web in text
    path.write_text("".join(ln for ln in text.splitlines(True) if d.web not in ln))
    pid = server.pid()
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    net = d.rt.get_network(d.network)
    assert net is not None and net.subnet
    gateway = str(next(IPv4Network(net.subnet).hosts()))
    deadline = time.monotonic() + 10
    while ask(gateway, "web") != [] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ask(gateway, "web") == [], "the server did not take in the older files"
    server.owed.touch(0o600)
    path.write_text(text)
    return ("its DNS server has not read its names (a sync did not finish)",)


def delete_netns(d: Deployed) -> tuple[str, ...]:
    netns.remove(d.rt.netns_name(d.web_key))  # what `ip netns del` does
    return (f"netns {d.rt.netns_name(d.web_key)} missing",)


def kill_conmon(d: Deployed) -> tuple[str, ...]:
    _kill(d.rt.containers.supervisor_pid(d.web_key))
    return ("conmon not running",)


def kill_keeper(d: Deployed) -> tuple[str, ...]:
    # two starts racing may have left a second keeper queued on the root's lock, which
    # takes over when the first dies (by design): kill each in turn
    for _ in range(5):
        pid = health.checker_pid(d.rt.root)
        if pid is None:
            break
        _kill(pid)
        time.sleep(0.3)
    assert health.checker_pid(d.rt.root) is None
    return ("keeper not running",)


Fault = Callable[[Deployed], tuple[str, ...]]
FAULTS: dict[str, tuple[Fault, bool]] = {
    # name: (the fault, whether it cuts the published port)
    "bridge": (delete_bridge, True),
    "veth": (delete_veth, True),
    "rules": (delete_rules, True),
    "netns": (delete_netns, False),
    "conmon": (kill_conmon, False),
    "keeper": (kill_keeper, False),
    "dns": (kill_dns, False),
    "dns_unread": (dns_unread, False),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_kernel_fault_is_seen_and_repaired_in_place(
    native: RuntimeUnderTest, tmp_path: Path, fault: str
) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    cli = native.cli()
    cli.ok("-f", str(manifest))
    d = Deployed(native, cli, manifest)
    hostname = d.published()
    assert d.client_reaches_web() == hostname
    assert d.diff()[0] == 0
    before = d.states()

    inflict, cuts_port = FAULTS[fault]
    reasons = inflict(d)
    if cuts_port:
        assert d.published_is_dead(), "the fault did not cut the published port"

    code, out = d.diff()
    assert code == 2, f"the fault was not seen:\n{out}"
    for reason in reasons:
        assert reason in out, f"expected {reason!r} in:\n{out}"
    if fault == "keeper":
        assert health.checker_pid(d.rt.root) is None, "diff changed something"
    if fault == "dns_unread":
        # the same files and marker while a sync runs (it holds the DNS lock): in progress,
        # not a fault
        with (d.rt.networks.dir / network.DNS_LOCK_FILE).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            code, out = d.diff()
        assert code == 0, f"a sync in progress was taken for a fault:\n{out}"

    applied = cli.ok("-f", str(manifest))
    assert "Repaired" in applied or "Restarted" in applied, applied
    after = d.states()
    assert {n: s[0] for n, s in after.items()} == {n: s[0] for n, s in before.items()}, (
        "a container was recreated"
    )
    restarted = {n for n in after if after[n][1] != before[n][1]}
    assert restarted == ({d.web} if fault == "conmon" else set()), restarted
    assert d.published() == hostname
    assert d.client_reaches_web() == hostname
    code, out = d.diff()
    assert code == 0, f"not converged after the repair:\n{out}"
    if fault == "netns":
        # the netns file is the container's namespace again (not a new, empty one)
        pid = native.pid(d.web)
        ours, its = os.stat(d.rt.netns_path(d.web_key)), os.stat(f"/proc/{pid}/ns/net")
        assert (ours.st_dev, ours.st_ino) == (its.st_dev, its.st_ino)
    if fault in ("dns", "dns_unread"):
        assert not d.rt.networks.dns.unheard()
        code, out = native.exec(d.client, "nslookup", "web")
        assert code == 0 and "Name:\tweb" in out, out
    if fault in ("conmon", "keeper"):
        assert d.rt.containers.supervisor_pid(d.web_key) is not None
        assert health.checker_pid(d.rt.root) is not None


def test_a_bridge_is_not_remade_on_a_subnet_taken_while_it_was_gone(
    native: RuntimeUnderTest, tmp_path: Path
) -> None:
    """Deleting a bridge frees its subnet's route: whatever takes it meanwhile would get the
    traffic of the published ports if the bridge came back beside it. Apply refuses, says
    why, and repairs once the subnet is free again."""
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    cli = native.cli()
    cli.ok("-f", str(manifest))
    d = Deployed(native, cli, manifest)
    hostname = d.published()
    net = d.rt.get_network(d.network)
    assert net is not None and net.subnet is not None
    taker = f"patk{secrets.token_hex(4)}"
    _del_link(d.bridge)
    with IPRoute() as ipr:
        ipr.link("add", ifname=taker, kind="bridge")
        try:
            index = ipr.link_lookup(ifname=taker)[0]
            # a route for a part of the bridge's subnet, as another network's bridge would have
            subnet = IPv4Network(net.subnet)
            part = next(subnet.subnets(new_prefix=min(subnet.prefixlen + 4, 30)))
            ipr.addr("add", index=index, address=str(part[1]), prefixlen=part.prefixlen)
            ipr.link("set", index=index, state="up")
            refused = cli.run("-f", str(manifest))
            assert refused.returncode != 0, refused.stdout
            said = refused.stdout + refused.stderr
            assert f"subnet {subnet} is now routed via {taker}" in said, said
            assert d.diff()[0] == 2
        finally:
            for i in ipr.link_lookup(ifname=taker):
                ipr.link("del", index=i)
    cli.ok("-f", str(manifest))
    assert d.published() == hostname
    assert d.client_reaches_web() == hostname
    assert d.diff()[0] == 0
