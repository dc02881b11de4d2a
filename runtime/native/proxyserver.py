"""The userland proxy's process (portproxy.py says why and how it is driven): asyncio, one
listener per port on [::1], each connection or UDP peer relayed to the container.

Bounds: at most MAX_TCP connections and MAX_UDP_FLOWS flows per port (more are refused or
dropped), CHUNK bytes read at a time per direction with the writer's buffer drained before
the next read (so a connection holds a few hundred KiB at most), a connect timeout, and UDP
flows closed after UDP_IDLE_S without traffic (docker-proxy keeps them 90 s; DNS-like
exchanges need far less). A module of its own so that asyncio (and ssl, which it imports)
is loaded in this process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pyapply.runtime.native.portproxy import APPLIED_FILE, LOCK_FILE, PID_FILE, PORTS_FILE, Relay
from pyapply.runtime.statefs import atomic_write, open_private

LISTEN = "::1"
MAX_TCP = 256
MAX_UDP_FLOWS = 256
CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
UDP_IDLE_S = 30.0
_MARKER = "pyapply.runtime.native.proxyserver"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until EOF, then pass the EOF on (a half-close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()  # backpressure: at most a chunk or two in flight
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class _TcpPort:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.server: asyncio.base_events.Server | None = None
        self.open = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, LISTEN, self.relay.port, reuse_address=True, limit=CHUNK
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_TCP:
            writer.close()
            return
        self.open += 1
        relay = self.relay
        try:
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(relay.target, relay.target_port, limit=CHUNK),
                    CONNECT_TIMEOUT_S,
                )
            except (TimeoutError, OSError):
                return  # the container does not answer: the client sees a close
            try:
                await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))
            finally:
                up_w.close()
        finally:
            self.open -= 1
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _Flow(asyncio.DatagramProtocol):
    """One UDP peer's exchange with the container, through a socket of its own (so replies
    find their way back to that peer)."""

    def __init__(self, port: _UdpPort, peer: Any) -> None:
        self.port = port
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None
        self.seen = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen = time.monotonic()
        if self.port.transport is not None:
            self.port.transport.sendto(data, self.peer)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from the container: the peer times out, as with DNAT

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _UdpPort(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Any, _Flow] = {}
        self.pending: dict[Any, list[bytes]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(LISTEN, self.relay.port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        flow = self.flows.get(addr)
        if flow is not None and flow.transport is not None:
            flow.seen = time.monotonic()
            flow.transport.sendto(data)
            return
        if addr in self.pending:
            if len(self.pending[addr]) < 16:
                self.pending[addr].append(data)
            return
        if len(self.flows) + len(self.pending) >= MAX_UDP_FLOWS:
            return  # dropped, as a full conntrack table would
        self.pending[addr] = [data]
        asyncio.get_running_loop().create_task(self._open(addr))

    async def _open(self, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        flow = _Flow(self, addr)
        try:
            await loop.create_datagram_endpoint(
                lambda: flow, remote_addr=(self.relay.target, self.relay.target_port)
            )
        except OSError:
            self.pending.pop(addr, None)
            return
        queued = self.pending.pop(addr, [])
        if self.transport is None or self.transport.is_closing():
            flow.close()
            return
        self.flows[addr] = flow
        for data in queued:
            assert flow.transport is not None
            flow.transport.sendto(data)

    def sweep(self, now: float) -> None:
        for addr, flow in list(self.flows.items()):
            if now - flow.seen > UDP_IDLE_S:
                flow.close()
                del self.flows[addr]

    def close(self) -> None:
        for flow in self.flows.values():
            flow.close()
        self.flows.clear()
        if self.transport is not None:
            self.transport.close()


class _Proxy:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ports: dict[tuple[str, int], _TcpPort | _UdpPort] = {}
        self.reloads: asyncio.Queue[None] = asyncio.Queue()

    def _wanted(self) -> tuple[str, list[Relay]]:
        try:
            doc = json.loads((self.dir / PORTS_FILE).read_text())
            return str(doc["generation"]), [Relay(**p) for p in doc["ports"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"cannot read {PORTS_FILE}: {e}", file=sys.stderr, flush=True)
            return "", []

    async def reload(self) -> None:
        generation, wanted = self._wanted()
        by_key = {(r.proto, r.port): r for r in wanted}
        for key in [k for k in self.ports if k not in by_key]:
            self.ports.pop(key).close()
        failed = []
        for key, relay in by_key.items():
            current = self.ports.get(key)
            if current is not None and current.relay == relay:
                continue
            if current is not None:
                # a new target (a recreated container): new connections go there; UDP flows
                # to the old one are dropped
                current.relay = relay
                if isinstance(current, _UdpPort):
                    for flow in current.flows.values():
                        flow.close()
                    current.flows.clear()
                continue
            port: _TcpPort | _UdpPort = _TcpPort(relay) if relay.proto == "tcp" else _UdpPort(relay)
            try:
                await port.start()
            except OSError as e:
                failed.append(f"[{LISTEN}]:{relay.port}/{relay.proto}: {e.strerror or e}")
                continue
            self.ports[key] = port
        doc = {"generation": generation, "failed": failed}
        atomic_write(self.dir / APPLIED_FILE, json.dumps(doc), durable=False)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reloads.put_nowait, None)
        lock = open_private(self.dir / LOCK_FILE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("another proxy serves this directory", file=sys.stderr, flush=True)
            return
        fd = open_private(self.dir / PID_FILE, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        await self.reload()

        async def reloader() -> None:
            while True:
                await self.reloads.get()
                while not self.reloads.empty():  # several signals, one reading
                    self.reloads.get_nowait()
                await self.reload()

        async def sweeper() -> None:
            while True:
                await asyncio.sleep(UDP_IDLE_S / 3)
                now = time.monotonic()
                for port in self.ports.values():
                    if isinstance(port, _UdpPort):
                        port.sweep(now)

        tasks = [loop.create_task(reloader()), loop.create_task(sweeper())]
        await stop.wait()
        for t in tasks:
            t.cancel()
        for port in self.ports.values():
            port.close()
        with contextlib.suppress(OSError):
            if (self.dir / PID_FILE).read_text().strip() == str(os.getpid()):
                (self.dir / PID_FILE).unlink()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog=_MARKER)
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    asyncio.run(_Proxy(args.dir).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
