"""The native networks' DNS server on data (runtime/native/dns.py): the aardvark-dns files made
from network records, the names they hold, the upstream resolvers, the listeners read from
/proc/net/udp and a container's resolv.conf."""

from __future__ import annotations

import os
import re
import socket
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native import dns

REC: dict[str, Any] = {
    "name": "shop_back",
    "bridge": "pa-93516a4c",
    "gateway": "10.89.1.1",
    "endpoints": {
        "shop-web-2": {"ip": "10.89.1.4", "aliases": ["shop-web-2", "web", "www"]},
        "shop-web-1": {"ip": "10.89.1.3", "aliases": ["web", "www", "shop-web-1"]},
        # a renamed container (start-first update): its key differs from its name
        "shop-db-1.a1b2c3": {"ip": "10.89.1.2", "aliases": ["DB", "shop-db-1"]},
    },
}


def test_a_network_file_is_the_gateway_then_one_line_per_member() -> None:
    assert dns.render_network(REC) == (
        "10.89.1.1\n"
        "shop-db-1.a1b2c3 10.89.1.2  shop-db-1.a1b2c3,db,shop-db-1\n"
        "shop-web-1 10.89.1.3  shop-web-1,web,www\n"
        "shop-web-2 10.89.1.4  shop-web-2,web,www\n"
    )


def test_a_member_being_stopped_has_no_line() -> None:
    """NetworkManager.withdraw marks a container about to be stopped: its names no longer
    resolve to it, its service's resolve to the other replicas."""
    endpoints = dict(REC["endpoints"])
    endpoints["shop-web-2"] = {**endpoints["shop-web-2"], "withdrawn": True}
    assert dns.render_network({**REC, "endpoints": endpoints}) == (
        "10.89.1.1\n"
        "shop-db-1.a1b2c3 10.89.1.2  shop-db-1.a1b2c3,db,shop-db-1\n"
        "shop-web-1 10.89.1.3  shop-web-1,web,www\n"
    )


def test_upstream_resolvers_follow_the_gateway_on_the_first_line() -> None:
    text = dns.render_network({**REC, "endpoints": {}}, ("127.0.0.153", "10.0.0.2"))
    assert text == "10.89.1.1 127.0.0.153,10.0.0.2\n"


def test_names_the_file_format_cannot_hold_are_left_out() -> None:
    assert dns.dns_names("c1", ["a b", "x,y", "", "ok.name", "OK.name", "-lead"]) == [
        "c1",
        "ok.name",
    ]
    # a member whose own key cannot be written has no line at all
    rec = {**REC, "endpoints": {"bad key": {"ip": "10.89.1.9", "aliases": ["fine"]}}}
    assert dns.render_network(rec) == "10.89.1.1\n"


def test_the_directory_holds_one_file_per_network_named_after_its_bridge() -> None:
    other = {**REC, "name": "shop_front", "bridge": "pa-00000001", "gateway": "10.89.2.1"}
    files, canary = dns.config_files({"shop_back": REC, "shop_front": other}, ("127.0.0.9",))
    assert sorted(files) == ["pa-00000001", "pa-93516a4c"]
    assert files["pa-00000001"].splitlines()[0] == "10.89.2.1 127.0.0.9"
    # each file ends with the generation's canary, answered with the file's gateway
    assert re.fullmatch(r"pyapply-sync-[0-9a-f]{16}", canary)
    assert files["pa-00000001"].endswith(f"\npyapply-sync 10.89.2.1  {canary}\n")
    assert files["pa-93516a4c"] == dns.render_network(REC, ("127.0.0.9",)) + (
        f"pyapply-sync 10.89.1.1  {canary}\n"
    )
    # a new generation has a new canary; the same content the same one
    assert dns.config_files({"shop_back": REC, "shop_front": other}, ("127.0.0.9",))[1] == canary
    assert dns.config_files({"shop_back": REC}, ("127.0.0.9",))[1] != canary
    assert dns.config_files({"shop_back": REC, "shop_front": other})[1] != canary


