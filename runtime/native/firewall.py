"""Firewall rules for native networks, through the `iptables` command.

Why iptables (and not a table of our own in nft): dockerd on the same host sets the policy of
the `filter FORWARD` chain to DROP. In nftables a packet must be accepted by *every* base
chain on a hook, so an accept in a separate nft table of ours would still be dropped by
docker's chain. Our accepts have to live in that same FORWARD chain, which is what the
`iptables` front-end (iptables-nft on Debian 12, the one docker itself uses) reaches.

Everything we add lives in chains of ours, jumped to from the base chains:

- filter `PYAPPLY-FORWARD` (from FORWARD): per network, and correct whatever the order of
  the networks — traffic within the bridge accepted, replies and DNAT'ed (published)
  traffic into it accepted, egress to non-pyapply interfaces accepted unless `internal`,
  everything else in or out of the bridge dropped (so two of our networks never reach each
  other; an internal network's drop sits at the head of the chain);
- nat `PYAPPLY-POSTROUTING` (from POSTROUTING): egress MASQUERADE for non-internal subnets,
  MASQUERADE of 127.0.0.0/8 sources into the bridge (published ports on localhost) and of
  hairpin traffic;
- nat `PYAPPLY-DNAT` (from PREROUTING and OUTPUT, for local destinations): published ports;
- mangle `PYAPPLY-INPUT` (from INPUT): the loopback guard, see below;
- mangle `PYAPPLY-DNS` (from INPUT): the guard of each network's DNS server (`dns_rules`:
  its gateway's port 53 is for its own bridge and the host only), and filter `PYAPPLY-DNS`
  (from INPUT) accepting the bridge's own queries whatever the host's INPUT policy;
- mangle `PYAPPLY-ISOLATION` (from FORWARD): the guard between runtimes, see below.

Loopback guard. Published ports on 127.0.0.1 need `route_localnet=1` on the bridge (the
host's connection leaves with source 127.0.0.1 and its replies come back to 127.0.0.1
through the bridge). That same setting lets a container with CAP_NET_RAW hand the host a
packet addressed to 127.0.0.1 (a frame to the gateway's MAC) and reach services bound to
loopback (CVE-2020-8558). We close it as Kubernetes did: a packet coming in on our bridge for
127.0.0.0/8 is dropped unless conntrack says it belongs to a connection we NATed (a reply to
the host's own connection to a published port, or a DNAT'ed one), and a forwarded
connection that was first addressed to 127.0.0.0/8 is dropped too (else a raw frame to
127.0.0.1:PORT would reach a port published on 127.0.0.1 only). Chosen over a userland
proxy (which would let us turn route_localnet off) because nothing of ours has to keep
running after pyapply exits, the kernel path for published ports stays as it is, and the
rules are a few lines per bridge that go with the network.

Guard between runtimes. dockerd rewrites filter FORWARD when it starts: its DOCKER-USER,
DOCKER-ISOLATION and per-bridge ACCEPTs (`-i docker0 ! -o docker0 -j ACCEPT`) go back to the
top, above our PYAPPLY-FORWARD, so after a dockerd restart its containers would reach ours,
and ours already reach its unpublished ports through our egress ACCEPT. The mangle table is
one dockerd never writes, and its FORWARD hook runs before filter's with the same conntrack
state (DNAT is already decided by then), and a DROP in any table is final. So per network:
nothing enters our bridge from another interface but replies and DNAT'ed (published)
connections; nothing leaves it for docker's bridges (`docker+`: docker0, docker_gwbridge;
`br-+`: user networks) but replies and DNAT'ed connections (docker's published ports); an
internal network's "nothing leaves" drop is repeated there. (docker's bridges are known by
name only: an uplink of the host's own called `br-...` would be closed to new connections
from our containers too; dockerd started with `--bridge=NAME` is not recognised on the way
out, though the way in is closed whatever the name.) DOCKER-USER was the other
candidate; it exists only while dockerd does and is jumped to only once dockerd has started,
while ours must hold whether dockerd starts before us, after us or not at all.

Checking that the rules are there: one `iptables-save` per look, parsed (`parse_save`) into
rule keys compared with the rules we would add (`rule_key`: iptables prints a rule's
matches in its own order and `-d 127.0.0.1` as `127.0.0.1/32`, so a key is the rule's
option groups, sorted and normalised), rather than one `iptables -C` per rule.

IPv6 (a dual-stack network): the same chains, jumps and comments in ip6tables, with the
rules of `network_rules` for the network's IPv6 subnet (a second `Firewall("ip6tables")`).
What concerns 127.0.0.0/8 has no IPv6 counterpart: the kernel never routes ::1 off the
loopback interface, so there is no route_localnet, no loopback guard, and no port
published on [::1] (network.py refuses it). The DNS server listens on the IPv4 gateway
only, so its guard stays in iptables.
Every rule carries a comment `pyapply:<bridge>` (or `pyapply:<bridge>:<container>` for a
published port), so a network's or a container's rules are found in the kernel and deleted
without relying on our state. Several state roots share the chains; a chain and its jumps
are removed when the last rule in our chains goes. Docker's chains and rules are never
modified (we only insert jumps to our own chains into the base chains).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import IO

import msgspec

from pyapply.runtime.base import PermanentError, PortBinding
from pyapply.runtime.native.hostbins import IPTABLES, IPTABLES_RESTORE, IPTABLES_SAVE, HostBinary

FORWARD_CHAIN = "PYAPPLY-FORWARD"
POSTROUTING_CHAIN = "PYAPPLY-POSTROUTING"
DNAT_CHAIN = "PYAPPLY-DNAT"
INPUT_CHAIN = "PYAPPLY-INPUT"
DNS_CHAIN = "PYAPPLY-DNS"
ISOLATION_CHAIN = "PYAPPLY-ISOLATION"
COMMENT_PREFIX = "pyapply:"
# what every chain of ours starts with (OUR_CHAINS): a rule in one, or a jump to one, names it
_OURS = "PYAPPLY-"
BRIDGE_PREFIX = "pa-"
# docker's bridges, as iptables interface patterns: docker0 and docker_gwbridge, and the
# br-<network id> of its user networks
DOCKER_BRIDGES = ("docker+", "br-+")

# (table, chain of ours)
OUR_CHAINS: tuple[tuple[str, str], ...] = (
    ("filter", FORWARD_CHAIN),
    ("nat", POSTROUTING_CHAIN),
    ("nat", DNAT_CHAIN),
    ("mangle", INPUT_CHAIN),
    ("mangle", ISOLATION_CHAIN),
    ("mangle", DNS_CHAIN),
    ("filter", DNS_CHAIN),
)
# (table, base chain, match args) of the jumps into our chains
JUMPS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("filter", "FORWARD", (), FORWARD_CHAIN),
    ("nat", "POSTROUTING", (), POSTROUTING_CHAIN),
    ("nat", "PREROUTING", ("-m", "addrtype", "--dst-type", "LOCAL"), DNAT_CHAIN),
    ("nat", "OUTPUT", ("-m", "addrtype", "--dst-type", "LOCAL"), DNAT_CHAIN),
    ("mangle", "INPUT", (), INPUT_CHAIN),
    ("mangle", "FORWARD", (), ISOLATION_CHAIN),
    ("mangle", "INPUT", (), DNS_CHAIN),
    ("filter", "INPUT", (), DNS_CHAIN),
)

LOCK_PATH = "/run/lock/pyapply-firewall.lock"


_host_mutex = threading.RLock()
_host_depth = 0
_host_file: IO[str] | None = None


@contextmanager
def host_lock() -> Iterator[None]:
    """The host-wide lock of our network changes (firewall rules, subnet choice), shared by
    every pyapply process and state root; re-entrant within a process."""
    global _host_depth, _host_file
    with _host_mutex:
        if _host_depth == 0:
            os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
            fh = open(LOCK_PATH, "a")  # noqa: SIM115 - held across the yield
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
            except BaseException:
                fh.close()
                raise
            _host_file = fh
        _host_depth += 1
        try:
            yield
        finally:
            _host_depth -= 1
            if _host_depth == 0 and _host_file is not None:
                fcntl.flock(_host_file, fcntl.LOCK_UN)
                _host_file.close()
                _host_file = None


class Rule(msgspec.Struct, frozen=True):
    table: str
    chain: str
    args: tuple[str, ...]
    top: bool = False  # inserted at the head of the chain rather than appended


def network_comment(bridge: str) -> str:
    return f"{COMMENT_PREFIX}{bridge}"


def port_comment(bridge: str, container: str) -> str:
    return f"{COMMENT_PREFIX}{bridge}:{container}"


def _c(comment: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", comment)


def network_rules(bridge: str, subnet: IPv4Network | IPv6Network, internal: bool) -> list[Rule]:
    """The rules of one network (pure).

    They hold whatever the order of the networks in the chain: a network's drops only
    concern its own bridge, and the exceptions other networks need (replies, published
    ports reached through DNAT) are let through by those drops. An internal network's
    "nothing leaves the bridge" drop goes to the top of the chain, before any network's
    accepts, so not even a published port of another network is reachable from it.
    """
    c = _c(network_comment(bridge))
    f = FORWARD_CHAIN
    ct = ("-m", "conntrack", "--ctstate")
    rules: list[Rule] = []
    if internal:
        rules.append(
            Rule("filter", f, ("-i", bridge, "!", "-o", bridge, *c, "-j", "DROP"), top=True)
        )
    rules += [
        Rule("filter", f, ("-i", bridge, "-o", bridge, *c, "-j", "ACCEPT")),
        Rule("filter", f, ("-o", bridge, *ct, "RELATED,ESTABLISHED", *c, "-j", "ACCEPT")),
        # published ports (DNAT'ed by our PYAPPLY-DNAT chain) into this network
        Rule("filter", f, ("-o", bridge, *ct, "DNAT", *c, "-j", "ACCEPT")),
    ]
    if not internal:
        # egress, to anything but our own bridges
        rules.append(
            Rule("filter", f, ("-i", bridge, "!", "-o", f"{BRIDGE_PREFIX}+", *c, "-j", "ACCEPT"))
        )
    rules += [
        Rule("filter", f, ("-o", bridge, *c, "-j", "DROP")),
        # the DNAT exception lets this network reach another one's published ports
        Rule(
            "filter",
            f,
            ("-i", bridge, "-m", "conntrack", "!", "--ctstate", "DNAT", *c, "-j", "DROP"),
        ),
    ]
    if subnet.version == 4:
        # published ports reached from 127.0.0.1 (route_localnet is on for the bridge)
        rules.append(
            Rule(
                "nat",
                POSTROUTING_CHAIN,
                ("-s", "127.0.0.0/8", "-o", bridge, *c, "-j", "MASQUERADE"),
            )
        )
    rules += [
        # hairpin: a container reaching a published port of its own network
        Rule(
            "nat",
            POSTROUTING_CHAIN,
            ("-s", str(subnet), "-o", bridge, *ct, "DNAT", *c, "-j", "MASQUERADE"),
        ),
    ]
    if not internal:
        # egress NAT
        rules.append(
            Rule(
                "nat",
                POSTROUTING_CHAIN,
                ("-s", str(subnet), "!", "-o", bridge, *c, "-j", "MASQUERADE"),
            )
        )
    return rules + guard_rules(bridge, internal, ipv6=subnet.version == 6)


# conntrack states that are not a new connection of the sender's own making: replies to a
# connection, and connections we (or docker) DNAT'ed for a published port
_NOT_OURS = ("-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT")
# connections first addressed to loopback (whatever DNAT made of them since)
_TO_LOOPBACK = ("-m", "conntrack", "--ctorigdst", "127.0.0.0/8")


def guard_rules(bridge: str, internal: bool, *, ipv6: bool = False) -> list[Rule]:
    """The mangle-table guards of one network (pure): the loopback guard (IPv4 only) and
    the guard between runtimes (see the module docstring for why they are there and in
    mangle)."""
    c = _c(network_comment(bridge))
    g = ISOLATION_CHAIN
    loopback = (
        []
        if ipv6
        else [
            # CVE-2020-8558: nothing from the bridge reaches the host's 127.0.0.0/8 services
            Rule(
                "mangle",
                INPUT_CHAIN,
                ("-i", bridge, "-d", "127.0.0.0/8", *_NOT_OURS, *c, "-j", "DROP"),
            ),
            # a port published on 127.0.0.1 is the host's alone; a connection addressed to
            # 127.0.0.0/8 that is forwarded at all came as a raw frame (a container of this
            # bridge reaching ours or docker's localhost ports) or from another interface (a
            # docker container, a LAN neighbour) and was DNAT'ed by a rule for 127.0.0.1
            Rule("mangle", g, ("-i", bridge, *_TO_LOOPBACK, *c, "-j", "DROP")),
            Rule("mangle", g, ("-o", bridge, *_TO_LOOPBACK, *c, "-j", "DROP")),
        ]
    )
    rules = [
        *loopback,
        # nothing enters the bridge from elsewhere (docker's bridges included) unasked
        Rule("mangle", g, ("!", "-i", bridge, "-o", bridge, *_NOT_OURS, *c, "-j", "DROP")),
    ]
    rules += [
        Rule("mangle", g, ("-i", bridge, "-o", other, *_NOT_OURS, *c, "-j", "DROP"))
        for other in DOCKER_BRIDGES
    ]
    if internal:
        rules.append(Rule("mangle", g, ("-i", bridge, "!", "-o", bridge, *c, "-j", "DROP")))
    return rules


def dns_rules(bridge: str, gateway: IPv4Address | IPv6Address) -> list[Rule]:
    """The guard of a network's DNS server (pure). The server (dns.py) answers a query with
    the names of the network whose gateway was asked, whoever asks, so a container of
    another network, of docker or of the LAN must not reach the gateway's port 53: only
    its own bridge and the host itself (lo) do. In mangle, as the loopback guard: a DROP
    there is final whatever filter's INPUT says; in a chain of its own, whose RETURN for
    the bridge's own queries passes them on to the other guards. And the bridge's own
    queries accepted in filter's INPUT, ahead of the host's rules: on a host whose INPUT
    drops what it does not know (ufw, a firewalld zone), the containers' DNS still works,
    as their traffic through FORWARD does."""
    c = _c(network_comment(bridge))
    out: list[Rule] = []
    for proto in ("udp", "tcp"):
        match = ("-d", str(gateway), "-p", proto, "-m", proto, "--dport", "53")
        out += [
            # at the head: a rule remade after a deletion must still come before the drop
            Rule("mangle", DNS_CHAIN, (*match, "-i", bridge, *c, "-j", "RETURN"), top=True),
            Rule("mangle", DNS_CHAIN, (*match, "!", "-i", "lo", *c, "-j", "DROP")),
            Rule("filter", DNS_CHAIN, (*match, "-i", bridge, *c, "-j", "ACCEPT")),
        ]
    return out


def port_rules(
    bridge: str, container: str, ip: IPv4Address | IPv6Address, binding: PortBinding
) -> list[Rule]:
    """The DNAT rule of one published port (host_port must be resolved); for an IPv6 `ip`,
    the ip6tables rule (a host_ip of "" or "::" then means every IPv6 address)."""
    if binding.host_port is None:
        raise PermanentError("a published port needs a host port before its rule is made")
    proto = binding.protocol.lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise PermanentError(f"unsupported protocol {binding.protocol!r}")
    dst = ("-d", binding.host_ip) if binding.host_ip not in ("", "0.0.0.0", "::") else ()
    to = f"[{ip}]:{binding.container_port}" if ip.version == 6 else f"{ip}:{binding.container_port}"
    return [
        Rule(
            "nat",
            DNAT_CHAIN,
            (
                *dst,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                str(binding.host_port),
                *_c(port_comment(bridge, container)),
                "-j",
                "DNAT",
                "--to-destination",
                to,
            ),
        ),
    ]


# (table, chain, the rule's option groups sorted): what identifies a rule in iptables-save
RuleKey = tuple[str, str, tuple[tuple[str, ...], ...]]


def _option_groups(args: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """A rule's arguments as option groups ("!" and an option with its values), each value
    normalised as iptables prints it (a host address without its /32)."""
    groups: list[list[str]] = []
    negate = False
    for word in args:
        if word == "!":
            negate = True
            continue
        if word.startswith("-") or not groups:
            groups.append(["!", word] if negate else [word])
            negate = False
            continue
        if negate:  # "--ctstate ! VALUE" (the older place of the "!")
            groups[-1].insert(0, "!")
            negate = False
        groups[-1].append(word.removesuffix("/128") if ":" in word else word.removesuffix("/32"))
    return tuple(sorted(tuple(g) for g in groups))


def rule_key(table: str, chain: str, args: Sequence[str]) -> RuleKey:
    return (table, chain, _option_groups(args))


def key_of(rule: Rule) -> RuleKey:
    return rule_key(rule.table, rule.chain, rule.args)


_WORD = re.compile(r'(?:[^\s"]+|"[^"]*")+')


def split_words(line: str) -> list[str]:
    """A line of iptables-save as shlex.split reads it, faster for what iptables-save
    prints (double quotes around a comment, no escapes): a line with a backslash, a single
    quote or unpaired double quotes goes to shlex itself."""
    if "\\" in line or "'" in line or line.count('"') % 2:
        return shlex.split(line)
    return [w.replace('"', "") for w in _WORD.findall(line)]


def parse_save(text: str, comments: Collection[str] | None = None) -> frozenset[RuleKey]:
    """The rules of an `iptables-save` output that concern us, as keys (pure): those in our
    chains and the jumps into them, the only ones ever looked up (the host's and docker's
    other rules are skipped unparsed: on a host with many of them, splitting every line
    cost more than the rest of a no-op look). `comments`: of the rules with a comment,
    only those whose line holds one of these (what `Firewall.add` looks for: the other
    networks' rules, every root's, are not parsed at each publish)."""
    keys: set[RuleKey] = set()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif (
            line.startswith("-A ")
            and _OURS in line
            and (comments is None or "--comment" not in line or any(c in line for c in comments))
        ):
            try:
                words = split_words(line)
            except ValueError:
                continue
            if len(words) >= 2:
                keys.add(rule_key(table, words[1], words[2:]))
    return frozenset(keys)


def _table_lines(text: str, table: str) -> Iterator[str]:
    """The lines of one table of an `iptables-save` output (pure)."""
    current = ""
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table:
            yield line


def parse_chains(text: str) -> frozenset[tuple[str, str]]:
    """(table, chain) of the chains of ours an `iptables-save` output declares (pure)."""
    chains: set[tuple[str, str]] = set()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":" + _OURS):
            chains.add((table, line[1:].split(" ", 1)[0]))
    return frozenset(chains)


def jump_rules() -> list[Rule]:
    """The jumps from the base chains into ours, as rules (for checking they are there),
    each inserted at the head of its base chain."""
    return [
        Rule(table, base, (*match, "-j", target), top=True) for table, base, match, target in JUMPS
    ]


def missing(rules: Sequence[Rule], present: frozenset[RuleKey]) -> list[Rule]:
    """The rules of `rules` that are not in `present` (pure)."""
    return [r for r in rules if key_of(r) not in present]


def restore_text(rules: Sequence[Rule]) -> str:
    """`iptables-restore --noflush` input adding `rules` in order (pure): each table's rules
    in one section, a rule with `top` inserted at the head of its chain as `iptables -I`
    does, the rest appended; our chains must exist already (a chain line would flush one
    that does)."""
    tables: dict[str, list[str]] = {}
    for r in rules:
        where = ["-I", r.chain, "1"] if r.top else ["-A", r.chain]
        tables.setdefault(r.table, []).append(" ".join(_quoted(w) for w in [*where, *r.args]))
    return "".join(
        f"*{t}\n" + "".join(f"{ln}\n" for ln in lines) + "COMMIT\n" for t, lines in tables.items()
    )


def _quoted(word: str) -> str:
    """A word as iptables-restore reads it: in double quotes (with `\\"` and `\\\\`)
    when it is empty or holds a blank or a quote."""
    if word and not any(c.isspace() or c in "\"'\\" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Firewall:
    """Applies rules with the iptables command, under a host-wide lock."""

    def __init__(self, iptables: str = "iptables") -> None:
        self.iptables = iptables

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return host_lock()

    def _run(self, table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [self.iptables, "-w", "-t", table, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise PermanentError(IPTABLES.missing()) from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise PermanentError(f"cannot run {shlex.join(cmd)}: {e}") from None
        if check and proc.returncode != 0:
            raise PermanentError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
        return proc

    def _save_text(self) -> str:
        return _tool([f"{self.iptables}-save"], IPTABLES_SAVE)

    def save(self) -> frozenset[RuleKey]:
        """Every rule of ours (and jump into ours), in one `iptables-save` call."""
        return parse_save(self._save_text())

    def add(self, rules: Sequence[Rule], saved: str | None = None) -> None:
        """Add rules that are not there yet (idempotent), with our chains and the jumps into
        them. What is there is read with one `iptables-save` under the host lock, rather
        than one `iptables -S`/`-C` per chain, jump and rule; the keys compared are those
        the kernel checks compare (`missing`); what is missing goes in with one
        `iptables-restore --noflush` (a network's dozen rules, or a container's ports, one
        process rather than one per rule: most of a publish's time, under the network
        lock)."""
        with self.locked():
            text = self._save_text() if saved is None else saved
            wanted = {c for c in (self.comment_of(r.args) for r in rules) if c is not None}
            present = set(parse_save(text, wanted))
            chains = parse_chains(text)
            for table, chain in OUR_CHAINS:
                if (table, chain) not in chains:
                    self._run(table, "-N", chain)
            todo: list[Rule] = []
            for r in [*jump_rules(), *rules]:
                if key_of(r) not in present:
                    todo.append(r)
                    present.add(key_of(r))
            if todo:
                self._restore(restore_text(todo))

    def _restore(self, text: str) -> None:
        _tool([f"{self.iptables}-restore", "-w", "--noflush"], IPTABLES_RESTORE, text)

    def _chain_exists(self, table: str, chain: str) -> bool:
        return self._run(table, "-S", chain, check=False).returncode == 0

    def listed(self, table: str, chain: str) -> list[list[str]]:
        """Our chain's rules as argument lists (without the leading `-A CHAIN`)."""
        proc = self._run(table, "-S", chain, check=False)
        if proc.returncode != 0:
            return []
        out = []
        for line in proc.stdout.splitlines():
            words = split_words(line)
            if len(words) >= 2 and words[0] == "-A":
                out.append(words[2:])
        return out

    @staticmethod
    def comment_of(args: Sequence[str]) -> str | None:
        """The comment of a rule's arguments, if it has one."""
        for i, word in enumerate(args[:-1]):
            if word == "--comment":
                return args[i + 1]
        return None

    def delete_tagged(self, comments: Sequence[str] = (), prefixes: Sequence[str] = ()) -> int:
        """Delete every rule of our chains whose comment equals one of `comments` or starts
        with one of `prefixes`; drop our chains and jumps if nothing of ours is left."""
        deleted = 0
        with self.locked():
            for table, chain in OUR_CHAINS:
                for args in self.listed(table, chain):
                    comment = self.comment_of(args)
                    if comment is None:
                        continue
                    wanted = comment in comments or any(comment.startswith(p) for p in prefixes)
                    if wanted and self._run(table, "-D", chain, *args, check=False).returncode == 0:
                        deleted += 1
            self._drop_if_empty()
        return deleted

    def _drop_if_empty(self) -> None:
        if any(self.listed(table, chain) for table, chain in OUR_CHAINS):
            return
        for table, base, match, target in JUMPS:
            spec = (*match, "-j", target)
            while self._run(table, "-C", base, *spec, check=False).returncode == 0:
                self._run(table, "-D", base, *spec)
        for table, chain in OUR_CHAINS:
            if self._chain_exists(table, chain):
                self._run(table, "-F", chain, check=False)
                self._run(table, "-X", chain, check=False)

    def saved(self) -> str:
        """The output of `iptables-save`, for `dnat_ports` and `add` (taken under the host
        lock, which they are called under too: one process for both)."""
        return self._save_text()

    def dnat_ports(self, saved: str | None = None) -> set[tuple[str, int]]:
        """(protocol, host port) of every published port in our DNAT chain (all roots), from
        `saved` (an `iptables-save` output) or a listing of the chain."""
        found: set[tuple[str, int]] = set()
        if saved is None:
            rules = self.listed("nat", DNAT_CHAIN)
        else:
            rules = [
                words[2:]
                for words in map(split_words, _table_lines(saved, "nat"))
                if len(words) >= 2 and words[:2] == ["-A", DNAT_CHAIN]
            ]
        for args in rules:
            proto = args[args.index("-p") + 1] if "-p" in args else ""
            if "--dport" in args:
                with contextlib.suppress(ValueError):
                    found.add((proto, int(args[args.index("--dport") + 1])))
        return found

    def rules_with_comment_prefix(self, prefix: str) -> list[tuple[str, str, list[str]]]:
        """(table, chain, args) of our rules whose comment starts with `prefix`."""
        found = []
        for table, chain in OUR_CHAINS:
            for args in self.listed(table, chain):
                comment = self.comment_of(args)
                if comment is not None and comment.startswith(prefix):
                    found.append((table, chain, args))
        return found


def set_sysctl(path: str, value: str) -> None:
    """Write a /proc/sys value if it differs."""
    full = os.path.join("/proc/sys", path)
    try:
        with open(full) as fh:
            if fh.read().strip() == value:
                return
        with open(full, "w") as fh:
            fh.write(value)
    except OSError as e:
        raise PermanentError(f"cannot set {path.replace('/', '.')}={value}: {e}") from None


def _tool(cmd: list[str], binary: HostBinary, text: str | None = None) -> str:
    """Run iptables-save or iptables-restore (`text` its input); its output. A missing
    program names its package; a failure is permanent, with what the program said."""
    try:
        proc = subprocess.run(
            cmd, input=text, capture_output=True, text=True, timeout=60, check=False
        )
    except FileNotFoundError:
        raise PermanentError(binary.missing()) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PermanentError(f"cannot run {shlex.join(cmd)}: {e}") from None
    if proc.returncode != 0:
        raise PermanentError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout
