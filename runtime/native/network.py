"""Bridge networks for the native runtime: bridges, veths, IPAM, NAT, ports, names.

Kernel objects are made through netlink with pyroute2; firewall rules through iptables (see
`firewall.py` for why). State lives under `<root>/networks/`: `networks.json` (networks,
their endpoints, published ports, registered hosts files) and `ipam.json` (subnets and
leases), written atomically and only while holding `<root>/networks/.lock`, so concurrent
pyapply processes serialise their changes.

Names: a network's bridge is `pa-<8 hex>` and an attachment's host-side veth `pav<8 hex>`,
both hashed from the state root and the names involved, so they are stable across restarts
and distinct between state roots. Both carry the interface alias `pyapply:<root tag>:...` so
that `reset()` finds them in the kernel even if the state was lost.

Name resolution, two ways. Managed /etc/hosts files: `hosts_for(container)` renders the
hosts content of a container (every endpoint of every network it is on, by container name
and aliases — the reconciler passes the service name as an alias). A container's runtime
registers the path of the file it bind-mounts as /etc/hosts (`set_hosts_file` or
`attach(hosts_path=)`), and every membership change rewrites the files of all containers on
the affected network, in place (same inode, so the bind mount sees it), and the container's
own resolv.conf beside it (its networks' gateways as nameservers). And DNS, for resolvers
that ask it directly: the root's aardvark-dns (dns.py), whose files every transaction that
changed the state brings up to date (and reloads it) once the state is saved; the
operations that make a network or an attachment ready (create, ensure, attach, repair,
restore) also make sure the server runs and listens, and fail if it cannot.

Kernel checks: the state says what should be in the kernel; `kernel_view()` reads what is
(one netlink link dump, one address dump, one `iptables-save`) and `network_faults` /
`endpoint_faults` / `port_faults` compare the two (pure), so that observation reports a
bridge, veth, address or rule deleted behind our back, and `repair(container)` remakes
only what is missing, keeping the container's addresses. A bridge's MAC address follows
from its gateway (as a container's does from its address), so a remade bridge has the MAC
the containers' ARP caches hold. The container side of a veth is not looked at: a veth
pair lives and dies as one (the host side present means the peer is), the namespace's own
presence is checked by the driver, and looking inside each namespace would cost a netlink
socket in it per container per look.

Published ports: iptables DNAT in PREROUTING and OUTPUT for local destinations, with
`route_localnet=1` on the bridge and a MASQUERADE of 127.0.0.0/8 sources so that
127.0.0.1:PORT works (the loopback guard in `firewall.py` keeps containers from using that
setting to reach the host's loopback services). Chosen over a userland proxy for the same
reason: nothing of ours has to keep running once pyapply exits, and it is what the kernel
already does for docker's bridge networks without the proxy.

IPv6 (`enable_ipv6`): a dual-stack network's record holds an IPv6 subnet and gateway too;
the bridge carries the gateway, each container the address `ipam.endpoint_ipv6` derives
from its IPv4 lease (both added with IFA_F_NODAD: the addresses are ours to hand out, so
duplicate address detection would only leave them "tentative", unusable, for a second or
two after a start), and, unless the network is internal, a default IPv6 route via the
gateway. ip6tables holds the same isolation, NAT and guard rules as iptables (firewall.py),
and published ports get an ip6tables DNAT rule to the container's IPv6 address beside the
IPv4 one. A port published on [::1] is the exception: the kernel never routes a packet from
::1 off the loopback interface (IPv6 has no route_localnet), so a DNAT from [::1] has no way
to the bridge; such ports are served by the root's userland proxy (portproxy.py), which
every transaction brings up to date after the save, as it does the DNS server. Containers
reach the host's [::1] no more than 127.0.0.1.
Forwarding: net.ipv6.conf.all.forwarding is turned on (as dockerd does), which also makes
the host ignore router advertisements on interfaces with accept_ra=1.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import msgspec

from pyapply.runtime.base import (
    Attachment,
    Conflict,
    NetworkConfig,
    NetworkState,
    NotFound,
    PermanentError,
    PortBinding,
    RuntimeFailure,
    TransientError,
    same_owner,
)
from pyapply.runtime.native import dns, firewall, root_tag
from pyapply.runtime.native.containers import host_nameservers
from pyapply.runtime.native.dns import DnsServer
from pyapply.runtime.native.firewall import Firewall
from pyapply.runtime.native.ipam import (
    DEFAULT_POOL,
    DEFAULT_PREFIX,
    Ipam,
    endpoint_ipv6,
    ipv6_fits,
    ipv6_gateway,
    ipv6_network,
    ula_subnet,
)
from pyapply.runtime.native.netlink import (
    IPRoute,
    NetNS,
    Rtnl,
    dump_links_and_addrs,
    dump_neighbours,
    in_netns,
    netlink_error,
)
from pyapply.runtime.native.netstate import IPAM_SHAPE, NETWORKS_SHAPE
from pyapply.runtime.native.portproxy import PortProxy, is_proxied, relayed
from pyapply.runtime.native.statefile import parse_json, read_bytes
from pyapply.runtime.statefs import atomic_write, open_private, private_dir, state_root

_NUD_GONE = 0x01 | 0x20  # NUD_INCOMPLETE, NUD_FAILED: nothing answered there
_NUD_PERMANENT = 0x80
_NODAD = 0x02  # IFA_F_NODAD
ALIAS_PREFIX = "pyapply:"
# The generation of a network's guard rules (firewall.guard_rules) recorded with it: a
# network made by an older pyapply gets them at the first look at the state, rather than at
# its next change or the next reboot.
GUARDS = 1


# the longest `settle` waits for one deferred sync: above the DNS server's and the proxy's
# own bounded waits (dns.LISTEN_WAIT_S, portproxy.START_WAIT_S), which end it first
SETTLE_WAIT_S = 60.0
# the DNS lock: held by every sync of the DNS server and the proxy (`_syncs`)
DNS_LOCK_FILE = ".dns.lock"

P = ParamSpec("P")
R = TypeVar("R")


def translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Errors leave as the runtime taxonomy: netlink and OS errors become PermanentError
    (TransientError when the kernel says busy / try again)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RuntimeFailure:
            raise
        except (netlink_error(), OSError) as e:
            code = getattr(e, "code", None) or getattr(e, "errno", None)
            cls = TransientError if code in (errno.EBUSY, errno.EAGAIN) else PermanentError
            raise cls(f"{fn.__name__}: {e}") from e

    return wrapper


def _h8(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def write_json(path: Path, data: Any) -> None:
    """Write a state file as JSON (statefs.atomic_write: 0600, durable) in a 0700 directory:
    on one line, which the C encoder writes (with an indent, json encodes in Python: a few
    milliseconds of CPU per save of a stack's networks, under the lock, at every attach)."""
    private_dir(path.parent)
    atomic_write(path, json.dumps(data, sort_keys=True) + "\n")


def write_in_place(path: str, content: str) -> None:
    """Rewrite a file keeping its inode (a bind-mounted /etc/hosts must stay the same file)."""
    data = content.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class Link(msgspec.Struct, frozen=True):
    index: int
    up: bool
    master: int | None


class KernelView(msgspec.Struct, frozen=True):
    """What the kernel holds, read in one look: links by name, IPv4 addresses by link index,
    every firewall rule, and the bound UDP sockets (None: not looked at)."""

    links: Mapping[str, Link]
    addrs: Mapping[int, frozenset[tuple[str, int]]]
    rules: frozenset[firewall.RuleKey]
    udp: frozenset[tuple[str, int]] | None = None
    rules6: frozenset[firewall.RuleKey] | None = None  # ip6tables' (None: not looked at)


def network_faults(
    rec: Mapping[str, Any], view: KernelView, local_dns: str | None = None
) -> builtins.list[str]:
    """What of a network's kernel side is missing (pure): its bridge, up, with its gateway
    address; the jumps into our chains; its isolation, NAT and guard rules; its DNS server
    listening on the gateway and, for an internal network, the root's server that forwards
    nothing listening on `local_dns` (without it, its containers' other names time out
    instead of being answered as nonexistent)."""
    bridge = rec["bridge"]
    out: list[str] = []
    link = view.links.get(bridge)
    prefixlen = IPv4Network(rec["subnet"]).prefixlen
    if link is None:
        out.append(f"bridge {bridge} missing")
    else:
        if not link.up:
            out.append(f"bridge {bridge} down")
        if (str(rec["gateway"]), prefixlen) not in view.addrs.get(link.index, frozenset()):
            out.append(f"bridge {bridge} lacks its address {rec['gateway']}/{prefixlen}")
        if rec.get("subnet6"):
            plen6 = IPv6Network(rec["subnet6"]).prefixlen
            if (str(rec["gateway6"]), plen6) not in view.addrs.get(link.index, frozenset()):
                out.append(f"bridge {bridge} lacks its address {rec['gateway6']}/{plen6}")
    jumps = firewall.missing(firewall.jump_rules(), view.rules)
    if jumps:
        out.append(
            "jump(s) into our chains missing: "
            + ", ".join(f"{r.table} {r.chain} -> {r.args[-1]}" for r in jumps)
        )
    rules = network_rules(rec)
    lost = firewall.missing(rules, view.rules)
    if lost:
        out.append(f"{len(lost)} of {len(rules)} firewall rules of {bridge} missing")
    if rec.get("subnet6") and view.rules6 is not None:
        rules6 = network_rules6(rec)
        lost6 = firewall.missing(rules6 + firewall.jump_rules(), view.rules6)
        if lost6:
            out.append(f"{len(lost6)} of {len(rules6)} ip6tables rules of {bridge} missing")
    if view.udp is not None:
        problem = dns.dns_fault(rec, view.udp)
        if problem:
            out.append(problem)
        if rec.get("internal") and local_dns and (local_dns, dns.PORT) not in view.udp:
            out.append(f"no DNS server for its names only on {local_dns}:{dns.PORT}")
    return out


def network_rules(rec: Mapping[str, Any]) -> builtins.list[firewall.Rule]:
    """Every rule of a network but its published ports' (pure): isolation, NAT, guards, and
    the guard of its DNS server."""
    bridge = rec["bridge"]
    rules = firewall.network_rules(bridge, IPv4Network(rec["subnet"]), bool(rec["internal"]))
    return rules + firewall.dns_rules(bridge, IPv4Address(rec["gateway"]))


def network_rules6(rec: Mapping[str, Any]) -> builtins.list[firewall.Rule]:
    """The ip6tables rules of a dual-stack network (pure): isolation, NAT, guards, and the
    guard of its DNS server on the IPv6 gateway."""
    if not rec.get("subnet6"):
        return []
    bridge = rec["bridge"]
    rules = firewall.network_rules(bridge, IPv6Network(rec["subnet6"]), bool(rec["internal"]))
    return rules + firewall.dns_rules(bridge, IPv6Address(rec["gateway6"]))


def port_rules6(rec: Mapping[str, Any], port: Mapping[str, Any]) -> builtins.list[firewall.Rule]:
    """The ip6tables rule of a published port (pure): none on an IPv4-only network or for a
    port published on an IPv4 address."""
    b = _binding(port["binding"])
    ip6 = endpoint_ipv6(rec, port["ip"])
    if ip6 is None or (b.host_ip and ":" not in b.host_ip) or is_proxied(b.host_ip):
        return []  # [::1]: the proxy's
    return firewall.port_rules(rec["bridge"], port["container"], ip6, b)


def port_rules4(rec: Mapping[str, Any], port: Mapping[str, Any]) -> builtins.list[firewall.Rule]:
    """The iptables rule of a published port (pure): none for one on an IPv6 address."""
    b = _binding(port["binding"])
    if ":" in b.host_ip and b.host_ip != "::":
        return []
    if b.host_ip == "::":
        b = PortBinding(b.container_port, b.protocol, "", b.host_port)
    return firewall.port_rules(rec["bridge"], port["container"], IPv4Address(port["ip"]), b)


def endpoint_faults(rec: Mapping[str, Any], ep: Mapping[str, Any], view: KernelView) -> str | None:
    """What is wrong with one endpoint's host side (pure): its veth gone, down, or not on the
    network's bridge."""
    veth = ep["veth"]
    link = view.links.get(veth)
    if link is None:
        return f"veth {veth} on {rec['name']} missing"
    bridge = view.links.get(rec["bridge"])
    if bridge is None or link.master != bridge.index:
        return f"veth {veth} not on bridge {rec['bridge']}"
    if not link.up:
        return f"veth {veth} down"
    if ep.get("withdrawn"):
        return f"withdrawn from the names of {rec['name']} by a stop that did not finish"
    return None


def port_faults(rec: Mapping[str, Any], port: Mapping[str, Any], view: KernelView) -> str | None:
    """A published port whose DNAT rule is gone (pure)."""
    b = _binding(port["binding"])
    lost = firewall.missing(port_rules4(rec, port), view.rules)
    if view.rules6 is not None:
        lost += firewall.missing(port_rules6(rec, port), view.rules6)
    if not lost:
        return None
    proto = "" if b.protocol == "tcp" else f"/{b.protocol}"
    return f"rule for {b.host_ip or '0.0.0.0'}:{b.host_port}{proto} missing"


class _State(msgspec.Struct):
    """Everything persisted, loaded and saved as one transaction."""

    networks: dict[str, dict[str, Any]]
    hosts_files: dict[str, dict[str, Any]]  # container -> {path, hostname, extra}
    ipam: Ipam
    # set by the operations that make a network or an attachment ready for use: the DNS
    # server is made sure of (running, listening) even if the state did not change, and
    # its failure is the operation's
    dns_due: bool = False
    # set by a publish on [::1] and by the repair or restore of a container: the proxy of
    # ports on [::1] is made sure of (running) even if the state did not change (a start
    # after a crash or a reboot brings it back), and its failure is the operation's
    proxy_due: bool = False


class PublishedPort(msgspec.Struct, frozen=True):
    container: str
    network: str
    ip: str
    binding: PortBinding


class _Changes(msgspec.Struct):
    """Networks whose members changed during a transaction (their hosts files are redone)."""

    networks: set[str] = msgspec.field(default_factory=set)
    containers: set[str] = msgspec.field(default_factory=set)


class _Pending:
    """A sync left running in a thread: set once it has ended, with what it raised."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.error: BaseException | None = None


# the managers whose creates left syncs running: settled at exit, for a create that no start
# followed (weakly held: a manager let go is not kept for the process's life)
_UNSETTLED: weakref.WeakSet[NetworkManager] = weakref.WeakSet()


@atexit.register
def _settle_all() -> None:
    for manager in list(_UNSETTLED):
        with contextlib.suppress(Exception):  # seen as a network fault by the next look
            manager.settle()


class NetworkManager:
    """Bridge networks, attachments, published ports and hosts files of one state root."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        pool: str = DEFAULT_POOL,
        prefix: int = DEFAULT_PREFIX,
        iptables: str = "iptables",
        ip6tables: str = "ip6tables",
    ) -> None:
        self.root = Path(state_root(root)).resolve()
        self.dir = self.root / "networks"
        self.pool = pool
        self.prefix = prefix
        self.firewall = Firewall(iptables)
        self.firewall6 = Firewall(ip6tables)
        self.tag = root_tag(self.root)
        self.alias_prefix = f"{ALIAS_PREFIX}{self.tag}:"
        self.dns = DnsServer(self.dir / "dns", self.dir / "dns.log")
        self.proxy = PortProxy(self.dir / "proxy")
        self._looking = threading.local()  # `one_look`'s snapshot, for its thread only
        # syncs that transactions left running (`_locked(defer_sync=True)`), for `settle`
        self._deferred: builtins.list[_Pending] = []
        self._deferred_lock = threading.Lock()
        # the files' bytes and the state the last peek made of them, left unchanged (`_locked`)
        self._read: tuple[tuple[bytes | None, bytes | None], _State] | None = None

    @contextlib.contextmanager
    def one_look(self) -> Iterator[None]:
        """Within the block, this thread reads the state once (`_peek`): the listing and
        the fault checks of one observation see one snapshot. Other threads, and code after
        the block, read it afresh."""
        if getattr(self._looking, "active", False):
            yield
            return
        self._looking.active, self._looking.state = True, None
        try:
            yield
        finally:
            self._looking.active, self._looking.state = False, None

    # -- naming ------------------------------------------------------------------------

    def bridge_name(self, network: str) -> str:
        return f"{firewall.BRIDGE_PREFIX}{_h8(str(self.root), network)}"

    def veth_name(self, network: str, container: str) -> str:
        return f"pav{_h8(str(self.root), network, container)}"

    # -- state -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, defer_sync: bool = False, peek: bool = False) -> Iterator[_State]:
        """Hold the state lock; yield the state; save it if the block succeeds; then bring
        the DNS server up to date (see `_sync_dns`): before returning, or with `defer_sync`
        in a thread of its own that `settle` waits for (the caller goes on meanwhile).
        `peek`: the block only reads; files holding what the last peek of this manager
        read and left as it was yield that peek's state again (`_read`), unparsed."""
        private_dir(self.dir)
        dns_lock: IO[str] | None = None
        with os.fdopen(open_private(self.dir / ".lock", os.O_WRONLY | os.O_APPEND), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                raw = (
                    read_bytes(self.dir / "networks.json"),
                    read_bytes(self.dir / "ipam.json"),
                )
                last = self._read
                if peek and last is not None and last[0] == raw:
                    yield last[1]
                    return
                data = parse_json(self.dir / "networks.json", raw[0], NETWORKS_SHAPE) or {}
                ipam_data = parse_json(self.dir / "ipam.json", raw[1], IPAM_SHAPE) or {}
                state = _State(
                    networks=dict(data.get("networks", {})),
                    hosts_files=dict(data.get("hosts_files", {})),
                    ipam=Ipam.from_json(ipam_data, self.pool, self.prefix)
                    if ipam_data
                    else Ipam(self.pool, self.prefix),
                )
                before = json.dumps([state.networks, state.hosts_files], sort_keys=True)
                ipam_before = json.dumps(state.ipam.to_json(), sort_keys=True)
                _repair(state)
                self._upgrade_guards(state)
                yield state
                after = json.dumps([state.networks, state.hosts_files], sort_keys=True)
                ipam_after = json.dumps(state.ipam.to_json(), sort_keys=True)
                # only the files that changed (each write is two fsyncs): registering a
                # hosts file or publishing a port leaves the IPAM as it was
                if ipam_after != ipam_before:
                    write_json(self.dir / "ipam.json", state.ipam.to_json())
                if after != before:
                    write_json(
                        self.dir / "networks.json",
                        {"networks": state.networks, "hosts_files": state.hosts_files},
                    )
                changed = after != before or ipam_after != ipam_before
                if (
                    peek
                    and not changed
                    and all(r.get("guards") == GUARDS for r in state.networks.values())
                ):
                    self._read = (raw, state)
                sync_dns = (
                    changed or state.dns_due or (not state.networks and self.dns.dir.exists())
                )
                # the same for the proxy of ports on [::1] (portproxy.py)
                sync_proxy = changed or state.dns_due or state.proxy_due
                if sync_dns or sync_proxy:
                    # taken before the state lock is let go: the syncs come in the order of
                    # the saves, while the next transaction already runs
                    dns_lock = self._dns_lock()
            except BaseException:
                if dns_lock is not None:
                    dns_lock.close()
                raise
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if dns_lock is None:
            return
        if not defer_sync:
            self._syncs(dns_lock, state, sync_dns, sync_proxy)
            return
        done = _Pending()

        def run() -> None:
            try:
                self._syncs(dns_lock, state, sync_dns, sync_proxy)
            except BaseException as e:  # raised by `settle`, in the caller's thread
                done.error = e
            finally:
                done.ended.set()

        with self._deferred_lock:
            self._deferred.append(done)
            _UNSETTLED.add(self)
        threading.Thread(target=run, name="pyapply-dns-sync", daemon=True).start()

    def _syncs(self, dns_lock: IO[str], state: _State, sync_dns: bool, sync_proxy: bool) -> None:
        """The DNS server's and the proxy's syncs after a save, under the DNS lock, which
        they let go. A later transaction's syncs wait for that lock (flock: also between
        threads of one process), so they run in the order of the saves."""
        with dns_lock:
            if sync_dns:
                self._sync_dns(state)
            if sync_proxy:
                self._sync_proxy(state)

    def settle(self) -> None:
        """Wait until the syncs that transactions left running have ended (bounded by the
        syncs' own waits); raise the first failure."""
        with self._deferred_lock:
            pending, self._deferred = self._deferred, []
        for done in pending:
            if not done.ended.wait(SETTLE_WAIT_S):
                raise TransientError(
                    f"the networks' DNS server or port proxy did not take in a change "
                    f"within {SETTLE_WAIT_S:g} s"
                )
        for done in pending:
            if done.error is not None:
                raise done.error

    def _dns_lock(self) -> IO[str]:
        """The DNS lock, held (taken only while holding the state lock: one order)."""
        fh = os.fdopen(open_private(self.dir / DNS_LOCK_FILE, os.O_WRONLY | os.O_APPEND), "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except BaseException:
            fh.close()
            raise
        return fh

    def _sync_dns(self, st: _State) -> None:
        """Bring the DNS server up to date with the state just saved, under the DNS lock
        only: its reload and the wait until it answers from the new files (a good part of
        an attach's time) no longer hold up the next transaction. After the save: a crash
        in between leaves a server that has not heard of the change (a missing one is a
        network fault; its files are brought up to date at the next sync), never one
        serving, or running for, networks the state does not hold; the syncs follow the
        saves in their order, each with the state its transaction saved."""
        try:
            self.dns.sync(st.networks, check=st.dns_due)
        except PermanentError:
            if st.dns_due:
                raise
            # otherwise seen as a network fault (network_faults)

    def _sync_proxy(self, st: _State) -> None:
        """The proxy of ports on [::1] brought up to date with the state just saved, in the
        same order and under the same lock as the DNS server (`_sync_dns`)."""
        try:
            self.proxy.sync(st.networks)
        except PermanentError:
            if st.proxy_due:
                raise
            # otherwise seen as a fault of the container (faults)

    def _upgrade_guards(self, st: _State) -> None:
        """Add the guard rules of networks made before them (once: the record remembers)."""
        for rec in st.networks.values():
            if rec.get("guards") == GUARDS:
                continue
            try:
                self.firewall.add(firewall.guard_rules(rec["bridge"], bool(rec["internal"])))
            except PermanentError:
                continue  # tried again at the next look
            rec["guards"] = GUARDS

    def _peek(self) -> _State:
        """A consistent snapshot for reading (creates nothing when there is no state)."""
        if not self.dir.is_dir():
            return _State(networks={}, hosts_files={}, ipam=Ipam(self.pool, self.prefix))
        looking = getattr(self._looking, "active", False)
        if looking and self._looking.state is not None:
            snapshot: _State = self._looking.state
            return snapshot
        with self._locked(peek=True) as st:
            if looking:
                self._looking.state = st
            return st

    # -- networks ----------------------------------------------------------------------

    @translated
    def create(self, config: NetworkConfig) -> NetworkState:
        """Create the network (bridge, address, rules); an identical existing one is made
        sure of (recreated in the kernel if needed) and returned."""
        if config.driver not in ("bridge", ""):
            raise PermanentError(f"network driver {config.driver!r} is not supported (bridge only)")
        with self._locked() as st:
            rec = st.networks.get(config.name)
            created = rec is None
            if rec is not None:
                if (
                    not same_owner(config.labels, rec["labels"])
                    or bool(rec["internal"]) != config.internal
                ):
                    raise Conflict(f"network {config.name} exists with other labels or settings")
                if config.subnet is not None and ip_network(config.subnet) != ip_network(
                    rec["subnet"]
                ):
                    raise Conflict(f"network {config.name} exists with subnet {rec['subnet']}")
                if bool(rec.get("subnet6")) != config.enable_ipv6:
                    raise Conflict(f"network {config.name} exists with other IPv6 settings")
                if config.subnet6 is not None and ip_network(config.subnet6) != ip_network(
                    rec["subnet6"]
                ):
                    raise Conflict(f"network {config.name} exists with subnet {rec['subnet6']}")
            # the host lock makes choosing the subnet and making the bridge (whose route
            # the next choice avoids, in whichever state root) one step
            with firewall.host_lock():
                if rec is None:
                    rec = self._new_record(st, config)
                try:
                    self._ensure_kernel(rec)
                except BaseException:
                    if created:
                        self._teardown_network(rec)
                        st.networks.pop(config.name, None)
                        st.ipam.release_subnet(config.name)
                    raise
            st.dns_due = True
            return self._state_of(rec)

    def _new_record(self, st: _State, config: NetworkConfig) -> dict[str, Any]:
        bridge = self.bridge_name(config.name)
        for other_name, other in st.networks.items():
            if other["bridge"] == bridge:  # a 32-bit hash collision
                raise Conflict(f"bridge name {bridge} is taken by network {other_name}")
        avoid = [] if config.subnet else self._host_routes()
        subnet6: IPv6Network | None = None
        if config.enable_ipv6:
            subnet6 = (
                ipv6_network(config.subnet6)
                if config.subnet6
                else ula_subnet(f"{self.root}\0{config.name}")
            )
            for other_name, other in st.networks.items():
                if other.get("subnet6") and subnet6.overlaps(IPv6Network(other["subnet6"])):
                    raise Conflict(
                        f"subnet {subnet6} overlaps {other['subnet6']} of network {other_name}"
                    )
        alloc = st.ipam.allocate_subnet(config.name, config.subnet, config.gateway, avoid)
        if subnet6 is not None:
            try:
                ipv6_fits(alloc.subnet, subnet6)
                gateway6 = ipv6_gateway(subnet6, config.gateway6)
            except PermanentError:
                st.ipam.release_subnet(config.name)
                raise
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex + uuid.uuid4().hex,
            "name": config.name,
            "driver": "bridge",
            "bridge": bridge,
            "internal": config.internal,
            "labels": dict(config.labels),
            "subnet": str(alloc.subnet),
            "gateway": str(alloc.gateway),
            "endpoints": {},
            "ports": [],
            "guards": GUARDS,  # _ensure_kernel adds them
        }
        if subnet6 is not None:
            rec.update(subnet6=str(subnet6), gateway6=str(gateway6))
        st.networks[config.name] = rec
        return rec

    @translated
    def ensure(self, name: str) -> None:
        """Recreate the kernel objects and rules of an existing network (after a reboot)."""
        with self._locked() as st:
            rec = st.networks.get(name)
            if rec is None:
                raise NotFound(f"network {name} not found")
            self._ensure_kernel(rec)
            st.dns_due = True

    def _host_routes(self) -> list[IPv4Network]:
        """Destinations already routed on the host (docker's bridges, the LAN...), and the
        subnets of every root's networks as our NAT rules name them: a bridge deleted by
        hand takes its route with it, but its network is still there, to be repaired."""
        nets: list[IPv4Network] = []
        for args in self.firewall.listed("nat", firewall.POSTROUTING_CHAIN):
            if "-s" in args[:-1]:
                with contextlib.suppress(ValueError):
                    net = IPv4Network(args[args.index("-s") + 1], strict=False)
                    if not net.is_loopback:
                        nets.append(net)
        with Rtnl() as rtnl:
            for dst, plen, _oif, _table in rtnl.routes(socket.AF_INET):
                if dst and plen > 0:
                    with contextlib.suppress(ValueError):
                        nets.append(IPv4Network(f"{dst}/{plen}", strict=False))
        return nets

    def _ensure_kernel(self, rec: Mapping[str, Any]) -> None:
        bridge = rec["bridge"]
        subnet = IPv4Network(rec["subnet"])
        with Rtnl() as rtnl:
            if not _has_link(bridge):
                taker = _routed_elsewhere(rtnl, subnet, bridge)
                if taker is not None:
                    # remade now, the bridge would share its subnet with `taker`, and the
                    # traffic of published ports could reach whatever is behind it
                    raise Conflict(
                        f"cannot make bridge {bridge} of network {rec['name']} again: its "
                        f"subnet {subnet} is now routed via {taker} (taken while the bridge "
                        "was gone); remove what uses it there, or remove this network"
                    )
                try:
                    # a MAC of its own (from the gateway): a bridge remade after a deletion
                    # keeps it, and the containers' ARP caches stay right
                    rtnl.add_bridge(bridge, mac_for(IPv4Address(rec["gateway"])))
                except OSError as e:
                    if e.errno != errno.EEXIST:
                        raise PermanentError(f"cannot create bridge {bridge}: {e}") from None
            index = socket.if_nametoindex(bridge)
            rtnl.set_link(index, alias=f"{self.alias_prefix}{rec['name']}")
            have = rtnl.addresses(index, socket.AF_INET)
            if (rec["gateway"], subnet.prefixlen) not in have:
                try:
                    rtnl.add_address(index, rec["gateway"], subnet.prefixlen)
                except OSError as e:
                    if e.errno != errno.EEXIST:
                        raise PermanentError(f"cannot address bridge {bridge}: {e}") from None
            if rec.get("subnet6"):
                self._address6(rtnl, index, rec)
            rtnl.set_link(index, up=True)
        firewall.set_sysctl("net/ipv4/ip_forward", "1")
        # for published ports on 127.0.0.1; what else it would let in, the guard rules of
        # network_rules() drop (firewall.py: loopback guard)
        firewall.set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", "1")
        rules = network_rules(rec)
        for port in rec["ports"]:
            rules += port_rules4(rec, port)
        self.firewall.add(rules)
        if rec.get("subnet6"):
            firewall.set_sysctl("net/ipv6/conf/all/forwarding", "1")
            rules6 = network_rules6(rec)
            for port in rec["ports"]:
                rules6 += port_rules6(rec, port)
            self.firewall6.add(rules6)

    @staticmethod
    def _address6(rtnl: Rtnl, index: int, rec: Mapping[str, Any]) -> None:
        """Give the bridge its IPv6 gateway address (IPv6 on, no DAD: see the docstring)."""
        bridge = rec["bridge"]
        firewall.set_sysctl(f"net/ipv6/conf/{bridge}/disable_ipv6", "0")
        plen = IPv6Network(rec["subnet6"]).prefixlen
        if (rec["gateway6"], plen) in rtnl.addresses(index, socket.AF_INET6):
            return
        try:
            rtnl.add_address(index, rec["gateway6"], plen, flags=_NODAD)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise PermanentError(f"cannot address bridge {bridge}: {e}") from None

    @translated
    def remove(self, name: str) -> None:
        """Remove the network: bridge, rules, leases. Gone is success; a network with live
        endpoints is a Conflict (endpoints whose veth vanished are dropped first)."""
        with self._locked() as st:
            rec = st.networks.get(name)
            if rec is None:
                return
            with IPRoute() as ipr:
                for container, ep in list(rec["endpoints"].items()):
                    if not ipr.link_lookup(ifname=ep["veth"]):
                        del rec["endpoints"][container]
                        st.ipam.release(name, container)
            if rec["endpoints"]:
                raise Conflict(
                    f"network {name} has attached containers: {', '.join(sorted(rec['endpoints']))}"
                )
            self._teardown_network(rec)
            del st.networks[name]
            st.ipam.release_subnet(name)

    def _teardown_network(self, rec: Mapping[str, Any]) -> None:
        bridge = rec["bridge"]
        with IPRoute() as ipr:
            for ep in rec["endpoints"].values():
                _del_link(ipr, ep["veth"])
            _del_link(ipr, bridge)
        self.firewall.delete_tagged(
            comments=[firewall.network_comment(bridge)],
            prefixes=[firewall.network_comment(bridge) + ":"],
        )
        if rec.get("subnet6"):
            self.firewall6.delete_tagged(
                comments=[firewall.network_comment(bridge)],
                prefixes=[firewall.network_comment(bridge) + ":"],
            )

    def get(self, name: str) -> NetworkState | None:
        rec = self._peek().networks.get(name)
        return None if rec is None else self._state_of(rec)

    def list(self, labels: Mapping[str, str] | None = None) -> list[NetworkState]:
        wanted = dict(labels or {})
        out = []
        for rec in self._peek().networks.values():
            have = rec["labels"]
            if all(k in have and (v == "" or have[k] == v) for k, v in wanted.items()):
                out.append(self._state_of(rec))
        return sorted(out, key=lambda s: s.name)

    @staticmethod
    def _state_of(rec: Mapping[str, Any]) -> NetworkState:
        return NetworkState(
            id=rec["id"],
            name=rec["name"],
            driver=rec["driver"],
            internal=bool(rec["internal"]),
            labels=dict(rec["labels"]),
            subnet=rec["subnet"],
            containers=tuple(sorted(rec["endpoints"])),
            ipv6=bool(rec.get("subnet6")),
            subnet6=rec.get("subnet6"),
            gateway6=rec.get("gateway6"),
        )

    # -- kernel checks -----------------------------------------------------------------

    @translated
    def kernel_view(self, *, ipv6: bool = False) -> KernelView:
        """Links, addresses and firewall rules as the kernel has them now: two netlink dumps
        on one socket and one iptables-save, whatever the number of networks."""
        found, found_addrs = dump_links_and_addrs()
        links = {link.name: Link(link.index, link.up, link.master) for link in found if link.name}
        addrs: dict[int, set[tuple[str, int]]] = {}
        for index, address, prefixlen in found_addrs:
            addrs.setdefault(index, set()).add((address, prefixlen))
        return KernelView(
            links,
            {k: frozenset(v) for k, v in addrs.items()},
            self.firewall.save(),
            dns.read_udp_listeners(),
            self.firewall6.save() if ipv6 else None,
        )

    def faults(
        self, view: KernelView
    ) -> tuple[dict[str, builtins.list[str]], dict[str, builtins.list[str]]]:
        """(network name -> its faults, container -> the faults of its endpoints and
        published ports), from the state and one kernel view."""
        by_network: dict[str, list[str]] = {}
        by_container: dict[str, list[str]] = {}
        networks = self._peek().networks
        if view.rules6 is None and any(r.get("subnet6") for r in networks.values()):
            # one ip6tables-save, only when a network is dual-stack
            view = msgspec.structs.replace(view, rules6=self.firewall6.save())
        local = self.dns.local
        local_dns = dns.local_only_address(local.dir) if local is not None else None
        dns_unheard, proxy_unheard = self._unfinished_syncs()
        for name, rec in networks.items():
            found = network_faults(rec, view, local_dns)
            if dns_unheard:
                found.append("its DNS server has not read its names (a sync did not finish)")
            if found:
                by_network[name] = found
            for container, ep in sorted(rec["endpoints"].items()):
                problem = endpoint_faults(rec, ep, view)
                if problem:
                    by_container.setdefault(container, []).append(problem)
            for port in rec["ports"]:
                problem = port_faults(rec, port, view) or self._proxy_fault(port, proxy_unheard)
                if problem:
                    by_container.setdefault(port["container"], []).append(problem)
        return by_network, by_container

    def _proxy_fault(self, port: Mapping[str, Any], unheard: bool) -> str | None:
        """What is wrong with the proxy of a port it relays (none for another port)."""
        b = _binding(port["binding"])
        if not relayed(b.host_ip, b.protocol):
            return None
        where = f"[{b.host_ip if is_proxied(b.host_ip) else '::1'}]:{b.host_port}/{b.protocol}"
        if self.proxy.pid() is None:
            return f"no proxy for {where}"
        if unheard:
            return f"the proxy of {where} has not read its list (a sync did not finish)"
        return None

    def _unfinished_syncs(self) -> tuple[bool, bool]:
        """(the DNS server, the port proxy): whether it was left by a sync that did not
        finish with files it has not read. A sync that runs holds the DNS lock
        (`_syncs`), so while the lock is taken the answer is no for both."""
        dns_unheard, proxy_unheard = self.dns.unheard(), self.proxy.unheard()
        if not (dns_unheard or proxy_unheard):
            return False, False
        try:
            fd = os.open(self.dir / DNS_LOCK_FILE, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return dns_unheard, proxy_unheard  # no sync ever ran under it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False, False  # one runs now
        finally:
            os.close(fd)  # and with it the lock
        return dns_unheard, proxy_unheard

    @translated
    def repair(self, container_name: str, netns_path: str) -> None:
        """Remake what is missing of a container's networking, in place: its networks'
        bridges and rules, its veths (plumbed into `netns_path` with the addresses it had)
        or their place on the bridge, and its published ports' rules."""
        with self._locked() as st:
            st.proxy_due = _has_proxied(st, container_name)  # served again
            ipv6 = any(r.get("subnet6") for r in st.networks.values())
            view = self.kernel_view(ipv6=ipv6)
            touched: set[str] = set()
            for name in sorted(st.networks):
                rec = st.networks[name]
                ep = rec["endpoints"].get(container_name)
                if ep is None:
                    continue
                if network_faults(rec, view):
                    self._ensure_kernel(rec)
                    view = self.kernel_view(ipv6=ipv6)
                if ep.pop("withdrawn", None):  # resolved by its names again
                    touched.add(name)
                problem = endpoint_faults(rec, ep, view)
                if problem is None:
                    pass
                elif view.links.get(ep["veth"]) is None or ep["netns"] != netns_path:
                    ifname, default_route = self._plumb(
                        rec, ep["veth"], netns_path, IPv4Address(ep["ip"])
                    )
                    ep.update(netns=netns_path, ifname=ifname, default_route=default_route)
                    touched.add(name)
                else:
                    with Rtnl() as rtnl:
                        _enslave(rtnl, rec, ep["veth"])
                lost: list[firewall.Rule] = []
                lost6: list[firewall.Rule] = []
                for port in rec["ports"]:
                    if port["container"] == container_name:
                        lost += firewall.missing(port_rules4(rec, port), view.rules)
                        lost6 += firewall.missing(
                            port_rules6(rec, port), view.rules6 or frozenset()
                        )
                if lost:
                    self.firewall.add(lost)
                if lost6:
                    self.firewall6.add(lost6)
            if touched or any(container_name in r["endpoints"] for r in st.networks.values()):
                st.dns_due = True
            self._rewrite_hosts(st, touched, set())

    # -- attachments -------------------------------------------------------------------

    @translated
    def attach(
        self,
        network: str,
        container_name: str,
        netns_path: str,
        aliases: Iterable[str] = (),
        ipv4_address: str | None = None,
        *,
        hosts_path: str | None = None,
        hostname: str | None = None,
        extra: Iterable[tuple[str, str]] | None = None,
        resolver: Mapping[str, Sequence[str]] | None = None,
    ) -> str:
        """Attach a container to one network: `connect` with one attachment and no port;
        return its address."""
        ips, _ports = self.connect(
            container_name,
            netns_path,
            [Attachment(network, tuple(aliases), ipv4_address)],
            hosts_path=hosts_path,
            hostname=hostname,
            extra=extra,
            resolver=resolver,
        )
        return ips[0]

    @translated
    def connect(
        self,
        container_name: str,
        netns_path: str,
        attachments: Sequence[Attachment],
        ports: Sequence[PortBinding] = (),
        *,
        hosts_path: str | None = None,
        hostname: str | None = None,
        extra: Iterable[tuple[str, str]] | None = None,
        resolver: Mapping[str, Sequence[str]] | None = None,
        defer_dns: bool = False,
    ) -> tuple[builtins.list[str], builtins.list[PortBinding]]:
        """Attach a container (its network namespace: a path such as /run/netns/X or
        /proc/PID/ns/net, or a name under /run/netns) to each network of `attachments`, and
        publish `ports` on its first address, in one transaction of the state (one lock,
        one save, one DNS reload, one firewall change, one hosts rewrite: a create's whole
        networking); return its addresses (in the order of `attachments`) and the ports
        with their host ports resolved. Attaching again is idempotent (a veth is remade if
        gone). `hosts_path`/`hostname`: as for `set_hosts_file`; with `extra` (or
        `resolver`) as well, the registration is the whole of a `set_hosts_file`. A failure
        leaves nothing of the transaction: the veths it made are deleted, the state is not
        saved. `defer_dns`: the DNS server's and the proxy's syncs run on in a thread, which
        `settle` waits for (a create's, so that they overlap the container's start)."""
        nspath = netns_path if "/" in netns_path else f"/run/netns/{netns_path}"
        if not os.path.exists(nspath):
            raise NotFound(f"network namespace {nspath} does not exist")
        if ports and not attachments:
            raise PermanentError(f"container {container_name} publishes ports but is on no network")
        with self._locked(defer_sync=defer_dns) as st:
            recs = []
            for att in attachments:
                rec = st.networks.get(att.network)
                if rec is None:
                    raise NotFound(f"network {att.network} not found")
                recs.append(rec)
            if hosts_path is not None and (extra is not None or resolver is not None):
                st.hosts_files[container_name] = _hosts_entry(
                    hosts_path, hostname, extra or (), resolver
                )
            elif hosts_path is not None:
                entry = st.hosts_files.get(container_name) or {}
                st.hosts_files[container_name] = {**entry, "path": hosts_path, "hostname": hostname}
            ips: list[str] = []
            todo: list[tuple[dict[str, Any], str, IPv4Address, list[str]]] = []
            with Rtnl() as rtnl:
                try:
                    for att, rec in zip(attachments, recs, strict=True):
                        network = att.network
                        veth = self.veth_name(network, container_name)
                        ep = rec["endpoints"].get(container_name)
                        if ep is not None and ep["netns"] == nspath and _has_link(veth):
                            if att.ipv4_address is not None and att.ipv4_address != ep["ip"]:
                                raise Conflict(
                                    f"{container_name} is attached to {network} as {ep['ip']}"
                                )
                            ep["aliases"] = sorted(set(att.aliases))
                            ips.append(str(ep["ip"]))
                            continue
                        if ep is not None:  # stale: the namespace changed or the veth is gone
                            rtnl.delete_link(veth)
                            if att.ipv4_address is not None and att.ipv4_address != ep["ip"]:
                                st.ipam.release(network, container_name)
                        if not _has_link(rec["bridge"]):
                            # only a bridge gone since the network was made sure of is
                            # remade here (with its rules): a pass makes sure of its networks
                            # (create_network) before it attaches to them, and remaking every
                            # rule of the network at every attach cost more than the rest of
                            # the attach, under the lock every attach of the root waits for
                            self._ensure_kernel(rec)
                        own = st.ipam.get(network).leases.get(container_name)
                        live = _live_addresses(rec, own)
                        ip = st.ipam.lease(network, container_name, att.ipv4_address, live)
                        todo.append((rec, veth, ip, sorted(set(att.aliases))))
                        ips.append(str(ip))
                    plumbed = self._plumb_all(rtnl, [(r, v, i) for r, v, i, _ in todo], nspath)
                    for (rec, veth, ip, aliases), (ifname, default_route) in zip(
                        todo, plumbed, strict=True
                    ):
                        rec["endpoints"][container_name] = {
                            "ip": str(ip),
                            "veth": veth,
                            "ifname": ifname,
                            "netns": nspath,
                            "aliases": aliases,
                            "default_route": default_route,
                        }
                    resolved = self._publish_all(st, container_name, ips[0], ports) if ports else []
                except BaseException:
                    # the state is not saved: nothing of ours may stay in the kernel either
                    # (the rules of ports are added last, by one change)
                    for _rec, veth, _ip, _aliases in todo:
                        with contextlib.suppress(Exception):
                            rtnl.delete_link(veth)
                    raise
            st.dns_due = True
            self._rewrite_hosts(st, {att.network for att in attachments}, {container_name})
            return ips, resolved

    def _plumb(
        self, rec: Mapping[str, Any], veth: str, nspath: str, ip: IPv4Address
    ) -> tuple[str, bool]:
        with Rtnl() as rtnl:
            return self._plumb_all(rtnl, [(rec, veth, ip)], nspath)[0]

    def _plumb_all(
        self,
        rtnl: Rtnl,
        items: Sequence[tuple[Mapping[str, Any], str, IPv4Address]],
        nspath: str,
    ) -> builtins.list[tuple[str, bool]]:
        """Make the veth of each (network record, veth, address) and plumb its peer into
        the namespace at `nspath`: the host sides on `rtnl`, then every peer configured in
        one visit of the namespace (a thread and a netlink socket there, whatever the number
        of networks). Return (interface name, whether it gave the default route) of each."""
        if not items:
            return []
        nsfd = os.open(nspath, os.O_RDONLY)
        try:
            for rec, veth, _ip in items:
                peer = "pap" + veth[3:]
                rtnl.delete_link(veth)
                rtnl.delete_link(peer)
                try:
                    index = rtnl.add_veth(veth, peer, nsfd)
                except OSError as e:
                    raise PermanentError(f"cannot create veth {veth}: {e}") from None
                rtnl.set_link(index, alias=f"{self.alias_prefix}{rec['name']}")
                _enslave(rtnl, rec, veth)
        finally:
            os.close(nsfd)

        def configure(ns: Rtnl) -> list[tuple[str, bool]]:
            with contextlib.suppress(OSError):
                ns.set_link(socket.if_nametoindex("lo"), up=True)
            has_default = ns.has_default_route(socket.AF_INET)
            has_default6 = ns.has_default_route(socket.AF_INET6)
            out: list[tuple[str, bool]] = []
            n = 0
            for rec, veth, ip in items:
                while _has_link(f"eth{n}"):
                    n += 1
                ifname = f"eth{n}"
                pidx = socket.if_nametoindex("pap" + veth[3:])
                # the MAC follows from the address (as docker's 02:42:...): an address handed
                # out again after a recreate keeps its MAC, so neighbours' ARP caches stay
                # right; the kernel renames before it brings the link up
                ns.set_link(pidx, name=ifname, mac=mac_for(ip), up=True)
                ns.add_address(pidx, str(ip), IPv4Network(rec["subnet"]).prefixlen)
                ip6 = endpoint_ipv6(rec, str(ip))
                if ip6 is not None:
                    plen6 = IPv6Network(rec["subnet6"]).prefixlen
                    ns.add_address(pidx, str(ip6), plen6, flags=_NODAD)
                default_route = False
                if not rec["internal"]:
                    if not has_default:
                        ns.add_default_route(rec["gateway"], pidx)
                        has_default = default_route = True
                    if ip6 is not None and not has_default6:
                        # the first dual-stack network gives the IPv6 default route (there
                        # are no router advertisements on our bridges)
                        ns.add_default_route(rec["gateway6"], pidx)
                        has_default6 = True
                out.append((ifname, default_route))
            return out

        return in_netns(nspath, configure)

    @translated
    def restore(self, container_name: str, netns_path: str) -> None:
        """Plumb every endpoint of a container into a new network namespace (its old one went
        with a reboot), keeping its addresses; bridges and rules are made again as needed."""
        with self._locked() as st:
            st.proxy_due = _has_proxied(st, container_name)  # served again
            touched: set[str] = set()
            for name in sorted(st.networks):
                rec = st.networks[name]
                ep = rec["endpoints"].get(container_name)
                if ep is None:
                    continue
                ep.pop("withdrawn", None)  # resolved by its names again
                self._ensure_kernel(rec)
                ifname, default_route = self._plumb(
                    rec, ep["veth"], netns_path, IPv4Address(ep["ip"])
                )
                ep.update(netns=netns_path, ifname=ifname, default_route=default_route)
                touched.add(name)
            st.dns_due = bool(touched)
            self._rewrite_hosts(st, touched, {container_name})

    @translated
    def rename_alias(self, container_name: str, old: str, new: str) -> None:
        """The container now answers to `new` instead of `old` on all its networks."""
        with self._locked() as st:
            touched: set[str] = set()
            for name, rec in st.networks.items():
                ep = rec["endpoints"].get(container_name)
                if ep is None or old not in ep["aliases"]:
                    continue
                ep["aliases"] = sorted({*(a for a in ep["aliases"] if a != old), new})
                touched.add(name)
            self._rewrite_hosts(st, touched, {container_name})

    @translated
    def withdraw(self, container_name: str) -> None:
        """Take a container out of its networks' name resolution (their DNS and the other
        members' hosts files) before it is stopped, as swarm takes a task out of its
        service's before stopping it: a client asking for its service's name is no longer
        sent to a process about to go (a start-first update's old replica), while the
        container keeps its veth and address so that connections in flight may finish.
        Marked on its endpoints (`withdrawn`) until a start's `repair` or `restore` puts it
        back: a stop killed after this leaves a running container out of resolution, which
        a look reports as a fault of that endpoint."""
        with self._locked() as st:
            touched: set[str] = set()
            for name, rec in st.networks.items():
                ep = rec["endpoints"].get(container_name)
                if ep is not None and not ep.get("withdrawn"):
                    ep["withdrawn"] = True
                    touched.add(name)
            self._rewrite_hosts(st, touched, set())

    @translated
    def detach(self, network: str, container_name: str) -> None:
        """Detach a container: its veth, lease and published ports on `network`.
        Not attached is success."""
        with self._locked() as st:
            rec = st.networks.get(network)
            if rec is None:
                return
            ep = rec["endpoints"].get(container_name)
            self._drop_endpoint(st, rec, container_name)
            if ep is not None and ep.get("default_route"):
                self._move_default_route(st, container_name, ep["netns"])
            if ep is not None and rec.get("subnet6"):
                self._move_default_route6(st, container_name, ep["netns"])
            self._rewrite_hosts(st, {network}, {container_name})

    def _move_default_route6(self, st: _State, container: str, nspath: str) -> None:
        """The IPv6 default route went with a dual-stack network's veth: give the container
        one via another non-internal dual-stack network it is still on, if it has none."""
        for rec in sorted(st.networks.values(), key=lambda r: str(r["name"])):
            ep = rec["endpoints"].get(container)
            if rec["internal"] or not rec.get("subnet6") or ep is None or ep["netns"] != nspath:
                continue
            try:
                with NetNS(nspath, flags=0) as ns:
                    idx = ns.link_lookup(ifname=ep["ifname"])
                    routes = ns.get_routes(family=socket.AF_INET6, table=254)
                    if idx and not any(r["dst_len"] == 0 for r in routes):
                        ns.route("add", dst="::/0", gateway=rec["gateway6"], oif=idx[0])
            except (OSError, netlink_error()):
                return  # the namespace is gone: nothing to route
            return

    def _move_default_route(self, st: _State, container: str, nspath: str) -> None:
        """The network that gave a container its default route is gone: give it one via
        another non-internal network it is still on, if any."""
        for rec in sorted(st.networks.values(), key=lambda r: str(r["name"])):
            ep = rec["endpoints"].get(container)
            if rec["internal"] or ep is None or ep["netns"] != nspath:
                continue
            try:
                with NetNS(nspath, flags=0) as ns:
                    idx = ns.link_lookup(ifname=ep["ifname"])
                    routes = ns.get_routes(family=socket.AF_INET, table=254)
                    if idx and not any(r["dst_len"] == 0 for r in routes):
                        ns.route("add", dst="0.0.0.0/0", gateway=rec["gateway"], oif=idx[0])
                        ep["default_route"] = True
            except (OSError, netlink_error()):
                return  # the namespace is gone: nothing to route
            return

    def _drop_endpoint(self, st: _State, rec: dict[str, Any], container: str) -> None:
        ep = rec["endpoints"].pop(container, None)
        with IPRoute() as ipr:
            _del_link(ipr, ep["veth"] if ep else self.veth_name(rec["name"], container))
            if ep is not None:  # its neighbour entry would read as live (_live_addresses)
                _forget_neighbour(ipr, rec["bridge"], ep["ip"])
        st.ipam.release(rec["name"], container)
        kept = [p for p in rec["ports"] if p["container"] != container]
        if len(kept) != len(rec["ports"]):
            rec["ports"] = kept
            self.firewall.delete_tagged(comments=[firewall.port_comment(rec["bridge"], container)])
            if rec.get("subnet6"):
                self.firewall6.delete_tagged(
                    comments=[firewall.port_comment(rec["bridge"], container)]
                )

    @translated
    def reclaim(self, live_container_names: Iterable[str]) -> builtins.list[tuple[str, str]]:
        """Drop the endpoints, leases and ports of containers that no longer exist;
        return (network, container) pairs reclaimed."""
        live = set(live_container_names)
        gone: list[tuple[str, str]] = []
        with self._locked() as st:
            changed: set[str] = set()
            for name, rec in st.networks.items():
                for container in sorted(rec["endpoints"]):
                    if container not in live:
                        self._drop_endpoint(st, rec, container)
                        gone.append((name, container))
                        changed.add(name)
            for network, container, _ip in st.ipam.reclaim(live):
                if (network, container) not in gone:
                    gone.append((network, container))
            for container in [c for c in st.hosts_files if c not in live]:
                del st.hosts_files[container]
            self._rewrite_hosts(st, changed, set())
        return sorted(gone)

    # -- published ports ---------------------------------------------------------------

    @translated
    def publish(self, container_name: str, ip: str, binding: PortBinding) -> PortBinding:
        """Publish `binding` to the container's address `ip` (on one of its networks);
        return the binding with its host port resolved. A host_ip of "" or "::" is every
        address: IPv4 and, on a dual-stack network, IPv6 too; an IPv6 host_ip needs a
        dual-stack network, and [::1] is refused (see the module docstring)."""
        with self._locked() as st:
            return self._publish_all(st, container_name, ip, [binding])[0]

    def _publish_all(
        self, st: _State, container_name: str, ip: str, bindings: Sequence[PortBinding]
    ) -> builtins.list[PortBinding]:
        """Publish each of `bindings` (as `publish`), in the transaction `st`: one look at
        the ports other roots publish, one firewall change for all of them."""
        addr = _ipv4(ip)
        for binding in bindings:
            if binding.host_ip and _host_ipv6(binding.host_ip) is None:
                _ipv4(binding.host_ip)
            if relayed(binding.host_ip, binding.protocol):
                st.proxy_due = True  # served by the proxy, which must be up (portproxy.py)
        rec = next(
            (
                r
                for r in st.networks.values()
                if container_name in r["endpoints"]
                and r["endpoints"][container_name]["ip"] == str(addr)
            ),
            None,
        )
        if rec is None:
            raise NotFound(f"{container_name} has no address {ip} on any network")
        rules: list[firewall.Rule] = []
        rules6: list[firewall.Rule] = []
        resolved: list[PortBinding] = []
        # ports published by other state roots hold no socket: ask our DNAT chain (once,
        # from the iptables-save that add() reads too)
        in_use: set[tuple[str, int]] | None = None
        saved: str | None = None
        saved6: str | None = None
        with firewall.host_lock():
            for binding in bindings:
                port, fresh = self._port_for(st, rec, container_name, addr, binding, in_use)
                if port is None:  # host ports (other roots' too) must be looked at
                    saved = self.firewall.saved()
                    in_use = self.firewall.dnat_ports(saved)
                    if rec.get("subnet6"):
                        saved6 = self.firewall6.saved()
                        in_use |= self.firewall6.dnat_ports(saved6)
                    port, fresh = self._port_for(st, rec, container_name, addr, binding, in_use)
                    assert port is not None
                rules += port_rules4(rec, port)
                if rec.get("subnet6"):
                    rules6 += port_rules6(rec, port)
                if fresh:
                    rec["ports"].append(port)  # the next binding sees it taken
                    if in_use is not None:
                        in_use.add((port["binding"]["protocol"], port["binding"]["host_port"]))
                resolved.append(_binding(port["binding"]))
            # already published ports' rules too (remade if the rules were flushed)
            self.firewall.add(rules, saved)
            if rules6:
                self.firewall6.add(rules6, saved6)
        return resolved

    @staticmethod
    def _port_for(
        st: _State,
        rec: dict[str, Any],
        container_name: str,
        addr: IPv4Address,
        binding: PortBinding,
        in_use: builtins.set[tuple[str, int]] | None,
    ) -> tuple[dict[str, Any] | None, bool]:
        """The port record of `binding` (pure but for the bind tests of host ports): the
        one published already (and False), or a new one (and True) with a host port that no
        container of this root holds, nor another root (`in_use`: None, not looked at yet:
        then (None, False) when it is needed)."""
        host6 = _host_ipv6(binding.host_ip)
        if is_proxied(binding.host_ip):
            if binding.protocol.lower() not in ("tcp", "udp"):
                raise PermanentError(
                    f"cannot publish port {binding.container_port}/{binding.protocol} of "
                    f"{container_name} on [{binding.host_ip}]: its proxy relays tcp and udp"
                )
        elif host6 is not None and binding.host_ip != "::" and not rec.get("subnet6"):
            raise PermanentError(
                f"cannot publish port {binding.container_port} of {container_name} on "
                f"[{binding.host_ip}]: network {rec['name']} has no IPv6 (enable_ipv6)"
            )
        proto = binding.protocol.lower()
        # the host ports it may take: the one asked for, or each of a range in turn
        candidates: list[int | None] = [binding.host_port]
        if binding.host_port is not None and binding.host_port_last is not None:
            candidates = list(range(binding.host_port, binding.host_port_last + 1))
        claimed: dict[int | None, str] = {}
        for r in st.networks.values():
            for p in r["ports"]:
                other = _binding(p["binding"])
                if (p["container"], p["ip"]) == (container_name, str(addr)) and _same_port(
                    other, binding
                ):
                    return p, False
                if (
                    other.host_port in candidates
                    and other.protocol == proto
                    and (other.host_ip in ("", binding.host_ip) or binding.host_ip == "")
                ):
                    claimed[other.host_port] = p["container"]
        free = [c for c in candidates if c not in claimed]
        if binding.host_port is not None and not free:
            raise Conflict(
                f"host port {_shown_ports(binding)}/{proto} is already published for "
                f"{', '.join(sorted(set(claimed.values())))}"
            )
        if in_use is None:
            return None, False
        if binding.host_port is None:
            for _ in range(50):
                host_port = _check_port(binding.host_ip, None, proto)
                if (proto, host_port) not in in_use:
                    break
        else:
            host_port = _first_free(binding, free, in_use, proto)
        resolved = PortBinding(binding.container_port, proto, binding.host_ip, host_port)
        port = {
            "container": container_name,
            "ip": str(addr),
            "binding": _binding_json(resolved),
            "requested": _binding_json(binding),
        }
        return port, True

    @translated
    def unpublish(self, container_name: str, binding: PortBinding | None = None) -> None:
        """Remove one published port of a container (or all of them: then also any rule of
        its left behind by a publish killed between adding the rule and saving the state)."""
        with self._locked() as st:
            if binding is None:
                self._drop_orphan_ports(st, container_name)
            for rec in st.networks.values():
                mine = [p for p in rec["ports"] if p["container"] == container_name]
                drop = [
                    p
                    for p in mine
                    if binding is None
                    or _same_port(_binding(p["binding"]), binding)
                    or _same_port(_binding(p["requested"]), binding)
                ]
                if not drop:
                    continue
                rec["ports"] = [p for p in rec["ports"] if p not in drop]
                self.firewall.delete_tagged(
                    comments=[firewall.port_comment(rec["bridge"], container_name)]
                )
                if rec.get("subnet6"):
                    self.firewall6.delete_tagged(
                        comments=[firewall.port_comment(rec["bridge"], container_name)]
                    )
                remaining = [p for p in rec["ports"] if p["container"] == container_name]
                if remaining:
                    rules = []
                    rules6 = []
                    for p in remaining:
                        rules += port_rules4(rec, p)
                        rules6 += port_rules6(rec, p)
                    self.firewall.add(rules)
                    if rules6:
                        self.firewall6.add(rules6)

    def _drop_orphan_ports(self, st: _State, container_name: str) -> None:
        """Delete the rules of the container's ports that the state does not list: left by
        a `connect` or `publish` killed between adding them and saving the state (such a
        connect's endpoints are not saved either, so every network is looked at). One
        listing of the DNAT chain (of each family in use) finds them."""
        unlisted = {
            firewall.port_comment(rec["bridge"], container_name): rec
            for rec in st.networks.values()
            if not any(p["container"] == container_name for p in rec["ports"])
        }
        if not unlisted:
            return
        dual = any(rec.get("subnet6") for rec in unlisted.values())
        for fw, wanted in ((self.firewall, True), (self.firewall6, dual)):
            if not wanted:
                continue
            found = {Firewall.comment_of(args) for args in fw.listed("nat", firewall.DNAT_CHAIN)}
            orphans = sorted(c for c in unlisted if c in found)
            if orphans:
                fw.delete_tagged(comments=orphans)

    def published(self, container_name: str | None = None) -> builtins.list[PublishedPort]:
        out = []
        for name, rec in self._peek().networks.items():
            for p in rec["ports"]:
                if container_name in (None, p["container"]):
                    out.append(PublishedPort(p["container"], name, p["ip"], _binding(p["binding"])))
        return out

    # -- names -------------------------------------------------------------------------

    @translated
    def set_hosts_file(
        self,
        container_name: str,
        path: str | None,
        hostname: str | None = None,
        extra: Iterable[tuple[str, str]] = (),
        resolver: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Register (or with None forget) the file a container has as /etc/hosts (and its
        hostname, listed with its own address; `extra`: more (host, ip) lines, ip
        "host-gateway" meaning its first network's gateway); the file is written now and
        rewritten whenever the membership of the container's networks changes, and so is
        the resolv.conf beside it (`resolver`: the service's own "servers", "search" and
        "options", see dns.resolv_conf)."""
        with self._locked() as st:
            if path is None:
                st.hosts_files.pop(container_name, None)
                return
            st.hosts_files[container_name] = _hosts_entry(path, hostname, extra, resolver)
            self._rewrite_hosts(st, set(), {container_name})

    def hosts_for(self, container_name: str, hostname: str | None = None) -> str:
        """The /etc/hosts content for a container (`hostname` defaults to the one
        registered with its hosts file)."""
        st = self._peek()
        if hostname is None:
            hostname = st.hosts_files.get(container_name, {}).get("hostname")
        return _render_hosts(st, container_name, hostname)

    def _rewrite_hosts(self, st: _State, networks: set[str], containers: set[str]) -> None:
        """Rewrite the hosts files of the members of `networks` and of `containers`, and the
        resolv.conf beside each of the latter's (the DNS servers of its networks)."""
        targets = set(containers)
        for name in networks:
            rec = st.networks.get(name)
            if rec is not None:
                targets |= set(rec["endpoints"])
        host_resolv: str | None = None
        for container in sorted(targets):
            entry = st.hosts_files.get(container)
            path = entry.get("path") if entry else None
            if not entry or not path or not os.path.isdir(os.path.dirname(path) or "/"):
                continue
            with contextlib.suppress(OSError):
                write_in_place(path, _render_hosts(st, container, entry.get("hostname")))
            if container not in containers:
                continue  # another member: its networks did not change
            resolv = os.path.join(os.path.dirname(path), "resolv.conf")
            if not os.path.isfile(resolv):
                continue  # registered by someone with no resolv.conf of its own to keep
            if host_resolv is None:
                try:
                    host_resolv = Path("/etc/resolv.conf").read_text()
                except OSError:
                    host_resolv = ""
            # IPv4 first: a resolver reads three nameservers at most, and any of its
            # networks' gateways answers for all of them (dns.py)
            mine = [
                st.networks[n]
                for n in sorted(st.networks)
                if container in st.networks[n]["endpoints"]
            ]
            gateways = [g for rec in mine for g in dns.gateways(rec) if ":" not in g]
            gateways += [g for rec in mine for g in dns.gateways(rec) if ":" in g]
            fallback = () if gateways else host_nameservers()
            text = dns.resolv_conf(gateways, host_resolv, fallback, own=entry.get("dns"))
            with contextlib.suppress(OSError):
                write_in_place(resolv, text)

    # -- everything --------------------------------------------------------------------

    @translated
    def reset(self) -> None:
        """Remove everything this state root made: veths, bridges, rules, state."""
        bridges: set[str] = set()
        private_dir(self.dir)
        with self._locked() as st:
            for rec in st.networks.values():
                bridges.add(rec["bridge"])
                with IPRoute() as ipr:
                    for ep in rec["endpoints"].values():
                        _del_link(ipr, ep["veth"])
            with IPRoute() as ipr:
                # anything carrying our alias, even if the state forgot it
                links = [
                    (link.get("ifname"), link.get("ifalias") or "", link.get("kind"))
                    for link in ipr.get_links()
                ]
                for ifname, alias, _kind in links:
                    if alias.startswith(self.alias_prefix) and ifname.startswith("pav"):
                        _del_link(ipr, ifname)
                for ifname, alias, _kind in links:
                    if alias.startswith(self.alias_prefix) and ifname.startswith(
                        firewall.BRIDGE_PREFIX
                    ):
                        bridges.add(ifname)
                for bridge in bridges:
                    _del_link(ipr, bridge)
            comments = [firewall.network_comment(b) for b in sorted(bridges)]
            self.firewall.delete_tagged(comments=comments, prefixes=[c + ":" for c in comments])
            dual = any(rec.get("subnet6") for rec in st.networks.values())
            try:
                self.firewall6.delete_tagged(
                    comments=comments, prefixes=[c + ":" for c in comments]
                )
            except PermanentError:
                if dual:
                    raise
                # no network of the state had IPv6: a host without ip6tables has none to sweep
            st.networks.clear()
            st.hosts_files.clear()
            st.ipam.subnets.clear()
            with self._dns_lock():  # after the syncs of any transaction before this one
                self.dns.stop()  # even if the state forgot its networks
                self.proxy.stop()
        for leftover in ("networks.json", "ipam.json", ".lock", DNS_LOCK_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / leftover).unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _hosts_entry(
    path: str,
    hostname: str | None,
    extra: Iterable[tuple[str, str]],
    resolver: Mapping[str, Sequence[str]] | None,
) -> dict[str, Any]:
    """A container's registered hosts file, as the state keeps it (pure)."""
    return {
        "path": path,
        "hostname": hostname,
        "extra": [list(pair) for pair in extra],
        "dns": {k: list(v) for k, v in (resolver or {}).items() if v},
    }


def _repair(st: _State) -> None:
    """Make the two files agree again if a crash came between their writes: the network
    records (with their endpoints) are the reference for the IPAM's subnets and leases."""
    for name in [n for n in st.ipam.subnets if n not in st.networks]:
        st.ipam.release_subnet(name)
    for name, rec in st.networks.items():
        alloc = st.ipam.subnets.get(name)
        if alloc is None:
            alloc = st.ipam.allocate_subnet(name, rec["subnet"], rec["gateway"])
        for container in [c for c in alloc.leases if c not in rec["endpoints"]]:
            del alloc.leases[container]
        for container, ep in rec["endpoints"].items():
            alloc.leases[container] = IPv4Address(ep["ip"])


def _live_addresses(rec: Mapping[str, Any], own: IPv4Address | None) -> set[IPv4Address]:
    """Addresses something answers on at the network's bridge, besides `own` (the
    container's current lease): a container the state forgot still holds its address,
    and must not get a twin. The bridge's neighbour entries, filtered by the kernel: its
    ARP entries (flushed whenever the bridge's MAC changes) and the MACs its ports learned
    (gone with their port, kept over MAC changes), which name the address they were made
    of (mac_for)."""
    subnet = IPv4Network(rec["subnet"])
    found: set[IPv4Address] = set()
    try:
        index = socket.if_nametoindex(rec["bridge"])
    except OSError:
        return found
    for entry in dump_neighbours((socket.AF_INET, socket.AF_BRIDGE), bridge=index):
        if entry.state & _NUD_GONE:
            continue
        ip: IPv4Address | None = None
        with contextlib.suppress(ValueError, TypeError):
            if entry.family == socket.AF_INET and entry.ifindex == index:
                ip = IPv4Address(entry.dst)
            elif (
                entry.family == socket.AF_BRIDGE
                and entry.master == index
                and not entry.state & _NUD_PERMANENT  # the ports' own addresses
            ):
                ip = _ip_of_mac(entry.lladdr or "")
        if ip is not None and ip in subnet and ip != own:
            found.add(ip)
    return found


def _render_hosts(st: _State, container: str, hostname: str | None) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    own: list[str] = []
    seen: set[tuple[str, str]] = set()
    body: list[str] = []
    for name in sorted(st.networks):
        rec = st.networks[name]
        if container not in rec["endpoints"]:
            continue
        body.append(f"# network {name}")
        for member in sorted(rec["endpoints"]):
            ep = rec["endpoints"][member]
            if ep.get("withdrawn") and member != container:
                continue  # being removed (NetworkManager.withdraw)
            names = [member, *[a for a in ep["aliases"] if a != member]]
            if member == container and hostname and hostname not in names:
                names.append(hostname)
            if member == container and not own:
                own = [ep["ip"], *names]
            key = (ep["ip"], " ".join(names))
            if key not in seen:
                seen.add(key)
                body.append(f"{ep['ip']}\t{' '.join(names)}")
    if not own and hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    gateway = next(
        (str(st.networks[n]["gateway"]) for n in sorted(st.networks)
         if container in st.networks[n]["endpoints"]),
        None,
    )  # fmt: skip
    for host, ip in (st.hosts_files.get(container) or {}).get("extra") or ():
        address = gateway if ip == "host-gateway" else str(ip)
        if address:
            lines.append(f"{address}\t{host}")
    return "\n".join([*lines, *body]) + "\n"


def mac_for(ip: IPv4Address) -> str:
    """A locally administered unicast MAC made of the IPv4 address: 02:42:a:b:c:d."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def _ip_of_mac(mac: str) -> IPv4Address | None:
    """The address a MAC made by mac_for stands for (None for any other MAC)."""
    parts = mac.lower().split(":")
    if len(parts) != 6 or parts[:2] != ["02", "42"]:
        return None
    return IPv4Address(bytes(int(p, 16) for p in parts[2:]))


def _binding_json(b: PortBinding) -> dict[str, Any]:
    out: dict[str, Any] = {
        "container_port": b.container_port,
        "protocol": b.protocol.lower(),
        "host_ip": b.host_ip,
        "host_port": b.host_port,
    }
    if b.host_port_last is not None:
        out["host_port_last"] = b.host_port_last
    return out


def _binding(d: Mapping[str, Any]) -> PortBinding:
    last = d.get("host_port_last")
    return PortBinding(
        container_port=int(d["container_port"]),
        protocol=str(d["protocol"]),
        host_ip=str(d["host_ip"]),
        host_port=None if d["host_port"] is None else int(d["host_port"]),
        host_port_last=None if last is None else int(last),
    )


def _same_port(a: PortBinding, b: PortBinding) -> bool:
    """Whether `a` (as published) is what `b` asks for: its host port, one of its range,
    or any when `b` names none."""
    if b.host_port is None:
        ports_match = True
    elif b.host_port_last is not None and a.host_port is not None:
        ports_match = b.host_port <= a.host_port <= b.host_port_last
    else:
        ports_match = a.host_port == b.host_port
    return (
        a.container_port == b.container_port
        and a.protocol.lower() == b.protocol.lower()
        and a.host_ip == b.host_ip
        and ports_match
    )


def _shown_ports(b: PortBinding) -> str:
    last = f"-{b.host_port_last}" if b.host_port_last is not None else ""
    return f"{b.host_port}{last}"


def _first_free(
    binding: PortBinding,
    ports: Sequence[int | None],
    in_use: Container[tuple[str, int]],
    proto: str,
) -> int:
    """The first of `ports` (those of `binding` no container of this root holds) that no
    other root publishes and nothing on the host is bound to; Conflict when none is."""
    for port in ports:
        if port is None or (proto, port) in in_use:
            continue
        try:
            return _check_port(binding.host_ip, port, proto)
        except Conflict:
            if len(ports) == 1:
                raise
    raise Conflict(f"host port {_shown_ports(binding)}/{proto} is already published or taken")


def _has_proxied(st: _State, container: str) -> bool:
    """Whether a container has a port the proxy serves."""
    return any(
        p["container"] == container and relayed(p["binding"]["host_ip"], p["binding"]["protocol"])
        for rec in st.networks.values()
        for p in rec["ports"]
    )


def _ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise PermanentError(f"{text!r} is not an IPv4 address") from None


def _host_ipv6(host_ip: str) -> IPv6Address | None:
    """A published port's IPv6 host address ("::": every one), None for IPv4 or none."""
    if ":" not in host_ip:
        return None
    try:
        return IPv6Address(host_ip)
    except ValueError:
        raise PermanentError(f"{host_ip!r} is not an IP address") from None


def _check_port(host_ip: str, host_port: int | None, proto: str) -> int:
    """Return a host port that nothing on the host holds now (bind test): the one asked
    for (taken: Conflict) or, for None, a free one from the kernel. A port on all addresses
    must also be free on [::1], which the proxy serves (`relayed`)."""
    for _ in range(20):
        port = _bind_test(host_ip, host_port, proto)
        if host_ip not in ("", "::") or not relayed(host_ip, proto):
            return port
        try:
            _bind_test("::1", port, proto)
            return port
        except Conflict:
            if host_port is not None:
                raise
    raise Conflict(f"no host port for {proto} free on both 0.0.0.0 and [::1]")


def _bind_test(host_ip: str, host_port: int | None, proto: str) -> int:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in host_ip and host_ip != "::" else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip if host_ip not in ("", "0.0.0.0", "::") else "", host_port or 0))
        except OSError as e:
            shown = f"[{host_ip}]" if ":" in host_ip else host_ip or "0.0.0.0"
            raise Conflict(f"host port {shown}:{host_port}/{proto} is taken: {e}") from None
        return int(s.getsockname()[1])


def _forget_neighbour(ipr: Any, bridge: str, ip: str) -> None:
    idx = ipr.link_lookup(ifname=bridge)
    if idx:
        with contextlib.suppress(netlink_error()):
            ipr.neigh("del", dst=ip, ifindex=idx[0])


def _routed_elsewhere(rtnl: Rtnl, subnet: IPv4Network, bridge: str) -> str | None:
    """The interface (other than `bridge`) that routes `subnet` or a part of it, if any."""
    for dst, plen, oif, table in rtnl.routes(socket.AF_INET):
        if table != 254 or not dst or plen == 0:
            continue
        try:
            net = IPv4Network(f"{dst}/{plen}", strict=False)
        except ValueError:
            continue
        if not net.subnet_of(subnet):
            continue  # a wider route (a LAN's /8) does not take the bridge's traffic
        try:
            name = socket.if_indextoname(oif) if oif else f"interface {oif}"
        except OSError:
            name = f"interface {oif}"
        if name != bridge:
            return name
    return None


def _has_link(ifname: str) -> bool:
    """Whether the calling thread's network namespace has a link of that name
    (if_nametoindex(3): no netlink socket)."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _enslave(rtnl: Rtnl, rec: Mapping[str, Any], veth: str) -> None:
    """Put an existing veth (back) on its network's bridge, up, in hairpin mode: a
    container reaching its own published port through the host gets the DNAT'ed packet
    back out of the port it came in on."""
    index = socket.if_nametoindex(veth)
    rtnl.set_link(index, master=socket.if_nametoindex(rec["bridge"]), up=True)
    rtnl.hairpin(index)


def _del_link(ipr: Any, ifname: str) -> None:
    for index in ipr.link_lookup(ifname=ifname):
        try:
            ipr.link("del", index=index)
        except netlink_error() as e:
            if e.code != errno.ENODEV:
                raise RuntimeFailure(f"cannot delete {ifname}: {e}") from None
