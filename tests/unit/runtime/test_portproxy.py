"""The userland proxy of ports on [::1] (runtime/native/portproxy.py, proxyserver.py): which
ports it serves, and the process itself relaying TCP and UDP to local servers (127.0.0.1
stands in for a container's address), following a change of its list, and stopping."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native.portproxy import PortProxy, Relay, is_proxied, relayed, relays, render


def port(host_ip: str, host_port: int | None, proto: str = "tcp", ip: str = "10.89.3.2") -> Any:
    binding = {"container_port": 80, "protocol": proto, "host_ip": host_ip}
    return {"container": "c", "ip": ip, "binding": {**binding, "host_port": host_port}}


def test_ports_on_ipv6_loopback_and_on_all_addresses_are_the_proxys() -> None:
    # only the proxy serves [::1]; ports on all addresses also have their DNATs
    assert is_proxied("::1") and is_proxied("0:0:0:0:0:0:0:1")
    assert not any(is_proxied(h) for h in ("", "::", "127.0.0.1", "fd00::1", "zz::1"))
    assert relayed("", "tcp") and relayed("::", "UDP") and relayed("::1", "tcp")
    assert not relayed("", "sctp") and not relayed("127.0.0.1", "tcp")
    assert not relayed("fd00::1", "tcp")
    nets = {
        "a": {"ports": [port("::1", 8080), port("", 8081), port("::1", 53, "udp")]},
        "b": {"ports": [port("127.0.0.1", 8082), port("::", 8083), port("", 8084, "sctp")]},
    }
    assert relays(nets) == [
        Relay("tcp", 8080, "10.89.3.2", 80),
        Relay("tcp", 8081, "10.89.3.2", 80),
        Relay("tcp", 8083, "10.89.3.2", 80),
        Relay("udp", 53, "10.89.3.2", 80),
    ]
    text, generation = render(relays(nets))
    assert generation in text and render(relays(nets)) == (text, generation)
    assert render([])[1] != generation


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET6, kind) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends() -> Iterator[tuple[int, int]]:
    """A TCP and a UDP echo server on 127.0.0.1 (the "container"), for the test's life."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(30)

    def tcp_echo() -> None:
        while True:
            try:
                conn, _ = tcp.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"tcp:" + data)

    def udp_echo() -> None:
        while True:
            try:
                data, peer = udp.recvfrom(2048)
            except OSError:
                return
            udp.sendto(b"udp:" + data, peer)

    for fn in (tcp_echo, udp_echo):
        threading.Thread(target=fn, daemon=True).start()
    try:
        yield tcp.getsockname()[1], udp.getsockname()[1]
    finally:
        tcp.close()
        udp.close()


def _tcp(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("::1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # the half-close is passed on
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _udp(port: int, payload: bytes) -> bytes | None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(payload, ("::1", port))
        try:
            return s.recv(2048)
        except TimeoutError:
            return None


def test_the_proxy_relays_follows_its_list_and_stops(
    tmp_path: Path, backends: tuple[int, int]
) -> None:
    tcp_to, udp_to = backends
    host_tcp, host_udp = _free(socket.SOCK_STREAM), _free(socket.SOCK_DGRAM)
    proxy = PortProxy(tmp_path / "proxy")

    def nets(*ports: Any) -> dict[str, Any]:
        return {"n": {"ports": list(ports)}}

    tcp_port = port("::1", host_tcp, ip="127.0.0.1")
    tcp_port["binding"]["container_port"] = tcp_to
    udp_port = port("::1", host_udp, "udp", ip="127.0.0.1")
    udp_port["binding"]["container_port"] = udp_to
    try:
        proxy.sync(nets(tcp_port, udp_port))
        pid = proxy.pid()
        assert pid is not None
        assert (tmp_path / "proxy").stat().st_mode & 0o777 == 0o700
        big = bytes(range(256)) * 2048  # 512 KiB: more than a buffer, both ways
        assert _tcp(host_tcp, big) == b"tcp:" + big
        assert _udp(host_udp, b"x") == b"udp:x"
        proxy.sync(nets(tcp_port, udp_port))  # nothing changed: the same process
        assert proxy.pid() == pid
        proxy.sync(nets(tcp_port))  # the UDP port unpublished: closed when sync returns
        assert proxy.pid() == pid and _udp(host_udp, b"x") is None
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", host_udp))  # free again
        assert _tcp(host_tcp, b"y") == b"tcp:y"
    finally:
        proxy.sync({})
    assert proxy.pid() is None and not (tmp_path / "proxy").exists()
    with pytest.raises(ConnectionRefusedError):
        _tcp(host_tcp, b"z")


class _Killed(BaseException):
    """Stands for the SIGKILL of the process that syncs, at the point it would reload."""


def test_a_sync_killed_before_its_reload_is_made_good_by_the_next(
    tmp_path: Path, backends: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file written, the SIGHUP never sent: the next sync of the same state finds the
    file as it wants it, and must still make the running proxy take it in."""
    import pyapply.runtime.native.portproxy as portproxy

    tcp_to, udp_to = backends
    host_tcp, host_udp = _free(socket.SOCK_STREAM), _free(socket.SOCK_DGRAM)
    tcp_port = port("::1", host_tcp, ip="127.0.0.1")
    tcp_port["binding"]["container_port"] = tcp_to
    udp_port = port("::1", host_udp, "udp", ip="127.0.0.1")
    udp_port["binding"]["container_port"] = udp_to
    proxy = PortProxy(tmp_path / "proxy")
    real_kill = portproxy.os.kill

    def kill(pid: int, sig: int) -> None:
        if sig == portproxy.signal.SIGHUP:
            raise _Killed
        real_kill(pid, sig)

    try:
        proxy.sync({"n": {"ports": [tcp_port, udp_port]}})
        with monkeypatch.context() as m:
            m.setattr(portproxy.os, "kill", kill)
            with pytest.raises(_Killed):
                proxy.sync({"n": {"ports": [tcp_port]}})
        assert _udp(host_udp, b"x") == b"udp:x"  # not taken in yet
        assert proxy.unheard()  # what the network's faults report
        proxy.sync({"n": {"ports": [tcp_port]}})
        assert _udp(host_udp, b"x") is None
        assert not proxy.unheard()
        assert _tcp(host_tcp, b"y") == b"tcp:y"
    finally:
        proxy.sync({})
    assert proxy.pid() is None


def test_a_port_the_proxy_cannot_take_is_an_error_that_names_it(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        busy = int(taken.getsockname()[1])
        proxy = PortProxy(tmp_path / "proxy")
        try:
            with pytest.raises(PermanentError, match=rf"cannot listen on \[::1\]:{busy}/tcp"):
                proxy.sync({"n": {"ports": [port("::1", busy, ip="127.0.0.1")]}})
        finally:
            proxy.sync({})
