"""The agent's web dashboard and its authenticated HTTP API: `pyapply watch --http HOST:PORT`.

One listener serves, behind authentication, the agent's REST API (`/v1/*`, `/metrics`, the
same routes and answers as on the UNIX socket) and the dashboard's pages (rendered by
`reconciler.view.dashboard`). The UNIX socket serves the pages too, without authentication:
it is root's, mode 0600, like the API on it. Off unless `--http` is given.

Pages: `/` (every stack's sync, health, revision, last pass, services by state),
`/stacks/<name>` (replicas, networks, volumes, drift), `/history` and `/history/<id>`,
`/logs/<stack>/<service>` (the last lines, then followed live). `?fragment=1` gives the
inside of a page's `<main>`, which the page's script fetches when `/events` (server-sent
events) says a pass ended or a container changed (`Agent.changes`).

Authentication (the TCP listener only):
- Tokens come from `--http-token-file`: lines `<role> <token>` (role `viewer` or
  `operator`, a token of at least `MIN_TOKEN_CHARS` printable characters), `#` comments and
  blank lines; a regular file, 0600 or stricter, of the agent's user or root, and not inside
  the watched tree (whoever can push there must not mint tokens). A bad line is a located
  error (`file:line:col: sentence`) and the agent does not start.
- An API client sends `Authorization: Bearer <token>`; the token is compared with every
  known token in constant time (`hmac.compare_digest` of SHA-256 digests, no early exit).
- A browser logs in once at `/login` (a POST form) and gets a session cookie: a random
  256-bit id, HttpOnly, SameSite=Strict, Path=/, Secure with TLS. Sessions live on the
  server, at most `MAX_SESSIONS`, each for `SESSION_IDLE_S` idle and `SESSION_MAX_S` in all.
- A missing or wrong token is 401 with nothing else (a JSON error, or the login form for a
  page). Wrong tokens (bearer or login) are counted per client address: after
  `LOGIN_FAILURES` in `LOGIN_WINDOW_S`, 429 with Retry-After; the counters are bounded in
  number (`MAX_TRACKED`, the oldest forgotten first).
- A `viewer` reads; an `operator` also acts: sync now, rollback to a revision, resume. A
  page action is a POST form from a confirmation page, carrying the session's CSRF token
  (compared in constant time); `Sec-Fetch-Site`, or else `Origin`, when present, must say
  this listener's own pages sent it.
  The API's POST routes take a bearer token only (never the cookie). `--http-read-only`
  hides the actions and refuses them (403) on the listener.

Every answer carries a strict Content-Security-Policy (scripts and styles from the agent
only, no inline script, no framing, forms only to the agent), `X-Content-Type-Options:
nosniff`, `Referrer-Policy: no-referrer` and `Cache-Control: no-store`. Everything shown
has gone through the agent's `Redactor` (secrets, URL passwords, credential-looking env).

Limits: the listener has the API's hardening (the same handler, `api.ApiHandler`: request
deadline, bounded connections, body limits). Event streams (`/events`, a log page's stream)
hold their connection open, so they give their connection slot back and count against a
small budget of their own (`MAX_STREAMS`); they send a heartbeat every `HEARTBEAT_S`, end
after `STREAM_MAX_S` (the browser reconnects) and when the agent stops. Optional TLS
(`--http-cert`, `--http-key`): TLS 1.2 or later, the handshake within the request deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import socketserver
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import msgspec

from pyapply.reconciler.agent.api import (
    MAX_QUERY_FIELDS,
    WRITE_TIMEOUT_S,
    ApiError,
    ApiHandler,
    BoundedThreadingMixIn,
)
from pyapply.reconciler.agent.history import KEEP_PASSES, HistoryError
from pyapply.reconciler.agent.status import Seen, UnknownStack, stack_detail, status_view
from pyapply.reconciler.core import identity
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.revision import UnknownRevision
from pyapply.runtime.base import Hidden, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime
from pyapply.runtime.statefs import secret_file_problem

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent
    from pyapply.reconciler.agent.api import Api

log = logging.getLogger("pyapply.agent")

ROLES = ("viewer", "operator")
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
MAX_TOKEN_FILE_BYTES = 64 * 1024
SESSION_COOKIE = "pyapply_session"
MAX_SESSIONS = 256
SESSION_IDLE_S = 3600.0
SESSION_MAX_S = 12 * 3600.0
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 60.0
MAX_TRACKED = 4096
MAX_CONNECTIONS = 32
MAX_STREAMS = 8
HEARTBEAT_S = 10.0
STREAM_MAX_S = 3600.0
LOG_LINES = 200
LOG_POLL_S = 1.0
LISTEN_BACKLOG = 128
DOC_MAX_AGE_S = 2.0

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
)


class WebError(PyapplyError):
    """An --http option that cannot be used (address, token file, certificate)."""


# ---------------------------------------------------------------------------------------------
# Tokens


class Token(Hidden, msgspec.Struct, frozen=True):
    __hidden__ = frozenset({"value"})
    role: str
    value: str
    line: int = 0


def parse_tokens(text: str, path: str) -> list[Token]:
    """The tokens of a token file's text: `<role> <token>` per line, `#` comments, blank
    lines. A bad line raises WebError `path:line:col: sentence` (never showing a token)."""
    tokens: list[Token] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        col = len(line) - len(stripped) + 1
        parts = stripped.split()
        role = parts[0]
        if role not in ROLES:
            raise WebError(
                f"{path}:{number}:{col}: unknown role {role[:20]!r}: each line is "
                "`viewer <token>` or `operator <token>`"
            )
        if len(parts) != 2:
            what = "no token" if len(parts) == 1 else "more than one token"
            raise WebError(f"{path}:{number}:{col}: {what} after the role: `{role} <token>`")
        value = parts[1]
        tcol = line.index(value, col - 1 + len(role)) + 1
        if len(value) < MIN_TOKEN_CHARS:
            raise WebError(
                f"{path}:{number}:{tcol}: the token is {len(value)} characters; at least "
                f"{MIN_TOKEN_CHARS} are needed (e.g. `openssl rand -hex 32`)"
            )
        if len(value) > MAX_TOKEN_CHARS:
            raise WebError(f"{path}:{number}:{tcol}: the token is longer than {MAX_TOKEN_CHARS}")
        if not value.isascii() or not value.isprintable():
            raise WebError(f"{path}:{number}:{tcol}: the token must be printable ASCII")
        if value in seen:
            raise WebError(
                f"{path}:{number}:{tcol}: the same token as on line {seen[value]}: one role per "
                "token"
            )
        seen[value] = number
        tokens.append(Token(role, value, number))
    if not tokens:
        raise WebError(f"{path}:1:1: no token: add a line `operator <token>` or `viewer <token>`")
    return tokens


def read_tokens(path: str) -> list[Token]:
    """The tokens of `path`: a regular file of this user or root, 0600 or stricter (that it
    lies outside the tree the agent applies, where whoever can push could grant themselves
    access, is checked with the agent's other key files: cli/agent.py `_outside_watched`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise WebError(f"--http-token-file {path}: cannot open it: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        problem = secret_file_problem(st, path)
        if problem:
            raise WebError(f"--http-token-file {path}: {problem}")
        if st.st_uid not in (os.getuid(), 0):
            raise WebError(
                f"--http-token-file {path}: owned by uid {st.st_uid}, not by this user or root"
            )
        if st.st_size > MAX_TOKEN_FILE_BYTES:
            raise WebError(f"--http-token-file {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebError(f"{path}:1:1: not UTF-8 text ({exc.reason})") from None
    return parse_tokens(text, path)


class TokenTable:
    """Who a presented token is: compared with every token, each in constant time, so that
    neither which token matched nor how much of one did shows in the time taken. Digests
    (SHA-256) are compared, so that a token's length does not show either."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self._tokens = [(hashlib.sha256(t.value.encode()).digest(), t.role) for t in tokens]

    def __repr__(self) -> str:
        return f"TokenTable({len(self._tokens)} tokens)"

    def role_for(self, given: str) -> str | None:
        presented = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        role: str | None = None
        for digest, r in self._tokens:  # every one, whatever matched before
            if hmac.compare_digest(presented, digest) and role is None:
                role = r
        return role


# ---------------------------------------------------------------------------------------------
# Sessions, CSRF, failed logins (pure but for the clock passed in)


class Session(Hidden, msgspec.Struct):
    __hidden__ = frozenset({"id", "csrf"})
    id: str
    role: str
    csrf: str
    created: float
    seen: float


class Sessions:
    """Server-side sessions: at most `size`, each valid for `idle_s` since its last use and
    `max_s` since its login. A login beyond `size` forgets the least recently used."""

    def __init__(
        self, size: int = MAX_SESSIONS, idle_s: float = SESSION_IDLE_S, max_s: float = SESSION_MAX_S
    ) -> None:
        self.size = size
        self.idle_s = idle_s
        self.max_s = max_s
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def new(self, role: str, now: float) -> Session:
        session = Session(secrets.token_hex(32), role, secrets.token_hex(32), now, now)
        with self._lock:
            self._expire(now)
            self._by_id[session.id] = session
            while len(self._by_id) > self.size:
                self._by_id.popitem(last=False)
        return session

    def get(self, sid: str | None, now: float) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle_s or now - session.created > self.max_s:
                del self._by_id[sid]
                return None
            session.seen = now
            self._by_id.move_to_end(sid)
            return session

    def drop(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [
            s.id
            for s in self._by_id.values()
            if now - s.seen > self.idle_s or now - s.created > self.max_s
        ]:
            del self._by_id[sid]


def csrf_ok(session_token: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(session_token.encode(), given.encode())


def same_origin(
    origin: str | None, host: str | None, tls: bool, fetch_site: str | None = None
) -> bool:
    """Whether a form was sent from this listener's own pages. A browser's
    `Sec-Fetch-Site` says so directly (`same-origin`); else an `Origin` header, when there
    is one, must name this listener (scheme and Host). `Origin: null` is what a browser
    sends under this site's own `Referrer-Policy: no-referrer`: it proves nothing either
    way, so the CSRF token alone decides then."""
    if fetch_site is not None:
        return fetch_site.strip().lower() in ("same-origin", "none")
    if origin is None or origin.strip() == "null":
        return True
    if host is None:
        return False
    return origin.strip().lower() == f"{'https' if tls else 'http'}://{host.strip().lower()}"


class LoginLimiter:
    """Wrong tokens per client address: `failures` in `window_s`, then refused for the rest
    of the window. At most `tracked` addresses are remembered (the oldest go first), so a
    flood from many addresses costs bounded memory."""

    def __init__(
        self,
        failures: int = LOGIN_FAILURES,
        window_s: float = LOGIN_WINDOW_S,
        tracked: int = MAX_TRACKED,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.tracked = tracked
        self._seen: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def retry_after(self, address: str, now: float) -> float:
        """0 when `address` may try; else the seconds until it may again."""
        with self._lock:
            times = [t for t in self._seen.get(address, []) if now - t < self.window_s]
            if times:
                self._seen[address] = times
            else:
                self._seen.pop(address, None)
            if len(times) < self.failures:
                return 0.0
            return max(1.0, times[0] + self.window_s - now)

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            times = [t for t in self._seen.pop(address, []) if now - t < self.window_s]
            self._seen[address] = [*times, now][-self.failures :]
            while len(self._seen) > self.tracked:
                self._seen.popitem(last=False)


def new_lines(previous: Sequence[str], current: Sequence[str]) -> list[str]:
    """The lines of `current` (the latest tail of a log) that follow `previous` (the tail
    sent before): the shortest shift of `current` whose head is the end of `previous`."""
    if not previous:
        return list(current)
    n = len(current)
    for shift in range(n + 1):
        head = current[: n - shift]
        if not head or list(previous[-len(head) :]) == list(head):
            return list(current[n - shift :])
    return list(current)


def parse_cookies(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (header or "").split(";")[:64]:
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip()
    return out


def tail_lines(chunks: Sequence[bytes] | Any, limit: int) -> list[str]:
    raw = b"".join(chunks)
    return raw.decode("utf-8", errors="replace").splitlines()[-limit:]


# ---------------------------------------------------------------------------------------------
# The dashboard, shared by the socket and the listener


class DocCache:
    """The documents pages show (the status, a stack's detail), computed once per change of
    the agent (`Changes.seq`) for every page that asks, and for at most `max_age_s`: when a
    pass ends, five open dashboards fetching two pages each cost two computations, not ten.
    Callers asking while one is computed wait for it. At most `size` keys are kept.

    While a pass runs (`busy`), a document of the current change count is served whatever
    its age: the pass's end is a change, which refreshes every open page, and a page loaded
    meanwhile must not make the runtime answer twice as many questions during the pass."""

    def __init__(
        self,
        seq: Callable[[], int],
        busy: Callable[[], bool] = lambda: False,
        max_age_s: float = DOC_MAX_AGE_S,
        size: int = 64,
    ) -> None:
        self.seq = seq
        self.busy = busy
        self.max_age_s = max_age_s
        self.size = size
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._docs: OrderedDict[str, tuple[int, float, Any]] = OrderedDict()

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            seq, now = self.seq(), time.monotonic()
            with self._lock:
                hit = self._docs.get(key)
            fresh = hit is not None and (now - hit[1] <= self.max_age_s or self.busy())
            if hit is not None and hit[0] == seq and fresh:
                return hit[2]
            doc = compute()  # (an error is every waiter's to see: nothing is kept)
            with self._lock:
                self._docs[key] = (seq, now, doc)
                self._docs.move_to_end(key)
                while len(self._docs) > self.size:
                    old, _ = self._docs.popitem(last=False)
                    self._key_locks.pop(old, None)
            return doc


class Web:
    """What the pages need of the agent, and the state of the listener's logins."""

    def __init__(
        self,
        agent: Agent,
        api: Api,
        *,
        tokens: TokenTable | None = None,
        read_only: bool = False,
        max_streams: int = MAX_STREAMS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.api = api
        self.tokens = tokens
        self.read_only = read_only
        self.clock = clock
        self.sessions = Sessions()
        self.limiter = LoginLimiter()
        self.streams = threading.BoundedSemaphore(max_streams)
        self.stopped = threading.Event()
        self.docs = DocCache(lambda: agent.changes.seq, agent.running.is_set)
        # the socket's pages need no login; their forms still carry a token (a page served
        # to a proxy of the socket must not be driven by another site)
        self.socket_csrf = secrets.token_hex(32)

    def stop(self) -> None:
        self.stopped.set()
        self.agent.changes.close()

    def redacted(self, doc: Any) -> Any:
        return self.agent.redactor.value(doc)

    def _snapshot(self) -> tuple[dict[str, Any], Seen]:
        """The status and what it observed of each stack: one observation per stack serves
        the overview and every stack page of this change."""
        seen: Seen = {}
        return status_view(self.agent, self.api.runtime(), seen), seen

    def status(self) -> Any:
        doc, _ = self.docs.get("snapshot", self._snapshot)
        return self.redacted(doc)

    def stack(self, name: str) -> Any:
        _, seen = self.docs.get("snapshot", self._snapshot)

        def detail() -> Any:
            try:
                return stack_detail(self.agent, self.api.runtime(), name, seen.get(name))
            except UnknownStack:
                raise ApiError(404, f"no stack {name!r} in the desired state") from None

        return self.redacted(self.docs.get(f"stack:{name}", detail))


class Who(msgspec.Struct):
    role: str
    via: str  # "socket", "bearer" or "session"
    session: Session | None = None


class _Quit(Exception):
    """The answer was sent already."""


PAGE_PREFIXES = ("/stacks/", "/history/", "/logs/", "/confirm/", "/static/", "/actions/")
PAGES = frozenset({"/", "/history", "/events", "/login", "/logout"})


def _is_page(path: str) -> bool:
    return path in PAGES or path.startswith(PAGE_PREFIXES)


class WebHandler(ApiHandler):
    """The API's hardened handler with the dashboard's pages, and on the TCP listener
    (`listener`) authentication in front of both."""

    web: Web
    _seq = 0
    listener = False  # True on the TCP listener: authentication, and --http-read-only
    tls = False

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            # the handshake is part of the request: within the same deadline
            self.connection.settimeout(self.api.read_timeout_s)
            self.connection.do_handshake()

    def address_string(self) -> str:
        if isinstance(self.client_address, tuple) and self.client_address:
            return str(self.client_address[0])
        return "unix"

    def extra_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        if self.tls:
            self.send_header("Strict-Transport-Security", "max-age=31536000")

    @property
    def read_only(self) -> bool:
        return self.listener and self.web.read_only

    # -- answers ---------------------------------------------------------------------------

    def _reply(
        self,
        status: int,
        payload: bytes,
        ctype: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if status >= 400:
            self.close_connection = True
        self.connection.settimeout(WRITE_TIMEOUT_S)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.extra_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _json(self, status: int, doc: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        payload = (json.dumps(self.web.redacted(doc)) + "\n").encode()
        self._reply(status, payload, "application/json", headers)

    def _html(self, status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._reply(status, text.encode(), "text/html; charset=utf-8", headers)

    def _redirect(self, where: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._reply(303, b"", "text/plain", [("Location", where), *headers])

    def _viewer(self, who: Who | None) -> Any:
        from pyapply.reconciler.view.dashboard import Viewer

        if who is None:
            return Viewer(role="nobody", read_only=True)
        csrf = who.session.csrf if who.session is not None else self.web.socket_csrf
        return Viewer(
            role=who.role,
            read_only=self.read_only,
            csrf=csrf,
            session=who.session is not None,
        )

    def _render(
        self, code: int, name: str, who: Who | None, query: dict[str, str], **ctx: Any
    ) -> None:
        from pyapply.reconciler.view import dashboard

        viewer = self._viewer(who)
        now = self.web.clock()
        ctx.setdefault("seq", self._seq)
        if query.get("fragment") == "1":
            text = dashboard.fragment(name, viewer, now, **ctx)
        else:
            text = dashboard.page(name, viewer, now, **ctx)
        self._html(code, text)

    def _message(
        self, status: int, who: Who | None, heading: str, message: str, back: str = "/"
    ) -> None:
        self._render(
            status,
            "message",
            who,
            {},
            title=heading,
            heading=heading,
            message=self.web.agent.redactor.text(message),
            back=back,
            error=status >= 400,
            live="none",
        )

    # -- who asks --------------------------------------------------------------------------

    def _peer(self) -> str:
        return self.address_string()

    def _who(self, html: bool) -> Who | None:
        """Who sends this request, or None when nobody known does (401 to be sent by the
        caller). Raises _Quit after answering 429 for an address over its failures."""
        if not self.listener:
            return Who("operator", "socket")
        web = self.web
        assert web.tokens is not None
        authz = self.headers.get("Authorization")
        if authz is not None:
            now = web.clock()
            wait = web.limiter.retry_after(self._peer(), now)
            if wait:
                self._json(
                    429,
                    {"error": "too many wrong tokens; try again later"},
                    [("Retry-After", str(int(wait + 0.999)))],
                )
                raise _Quit()
            scheme, _, token = str(authz).strip().partition(" ")
            role = web.tokens.role_for(token.strip()) if scheme.lower() == "bearer" else None
            if role is None:
                web.limiter.failed(self._peer(), now)
                return None
            return Who(role, "bearer")
        sid = parse_cookies(self.headers.get("Cookie")).get(SESSION_COOKIE)
        session = web.sessions.get(sid, web.clock())
        if session is not None:
            return Who(session.role, "session", session)
        return None

    def _unauthorized(self, html: bool) -> None:
        if html:
            self._render(401, "login", None, {}, title="Log in", message="", live="none")
        else:
            self._json(
                401,
                {"error": "authentication required: Authorization: Bearer <token>"},
                [("WWW-Authenticate", 'Bearer realm="pyapply"')],
            )

    # -- requests --------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        try:
            url = urlsplit(self.path)
        except ValueError:
            super()._handle(method)  # answers 400 as the API does
            return
        path = url.path.rstrip("/") or "/"
        try:
            if not _is_page(path):
                self._api(method)  # the API's routes, and its answers to anything else
                return
            try:
                fields = parse_qs(
                    url.query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS
                )
            except ValueError:
                self._json(400, {"error": "too many query fields"})
                return
            self._page(method, path, {k: v[-1] for k, v in fields.items()})
        except _Quit:
            pass
        except TimeoutError:
            raise
        except OSError:
            raise  # the client went away: nothing to answer
        except Exception:
            log.error("dashboard: %s %s failed", method, self.path, exc_info=True)
            with contextlib.suppress(OSError):
                self._json(500, {"error": "the page failed; see the agent's log"})

    def _api(self, method: str) -> None:
        if self.listener:
            who = self._who(html=False)
            if who is None:
                self._unauthorized(html=False)
                return
            if method != "GET":
                refusal = None
                if who.via != "bearer":
                    refusal = "the API's actions take a bearer token (Authorization: Bearer)"
                elif who.role != "operator":
                    refusal = f"a {who.role} token may only read"
                elif self.read_only:
                    refusal = "this listener is read-only (--http-read-only)"
                if refusal is not None:
                    self._json(403, {"error": refusal})
                    return
        super()._handle(method)

    def _page(self, method: str, path: str, query: dict[str, str]) -> None:
        if method == "GET" and path.startswith("/static/"):
            self._static(path[len("/static/") :])
            return
        if path == "/login":
            self._login(method)
            return
        who = self._who(html=True)
        if who is None:
            if method == "GET" and path != "/events" and not path.endswith("/stream"):
                self._unauthorized(html=True)
            else:
                self._json(401, {"error": "authentication required"})
            return
        if method == "POST":
            self._post(path, who)
            return
        if method != "GET":
            self._json(405, {"error": f"{method} is not allowed on {path}"})
            return
        try:
            self._get(path, query, who)
        except ApiError as exc:
            self._message(exc.status, who, "Not available", exc.message)
        except RuntimeFailure as exc:
            self._message(503, who, "The runtime does not answer", f"runtime: {exc.message}")
        except HistoryError as exc:
            self._message(503, who, "The history cannot be read", str(exc))

    def _static(self, name: str) -> None:
        from pyapply.reconciler.view.dashboard import STATIC, STATIC_FILES

        ctype = STATIC_FILES.get(name)
        if ctype is None:
            self._json(404, {"error": "no such file"})
            return
        with open(os.path.join(STATIC, name), "rb") as f:
            payload = f.read()
        self._reply(200, payload, f"{ctype}; charset=utf-8")

    def _get(self, path: str, query: dict[str, str], who: Who) -> None:
        web, agent = self.web, self.web.agent
        # before anything is computed: a change after this is one the page has not shown
        self._seq = agent.changes.seq
        if path == "/":
            from pyapply.reconciler.view.dashboard import overview_rows

            status = web.status()
            self._render(
                200, "overview", who, query, title="Overview", status=status,
                rows=overview_rows(status),
            )  # fmt: skip
            return
        if path.startswith("/stacks/"):
            name = unquote(path[len("/stacks/") :])
            doc = web.stack(name)
            self._render(200, "stack", who, query, title=f"Stack {name}", stack=doc)
            return
        if path == "/history":
            from pyapply.reconciler.view.dashboard import pass_duration

            records = [web.redacted(r.to_json()) for r in agent.history.passes(limit=100)]
            for r in records:
                r["duration"] = pass_duration(r)
            self._render(
                200, "history", who, query, title="History", passes=records,
                applied=agent.good.revision.id if agent.good else None,
            )  # fmt: skip
            return
        if path.startswith("/history/"):
            self._pass(path[len("/history/") :], query, who)
            return
        if path == "/events":
            self._events()
            return
        if path.startswith("/logs/"):
            parts = [unquote(p) for p in path[len("/logs/") :].split("/")]
            if len(parts) == 2:
                self._logs(parts[0], parts[1], query, who)
                return
            if len(parts) == 3 and parts[2] == "stream":
                self._log_stream(parts[0], parts[1], query.get("container", ""))
                return
        if path.startswith("/confirm/"):
            self._confirm(path[len("/confirm/") :], query, who)
            return
        raise ApiError(404, f"no page {path[:100]}")

    def _pass(self, ident: str, query: dict[str, str], who: Who) -> None:
        from pyapply.reconciler.view.dashboard import pass_duration

        agent = self.web.agent
        if not ident.isdigit() or len(ident) > 12:
            raise ApiError(404, "a pass is a number")
        found = [r for r in agent.history.passes(limit=KEEP_PASSES) if r.id == int(ident)]
        if not found:
            raise ApiError(404, f"no pass {ident} in the history")
        record = self.web.redacted(found[0].to_json())
        summary = record.get("summary") or {}
        stacks = [
            (name, sorted((k, v) for k, v in (counts or {}).items() if v))
            for name, counts in sorted((summary.get("stacks") or {}).items())
        ]
        self._render(
            200, "pass", who, query, title=f"Pass {ident}", record=record,
            duration=pass_duration(record), stacks=stacks,
            actions=sorted((summary.get("actions") or {}).items()),
            results=sorted((summary.get("results") or {}).items()),
            plan=summary.get("plan") if isinstance(summary.get("plan"), str) else None,
            applied=agent.good.revision.id if agent.good else None,
        )  # fmt: skip

    def _service_containers(self, stack: str, service: str) -> list[str]:
        rt = self.web.api.runtime()
        if isinstance(rt, ServiceRuntime):
            raise ApiError(404, "logs of swarm services are not shown here")
        if stack not in {d.stack for d in self.web.agent.desired}:
            raise ApiError(404, f"no stack {stack!r} in the desired state")
        found = rt.list_containers({identity.STACK: stack, identity.SERVICE: service})
        return sorted(c.name for c in found)

    def _tail(self, name: str) -> list[str]:
        rt = self.web.api.runtime()
        assert not isinstance(rt, ServiceRuntime)
        text = self.web.agent.redactor.text
        return [text(line) for line in tail_lines(list(rt.logs(name, tail=LOG_LINES)), LOG_LINES)]

    def _logs(self, stack: str, service: str, query: dict[str, str], who: Who) -> None:
        containers = []
        for name in self._service_containers(stack, service):
            stream = (
                f"/logs/{quote(stack, safe='')}/{quote(service, safe='')}/stream"
                f"?container={quote(name, safe='')}"
            )
            containers.append({"name": name, "lines": self._tail(name), "stream": stream})
        self._render(
            200, "logs", who, query, title=f"Logs of {service}", stack=stack, service=service,
            limit=LOG_LINES, follow=True, containers=containers, live="logs",
        )  # fmt: skip

    def _confirm(self, action: str, query: dict[str, str], who: Who) -> None:
        if not self._may_act(who, html=True):
            return
        if action == "sync":
            self._render(
                200, "confirm", who, query, title="Sync now", heading="Sync now",
                question="Start a pass now: fetch the source (for a repository), apply the "
                "desired revision and repair any drift?",
                action="/actions/sync", fields=[], button="Sync now", back="/", live="none",
            )  # fmt: skip
            return
        if action == "resume":
            self._render(
                200, "confirm", who, query, title="Resume", heading="Resume following the source",
                question="Lift the rollback's pin and apply the source's revision again?",
                action="/actions/resume", fields=[], button="Resume", back="/", live="none",
            )  # fmt: skip
            return
        if action == "rollback":
            revision = query.get("revision", "")
            try:
                full = self.web.agent.history.resolve(revision)
            except UnknownRevision as exc:
                raise ApiError(404, str(exc)) from None
            self._render(
                200, "confirm", who, query, title="Roll back", heading=f"Roll back to {full[:12]}",
                question=f"Apply revision {full} as recorded and stay there (pinned) until you "
                "resume?",
                action="/actions/rollback", fields=[("revision", full)],
                button=f"Roll back to {full[:12]}", back="/history", live="none",
            )  # fmt: skip
            return
        raise ApiError(404, f"no action {action[:40]!r}")

    def _may_act(self, who: Who, html: bool) -> bool:
        why = None
        if self.read_only:
            why = "This dashboard is read-only (--http-read-only)."
        elif who.role != "operator":
            why = f"A {who.role} may look but not act: log in with an operator token."
        if why is None:
            return True
        if html:
            self._message(403, who, "Not allowed", why)
        else:
            self._json(403, {"error": why})
        return False

    # -- POST: login, logout, actions ------------------------------------------------------

    def _form(self) -> dict[str, str]:
        ctype = str(self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw = self._raw_body() or b""
        if ctype != "application/x-www-form-urlencoded":
            raise ApiError(400, "a form is expected (application/x-www-form-urlencoded)")
        try:
            fields = parse_qs(raw.decode("utf-8"), max_num_fields=MAX_QUERY_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "the form cannot be read") from None
        return {k: v[-1] for k, v in fields.items()}

    def _origin_ok(self) -> bool:
        origin = self.headers.get("Origin")
        if not self.listener:
            # the socket has no origin of its own; a browser behind a proxy of it sends one
            # only for cross-site posts, which the CSRF token refuses anyway
            return True
        return same_origin(
            origin, self.headers.get("Host"), self.tls, self.headers.get("Sec-Fetch-Site")
        )

    def _cookie(self, value: str, max_age: int | None) -> tuple[str, str]:
        parts = [f"{SESSION_COOKIE}={value}", "HttpOnly", "SameSite=Strict", "Path=/"]
        if self.tls:
            parts.append("Secure")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return ("Set-Cookie", "; ".join(parts))

    def _login(self, method: str) -> None:
        web = self.web
        if not self.listener:
            self._redirect("/")  # the socket needs no login
            return
        if method == "GET":
            self._render(200, "login", None, {}, title="Log in", message="", live="none")
            return
        if method != "POST":
            self._json(405, {"error": "GET or POST on /login"})
            return
        assert web.tokens is not None
        now = web.clock()
        wait = web.limiter.retry_after(self._peer(), now)
        if wait:
            self._reply(
                429,
                self._login_page("Too many wrong tokens from this address: try again later."),
                "text/html; charset=utf-8",
                [("Retry-After", str(int(wait + 0.999)))],
            )
            return
        if not self._origin_ok():
            self._reply(403, self._login_page("Refused: the form was sent from another site."),
                        "text/html; charset=utf-8")  # fmt: skip
            return
        try:
            form = self._form()
        except ApiError as exc:
            self._reply(exc.status, self._login_page(exc.message), "text/html; charset=utf-8")
            return
        role = web.tokens.role_for(form.get("token", "").strip())
        if role is None:
            web.limiter.failed(self._peer(), now)
            self._reply(401, self._login_page("Wrong token."), "text/html; charset=utf-8")
            return
        session = web.sessions.new(role, now)
        log.info("dashboard: %s logged in from %s", role, self._peer())
        self._redirect("/", [self._cookie(session.id, int(web.sessions.max_s))])

    def _login_page(self, message: str) -> bytes:
        from pyapply.reconciler.view import dashboard

        viewer = self._viewer(None)
        text = dashboard.page(
            "login", viewer, self.web.clock(), title="Log in", message=message, live="none"
        )
        return text.encode()

    def _post(self, path: str, who: Who) -> None:
        try:
            form = self._form()
        except ApiError as exc:
            self._json(exc.status, {"error": exc.message})
            return
        csrf = who.session.csrf if who.session is not None else self.web.socket_csrf
        if who.via == "bearer" or not csrf_ok(csrf, form.get("csrf")) or not self._origin_ok():
            self._message(
                403, who, "Refused", "The form's CSRF token or origin does not match: open the "
                "page again and resubmit.",
            )  # fmt: skip
            return
        agent = self.web.agent
        if path == "/logout":
            if who.session is not None:
                self.web.sessions.drop(who.session.id)
            self._redirect("/login", [self._cookie("", 0)])
            return
        if not path.startswith("/actions/") or not self._may_act(who, html=True):
            if not path.startswith("/actions/"):
                self._message(404, who, "Not found", f"no action {path[:100]}")
            return
        action = path[len("/actions/") :]
        if action == "sync":
            if agent.git is not None:
                agent.git.fetch_now(wait=False)
            ticket = agent.request("api")
            where = "/"
        elif action == "resume":
            ticket = agent.resume()
            where = "/"
        elif action == "rollback":
            try:
                _, ticket = agent.rollback(form.get("revision", ""))
            except UnknownRevision as exc:
                self._message(404, who, "Unknown revision", str(exc), back="/history")
                return
            where = "/history"
        else:
            self._message(404, who, "Not found", f"no action {action[:40]!r}")
            return
        if ticket < 0:
            self._message(503, who, "Stopping", "The agent is stopping.")
            return
        log.info("dashboard: %s asked by a %s (%s), pass %d", action, who.role, who.via, ticket)
        self._redirect(where)

    # -- event streams ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _stream(self) -> Any:
        """Answer with an event stream: outside the connection slots, within the streams'
        own budget (503 when it is spent)."""
        web = self.web
        if not web.streams.acquire(blocking=False):
            self._json(503, {"error": "too many live pages; try again"}, [("Retry-After", "5")])
            raise _Quit()
        try:
            release = getattr(self.server, "release_slot", None)
            if release is not None:
                release()
            self.close_connection = True
            self.connection.settimeout(WRITE_TIMEOUT_S)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Connection", "close")
            self.extra_headers()
            self.end_headers()
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            yield
        finally:
            web.streams.release()

    def _send_event(self, event: str, data: str) -> None:
        self.wfile.write(f"event: {event}\ndata: {data}\n\n".encode())
        self.wfile.flush()

    def _ongoing(self, started: float) -> bool:
        agent = self.web.agent
        return (
            not self.web.stopped.is_set()
            and not agent.changes.closed
            and time.monotonic() - started < STREAM_MAX_S
        )

    def _events(self) -> None:
        changes = self.web.agent.changes
        started = time.monotonic()
        with self._stream():
            seq = changes.seq
            self._send_event("hello", str(seq))
            while self._ongoing(started):
                now = changes.wait(seq, HEARTBEAT_S)
                if now != seq:
                    seq = now
                    self._send_event("change", str(seq))
                else:
                    self.wfile.write(b": heartbeat\n\n")
                    self.wfile.flush()

    def _log_stream(self, stack: str, service: str, container: str) -> None:
        if container not in self._service_containers(stack, service):
            raise ApiError(404, f"no container {container[:100]!r} of {stack}/{service}")
        started = time.monotonic()
        with self._stream():
            # first the whole tail: lines written between the page's render and this
            # stream are not lost (the page replaces what it showed)
            sent = self._tail(container)
            self._send_event("reset", json.dumps(sent))
            quiet = 0.0
            while self._ongoing(started):
                if self.web.stopped.wait(LOG_POLL_S):
                    break
                try:
                    lines = self._tail(container)
                except RuntimeFailure:
                    lines = sent  # gone for a moment (recreated): the next poll sees it
                fresh = new_lines(sent, lines)
                sent = lines
                if fresh:
                    self._send_event("lines", json.dumps(fresh))
                    quiet = 0.0
                else:
                    quiet += LOG_POLL_S
                    if quiet >= HEARTBEAT_S:
                        self.wfile.write(b": heartbeat\n\n")
                        self.wfile.flush()
                        quiet = 0.0


# ---------------------------------------------------------------------------------------------
# The TCP listener


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise WebError(f"--http {text!r}: expected HOST:PORT (e.g. 127.0.0.1:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for --http-cert/--http-key: TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise WebError(f"--http-cert {cert} / --http-key {key}: cannot be used: {exc}") from None
    return context


class _TcpServer(BoundedThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    log_name = "http"

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[WebHandler],
        max_connections: int,
        context: ssl.SSLContext | None,
    ) -> None:
        self.address_family = _family(address[0])
        self.slots = threading.BoundedSemaphore(max_connections)
        self.context = context
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.context is not None:
            # the handshake happens in the connection's thread (WebHandler.setup), never
            # in the accepting one, so a slow client cannot stall the others
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class HttpServer:
    """`--http`: the dashboard and the API over TCP, authenticated, optionally TLS."""

    def __init__(
        self,
        web: Web,
        address: tuple[str, int],
        *,
        context: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.web = web
        self.requested = address
        self.context = context
        self.max_connections = max_connections
        self._server: _TcpServer | None = None

    @property
    def address(self) -> str:
        bound = self._server.server_address if self._server else self.requested
        host, port = str(bound[0]), int(bound[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://{self.address}/"

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "read_only": self.web.read_only,
            "tls": self.context is not None,
            "sessions": len(self.web.sessions),
        }

    def start(self) -> None:
        web = self.web

        class Handler(WebHandler):
            pass

        Handler.web = web
        Handler.api = web.api
        Handler.listener = True
        Handler.tls = self.context is not None
        self._server = _TcpServer(self.requested, Handler, self.max_connections, self.context)
        threading.Thread(
            target=self._server.serve_forever, name="pyapply-http", daemon=True
        ).start()
        log.info(
            "dashboard and API on %s%s",
            self.url,
            " (read-only)" if web.read_only else "",
        )

    def stop(self) -> None:
        self.web.stop()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def socket_handler(web: Web) -> type[WebHandler]:
    """The handler of the UNIX socket with the pages (no authentication there)."""

    class Handler(WebHandler):
        pass

    Handler.web = web
    return Handler
