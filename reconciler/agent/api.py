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

Client: `AgentClient`, used by `pyapply status|history|sync|rollback|resume`. A busy agent
(its listen queue full, or `503` with `Retry-After`) is asked again, with back-off, for up
to `BUSY_WAIT_S`; then it is `AgentBusy`, never "no agent": only a socket nobody listens
on is `AgentUnavailable`.

Hardening: the socket is root's, but the server must not be stalled or crashed by a buggy
or hostile local client either.
- A request (line, headers and body) must arrive within `read_timeout_s` (10 s) of its
  first byte being awaited: every read gets only the time left, so a client that sends a
  byte at a time (slowloris) is cut off at the deadline, not per byte. The same deadline
  bounds an idle keep-alive connection. A response must be taken within
  `WRITE_TIMEOUT_S`.
- At most `max_connections` (32) connections are served at once (one thread each); more
  get `503` with `Retry-After` at once, never a queued thread. The listen backlog
  (`LISTEN_BACKLOG`, 512) holds a burst of connects until they are accepted, so a burst
  is answered (200, or that 503), never refused.
- `/v1/status` and `/v1/diff` observe the runtime and plan every stack: requests that
  arrive together share one computation (`Shared`), and none gets an answer computed
  before it asked. A hundred clients at once cost about two computations, not a hundred.
- `Content-Length` must be ASCII digits (else 400), at most `MAX_BODY_BYTES` (else 413,
  unread); `Transfer-Encoding` is refused (400); bodies are JSON (else 400). A request
  that was refused with its body unread closes the connection.
- Query values are checked: `limit` a whole number 0..5000, `timeout` a finite number of
  seconds in (0, 600], `wait` a boolean; anything else is 400. A revision (`?revision=`,
  the body of /v1/rollback) is an id or an unambiguous prefix of at least 7 hex digits
  (`reconciler.manifest.revision.match_revision`): anything else is 400, an unknown one 404.
- No 5xx for a client's mistake: an unknown method is 405 (not 501), an unsupported HTTP
  version 400 (not 505), and HTTP/0.9 (a request line without a version, whose answer
  would have no status line) is 400. 5xx is left for the agent's own state: 503 when the
  runtime is unreachable, the agent is stopping or busy; 504 when a waited-for pass does
  not end in time; 500 only for a bug.

Every JSON document served goes through the agent's `Redactor` (`reconciler.core.redact`).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from pyapply.reconciler.agent.history import KEEP_PASSES, HistoryError
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.revision import AmbiguousRevision, BadRevision, UnknownRevision
from pyapply.reconciler.view.plan_text import plans_json
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent

DEFAULT_SOCKET = "/run/pyapply/agent.sock"
WAIT_TIMEOUT_S = 600.0
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
LISTEN_BACKLOG = 512
BUSY_WAIT_S = 30.0  # how long a client keeps asking a busy agent
MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_FIELDS = 32

log = logging.getLogger("pyapply.api")


def default_socket() -> str:
    return os.environ.get("PYAPPLY_SOCKET") or DEFAULT_SOCKET


