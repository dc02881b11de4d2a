"""The DNS server of a state root's networks: Debian's aardvark-dns (podman's), driven by files.

Why aardvark-dns and not a server of our own: it is the one podman ships for exactly this
job (authoritative A/AAAA answers for the containers of a network, everything else
forwarded), it is packaged in Debian (bookworm: 1.4.0), and it is driven entirely by files
and a signal, so that nothing of pyapply has to keep running after an apply: the server is
a daemon of its own, as conmon is for containers.

How it is driven (aardvark-dns 1.4.0, its `config` module and README): a config directory
holds one file per network. The first line lists the addresses to listen on (the bridge's
gateway), optionally followed by a space and the comma-separated resolvers that queries for
other names are forwarded to (else the host's /etc/resolv.conf is read). Every other line
is one container: `<id> <ipv4s> <ipv6s> <names>` (comma-separated lists, an empty field for
none). `aardvark-dns --config DIR -p 53 run` forks, the child writes `DIR/aardvark.pid` and
serves, the parent exits once the child is ready; SIGHUP makes it read the directory again.
What an answer holds (measured with 1.4.0): the names of the networks the asking address
is on (a container on several networks sees the names of all of them, through whichever of
its gateways it asks) and those of the network whose gateway was asked, whoever asks. So a
container asking its own gateway never resolves a network it is not on, and the firewall
keeps it from asking another network's gateway (firewall.dns_rules: a gateway's port 53 is
for its own bridge and the host only).

One server per state root, listening on the gateway of each of its networks, port 53 (and
on the IPv6 gateway of a dual-stack network: containers have both as nameservers). Its
directory is `<root>/networks/dns/` (0700); the files are derived from the network state
(`render_network`) and rewritten by the NetworkManager, under its state lock, after every
change of membership, followed by a SIGHUP; the server reloads in a thread of its own, so
the sync waits until it answers the new files' canary (a name made of their hash, in every
file: `config_files`), and a recreate or a scale is visible at once. A sync killed between
its writes and the SIGHUP leaves files equal to the next sync's, which would then see no
change: the `.reload-owed` file beside the directory, made before the first write and
removed once the server answers, makes the next sync reload it anyway. The server is started
when the first network needs it and stopped (by the pid it wrote, checked against its
command line) when the last network goes. A server that died is seen as missing listeners
(`udp_listeners`, from /proc/net/udp and udp6) and started again.

Upstream resolvers: the host's (aardvark reads /etc/resolv.conf: checked with 1.4.0 and a
resolv.conf naming a loopback resolver), or the addresses in
$PYAPPLY_DNS_UPSTREAM (comma-separated, port 53) when set: a host whose resolv.conf names a
loopback stub still works (the server runs in the host's namespace), and a test can point
the forwarding at a resolver of its own.

Internal networks: a container whose networks are all internal gets no other names, as with
docker. aardvark-dns 1.4 has no per-network switch for that (later versions do), only
AARDVARK_NO_PROXY for a whole process and resolvers per network and per container in its
files (checked with 1.4.0). So while an internal network exists, the root runs a second
server with forwarding off, on a loopback address of its own (`local_only_address`), which
answers every other name as nonexistent at once; the internal networks' files name it as
their resolver, and a container also on a network with a way out has the upstream
resolvers as its own (the fifth field of its lines), so it keeps forwarding. The second
server lives in `<root>/networks/dns-local/` and goes with the first or with the last
internal network.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native.daemons import cmdline, is_zombie, log_tail, terminate
from pyapply.runtime.native.hostbins import AARDVARK
from pyapply.runtime.native.ipam import endpoint_ipv6
from pyapply.runtime.statefs import atomic_write, open_private, private_dir, rmtree

PID_FILE = "aardvark.pid"  # written by aardvark-dns itself, skipped when it reads the dir
CANARY_ID = "pyapply-sync"  # the "container" of each file's canary line (config_files)
CANARY_PREFIX = "pyapply-sync-"
PORT = 53
UPSTREAM_ENV = "PYAPPLY_DNS_UPSTREAM"
# a start binds in a few ms; a loaded host (a load average of 20 on 2 cores) took over 3 s
LISTEN_WAIT_S = 10.0
ANSWER_WAIT_S = 0.2  # the longest wait for one answer of the server
FIRST_ANSWER_WAIT_S = 0.01  # the first (see _await_serving)
STOP_WAIT_S = 5.0
# a name aardvark can hold: no separators of its file format, nothing a resolver would reject
_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")


def upstream_from_env(value: str | None) -> tuple[str, ...]:
    """The resolvers named in $PYAPPLY_DNS_UPSTREAM (pure); a bad address is an error."""
    out: list[str] = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(str(ip_address(part)))
        except ValueError:
            raise PermanentError(
                f"{UPSTREAM_ENV}: {part!r} is not an IP address (resolvers are asked on port 53)"
            ) from None
    return tuple(out)


def dns_names(key: str, aliases: Iterable[str]) -> list[str]:
    """The names a member answers to on a network (pure): its key (the name it was created
    with), then its aliases (the reconciler passes the container's name and its service's);
    names aardvark's file format cannot hold are left out (they still are in /etc/hosts)."""
    names = dict.fromkeys(n.lower() for n in (key, *aliases) if _NAME.match(n))
    return list(names)