def test_a_query_and_its_answer_on_the_wire() -> None:
    query = dns.a_query(0x1234, "pyapply-sync-ab.")
    assert query == (
        bytes.fromhex("1234 0100 0001 0000 0000 0000")
        + b"\x0fpyapply-sync-ab\x00"
        + bytes.fromhex("0001 0001")
    )
    header = bytes.fromhex("1234 8180 0001 0001 0000 0000")
    assert dns.is_answer(header + query[12:], 0x1234)
    assert not dns.is_answer(header + query[12:], 0x1235)  # another query's
    assert not dns.is_answer(bytes.fromhex("1234 8183 0001 0000 0000 0000"), 0x1234)  # NXDOMAIN
    assert not dns.is_answer(bytes.fromhex("1234 8180 0001 0000 0000 0000"), 0x1234)  # empty
    assert not dns.is_answer(bytes.fromhex("1234 0100 0001 0001 0000 0000"), 0x1234)  # a query
    assert not dns.is_answer(b"\x12\x34", 0x1234)


def test_upstream_from_the_environment() -> None:
    assert dns.upstream_from_env(None) == ()
    assert dns.upstream_from_env(" 127.0.0.153 , ::1,") == ("127.0.0.153", "::1")
    with pytest.raises(PermanentError, match=r"PYAPPLY_DNS_UPSTREAM: 'dns.example' is not"):
        dns.upstream_from_env("127.0.0.1,dns.example")


def test_udp_listeners_are_read_from_proc_net_udp() -> None:
    # lines as the kernel prints them: an address is the hex of its 32-bit value in host
    # order (0100007F for 127.0.0.1 on x86)
    def hexed(ip: str) -> str:
        return f"{struct.unpack('=I', socket.inet_aton(ip))[0]:08X}"

    gw, lo = hexed("10.89.1.1"), hexed("127.0.0.1")
    text = (
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        f"11161: {gw}:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0\n"
        f"  201: {lo}:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0\n"
        "  202: garbage\n"
    )
    found = dns.udp_listeners(text)
    assert found == {("10.89.1.1", 53), ("127.0.0.1", 5353)}
    assert dns.dns_fault(REC, found) is None
    assert dns.dns_fault(REC, frozenset({("127.0.0.1", 53)})) == "no DNS server on 10.89.1.1:53"


def test_a_dual_stack_network_is_served_on_both_gateways() -> None:
    rec = {**REC, "subnet6": "fd00:1::/64", "gateway6": "fd00:1:0:0::1", "endpoints": {}}
    assert dns.gateways(rec) == ["10.89.1.1", "fd00:1::1"]
    assert dns.gateways({**rec, "subnet6": None}) == ["10.89.1.1"]
    assert dns.render_network(rec, ("127.0.0.9",)) == "10.89.1.1,fd00:1::1 127.0.0.9\n"
    # /proc/net/udp6: four 32-bit words, each in host order
    raw = socket.inet_pton(socket.AF_INET6, "fd00:1::1")
    words = "".join(f"{w:08X}" for w in struct.unpack("=4I", raw))
    text = (
        "  sl  local_address                         remote_address                        st\n"
        f" 512: {words}:0035 00000000000000000000000000000000:0000 07\n"
    )
    found = dns.udp_listeners(text)
    assert found == {("fd00:1::1", 53)}
    assert dns.dns_fault(rec, found) == "no DNS server on 10.89.1.1:53"
    assert dns.dns_fault(rec, found | {("10.89.1.1", 53)}) is None
    assert dns.dns_fault(rec, frozenset({("10.89.1.1", 53)})) == "no DNS server on [fd00:1::1]:53"


def test_this_hosts_proc_net_udp_shows_a_socket_we_bind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert ("127.0.0.1", port) in dns.read_udp_listeners()
    assert ("127.0.0.1", port) not in dns.read_udp_listeners()