class ApiError(PyapplyError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------------------------------------
# Server


_BUSY_BODY = b'{"error": "too many connections; try again"}\n'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


class BoundedThreadingMixIn(socketserver.ThreadingMixIn):
    """One daemon thread per connection, at most `slots` at once: a connection beyond them
    is answered `busy` (a whole 503 response) and closed, without a thread. Used by the API
    and by the webhook listener; `refused` is told of each connection turned away."""

    daemon_threads = True
    slots: threading.BoundedSemaphore
    busy: bytes = _BUSY
    log_name = "api"

    def refused(self, client_address: Any) -> None:
        pass

    def release_slot(self) -> None:
        """Give this connection's slot back early, from its own thread: a long-lived stream
        (the dashboard's server-sent events) counts against a budget of its own, so that it
        never holds one of the slots requests need."""
        local = self._local()
        if not getattr(local, "released", True):
            local.released = True
            self.slots.release()

    def _local(self) -> threading.local:
        local: threading.local | None = getattr(self, "_thread_state", None)
        if local is None:
            local = self._thread_state = threading.local()
        return local

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(self.busy)
            self.shutdown_request(request)  # type: ignore[attr-defined]
            self.refused(client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        local = self._local()
        local.released = False
        try:
            super().process_request_thread(request, client_address)
        finally:
            if not local.released:
                local.released = True
                self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away or was cut off: not our fault
            log.debug("%s: connection ended: %s", self.log_name, exc)
            return
        log.error("%s: a request failed unexpectedly", self.log_name, exc_info=True)


class _Server(BoundedThreadingMixIn, socketserver.UnixStreamServer):
    """The API's server: a UNIX socket, at most `max_connections` at once."""

    allow_reuse_address = False
    request_queue_size = LISTEN_BACKLOG  # a burst of connects waits to be accepted

    def __init__(self, path: str, handler: type[ApiHandler], max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(path, handler)


class Shared:
    """One computation for every caller that asks while it is due. A caller gets the result
    of a computation that started after it asked (never an answer older than its question),
    and callers that ask during a computation share the next one."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute = compute
        self._cond = threading.Condition()
        self._started = 0  # computations started (the running one included)
        self._running = False
        self._result: tuple[int, bool, Any] = (0, False, None)  # (number, ok, value or error)

    def get(self) -> Any:
        with self._cond:
            need = self._started + 1  # the running one, if any, started before this ask
            while True:
                number, ok, value = self._result
                if number >= need:
                    if ok:
                        return value
                    raise value
                if not self._running:
                    break
                self._cond.wait()
            self._started += 1
            self._running = True
            number = self._started
        result: tuple[int, bool, Any] = (number, False, RuntimeError("the computation was cut"))
        try:
            result = (number, True, self._compute())
        except Exception as exc:  # every caller of this computation gets it
            result = (number, False, exc)
        finally:
            with self._cond:  # one computation at a time: numbers only grow
                self._result = result
                self._running = False
                self._cond.notify_all()
        if result[1]:
            return result[2]
        raise result[2]


class Api:
    def __init__(
        self,
        agent: Agent,
        path: str,
        open_runtime: Callable[[], Runtime | ServiceRuntime],
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.agent = agent
        self.path = path
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self._open_runtime = open_runtime
        self._runtime: Runtime | ServiceRuntime | None = None
        self._rt_lock = threading.Lock()
        self._server: _Server | None = None
        # the handler of the socket's connections (the dashboard's adds its pages)
        self.handler_class: type[ApiHandler] = ApiHandler
        self._status = Shared(lambda: agent.status(self.runtime()))
        self._diff = Shared(lambda: agent.diff(self.runtime()))

    def runtime(self) -> Runtime | ServiceRuntime:
        with self._rt_lock:
            if self._runtime is None:
                self._runtime = self._open_runtime()
            return self._runtime

    def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale(self.path)
        api = self

        class Handler(self.handler_class):  # type: ignore[name-defined,misc]
            pass

        Handler.api = api
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            server = _Server(self.path, Handler, self.max_connections)
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
            return 200, self._status.get()
        if method == "GET" and path == "/v1/history":
            limit = _int(query.get("limit", "50"), "limit", KEEP_PASSES)
            try:
                records = agent.history.passes(limit=limit, revision=query.get("revision"))
            except UnknownRevision as exc:
                raise _revision_error(exc) from None
            return 200, {"passes": [r.to_json() for r in records]}
        if method == "GET" and path == "/v1/diff":
            plans = self._diff.get()
            doc = plans_json(plans)
            doc["revision"] = agent.good.revision.id if agent.good else None
            return 200, doc
        if method == "POST" and path == "/v1/sync":
            if agent.git is not None:
                # a sync asked for by hand looks at the remote first
                agent.git.fetch_now(wait=_bool(query.get("wait", ""), "wait"))
            ticket = agent.request("api")
            return self._queued(ticket, query, {})
        if method == "POST" and path == "/v1/rollback":
            revision = body.get("revision") if isinstance(body, dict) else None
            if not isinstance(revision, str) or not revision:
                raise ApiError(400, 'body must be {"revision": "<id or unique prefix>"}')
            try:
                full, ticket = agent.rollback(revision)
            except UnknownRevision as exc:
                raise _revision_error(exc) from None
            return self._queued(ticket, query, {"revision": full, "pinned": True})
        if method == "POST" and path == "/v1/resume":
            ticket = agent.resume()
            return self._queued(ticket, query, {"pinned": False})
        if method == "GET" and path.startswith("/v1/stacks/"):
            return 200, self.stack(unquote(path[len("/v1/stacks/") :]))
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

    def status(self) -> dict[str, Any]:
        """The status document (shared with the requests asking at the same time)."""
        doc: dict[str, Any] = self._status.get()
        return doc

    def stack(self, name: str) -> dict[str, Any]:
        """The document of `GET /v1/stacks/<name>` (404 for a stack not in the desired state)."""
        from pyapply.reconciler.agent.status import UnknownStack, stack_detail

        try:
            return stack_detail(self.agent, self.runtime(), name)
        except UnknownStack:
            raise ApiError(404, f"no stack {name!r} in the desired state") from None

    def _queued(self, ticket: int, query: dict[str, str], extra: dict[str, Any]) -> tuple[int, Any]:
        agent = self.agent
        if ticket < 0:
            raise ApiError(503, "the agent is stopping")
        doc: dict[str, Any] = {"queued": True, "pass": ticket, **extra}
        if _bool(query.get("wait", ""), "wait"):
            timeout = _seconds(query.get("timeout"), "timeout", WAIT_TIMEOUT_S)
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


def _revision_error(exc: UnknownRevision) -> ApiError:
    """Not a revision, or a prefix of several: the client's to fix (400); none: 404."""
    bad = isinstance(exc, BadRevision | AmbiguousRevision)
    return ApiError(400 if bad else 404, str(exc))


def _int(text: str, name: str, most: int) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) > most:
        raise ApiError(400, f"{name} must be a whole number from 0 to {most}")
    return int(text)


def _seconds(text: str | None, name: str, most: float) -> float:
    if text is None:
        return most
    try:
        value = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= most):
        raise ApiError(400, f"{name} must be a number of seconds, more than 0 and at most {most:g}")
    return value


def _bool(text: str, name: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("", "0", "false", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false")


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


class DeadlineReader(io.RawIOBase):
    """The read side of a connection where every read gets only the time left before
    `deadline`: however the bytes trickle in, the request is complete by then or cut."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class ApiHandler(BaseHTTPRequestHandler):
    api: Api
    server_version = "pyapply-agent"
    protocol_version = "HTTP/1.1"
    # an answer always has a status line (HTTP/0.9 answers have none): see parse_request
    default_request_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the buffered file of StreamRequestHandler: replaced
        self._reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # the next request (or the first) must be complete within the read timeout
        self._reader.deadline = time.monotonic() + self.api.read_timeout_s
        super().handle_one_request()

    def parse_request(self) -> bool:
        raw: bytes = getattr(self, "raw_requestline", b"")
        line = str(raw, "iso-8859-1").rstrip("\r\n")
        if len(line.split()) == 2:
            # what super().parse_request() would have set before answering
            self.command, self.path, self.requestline = None, "", line  # type: ignore[assignment]
            self.request_version = self.default_request_version
            self.close_connection = True
            self.send_error(400, "a request line needs an HTTP version (HTTP/0.9 is not served)")
            return False
        return super().parse_request()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # a client's mistake is never a 5xx: unknown methods and HTTP versions
        if code == 501:
            code, message = 405, f"method {self.command!r} is not allowed"
        elif code == 505:
            code = 400
        self.close_connection = True
        short = self.responses.get(code, ("Error", ""))[0]
        # JSON like every other answer of this API (http.server's own is an HTML page)
        text = self.api.agent.redactor.text(message or short)
        payload = (json.dumps({"error": text}) + "\n").encode()
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.send_response(code, short)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(payload)))
        self.extra_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def extra_headers(self) -> None:
        """Headers every answer carries (the dashboard's security headers); none here."""

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

    def _body(self) -> Any:
        """The JSON body, or None; a refused body is left unread and the connection closed."""
        raw = self._raw_body()
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "the body is not JSON") from None

    def _raw_body(self) -> bytes | None:
        """The body's bytes (None without one), read within the limits above."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise ApiError(400, "Transfer-Encoding is not supported: send Content-Length")
        values = {v.strip(" \t") for v in self.headers.get_all("Content-Length") or []}
        if not values:
            return None
        text = values.pop()
        if values or not re.fullmatch(r"[0-9]+", text):
            self.close_connection = True
            raise ApiError(400, "Content-Length must be one whole number of bytes")
        # (no int() of thousands of digits: Python refuses those, and they are too large)
        length = int(text) if len(text) <= 12 else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        if length == 0:
            return None
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "the body ended before Content-Length bytes")
        return bytes(raw)

    def _handle(self, method: str) -> None:
        try:
            try:
                url = urlsplit(self.path)
            except ValueError as exc:  # e.g. an unclosed IPv6 bracket
                raise ApiError(400, f"bad request target: {exc}") from None
            try:
                fields = parse_qs(
                    url.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS
                )
            except ValueError:
                raise ApiError(400, "too many query fields") from None
            query = {k: v[-1] for k, v in fields.items()}
            body = self._body()
            status, doc = self.api.route(method, url.path.rstrip("/") or "/", query, body)
        except ApiError as exc:
            status, doc = exc.status, {"error": exc.message}
        except RuntimeFailure as exc:
            status, doc = 503, {"error": f"runtime: {exc.message}"}
        except HistoryError as exc:  # the record unreadable: no answer, the agent goes on
            status, doc = 503, {"error": str(exc)}
        except TimeoutError:
            raise  # the client was too slow: http.server drops the connection
        except Exception as exc:  # a bug must not kill the server thread
            log.error("api: %s %s failed", method, self.path, exc_info=True)
            status, doc = 500, {"error": f"{type(exc).__name__}: {exc}"}
        if status >= 400:
            self.close_connection = True  # what follows a refused request is not trusted
        if isinstance(doc, bytes):
            payload, ctype = doc, "text/plain; version=0.0.4; charset=utf-8"
        else:
            doc = self.api.agent.redactor.value(doc)  # nothing secret leaves the agent
            payload, ctype = (json.dumps(doc, indent=2) + "\n").encode(), "application/json"
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.extra_headers()
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


class AgentUnavailable(PyapplyError):
    """No agent listens on the socket (nothing was sent)."""


class AgentError(PyapplyError):
    """An agent was reached but the exchange failed: it closed the connection, timed out
    or answered something that is not HTTP/JSON."""


class AgentBusy(AgentError):
    """An agent listens but did not take the request within the client's busy wait: its
    listen queue stayed full, or it kept answering 503 with Retry-After."""


# connect() errors that mean nobody listens there (anything else is an agent we cannot use)
_NOBODY = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR})
# the listen queue of a UNIX socket is full: the agent is there, and busy
_QUEUE_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class _QueueFull(PyapplyError):
    pass


class AgentClient:
    def __init__(
        self, path: str | None = None, timeout: float = 30.0, busy_wait_s: float = BUSY_WAIT_S
    ) -> None:
        self.path = path or default_socket()
        self.timeout = timeout
        self.busy_wait_s = busy_wait_s

    def available(self) -> bool:
        try:
            self.request("GET", "/v1/history?limit=0")
        except (AgentUnavailable, AgentError):
            return False
        return True

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, Any]:
        """(status, JSON document or bytes). A busy agent is asked again: its listen queue
        full (with back-off from 50 ms to 1 s), or 503 with Retry-After (after that many
        seconds, jittered), until `busy_wait_s` have passed; then AgentBusy. Both refusals
        come before the agent reads the request, so asking again never does a thing twice."""
        give_up = time.monotonic() + self.busy_wait_s
        backoff = 0.05
        while True:
            try:
                status, doc, retry_after = self._exchange(method, path, body, timeout)
            except _QueueFull:
                why = "its listen queue is full"
                pause, backoff = backoff, min(backoff * 2, 1.0)
            else:
                if status != 503 or retry_after is None:
                    return status, doc
                why = "it is serving as many clients as it takes"
                pause = retry_after * random.uniform(1.0, 1.5)  # not all back at once
            left = give_up - time.monotonic()
            if left <= 0:
                raise AgentBusy(
                    f"the agent on {self.path} is busy ({why}); gave up after {self.busy_wait_s:g}s"
                )
            time.sleep(min(pause, left))

    def _exchange(
        self, method: str, path: str, body: Any, timeout: float | None
    ) -> tuple[int, Any, float | None]:
        conn = UnixHTTPConnection(self.path, timeout=timeout or self.timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                if exc.errno in _QUEUE_FULL:
                    raise _QueueFull() from None
                if exc.errno in _NOBODY:
                    raise AgentUnavailable(
                        f"no agent on {self.path} ({exc.strerror or exc})"
                    ) from exc
                raise AgentError(
                    f"cannot connect to the agent on {self.path}: {exc.strerror or exc}"
                ) from None
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                # the agent may close before reading it all, having answered first (the
                # 503 of a busy agent is sent as soon as it accepts): read that answer
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                ctype = resp.getheader("Content-Type") or ""
                doc: Any = json.loads(raw) if ctype.startswith("application/json") else raw
            except TimeoutError:
                raise AgentError(
                    f"the agent on {self.path} did not answer {method} {path} within "
                    f"{conn.timeout:g}s"
                ) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise AgentError(
                    f"the agent on {self.path} failed to answer {method} {path}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            return resp.status, doc, _retry_after(resp.getheader("Retry-After"))
        finally:
            conn.close()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (its delta-seconds form), at most 5; None when absent or not
    a number of seconds (an HTTP date is not something this agent sends)."""
    if value is None or not re.fullmatch(r"[0-9]{1,4}", value.strip()):
        return None
    return float(min(int(value.strip()), 5))
