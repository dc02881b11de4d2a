"""Push webhooks: `pyapply watch --webhook HOST:PORT --webhook-secret-file FILE`.

A git host tells the agent that a branch moved, and the agent starts a pass at once
instead of at the next poll or resync (`Agent.on_push`: a plain resync for a directory
source; a git source fetches first). One route, `POST /webhook`; everything else is
refused. Four signed forms are accepted, each checked against the one shared secret:

=================  ==================================================================
GitHub             `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
Gitea / Forgejo    `X-Gitea-Signature` or `X-Forgejo-Signature: <hex HMAC-SHA256(secret,
                   body)>`
GitLab             `X-Gitlab-Token: <secret>` (GitLab sends the secret itself)
generic            `X-Pyapply-Timestamp: <Unix seconds>` and
                   `X-Pyapply-Signature: sha256=<hex HMAC-SHA256(secret,
                   "<timestamp>." + body)>`; refused when the timestamp is more than
                   `MAX_SKEW_S` (5 min) away from the agent's clock, or when the same
                   signature was already accepted (a replay)
=================  ==================================================================

Default deny: a request is looked at only after its signature holds; the body (JSON, or
GitHub's form-encoded `payload=`) is parsed only then. Signatures are compared with
`hmac.compare_digest` (constant time). A missing, repeated or wrong signature answers 401
and triggers nothing. A push (`X-GitHub-Event: push`, `X-Gitlab-Event: Push Hook` or
`Tag Push Hook`, `X-Gitea-Event: push`; the generic form is a push unless
`X-Pyapply-Event` says otherwise) to the ref the agent follows answers 202 with
`{"triggered": true, "pass": N}`; another event or another ref answers 202 with
`{"ignored": why}` (a GitHub `ping` 200), and nothing is triggered.

Hardening, as the API's (`reconciler.agent.api`): a whole request must arrive within
`read_timeout_s` however slowly its bytes come; at most `max_connections` are served at
once (more get 503 with `Retry-After` at once), with a listen backlog for bursts; a body
needs a `Content-Length` (411 without one, 400 for `Transfer-Encoding`) of at most
`MAX_BODY_BYTES` (413, unread); one request per connection. Neither the secret nor a
signature is ever logged; refusals are logged at most once per `LOG_EVERY_S` per outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import logging
import os
import socket
import socketserver
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from pyapply.reconciler.agent.api import BoundedThreadingMixIn, DeadlineReader
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.runtime.statefs import secret_file_problem

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics
    from pyapply.reconciler.agent.sources import Source

log = logging.getLogger("pyapply.agent")

WEBHOOK_PATH = "/webhook"
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
LISTEN_BACKLOG = 128
MAX_SKEW_S = 300.0
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
LOG_EVERY_S = 10.0
REPLAY_MEMORY = 4096

# what a request came to, as the metrics and the status count it
OUTCOMES = (
    "triggered",
    "ignored",
    "unauthorized",
    "too_large",
    "bad_request",
    "not_found",
    "method_not_allowed",
    "busy",
    "timeout",
    "stopping",
)


class WebhookError(PyapplyError):
    """A webhook option that cannot be used (address, secret file)."""


# ---------------------------------------------------------------------------------------------
# Options


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise WebhookError(f"--webhook {text!r}: expected HOST:PORT (e.g. 0.0.0.0:9000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def read_secret(path: str) -> bytes:
    """The shared secret from `path`: a regular file of the agent's user (or root) that no
    one else may read or write (0600 or stricter), trailing white space dropped. The value
    never appears in a message."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise WebhookError(
            f"--webhook-secret-file {path}: cannot open it: {exc.strerror or exc}"
        ) from None
    try:
        st = os.fstat(fd)
        problem = secret_file_problem(st, path)
        if problem:
            raise WebhookError(f"--webhook-secret-file {path}: {problem}")
        if st.st_uid not in (os.getuid(), 0):
            raise WebhookError(
                f"--webhook-secret-file {path}: owned by uid {st.st_uid}, not by this user or root"
            )
        if st.st_size > MAX_SECRET_BYTES:
            raise WebhookError(
                f"--webhook-secret-file {path}: larger than {MAX_SECRET_BYTES} bytes"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            secret = f.read(MAX_SECRET_BYTES + 1).strip()
    finally:
        os.close(fd)
    if len(secret) < MIN_SECRET_BYTES:
        raise WebhookError(
            f"--webhook-secret-file {path}: the secret must be at least {MIN_SECRET_BYTES} "
            "bytes (e.g. `openssl rand -hex 32`)"
        )
    return secret


def ref_matches(ref: str, wanted: str) -> bool:
    """Whether a pushed ref (`refs/heads/main`, `refs/tags/v1`) is the one followed, given
    as a full ref or a branch or tag name."""
    return ref == wanted or ref in (f"refs/heads/{wanted}", f"refs/tags/{wanted}")


def push_filter(source: Source, wanted: str | None) -> Callable[[str], bool]:
    """Which pushed refs concern the agent: `wanted` (`--webhook-ref`) when given; else, for
    a git work tree, the branch checked out there when the push arrives; else any ref
    (a plain directory or a git-sync link does not say which branch it follows)."""
    if wanted is not None:
        return lambda ref: ref_matches(ref, wanted)

    def follows(ref: str) -> bool:
        branch = checked_out_branch(source.git_dir)
        return branch is None or ref_matches(ref, branch)

    return follows


def checked_out_branch(git_dir: str | None) -> str | None:
    """`refs/heads/<name>` of a work tree's HEAD; None when detached or unknown."""
    if git_dir is None:
        return None
    try:
        with open(os.path.join(git_dir, "HEAD"), encoding="utf-8") as f:
            head = f.read(4096).strip()
    except OSError:
        return None
    return head[5:].strip() if head.startswith("ref: ") else None


# ---------------------------------------------------------------------------------------------
# Checks (pure but for the clock and the replay memory)


class Refusal(PyapplyError):
    """How a request is answered when it triggers nothing."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.message = message


def _one(headers: Message, name: str) -> bytes | None:
    """A header's value as bytes; None when absent; 401 when repeated (which one to
    believe is not ours to guess)."""
    values = headers.get_all(name) or []
    if len(values) > 1:
        raise Refusal(401, "unauthorized", f"{name} given more than once")
    if not values:
        return None
    # http.server decodes header bytes as latin-1: encoding back gives the bytes sent
    return str(values[0]).strip().encode("latin-1", "replace")


def _hmac_hex(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).hexdigest().encode()


def _same(given: bytes, expected: bytes) -> bool:
    """Constant time: the time taken does not depend on where the two differ."""
    return hmac.compare_digest(given, expected)


class ReplayGuard:
    """The generic form's accepted signatures within the skew window, so that a captured
    request cannot be sent again (bounded: the oldest are forgotten first)."""

    def __init__(self, window_s: float = MAX_SKEW_S, size: int = REPLAY_MEMORY) -> None:
        self.window_s = window_s
        self.size = size
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, signature: bytes, now: float) -> bool:
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self.window_s:
                self._seen.popitem(last=False)
            if signature in self._seen:
                return False
            self._seen[signature] = now
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True


def authenticate(
    headers: Message, body: bytes, secret: bytes, now: float, replays: ReplayGuard
) -> str:
    """The provider whose signature `body` carries, checked against `secret`; Refusal(401)
    when none is present or the one present does not hold."""
    generic = _one(headers, "X-Pyapply-Signature")
    if generic is not None:
        stamp = _one(headers, "X-Pyapply-Timestamp")
        if stamp is None or not stamp.isdigit() or len(stamp) > 12:
            raise Refusal(
                401, "unauthorized", "X-Pyapply-Timestamp (Unix seconds) is missing or bad"
            )
        expected = b"sha256=" + _hmac_hex(secret, stamp + b"." + body)
        if not _same(generic, expected):
            raise Refusal(401, "unauthorized", "X-Pyapply-Signature does not match")
        if abs(now - int(stamp)) > MAX_SKEW_S:
            raise Refusal(
                401, "unauthorized", f"X-Pyapply-Timestamp is more than {MAX_SKEW_S:g}s away"
            )
        if not replays.first_time(expected, now):
            raise Refusal(401, "unauthorized", "this signed request was already received")
        return "generic"
    for name in ("X-Gitea-Signature", "X-Forgejo-Signature"):
        given = _one(headers, name)
        if given is not None:
            if not _same(given.lower(), _hmac_hex(secret, body)):
                raise Refusal(401, "unauthorized", f"{name} does not match")
            return "gitea"
    given = _one(headers, "X-Hub-Signature-256")
    if given is not None:
        if not _same(given, b"sha256=" + _hmac_hex(secret, body)):
            raise Refusal(401, "unauthorized", "X-Hub-Signature-256 does not match")
        return "github"
    given = _one(headers, "X-Gitlab-Token")
    if given is not None:
        if not _same(given, secret):
            raise Refusal(401, "unauthorized", "X-Gitlab-Token does not match")
        return "gitlab"
    raise Refusal(
        401,
        "unauthorized",
        "no signature: send X-Hub-Signature-256, X-Gitea-Signature, X-Gitlab-Token or "
        "X-Pyapply-Signature with X-Pyapply-Timestamp",
    )


class Push(msgspec.Struct, frozen=True):
    provider: str
    event: str  # "push", or what the provider called another event
    ref: str | None


def _event(provider: str, headers: Message) -> str:
    names = {
        "github": ("X-GitHub-Event",),
        "gitea": ("X-Gitea-Event", "X-Forgejo-Event", "X-GitHub-Event"),
        "gitlab": ("X-Gitlab-Event",),
        "generic": ("X-Pyapply-Event",),
    }[provider]
    for name in names:
        value = headers.get(name)
        if value is not None:
            text = str(value).strip()
            if provider == "gitlab":
                return "push" if text in ("Push Hook", "Tag Push Hook", "System Hook") else text
            return text.lower()
    return "push" if provider == "generic" else ""


def parse_push(provider: str, headers: Message, body: bytes) -> Push:
    """The event and pushed ref of an authenticated request; Refusal(400) when its body is
    not the JSON document (or GitHub's form with `payload=`) of a push."""
    event = _event(provider, headers)
    ctype = str(headers.get("Content-Type") or "").split(";")[0].strip().lower()
    doc: Any = None
    if body.strip():
        raw = body
        if ctype == "application/x-www-form-urlencoded":
            try:
                payload = parse_qs(body.decode("utf-8"), max_num_fields=16).get("payload")
            except (UnicodeDecodeError, ValueError):
                payload = None
            if not payload:
                raise Refusal(400, "bad_request", "a form body needs a payload= field")
            raw = payload[-1].encode()
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise Refusal(400, "bad_request", "the body is not JSON") from None
    if doc is not None and not isinstance(doc, dict):
        raise Refusal(400, "bad_request", "the body is not a JSON object")
    ref = doc.get("ref") if isinstance(doc, dict) else None
    if provider == "gitlab" and event == "push" and isinstance(doc, dict):
        # a System Hook carries every kind of event: only its pushes count
        kind = doc.get("object_kind") or doc.get("event_name")
        if kind not in (None, "push", "tag_push"):
            event = str(kind)
    if ref is not None and not isinstance(ref, str):
        raise Refusal(400, "bad_request", "ref must be a string")
    if event == "push" and ref is None and provider != "generic":
        raise Refusal(400, "bad_request", "a push without a ref")
    return Push(provider, event, ref)


def decide(push: Push, follows: Callable[[str], bool]) -> None:
    """Nothing when `push` should start a pass; Refusal(202/200, ignored) otherwise."""
    if push.event == "ping":
        raise Refusal(200, "ignored", "ping: the webhook is set up")
    if push.event != "push":
        raise Refusal(202, "ignored", f"event {push.event or '(none)'} is not a push")
    if push.ref is not None and not follows(push.ref):
        raise Refusal(202, "ignored", f"a push to {push.ref}, which this agent does not follow")


# ---------------------------------------------------------------------------------------------
# State (for the status and the metrics)


class WebhookState:
    """Requests by outcome and the last one, as `GET /v1/status` shows them."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.last: dict[str, Any] | None = None
        self.last_triggered: float | None = None
        self._logged: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def record(
        self,
        outcome: str,
        status: int,
        message: str,
        peer: str,
        provider: str | None = None,
        ref: str | None = None,
    ) -> None:
        now = time.time()
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            self.last = {
                "at": now,
                "outcome": outcome,
                "status": status,
                "provider": provider,
                "ref": ref,
                "message": message,
            }
            if outcome == "triggered":
                self.last_triggered = now
            # refusals may come in floods: one line per outcome every LOG_EVERY_S
            loud = outcome in ("triggered", "ignored") or (
                now - self._logged.get(outcome, 0.0) >= LOG_EVERY_S
            )
            quiet = self._quiet.pop(outcome, 0) if loud else 0
            if loud:
                self._logged[outcome] = now
            else:
                self._quiet[outcome] = self._quiet.get(outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.webhook(outcome)
        if loud:
            more = f" (+{quiet} more like it)" if quiet else ""
            level = logging.INFO if outcome in ("triggered", "ignored") else logging.WARNING
            log.log(
                level,
                "webhook from %s: %s %d: %s%s",
                peer,
                outcome,
                status,
                message,
                more,
                extra={"fields": {"webhook": outcome, "provider": provider, "ref": ref}},
            )

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.counts),
                "last": dict(self.last) if self.last else None,
                "last_triggered": self.last_triggered,
            }


# ---------------------------------------------------------------------------------------------
# Server


def _answer(code: int, doc: dict[str, Any]) -> bytes:
    payload = (json.dumps(doc) + "\n").encode()
    reason = {200: "OK", 202: "Accepted", 503: "Service Unavailable"}.get(code, "Error")
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n".encode()
        + (b"Retry-After: 1\r\n" if code == 503 else b"")
        + b"\r\n"
        + payload
    )


_BUSY = _answer(503, {"error": "too many connections; try again"})


class _Server(BoundedThreadingMixIn, socketserver.TCPServer):
    """The webhook listener: TCP, at most `max_connections` at once."""

    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    busy = _BUSY
    log_name = "webhook"

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[_Handler],
        max_connections: int,
        state: WebhookState,
    ) -> None:
        self.address_family = _family(address[0])
        self.slots = threading.BoundedSemaphore(max_connections)
        self.state = state
        super().__init__(address, handler)

    def refused(self, client_address: Any) -> None:
        self.state.record("busy", 503, "too many connections", _peer(client_address))


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET  # a name: resolved as IPv4 by bind


def _peer(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else "?"


class WebhookServer:
    """The webhook listener. `on_push(ref)` asks the agent for a pass (returns its ticket,
    < 0 when the agent is stopping); `follows(ref)` says whether a ref concerns it."""

    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        on_push: Callable[[str | None], int],
        follows: Callable[[str], bool],
        *,
        metrics: Metrics | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.requested = address
        self._secret = secret
        self.on_push = on_push
        self.follows = follows
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.clock = clock
        self.state = WebhookState(metrics)
        self.replays = ReplayGuard()
        self._server: _Server | None = None

    def __repr__(self) -> str:  # never the secret
        return f"WebhookServer({self.address})"

    @property
    def address(self) -> str:
        bound = self._server.server_address if self._server else self.requested
        host, port = str(bound[0]), int(bound[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        hook = self

        class Handler(_Handler):
            pass

        Handler.hook = hook
        self._server = _Server(self.requested, Handler, self.max_connections, self.state)
        threading.Thread(
            target=self._server.serve_forever, name="pyapply-webhook", daemon=True
        ).start()
        log.info("webhook: listening on http://%s%s", self.address, WEBHOOK_PATH)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def status(self) -> dict[str, Any]:
        return {"address": self.address, "path": WEBHOOK_PATH, **self.state.to_json()}

    def handle(self, method: str, path: str, headers: Message, body: bytes | None) -> Push:
        """Check one request whose body was read (`body`), and trigger: the push, or a
        Refusal saying how to answer."""
        if path.split("?")[0].rstrip("/") != WEBHOOK_PATH:
            raise Refusal(404, "not_found", f"no route {path.split('?')[0][:100]}")
        if method != "POST":
            raise Refusal(405, "method_not_allowed", f"only POST on {WEBHOOK_PATH}")
        assert body is not None
        provider = authenticate(headers, body, self._secret, self.clock(), self.replays)
        push = parse_push(provider, headers, body)
        decide(push, self.follows)
        return push


class _Handler(BaseHTTPRequestHandler):
    hook: WebhookServer
    server_version = "pyapply-webhook"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle(self) -> None:
        # one request per connection: a keep-alive would only hold a slot longer
        self._answered = False
        self._reader.deadline = time.monotonic() + self.hook.read_timeout_s
        self.handle_one_request()  # (a read past the deadline ends it, unanswered)
        if not self._answered and time.monotonic() >= self._reader.deadline:
            self.hook.state.record(
                "timeout", 408, "the request did not arrive in time", _peer(self.client_address)
            )

    def log_message(self, format: str, *args: Any) -> None:
        pass  # WebhookState logs, without headers or bodies

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, headers, an unknown method): JSON,
        # never a 5xx
        outcome = "bad_request"
        if code == 501:
            code, outcome, message = 405, "method_not_allowed", f"only POST on {WEBHOOK_PATH}"
        code = 400 if code >= 500 else code
        self.hook.state.record(outcome, code, message or "", _peer(self.client_address))
        self._send(code, {"error": message or "bad request"})

    def _send(self, code: int, doc: dict[str, Any]) -> None:
        self.close_connection = True
        self._answered = True
        with contextlib.suppress(OSError):
            self.connection.settimeout(WRITE_TIMEOUT_S)
            self.wfile.write(_answer(code, doc))
            self.wfile.flush()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise Refusal(400, "bad_request", "Transfer-Encoding is not supported")
        values = {str(v).strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            raise Refusal(411, "bad_request", "a Content-Length is needed")
        text = values.pop()
        if values or not text.isdigit() or not text.isascii():
            raise Refusal(400, "bad_request", "Content-Length must be one whole number")
        length = int(text) if len(text) <= 12 else MAX_BODY_BYTES + 1
        if length > MAX_BODY_BYTES:
            raise Refusal(413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise Refusal(400, "bad_request", "the body ended before Content-Length bytes")
        return body

    def _serve(self, method: str) -> None:
        hook = self.hook
        peer = _peer(self.client_address)
        try:
            body = None
            if method == "POST" and self.path.split("?")[0].rstrip("/") == WEBHOOK_PATH:
                body = self._body()
            push = hook.handle(method, self.path, self.headers, body)
        except Refusal as refusal:
            # counted before the answer: whoever got it sees it in the status
            hook.state.record(refusal.outcome, refusal.status, refusal.message, peer)
            self._send(refusal.status, _refusal_doc(refusal))
            return
        ticket = hook.on_push(push.ref)
        if ticket < 0:
            hook.state.record("stopping", 503, "the agent is stopping", peer, push.provider)
            self._send(503, {"error": "the agent is stopping"})
            return
        hook.state.record(
            "triggered",
            202,
            f"{push.provider} push to {push.ref or '(any ref)'}: pass {ticket} queued",
            peer,
            push.provider,
            push.ref,
        )
        self._send(202, {"triggered": True, "pass": ticket, "ref": push.ref})

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_HEAD(self) -> None:
        self._serve("HEAD")


def _refusal_doc(refusal: Refusal) -> dict[str, Any]:
    if refusal.outcome == "ignored":
        return {"ignored": refusal.message}
    return {"error": refusal.message}
