"""The agent's REST API: HTTP/1.1 on a UNIX socket (default /run/pyapply/agent.sock).

Server: the standard library's `http.server` on a threading UNIX stream server; the socket
is created mode 0600 (only root, or the agent's user, may talk to it). The routes are
described by schemas/v1/agent-api.openapi.json:

    GET  /v1/status    revision, last result, sync status, health per stack and service
    GET  /v1/history   recorded passes (?limit=N, ?revision=R)
    GET  /v1/diff      the plan from the live state to the desired revision
    POST /v1/sync      ask for a pass (?wait=true: answer when it is over)
    POST /v1/rollback  {"revision": R}: apply R's recorded manifests and pin there
    POST /v1/resume    unpin: follow the source again
    GET  /metrics      Prometheus text format (when metrics are on)

Client: `AgentClient`, used by `pyapply status|history|sync|rollback|resume`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from reconciler.history import UnknownRevision
from reconciler.render import plans_json
from runtime.base import Runtime, RuntimeFailure

if TYPE_CHECKING:
    from reconciler.agent import Agent

DEFAULT_SOCKET = "/run/pyapply/agent.sock"
WAIT_TIMEOUT_S = 600.0


def default_socket() -> str:
    return os.environ.get("PYAPPLY_SOCKET") or DEFAULT_SOCKET


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# Server


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False


class Api:
    def __init__(self, agent: Agent, path: str, open_runtime: Callable[[], Runtime]) -> None:
        self.agent = agent
        self.path = path
        self._open_runtime = open_runtime
        self._runtime: Runtime | None = None
        self._rt_lock = threading.Lock()
        self._server: _Server | None = None

    def runtime(self) -> Runtime:
        with self._rt_lock:
            if self._runtime is None:
                self._runtime = self._open_runtime()
            return self._runtime

    def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale(self.path)
        api = self

        class Handler(_Handler):
            pass

        Handler.api = api
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            server = _Server(self.path, Handler)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._server = server
        threading.Thread(target=server.serve_forever, name="pyapply-api", daemon=True).start()

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # -- routes ---------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        agent = self.agent
        if method == "GET" and path == "/v1/status":
            return 200, agent.status(self.runtime())
        if method == "GET" and path == "/v1/history":
            limit = _int(query.get("limit", "50"), "limit")
            records = agent.history.passes(limit=limit, revision=query.get("revision"))
            return 200, {"passes": [r.to_json() for r in records]}
        if method == "GET" and path == "/v1/diff":
            plans = agent.diff(self.runtime())
            doc = plans_json(plans)
            doc["revision"] = agent.good.revision.id if agent.good else None
            return 200, doc
        if method == "POST" and path == "/v1/sync":
            ticket = agent.request("api")
            return self._queued(ticket, query, {})
        if method == "POST" and path == "/v1/rollback":
            revision = body.get("revision") if isinstance(body, dict) else None
            if not isinstance(revision, str) or not revision:
                raise ApiError(400, 'body must be {"revision": "<id or unique prefix>"}')
            try:
                full, ticket = agent.rollback(revision)
            except UnknownRevision as exc:
                raise ApiError(404, str(exc)) from None
            return self._queued(ticket, query, {"revision": full, "pinned": True})
        if method == "POST" and path == "/v1/resume":
            ticket = agent.resume()
            return self._queued(ticket, query, {"pinned": False})
        if method == "GET" and path == "/metrics":
            if agent.metrics is None:
                raise ApiError(404, "metrics are off (start the agent with --metrics)")
            return 200, agent.metrics.render()
        if path in {
            "/v1/status",
            "/v1/history",
            "/v1/diff",
            "/v1/sync",
            "/v1/rollback",
            "/v1/resume",
        }:
            raise ApiError(405, f"{method} is not allowed on {path}")
        raise ApiError(404, f"no route {path}")

    def _queued(self, ticket: int, query: dict[str, str], extra: dict[str, Any]) -> tuple[int, Any]:
        agent = self.agent
        if ticket < 0:
            raise ApiError(503, "the agent is stopping")
        doc: dict[str, Any] = {"queued": True, "pass": ticket, **extra}
        if query.get("wait", "").lower() in ("1", "true", "yes"):
            timeout = float(query.get("timeout", WAIT_TIMEOUT_S))
            if not agent.triggers.wait_for(ticket, timeout):
                raise ApiError(504, f"the pass did not finish within {timeout:g}s")
            last = agent.last
            doc["result"] = {
                "pass": last.history_id,
                "revision": last.revision,
                "outcome": last.outcome,
                "errors": last.errors,
                "summary": last.summary,
            }
            return 200, doc
        return 202, doc


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None


def _remove_stale(path: str) -> None:
    """Remove a socket left by a dead agent; refuse to start next to a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another agent is serving on {path}")


class _Handler(BaseHTTPRequestHandler):
    api: Api
    server_version = "pyapply-agent"
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # a UNIX socket has no peer address
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the agent logs passes, not requests

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body: Any = None
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length:
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "the body is not JSON") from None
            status, doc = self.api.route(method, url.path.rstrip("/") or "/", query, body)
        except ApiError as exc:
            status, doc = exc.status, {"error": exc.message}
        except RuntimeFailure as exc:
            status, doc = 503, {"error": f"runtime: {exc.message}"}
        except Exception as exc:  # a bug must not kill the server thread
            status, doc = 500, {"error": f"{type(exc).__name__}: {exc}"}
        if isinstance(doc, bytes):
            payload, ctype = doc, "text/plain; version=0.0.4; charset=utf-8"
        else:
            payload, ctype = (json.dumps(doc, indent=2) + "\n").encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


# ---------------------------------------------------------------------------------------------
# Client


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentUnavailable(Exception):
    pass


class AgentClient:
    def __init__(self, path: str | None = None, timeout: float = 30.0) -> None:
        self.path = path or default_socket()
        self.timeout = timeout

    def available(self) -> bool:
        try:
            self.request("GET", "/v1/history?limit=0")
        except AgentUnavailable:
            return False
        return True

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.path, timeout=timeout or self.timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise AgentUnavailable(f"no agent on {self.path} ({exc.strerror or exc})") from exc
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            ctype = resp.getheader("Content-Type") or ""
            doc: Any = json.loads(raw) if ctype.startswith("application/json") else raw
            return resp.status, doc
        finally:
            conn.close()
