"""pyroute2, imported on first use; and the two netlink dumps observation makes, without it.

Importing the pyroute2 package costs about 200 ms, because its __init__ loads all of its
parts (NDB, IPDB, conntrack ...), whatever one asks for. Reading the native runtime's state
(a no-op apply, `diff`, `get`) must stay cheap, so the modules that change the kernel go
through these wrappers, and the package is imported by the first call that needs it. What
observation reads on every pass -- every link (name, index, up, bridge master) and every
IPv4 address -- is two dumps on one rtnetlink socket of our own (`dump_links_and_addrs`,
from rtnetlink(7): a few structs, the standard library only).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

# rtnetlink(7) / linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_RTM_NEWLINK = 16
_RTM_GETLINK = 18
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_IFLA_IFNAME = 3
_IFLA_MASTER = 10
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFF_UP = 0x1
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
# linux/neighbour.h
_RTM_NEWNEIGH = 28
_RTM_GETNEIGH = 30
_NDA_DST = 1
_NDA_LLADDR = 2
_NDA_MASTER = 9
_NDA_IFINDEX = 8
_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12
_NDMSG = struct.Struct("=BxxxiHBB")  # family, pad, ifindex, state, flags, type


@dataclass(frozen=True)
class LinkInfo:
    name: str
    index: int
    up: bool
    master: int | None  # the index of the bridge it is a port of


@dataclass(frozen=True)
class NeighbourInfo:
    """One neighbour entry: its family, link, NUD state, IPv4 address (AF_INET) and MAC,
    and the bridge it was learned on (AF_BRIDGE)."""

    family: int
    ifindex: int
    state: int
    dst: str | None
    lladdr: str | None
    master: int | None


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        out.setdefault(kind & 0x3FFF, data[offset + _RTATTR.size : offset + length])
        offset += (length + 3) & ~3
    return out


def _dump(sock: socket.socket, seq: int, kind: int, body: bytes) -> list[tuple[int, bytes]]:
    """One dump request; the (type, payload) of each answer until NLMSG_DONE."""
    sock.send(
        _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
        + body
    )
    out: list[tuple[int, bytes]] = []
    while True:
        data = sock.recv(1 << 18)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise OSError("netlink: malformed answer")
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == _NLMSG_DONE:
                return out
            if mtype == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", payload)
                if code:
                    raise OSError(-code, f"netlink dump: {os.strerror(-code)}")
                continue
            out.append((mtype, payload))


def dump_links_and_addrs() -> tuple[list[LinkInfo], list[tuple[int, str, int]]]:
    """Every link, and every IPv4 and IPv6 address as (link index, address, prefix length): one
    link dump and one address dump on one rtnetlink socket."""
    links: list[LinkInfo] = []
    addrs: list[tuple[int, str, int]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.bind((0, 0))
        sock.settimeout(10)
        req = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for mtype, payload in _dump(sock, 1, _RTM_GETLINK, req):
            if mtype != _RTM_NEWLINK or len(payload) < _IFINFOMSG.size:
                continue
            _fam, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
            attrs = _attrs(payload, _IFINFOMSG.size)
            name = attrs.get(_IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            master = attrs.get(_IFLA_MASTER)
            links.append(
                LinkInfo(
                    name,
                    index,
                    bool(flags & _IFF_UP),
                    struct.unpack("=I", master[:4])[0] if master and len(master) >= 4 else None,
                )
            )
        req = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for mtype, payload in _dump(sock, 2, _RTM_GETADDR, req):
            if mtype != _RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
                continue
            family, prefixlen, _f, _scope, index = _IFADDRMSG.unpack_from(payload)
            attrs = _attrs(payload, _IFADDRMSG.size)
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if family == socket.AF_INET and raw and len(raw) == 4:
                addrs.append((index, socket.inet_ntoa(raw), prefixlen))
            elif family == socket.AF_INET6 and raw and len(raw) == 16:
                addrs.append((index, str(ipaddress.IPv6Address(raw)), prefixlen))
    return links, addrs


def dump_neighbours(families: tuple[int, ...], *, bridge: int | None = None) -> list[NeighbourInfo]:
    """Every neighbour entry of the given families (AF_INET: the ARP cache; AF_BRIDGE: the
    MACs the bridges' ports learned), one dump per family on one rtnetlink socket. Ours
    rather than pyroute2's: it decodes every attribute of every entry, which cost tens of
    milliseconds per attach on a host with many neighbours, under the network lock.
    `bridge` (a link index): only the AF_INET entries of that link and the AF_BRIDGE
    entries learned on its ports, filtered by the kernel (strict dump checking, Linux 4.20)
    rather than read whole: a host's other bridges may hold hundreds of entries."""
    out: list[NeighbourInfo] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.bind((0, 0))
        sock.settimeout(10)
        if bridge is not None:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        for seq, family in enumerate(families, start=1):
            req = _NDMSG.pack(family, 0, 0, 0, 0)
            if bridge is not None:
                kind = _NDA_IFINDEX if family != socket.AF_BRIDGE else _NDA_MASTER
                req += _RTATTR.pack(_RTATTR.size + 4, kind) + struct.pack("=I", bridge)
            for mtype, payload in _dump(sock, seq, _RTM_GETNEIGH, req):
                if mtype != _RTM_NEWNEIGH or len(payload) < _NDMSG.size:
                    continue
                fam, ifindex, state, _flags, _type = _NDMSG.unpack_from(payload)
                attrs = _attrs(payload, _NDMSG.size)
                dst = attrs.get(_NDA_DST)
                lladdr = attrs.get(_NDA_LLADDR)
                master = attrs.get(_NDA_MASTER)
                out.append(
                    NeighbourInfo(
                        fam,
                        ifindex,
                        state,
                        socket.inet_ntoa(dst) if dst and len(dst) == 4 else None,
                        ":".join(f"{b:02x}" for b in lladdr) if lladdr else None,
                        struct.unpack("=I", master[:4])[0] if master and len(master) >= 4 else None,
                    )
                )
    return out


def IPRoute(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import IPRoute as cls  # type: ignore[import-untyped]

    return cls(*args, **kwargs)


def NetNS(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import NetNS as cls

    return cls(*args, **kwargs)


_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(path: str, fn: Callable[[Any], T]) -> T:
    """`fn(ipr)` with an IPRoute socket in the network namespace at `path`, made and used in
    a thread of its own that joined the namespace (setns(2) moves only the calling thread;
    the thread ends with it). pyroute2's NetNS forks a copy of this process to make its
    socket: about five times the time, paid twice per container create."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {path}: {os.strerror(code)}")
            finally:
                os.close(fd)
            with IPRoute() as ipr:
                result.append(fn(ipr))
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="pyapply-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def netlink_error() -> Any:
    """pyroute2's NetlinkError, for `except netlink_error() as e:` (evaluated only when an
    exception is being handled, by which time pyroute2 has been imported)."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    return NetlinkError


def netns_create(name: str) -> None:
    """Make the named network namespace /run/netns/NAME."""
    from pyroute2 import netns

    netns.create(name)


def netns_attach(name: str, pid: int) -> None:
    """Make /run/netns/NAME the network namespace of process `pid` (a bind mount of its
    /proc/PID/ns/net, as `netns_create` makes for a new one)."""
    from pyroute2 import netns

    netns.attach(name, pid)


def loopback_up(path: str) -> None:
    """Bring up `lo` in the network namespace at `path`: a container on no network (or one
    whose namespace others join) still has its 127.0.0.1, as Docker's "none" has."""

    def up(ns: Any) -> None:
        lo = ns.link_lookup(ifname="lo")
        if lo:
            ns.link("set", index=lo[0], state="up")

    in_netns(path, up)


def netns_remove(name: str) -> None:
    from pyroute2 import netns

    netns.remove(name)
