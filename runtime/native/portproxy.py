"""The userland proxy of a state root: ports published on [::1] (or on all addresses: their
[::1]), relayed to containers.

Why a proxy at all: every other published port is an iptables DNAT (network.py), but the
kernel never routes a packet whose source or destination is ::1 off the loopback interface
(IPv6 has no route_localnet), so a DNAT from [::1] to a bridge address has no way out. What
docker does for it is a userland proxy: a process that accepts on [::1]:PORT and opens its
own connection to the container. This is that, for TCP and UDP, always to the container's
IPv4 address (so the network need not be dual-stack).

Why our own and not a packaged one: docker-proxy is Debian's only build of such a relay,
and it comes inside docker.io (the whole engine) -- a daemonless runtime cannot require the
daemon's package; podman's rootlessport serves rootless port forwarding through
rootlesskit, not a rootful bridge; socat would be a process per port, forking again per TCP
connection and per UDP peer, with none of proxyserver.py's bounds in one place, and
restarted for every change of target. One small asyncio process for all the ports of a root costs one
Python (~20 MB) while such ports exist, and none otherwise.

Why a process of its own and not the keeper (health.py): the proxy's life follows the
published ports, which change under the network state's lock, while the keeper's follows
the running containers and polls; driven like the DNS server (dns.py) -- files derived from
the state, rewritten under that lock after every change, then a SIGHUP -- a publish returns
only once the proxy listens, a recreate's new address is taken at once, and an unpublish
closes the port before it returns. It survives pyapply's exit (its own session). The network
manager starts it again when a transaction finds it gone (a crash, a reboot) and the
transaction changed the state, made a network ready, or published, repaired or restored a
container (`system start` and a pass's start of a container are such); a look at the
faults reports a container whose [::1] port has no proxy, which a pass repairs.

The directory `<root>/networks/proxy/` (0700) holds `ports.json` (what to serve, with the
generation: a digest of the list), `proxy.pid`, `proxy.lock` (flock: one proxy per root)
and `applied` (written by the process: the generation it serves, and the ports it could not
bind), and its log. A sync waits until `applied` names the generation it wrote.

Bounds (connections and UDP flows per port, buffers, idle UDP flows): proxyserver.py, the
process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import msgspec

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native.daemons import cmdline, is_zombie, log_tail, terminate
from pyapply.runtime.statefs import atomic_write, private_dir, rmtree

PORTS_FILE = "ports.json"
PID_FILE = "proxy.pid"
LOCK_FILE = "proxy.lock"  # held by the proxy for its life: one per root
APPLIED_FILE = "applied"
LOG_FILE = "proxy.log"
START_WAIT_S = 10.0  # a loaded host's Python starts in a second or two
STOP_WAIT_S = 5.0
_MARKER = "pyapply.runtime.native.proxyserver"  # the process (asyncio: loaded there only)


class Relay(msgspec.Struct, frozen=True, order=True):
    """One port the proxy serves: [::1]:port/proto -> target:target_port."""

    proto: str
    port: int
    target: str
    target_port: int


def is_proxied(host_ip: str) -> bool:
    """Whether a port published on `host_ip` is served by the proxy (pure): IPv6 loopback."""
    if ":" not in host_ip:
        return False
    try:
        return IPv6Address(host_ip).is_loopback
    except ValueError:
        return False


def relayed(host_ip: str, protocol: str) -> bool:
    """Whether the proxy serves [::1] for a port published on `host_ip` (pure): one on an
    IPv6 loopback address (only the proxy serves it), and, as docker's proxy does, one on
    all addresses ("" or "::") over tcp or udp, whose other addresses are DNATs: a client
    that tries ::1 first for `localhost` (Node.js, Go) reaches it too."""
    if host_ip in ("", "::"):
        return protocol.lower() in ("tcp", "udp")
    return is_proxied(host_ip)


def relays(networks: Mapping[str, Mapping[str, Any]]) -> list[Relay]:
    """The ports of the networks' state that the proxy serves (pure)."""
    out = []
    for rec in networks.values():
        for p in rec["ports"]:
            b = p["binding"]
            if relayed(str(b["host_ip"]), str(b["protocol"])) and b["host_port"] is not None:
                out.append(
                    Relay(
                        str(b["protocol"]), int(b["host_port"]), p["ip"], int(b["container_port"])
                    )
                )
    return sorted(out)


