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

import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgspec

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


class LinkInfo(msgspec.Struct, frozen=True):
    name: str
    index: int
    up: bool
    master: int | None  # the index of the bridge it is a port of


class NeighbourInfo(msgspec.Struct, frozen=True):
    """One neighbour entry: its family, link, NUD state, IPv4 address (AF_INET) and MAC,
    and the bridge it was learned on (AF_BRIDGE)."""

    family: int
    ifindex: int
    state: int
    dst: str | None
    lladdr: str | None
    master: int | None


def _attrs(data: bytes, offset: int, wanted: frozenset[int] | None = None) -> dict[int, bytes]:
    """The attributes from `offset` on, by kind (the first of each kind); with `wanted`, only
    those kinds, read no further than the last of them: a link carries some fifty
    attributes (its statistics among them) of which a dump needs two."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        kind &= 0x3FFF
        if (wanted is None or kind in wanted) and kind not in out:
            out[kind] = data[offset + _RTATTR.size : offset + length]
            if wanted is not None and len(out) == len(wanted):
                break
        offset += (length + 3) & ~3
    return out


def _send(sock: socket.socket, seq: int, mtype: int, flags: int, body: bytes) -> None:
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body)


def _answers(sock: socket.socket, seq: int, size: int) -> Iterator[tuple[int, bytes]]:
    """The (type, payload) of each message answering request `seq`, as they come; an error
    message with a code raises it (code 0 is an acknowledgement, yielded as such)."""
    while True:
        data = sock.recv(size)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, mtype, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise OSError("netlink: malformed answer")
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if mseq != seq:
                continue
            if mtype == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", payload)
                if code:
                    raise OSError(-code, os.strerror(-code))
            yield mtype, payload


def _dump(sock: socket.socket, seq: int, kind: int, body: bytes) -> list[tuple[int, bytes]]:
    """One dump request; the (type, payload) of each answer until NLMSG_DONE."""
    _send(sock, seq, kind, _NLM_F_REQUEST | _NLM_F_DUMP, body)
    out: list[tuple[int, bytes]] = []
    for mtype, payload in _answers(sock, seq, 1 << 18):
        if mtype == _NLMSG_DONE:
            return out
        if mtype != _NLMSG_ERROR:
            out.append((mtype, payload))
    raise AssertionError("unreachable: _answers never ends")


_LINK_ATTRS = frozenset((_IFLA_IFNAME, _IFLA_MASTER))


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
            attrs = _attrs(payload, _IFINFOMSG.size, _LINK_ATTRS)
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


# -- requests of an attach, without pyroute2 -----------------------------------------------
# pyroute2's sync API runs each request through an asyncio loop of its own: about a
# millisecond of CPU per request and a few per socket, twenty-odd requests per attach,
# under the network lock. These are the few an attach makes, as rtnetlink(7) has them.

_RTM_DELLINK = 17
_RTM_SETLINK = 19
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLA_F_NESTED = 0x8000
_IFLA_ADDRESS = 1
_IFLA_LINKINFO = 18
_IFLA_PROTINFO = 12
_IFLA_NET_NS_FD = 28
_IFLA_IFALIAS = 20
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_VETH_INFO_PEER = 1
_IFLA_BRPORT_MODE = 4
_IFA_FLAGS = 8
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_TABLE = 15
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RTN_UNICAST = 1
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags


def _attr(kind: int, data: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    raw = _RTATTR.pack(_RTATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


class Rtnl:
    """A NETLINK_ROUTE socket of the namespace of the thread that opens it, for the
    requests an attach makes, each acknowledged before the next (an error is an OSError
    with the kernel's errno)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        try:
            self.sock.bind((0, 0))
            self.sock.settimeout(10)
        except BaseException:
            self.sock.close()
            raise
        self.seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _request(self, mtype: int, body: bytes, flags: int = 0) -> None:
        """One request, acknowledged (an error in the answer raises)."""
        self.seq += 1
        _send(self.sock, self.seq, mtype, _NLM_F_REQUEST | _NLM_F_ACK | flags, body)
        for kind, _payload in _answers(self.sock, self.seq, 1 << 16):
            if kind == _NLMSG_ERROR:
                return

    def _link(
        self,
        mtype: int,
        index: int,
        attrs: bytes = b"",
        *,
        up: bool = False,
        flags: int = 0,
        family: int = socket.AF_UNSPEC,
    ) -> None:
        head = _IFINFOMSG.pack(family, 0, index, _IFF_UP if up else 0, _IFF_UP if up else 0)
        self._request(mtype, head + attrs, flags)

    def delete_link(self, name: str) -> bool:
        """Delete the link `name`; False if there is none."""
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            return False
        try:
            self._link(_RTM_DELLINK, index)
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
            return False
        return True

    def add_veth(self, name: str, peer: str, peer_netns_fd: int) -> int:
        """Make the veth pair `name` (here) and `peer` (in the namespace of the fd); return
        the index of `name`."""
        peer_msg = (
            _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            + _attr(_IFLA_IFNAME, _cstr(peer))
            + _attr(_IFLA_NET_NS_FD, _u32(peer_netns_fd))
        )
        info = _attr(_IFLA_INFO_KIND, b"veth") + _attr(
            _IFLA_INFO_DATA | _NLA_F_NESTED, _attr(_VETH_INFO_PEER | _NLA_F_NESTED, peer_msg)
        )
        attrs = _attr(_IFLA_IFNAME, _cstr(name)) + _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info)
        self._link(_RTM_NEWLINK, 0, attrs, flags=_NLM_F_CREATE | _NLM_F_EXCL)
        return socket.if_nametoindex(name)

    def set_link(
        self,
        index: int,
        *,
        name: str | None = None,
        mac: str | None = None,
        alias: str | None = None,
        master: int | None = None,
        up: bool = False,
    ) -> None:
        """Change a link in one request: its name, MAC, alias, bridge; then bring it up (the
        kernel applies the flags last)."""
        attrs = b""
        if name is not None:
            attrs += _attr(_IFLA_IFNAME, _cstr(name))
        if mac is not None:
            attrs += _attr(_IFLA_ADDRESS, _mac(mac))
        if alias is not None:
            attrs += _attr(_IFLA_IFALIAS, alias.encode())
        if master is not None:
            attrs += _attr(_IFLA_MASTER, _u32(master))
        self._link(_RTM_NEWLINK, index, attrs, up=up)

    def hairpin(self, index: int) -> None:
        """Hairpin mode on a bridge port (a packet may leave by the port it came in on)."""
        attrs = _attr(_IFLA_PROTINFO | _NLA_F_NESTED, _attr(_IFLA_BRPORT_MODE, b"\x01"))
        self._link(_RTM_SETLINK, index, attrs, family=socket.AF_BRIDGE)

    def add_address(self, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        head = _IFADDRMSG.pack(family, prefixlen, flags & 0xFF, 0, index)
        # IPv4 names its own address IFA_LOCAL (IFA_ADDRESS: the peer's, the same here)
        attrs = _attr(_IFA_ADDRESS, ip.packed)
        if family == socket.AF_INET:
            attrs = _attr(_IFA_LOCAL, ip.packed) + attrs
        if flags > 0xFF:
            attrs += _attr(_IFA_FLAGS, _u32(flags))
        self._request(_RTM_NEWADDR, head + attrs, _NLM_F_CREATE | _NLM_F_EXCL)

    def add_bridge(self, name: str, mac: str) -> None:
        """Make the bridge `name` with the MAC `mac`."""
        info = _attr(_IFLA_INFO_KIND, b"bridge")
        attrs = (
            _attr(_IFLA_IFNAME, _cstr(name))
            + _attr(_IFLA_ADDRESS, _mac(mac))
            + _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info)
        )
        self._link(_RTM_NEWLINK, 0, attrs, flags=_NLM_F_CREATE | _NLM_F_EXCL)

    def addresses(self, index: int, family: int) -> set[tuple[str, int]]:
        """(address, prefix length) of the link's addresses of the family."""
        self.seq += 1
        req = _IFADDRMSG.pack(family, 0, 0, 0, 0)
        found: set[tuple[str, int]] = set()
        for mtype, payload in _dump(self.sock, self.seq, _RTM_GETADDR, req):
            if mtype != _RTM_NEWADDR or len(payload) < _IFADDRMSG.size:
                continue
            fam, prefixlen, _f, _scope, idx = _IFADDRMSG.unpack_from(payload)
            if idx != index or fam != family:
                continue
            attrs = _attrs(payload, _IFADDRMSG.size)
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if raw and len(raw) in (4, 16):
                found.add((str(ipaddress.ip_address(raw)), prefixlen))
        return found

    def routes(self, family: int) -> list[tuple[str | None, int, int | None, int]]:
        """(destination, its prefix length, output link index, table) of every route of
        the family."""
        self.seq += 1
        req = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        out: list[tuple[str | None, int, int | None, int]] = []
        for mtype, payload in _dump(self.sock, self.seq, _RTM_GETROUTE, req):
            if mtype != _RTM_NEWROUTE or len(payload) < _RTMSG.size:
                continue
            _fam, dst_len, _s, _t, table, _p, _sc, _ty, _f = _RTMSG.unpack_from(payload)
            attrs = _attrs(payload, _RTMSG.size)
            raw_table = attrs.get(_RTA_TABLE)
            if raw_table and len(raw_table) >= 4:
                table = struct.unpack("=I", raw_table[:4])[0]
            dst = attrs.get(_RTA_DST)
            oif = attrs.get(_RTA_OIF)
            out.append(
                (
                    str(ipaddress.ip_address(dst)) if dst and len(dst) in (4, 16) else None,
                    dst_len,
                    struct.unpack("=I", oif[:4])[0] if oif and len(oif) >= 4 else None,
                    table,
                )
            )
        return out

    def has_default_route(self, family: int) -> bool:
        """Whether the main table has a default route of the family."""
        return any(
            dst_len == 0 and table == _RT_TABLE_MAIN
            for _dst, dst_len, _oif, table in self.routes(family)
        )

    def add_default_route(self, gateway: str, oif: int) -> None:
        ip = ipaddress.ip_address(gateway)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        head = _RTMSG.pack(family, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, 0, _RTN_UNICAST, 0)
        attrs = _attr(_RTA_GATEWAY, ip.packed) + _attr(_RTA_OIF, _u32(oif))
        self._request(_RTM_NEWROUTE, head + attrs, _NLM_F_CREATE | _NLM_F_EXCL)


def IPRoute(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import IPRoute as cls  # type: ignore[import-untyped]

    return cls(*args, **kwargs)


def NetNS(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import NetNS as cls

    return cls(*args, **kwargs)


_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
NETNS_DIR = "/run/netns"
T = TypeVar("T")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _in_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a thread of its own, which ends with it: a thread that changed its network
    namespace (setns, unshare) takes the change with it."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="pyapply-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns {path}: {os.strerror(code)}")
    finally:
        os.close(fd)


def in_netns(path: str, fn: Callable[[Rtnl], T]) -> T:
    """`fn(rtnl)` with a netlink socket in the network namespace at `path`, made and used in
    a thread of its own that joined the namespace (setns(2) moves only the calling thread).
    pyroute2's NetNS forks a copy of this process to make its socket: about five times the
    time, paid twice per container create."""

    def run() -> T:
        _setns(path)
        with Rtnl() as rtnl:
            return fn(rtnl)

    return _in_thread(run)


def netns_create(name: str) -> None:
    """Make the named network namespace /run/netns/NAME, as `ip netns add` does (the
    directory a shared mount point, the namespace bind-mounted on a file in it), from a
    thread that unshares its own namespace (pyroute2 forks a process for it), with its
    loopback up."""
    path = os.path.join(NETNS_DIR, name)
    libc = _libc()
    os.makedirs(NETNS_DIR, exist_ok=True)
    # a shared mount point, so that namespaces mounted later are seen in other mount
    # namespaces (a bind mount of itself first, if it is no mount point yet)
    if libc.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC, None) != 0:
        if libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", _MS_BIND | _MS_REC, None):
            code = ctypes.get_errno()
            raise OSError(code, f"mount {NETNS_DIR}: {os.strerror(code)}")
        if libc.mount(b"", NETNS_DIR.encode(), b"none", _MS_SHARED | _MS_REC, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"share {NETNS_DIR}: {os.strerror(code)}")
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make() -> None:
        if libc.unshare(_CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare: {os.strerror(code)}")
        own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        if libc.mount(own.encode(), path.encode(), b"none", _MS_BIND, None) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"mount {path}: {os.strerror(code)}")
        with Rtnl() as rtnl:
            rtnl.set_link(socket.if_nametoindex("lo"), up=True)

    try:
        _in_thread(make)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def netlink_error() -> Any:
    """pyroute2's NetlinkError, for `except netlink_error() as e:` (evaluated only when an
    exception is being handled, by which time pyroute2 has been imported)."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    return NetlinkError


def netns_attach(name: str, pid: int) -> None:
    """Make /run/netns/NAME the network namespace of process `pid` (a bind mount of its
    /proc/PID/ns/net, as `netns_create` makes for a new one)."""
    from pyroute2 import netns

    netns.attach(name, pid)


def netns_remove(name: str) -> None:
    from pyroute2 import netns

    netns.remove(name)