def test_resolv_conf_names_the_gateways_with_the_hosts_search_and_options() -> None:
    host = (
        "# made by someone\n"
        "domain old.example\n"
        "search corp.example lab.example\n"
        "nameserver 10.255.255.53\n"
        "options ndots:2 timeout:1\n"
    )
    assert dns.resolv_conf(["10.89.1.1", "10.89.2.1"], host, ["8.8.8.8"]) == (
        "nameserver 10.89.1.1\n"
        "nameserver 10.89.2.1\n"
        "search corp.example lab.example\n"
        "options ndots:2 timeout:1\n"
    )
    # on no network: the fallback servers (the host's, as before any network)
    assert dns.resolv_conf([], "nameserver 127.0.0.53\n", ["10.1.1.1"]) == "nameserver 10.1.1.1\n"


def test_a_server_not_running_has_no_pid(tmp_path: Path) -> None:
    server = dns.DnsServer(tmp_path / "dns", tmp_path / "dns.log")
    assert server.pid() is None
    (tmp_path / "dns").mkdir()
    # a pid file naming a live process that is not our aardvark-dns (this test's own pid)
    (tmp_path / "dns" / dns.PID_FILE).write_text(str(os.getpid()))
    assert server.pid() is None
    server.stop()  # signals nobody; removes the directory
    assert not (tmp_path / "dns").exists()


def test_the_services_own_dns_search_and_options_replace_their_parts() -> None:
    host = "nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n"
    own = {"servers": ["192.0.2.53"], "search": ["svc.example"], "options": ["ndots:2"]}
    assert dns.resolv_conf(["10.89.1.1"], host, own=own) == (
        "nameserver 192.0.2.53\nsearch svc.example\noptions ndots:2\n"
    )
    # only what is given is replaced
    assert dns.resolv_conf(["10.89.1.1"], host, own={"search": ["a.example"]}) == (
        "nameserver 10.89.1.1\nsearch a.example\noptions edns0\n"
    )


def test_an_internal_network_forwards_to_the_server_that_forwards_nothing() -> None:
    inner = {
        "name": "shop_inner",
        "bridge": "pa-00000002",
        "gateway": "10.89.3.1",
        "internal": True,
        "endpoints": {
            "lonely": {"ip": "10.89.3.2", "aliases": []},
            "both": {"ip": "10.89.3.3", "aliases": []},
        },
    }
    outer = {
        **REC,
        "internal": False,
        "endpoints": {"both": {"ip": "10.89.1.9", "aliases": []}},
    }
    nets = {"shop_inner": inner, "shop_back": outer}
    files, _ = dns.config_files(nets, ("127.0.0.9",), "127.64.1.2", ("127.0.0.9",))
    assert files["pa-00000002"].splitlines()[:3] == [
        "10.89.3.1 127.64.1.2",  # the internal network's resolver: the local-only server
        "both 10.89.3.3  both 127.0.0.9",  # also on a network with a way out: forwarded
        "lonely 10.89.3.2  lonely",
    ]
    assert files["pa-93516a4c"].splitlines()[:2] == [
        "10.89.1.1 127.0.0.9",
        "both 10.89.1.9  both 127.0.0.9",
    ]
    # without the local-only server (none needed: no internal network) nothing changes
    plain, _ = dns.config_files({"shop_back": outer})
    assert plain["pa-93516a4c"].splitlines()[1] == "both 10.89.1.9  both"


def test_the_local_only_address_is_a_roots_own_loopback_address() -> None:
    a = dns.local_only_address(Path("/var/lib/pyapply/networks/dns-local"))
    b = dns.local_only_address(Path("/var/lib/other/networks/dns-local"))
    assert a != b
    for addr in (a, b):
        ip = IPv4Address(addr)
        assert ip in IPv4Network("127.64.0.0/10") and addr.split(".")[3] not in ("0", "255")
    text = "search x\nnameserver 127.0.0.53\nnameserver fd00::1\nnameserver bogus\n"
    assert dns.host_resolvers(text) == ["127.0.0.53", "fd00::1"]