def render(wanted: Sequence[Relay]) -> tuple[str, str]:
    """ports.json's text and its generation (pure)."""
    ports = [
        dict(proto=r.proto, port=r.port, target=r.target, target_port=r.target_port) for r in wanted
    ]
    generation = hashlib.sha256(json.dumps(ports, sort_keys=True).encode()).hexdigest()[:16]
    return json.dumps({"generation": generation, "ports": ports}, sort_keys=True) + "\n", generation


class PortProxy:
    """The proxy process and directory of one state root (the parent's side)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def pid(self) -> int | None:
        """The proxy's pid if it runs: the pid it wrote, checked against its command line
        (a reused pid is someone else's and is never signalled) and not a zombie."""
        try:
            pid = int((self.dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        args = cmdline(pid)
        if _MARKER not in args or str(self.dir) not in args or is_zombie(pid):
            return None
        return pid

    def sync(self, networks: Mapping[str, Mapping[str, Any]]) -> None:
        """Make the proxy serve what the networks' state publishes on [::1]: its file
        rewritten if it differs, then a reload, or a start if it is not running; with no such
        port, the proxy stopped. Returns once it serves the new list (bounded)."""
        wanted = relays(networks)
        if not wanted:
            if self.dir.exists():
                self.stop()
            return
        text, generation = render(wanted)
        path = self.dir / PORTS_FILE
        try:
            same = path.read_text() == text
        except OSError:
            same = False
        pid = self.pid()
        # the applied generation too: a sync killed between its write and the SIGHUP left
        # a file the running proxy has not read
        if same and pid is not None and self._applied().get("generation") == generation:
            return
        private_dir(self.dir)
        if not same:
            # derived from the state and rewritten at the next change: need not be durable
            atomic_write(path, text, durable=False)
        if pid is None:
            # what a proxy that is gone (a crash, a reboot) had applied says nothing of
            # the new one, which may serve the same generation
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / APPLIED_FILE)
            self._start()
        else:
            os.kill(pid, signal.SIGHUP)
        self._await(generation)

    def unheard(self) -> bool:
        """Whether the running proxy has not taken in its file's list: left so by a sync
        that ended (killed) between its write and the SIGHUP, or by one still running."""
        try:
            doc = json.loads((self.dir / PORTS_FILE).read_text())
        except (OSError, ValueError):
            return False
        written = doc.get("generation") if isinstance(doc, dict) else None
        return self.pid() is not None and self._applied().get("generation") != written

    def _start(self) -> None:
        from pyapply.runtime.native.health import package_root

        pythonpath = [package_root(), os.environ.get("PYTHONPATH", "")]
        fd = os.open(self.dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", _MARKER, "--dir", str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # a Ctrl-C of pyapply does not reach it
                close_fds=True,
                cwd="/",
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)},
            )
        finally:
            os.close(fd)
        # reap it in the background if we outlive it (it normally outlives us)
        threading.Thread(target=proc.wait, daemon=True).start()

    def _await(self, generation: str) -> None:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            applied = self._applied()
            if applied.get("generation") == generation:
                failed = applied.get("failed") or []
                if failed:
                    raise PermanentError(
                        "the port proxy cannot listen on " + "; ".join(str(f) for f in failed)
                    )
                return
            if time.monotonic() > deadline:
                raise PermanentError(
                    f"the port proxy (for ports published on [::1]) did not take its list "
                    f"within {START_WAIT_S:.0f} s: {log_tail(self.dir / LOG_FILE)}"
                )
            time.sleep(0.01)

    def _applied(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / APPLIED_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def stop(self) -> None:
        """End the proxy (by its pid) and remove its directory. Not running is success."""
        terminate(self.pid, STOP_WAIT_S)
        if self.dir.exists():
            rmtree(self.dir)