def render_network(
    rec: Mapping[str, Any],
    upstream: Sequence[str] = (),
    servers: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """One network's aardvark-dns file (pure): its gateways (IPv4, and IPv6 on a dual-stack
    network) and the upstream resolvers, then one line per member, with the resolvers of
    its own that `servers` gives it (aardvark's fifth field)."""
    first = ",".join(gateways(rec))
    if upstream:
        first += " " + ",".join(upstream)
    lines = [first]
    for key in sorted(rec["endpoints"]):
        ep = rec["endpoints"][key]
        if ep.get("withdrawn"):
            continue  # being removed (NetworkManager.withdraw)
        names = dns_names(key, ep.get("aliases") or ())
        if names and _NAME.match(key):
            ip6 = endpoint_ipv6(rec, ep["ip"])  # AAAA answers on a dual-stack network
            line = f"{key.lower()} {ep['ip']} {ip6 or ''} {','.join(names)}"
            own = (servers or {}).get(key)
            lines.append(f"{line} {','.join(own)}" if own else line)
    return "\n".join(lines) + "\n"


def config_files(
    networks: Mapping[str, Mapping[str, Any]],
    upstream: Sequence[str] = (),
    local_only: str | None = None,
    forwarders: Sequence[str] = (),
) -> tuple[dict[str, str], str]:
    """File name -> content of the whole config directory, and the name of its generation
    (pure). A file is named after the network's bridge (a safe, unique file name; aardvark
    only uses it as a key). Each ends with the generation's canary: a name made of the
    hash of everything else, answered with the gateway's own address, which the server
    answers only once it has read this very content (see DnsServer.sync).

    Internal networks: with `local_only` (the address of the root's server that forwards
    nothing), an internal network's resolvers are that server, so a container on internal
    networks only is told that other names do not exist; a container also on a network
    that is not internal keeps `forwarders` (the upstream resolvers) as its own, as docker
    forwards for a container with a way out."""
    servers: dict[str, Sequence[str]] = {}
    if local_only is not None:
        inner = {k for r in networks.values() if r.get("internal") for k in r["endpoints"]}
        outer = {k for r in networks.values() if not r.get("internal") for k in r["endpoints"]}
        servers = dict.fromkeys(inner & outer, tuple(forwarders))
    files = {
        str(rec["bridge"]): render_network(
            rec,
            (local_only,) if local_only is not None and rec.get("internal") else upstream,
            servers,
        )
        for rec in networks.values()
    }
    digest = hashlib.sha256(
        "\0".join(f"{name}\n{text}" for name, text in sorted(files.items())).encode()
    ).hexdigest()
    canary = f"{CANARY_PREFIX}{digest[:16]}"
    for rec in networks.values():
        files[str(rec["bridge"])] += f"{CANARY_ID} {rec['gateway']}  {canary}\n"
    return files, canary


def a_query(qid: int, name: str) -> bytes:
    """A DNS query for the A record of `name` (pure; RFC 1035 4.1: a header, one question)."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!2H", 1, 1)


def is_answer(reply: bytes, qid: int) -> bool:
    """Whether `reply` answers query `qid` with at least one record and no error (pure)."""
    if len(reply) < 12:
        return False
    rid, flags, _qd, answers = struct.unpack("!4H", reply[:8])
    return rid == qid and bool(flags & 0x8000) and flags & 0xF == 0 and answers > 0


def gateways(rec: Mapping[str, Any]) -> list[str]:
    """The addresses a network's DNS server listens on (pure): its IPv4 gateway, and its IPv6
    one on a dual-stack network (as written by ip_address: the form listings compare)."""
    out = [str(ip_address(rec["gateway"]))]
    if rec.get("subnet6") and rec.get("gateway6"):
        out.append(str(ip_address(rec["gateway6"])))
    return out


def udp_listeners(text: str) -> frozenset[tuple[str, int]]:
    """(address, port) of the bound UDP sockets in a /proc/net/udp or /proc/net/udp6 listing
    (pure). The kernel prints an address as the hex of its 32-bit words, each in host
    order (one word for IPv4, four for IPv6)."""
    found: set[tuple[str, int]] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2 or ":" not in fields[1]:
            continue
        addr, _, port = fields[1].partition(":")
        with contextlib.suppress(ValueError, struct.error, OSError):
            raw = b"".join(
                struct.pack("=I", int(addr[i : i + 8], 16)) for i in range(0, len(addr), 8)
            )
            family = socket.AF_INET6 if len(raw) == 16 else socket.AF_INET
            found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return frozenset(found)


def read_udp_listeners() -> frozenset[tuple[str, int]]:
    """The bound UDP sockets of the host's namespace, IPv4 and IPv6."""
    found: frozenset[tuple[str, int]] = frozenset()
    for name in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            found |= udp_listeners(Path(f"/proc/net/{name}").read_text())
    return found


def dns_fault(rec: Mapping[str, Any], listeners: frozenset[tuple[str, int]]) -> str | None:
    """What is wrong with a network's DNS server (pure): nothing listens on a gateway."""
    missing = [g for g in gateways(rec) if (g, PORT) not in listeners]
    if not missing:
        return None
    return "no DNS server on " + ", ".join(
        f"[{g}]:{PORT}" if ":" in g else f"{g}:{PORT}" for g in missing
    )


def resolv_conf(
    gateways: Sequence[str],
    host_text: str,
    fallback: Sequence[str] = (),
    *,
    own: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """A container's /etc/resolv.conf (pure): the DNS servers of its networks (their
    gateways, in the order it joined them, as podman writes them), with the host's search
    domains and options as docker copies them; with no network, `fallback` servers. `own`
    is what the service asks (`dns`, `dns_search`, `dns_opt` as "servers", "search",
    "options"): each one given replaces its part. Servers of its own replace the network's
    DNS server, as docker's `--dns` does on the default bridge; peers then still resolve
    through /etc/hosts."""
    search: list[str] = []
    options: list[str] = []
    for line in host_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("search", "domain"):
            search = parts[1:]  # the last one wins, as in the resolver
        elif len(parts) >= 2 and parts[0] == "options":
            options += parts[1:]
    own = own or {}
    if own.get("servers"):
        gateways = list(own["servers"])
    if own.get("search"):
        search = list(own["search"])
    if own.get("options"):
        options = list(own["options"])
    lines = [f"nameserver {ns}" for ns in (gateways or fallback)]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def host_resolvers(text: str) -> list[str]:
    """The nameservers of a resolv.conf (pure), loopback ones included: aardvark-dns asks
    them from the host's namespace."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                out.append(str(ip_address(parts[1])))
    return out


def _assigned(address: str) -> bool:
    """Whether `address` is one of this host's (a socket can be bound to it). A sync runs
    with the state its own transaction saved; a later transaction (whose sync follows) may
    delete a network's bridge meanwhile, and with it the gateway address, on which no server
    can listen any more: waiting for it was a wait to the deadline (10 s) whenever two
    networks were removed together (every `down`)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True


def local_only_address(directory: Path) -> str:
    """The loopback address of a root's server that forwards nothing (pure): hashed from its
    directory, so roots side by side have their own, in 127.64.0.0/10 (clear of 127.0.0.x
    and of the stub resolvers' 127.0.0.53)."""
    h = int.from_bytes(hashlib.sha256(str(directory).encode()).digest()[:3], "big")
    low = min(max(h & 0xFF, 1), 254)  # no .0 or .255
    return str(IPv4Address((127 << 24) | (64 << 16) | (h & 0x3FFF00) | low))


def _host_resolvers() -> list[str]:
    try:
        return host_resolvers(Path("/etc/resolv.conf").read_text())
    except OSError:
        return []


class DnsServer:
    """The aardvark-dns process and config directory of one state root. `forward` off: the
    root's second server, for the containers of internal networks only, which answers
    every name it does not hold as nonexistent (AARDVARK_NO_PROXY, aardvark-dns 1.4's one
    switch, for a whole process: hence a process of its own)."""

    def __init__(self, directory: Path, log: Path, *, forward: bool = True) -> None:
        self.dir = directory
        self.log = log
        # there while the files may differ from what the server has read (`sync`); beside
        # the directory, since the server reads every file in it as a network
        self.owed = directory.with_name(directory.name + ".reload-owed")
        self.forward = forward
        self.local: DnsServer | None = None
        if forward:
            self.local = DnsServer(
                directory.with_name(directory.name + "-local"),
                log.with_name(log.stem + "-local" + log.suffix),
                forward=False,
            )

    # -- the process -----------------------------------------------------------------

    def pid(self) -> int | None:
        """The server's pid, if it runs: the pid it wrote, checked against the command
        line (a reused pid is someone else's and is never signalled)."""
        try:
            text = (self.dir / PID_FILE).read_text().strip()
        except OSError:
            return None
        if not text.isdigit():
            return None
        pid = int(text)
        args = cmdline(pid)
        if (
            not args
            or os.path.basename(args[0]) != "aardvark-dns"
            or str(self.dir) not in args
            or is_zombie(pid)
        ):
            return None
        return pid

    def _start(self) -> None:
        binary = AARDVARK.find()
        if binary is None:
            raise PermanentError(AARDVARK.missing())
        cmd = [binary, "--config", str(self.dir), "-p", str(PORT), "run"]
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # its own session: a Ctrl-C of pyapply does not reach the server it leaves
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                timeout=30,
                check=False,
                start_new_session=True,
                env={
                    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    **({} if self.forward else {"AARDVARK_NO_PROXY": "1"}),
                },
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PermanentError(f"cannot start {binary}: {e}") from None
        finally:
            os.close(fd)
        if proc.returncode != 0 or self.pid() is None:
            raise PermanentError(
                f"{binary} did not start (exit {proc.returncode}): {self._log_tail()}"
            )

    @staticmethod
    def _answers(server: str, name: str, timeout: float = ANSWER_WAIT_S) -> bool:
        """Whether the server on `server` answers a query from the host for `name` within
        `timeout` (the host asks from the gateway's own address, which the canary lines
        make a member of every network)."""
        qid = int.from_bytes(os.urandom(2), "big")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(a_query(qid, name), (server, PORT))
                reply = s.recv(4096)
                while reply[:2] != qid.to_bytes(2, "big"):  # a late reply to an earlier try
                    reply = s.recv(4096)
            except OSError:  # timed out, refused: not serving yet
                return False
        return is_answer(reply, qid)

    def unheard(self) -> bool:
        """Whether this server or the root's second one may serve other files than its
        directory's: a sync ended (killed) between its writes and the reload, or one is
        still running (`sync`)."""
        return self.owed.exists() or (self.local is not None and self.local.unheard())

    def _log_tail(self) -> str:
        # aardvark says it found no syslog on every start where none runs
        return log_tail(self.log, skip="syslog")

    def stop(self) -> None:
        """End the server (by its pid) and remove its directory. Not running is success."""
        if self.local is not None:
            self.local.stop()
        terminate(self.pid, STOP_WAIT_S)
        if self.dir.exists():
            rmtree(self.dir)
        with contextlib.suppress(FileNotFoundError):
            self.owed.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.log.unlink()

    # -- the files -------------------------------------------------------------------

    def sync(self, networks: Mapping[str, Mapping[str, Any]], *, check: bool = False) -> None:
        """Make the directory say what `networks` hold and the server serve it: files
        rewritten where they differ, then a reload (SIGHUP), or a start if the server is
        not running; with no network, the server stopped. `check`: also make sure that it
        listens on every gateway (a server that died is started again)."""
        if not networks:
            self.stop()
            return
        upstream = upstream_from_env(os.environ.get(UPSTREAM_ENV))
        local_only = None
        forwarders: Sequence[str] = ()
        if self.local is not None:
            if any(rec.get("internal") for rec in networks.values()):
                # first: the server forwards to it
                local_only = local_only_address(self.local.dir)
                rec = {"bridge": "local", "gateway": local_only, "endpoints": {}}
                self.local.sync({"local": rec}, check=check)
                forwarders = upstream or _host_resolvers()
            else:
                self.local.stop()
        wanted, canary = config_files(networks, upstream, local_only, forwarders)
        private_dir(self.dir)
        stale = [
            e.path for e in os.scandir(self.dir) if e.name != PID_FILE and e.name not in wanted
        ]
        writes: dict[Path, str] = {}
        for name, text in wanted.items():
            path = self.dir / name
            try:
                if path.read_text() == text:
                    continue
            except OSError:
                pass
            writes[path] = text
        # owed: files that differ from what the server was told to read, left by a sync
        # that ended (killed) between its writes and the server's reload
        owed = self.owed.exists()
        if (stale or writes) and not owed:
            os.close(open_private(self.owed, os.O_WRONLY))
            owed = True
        for stale_path in stale:  # a removed network, a crashed write's temp file
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale_path)
        for path, text in writes.items():
            # derived from the state and rewritten at the next change: need not be durable
            atomic_write(path, text, durable=False)
        pid = self.pid()
        if pid is None:
            self._start()
        elif owed:
            os.kill(pid, signal.SIGHUP)
        if owed or pid is None or check:
            self._await_serving(networks.values(), canary)
        if owed:
            self.owed.unlink()

    def _await_serving(self, networks: Iterable[Mapping[str, Any]], canary: str) -> None:
        """Wait (bounded) until the server listens on every gateway of `networks` and
        answers from the files just written. It binds in threads of its own after it
        reported ready, and a reload (SIGHUP) is taken in by another thread while we go on:
        a recreate's or a scale's first query must find the new names, so the sync ends
        only once the server answers the new generation's canary. A gateway address that
        goes meanwhile (its bridge deleted) is not waited for (`_assigned`)."""
        deadline = time.monotonic() + LISTEN_WAIT_S
        recs = list(networks)
        # a query that reaches the server while it takes in a SIGHUP is often never
        # answered (measured with 1.4.0: about one reload in two), while an answer comes
        # within a millisecond: ask again soon, waiting longer each time (a loaded host's
        # slow answer still comes in)
        wait = FIRST_ANSWER_WAIT_S
        while True:
            addresses = [g for rec in recs for g in gateways(rec) if _assigned(g)]
            if not addresses:
                return
            missing = {(g, PORT) for g in addresses} - read_udp_listeners()
            if not missing:
                if self._answers(min(a for a in addresses if ":" not in a), canary, wait):
                    return
                wait = min(wait * 2, ANSWER_WAIT_S)
            if self.pid() is None:
                self._start()  # it died (a config it could not read: see its log)
            if time.monotonic() > deadline:
                if not missing:
                    raise PermanentError(
                        "the networks' DNS server (aardvark-dns) does not answer from its "
                        f"files: {self._log_tail()}"
                    )
                where = ", ".join(
                    f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in sorted(missing)
                )
                raise PermanentError(
                    f"the networks' DNS server (aardvark-dns) does not listen on {where}: "
                    f"{self._log_tail()} (is another DNS server holding port 53?)"
                )
            time.sleep(0.01)
