"""Notifications: `pyapply watch --notify URL` (repeatable) posts an event when something
happens that a person would want to know of.

Events (`kind`):
- `applied`: a new revision was applied, every stack of it;
- `failed`: a pass failed: a revision that does not load or is denied by the policy, or
  actions that failed (the same failure of the same revision again, as each resync
  meets it, is sent once until a pass succeeds);
- `refused`: a revision that would leave a stack with containers with none;
- `drift_repaired`: a pass of the revision already applied changed something, because
  something was changed by hand or died; each change says what, from the diff's fields
  ("container shop-web-1 recreated: env LOG_LEVEL changed, memory limit changed");
- `rollback`: a rolled-back revision was applied (`pyapply rollback`, and the agent's own
  rollback when a revision does not become healthy).

Two formats: `json` (the whole event, schemas/v1/agent-api.openapi.json: Notification)
and `slack` (`{"text": ...}`, which Slack, Mattermost, Rocket.Chat and Discord's
`/slack` endpoints take). `--notify-format` sets the default; a URL may say its own
with `slack+https://...` or `json+https://...`. https anywhere; plain http only to a
loopback address (a URL's path often is its token). Every string of an event goes
through the agent's `Redactor`, and a URL is shown (logs, status) without its path and
query.

Sending never holds up a pass: each URL has a thread and a bounded queue
(`QUEUE_SIZE`); when it is full the oldest event is dropped and counted. A send is tried
`attempts` times with exponential back-off and jitter (5xx, 408, 429, network errors);
another 4xx, or a redirect (which is not followed: it could carry the token elsewhere),
fails at once.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from pyapply.reconciler.core.diff import Change, FieldDiff
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.redact import NO_SECRETS, Redactor
from pyapply.reconciler.version import __version__
from pyapply.runtime.base import Hidden

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics
    from pyapply.reconciler.engine.reconcile import StackResult

log = logging.getLogger("pyapply.agent")

KINDS = ("applied", "failed", "refused", "drift_repaired", "rollback")
FORMATS = ("json", "slack")
QUEUE_SIZE = 100
ATTEMPTS = 4
BACKOFF_S = 0.5  # then 1, 2, ... (jittered), at most BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
TIMEOUT_S = 5.0
MAX_CHANGES = 50  # changes listed in one event (the rest are counted)


class NotifyError(PyapplyError):
    """A --notify URL that cannot be used."""


# ---------------------------------------------------------------------------------------------
# Events (pure)


class Event(msgspec.Struct, frozen=True):
    kind: str
    revision: str
    subject: str
    message: str
    outcome: str
    trigger: str
    at: float
    errors: tuple[str, ...] = ()
    changes: tuple[dict[str, Any], ...] = ()
    previous: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "time": self.at,
            "revision": self.revision,
            "subject": self.subject,
            "outcome": self.outcome,
            "trigger": self.trigger,
            "message": self.message,
            "errors": list(self.errors),
            "changes": list(self.changes),
            "previous": self.previous,
        }


_FIELD_WORDS = {
    "memory": "memory limit",
    "memory_bytes": "memory limit",
    "image_id": "image",
    "image": "image",
    "networks": "networks",
    "ports": "published ports",
    "cpus": "cpu limit",
    "nano_cpus": "cpu limit",
    "command": "command",
    "entrypoint": "entrypoint",
}


def describe_fields(fields: Iterable[FieldDiff]) -> list[str]:
    """What changed, in words, never with the values: "env LOG_LEVEL changed", "memory limit
    changed". The `env` of an out-of-band change holds the live container's items that are
    not wanted (old) and the wanted ones it lacks (new)."""
    out: list[str] = []
    for fd in fields:
        if fd.field == "env" and isinstance(fd.old, list) and isinstance(fd.new, list):
            live = {str(i).partition("=")[0] for i in fd.old}
            wanted = {str(i).partition("=")[0] for i in fd.new}
            for name in sorted(live | wanted):
                what = (
                    "changed"
                    if name in live and name in wanted
                    else "added"
                    if name in live
                    else "removed"
                )
                out.append(f"env {name} {what}")
        elif fd.field.startswith("env."):
            out.append(f"env {fd.field[4:]} changed")
        elif fd.field.startswith("labels."):
            out.append(f"label {fd.field[7:]} changed")
        else:
            out.append(f"{_FIELD_WORDS.get(fd.field, fd.field)} changed")
    return list(dict.fromkeys(out))  # once each, in order


_DONE = {
    "create": "created",
    "recreate": "recreated",
    "start": "started",
    "restart": "restarted",
    "repair": "repaired",
    "remove": "removed",
    "rename": "renamed",
    "pull": "pulled",
    "update": "updated",
}


def describe_change(stack: str, change: Change) -> dict[str, Any]:
    fields = describe_fields(change.fields)
    done = _DONE.get(change.kind, change.kind)
    why = ", ".join(fields) if fields else change.reason
    return {
        "stack": stack,
        "object": change.object,
        "name": change.name,
        "action": change.kind,
        "reason": change.reason,
        "fields": fields,
        "text": f"{change.object} {change.name} {done}: {why}",
    }


def pass_changes(results: Sequence[StackResult]) -> list[dict[str, Any]]:
    """The changes a pass made, described (image pulls are not drift and are left out)."""
    return [
        describe_change(r.stack, c)
        for r in results
        for c in r.plan.changes
        if not (c.kind == "pull" and c.object == "image")
    ]


def _listed(items: Sequence[str], most: int = 5) -> str:
    shown = "; ".join(items[:most])
    return shown + (f" (+{len(items) - most} more)" if len(items) > most else "")


def pass_event(
    *,
    revision: str,
    subject: str,
    trigger: str,
    kinds: set[str],
    outcome: str,
    new_revision: bool,
    errors: Sequence[str],
    results: Sequence[StackResult],
    previous: str | None,
    at: float,
    rolled_back: tuple[str, str] | None = None,
) -> Event | None:
    """The event one finished pass is worth, if any: a rollback applied; a new revision
    applied; a failure; drift repaired (a pass of the applied revision that changed
    something). None for a pass that found nothing to do, or was interrupted."""
    if outcome not in ("succeeded", "failed"):
        return None
    changes = pass_changes(results)

    def event(kind: str, message: str, before: str | None = previous) -> Event:
        return Event(
            kind,
            revision,
            subject,
            message,
            outcome,
            trigger,
            at,
            tuple(errors),
            tuple(changes[:MAX_CHANGES]),
            before,
        )

    if "rollback" in kinds and rolled_back is not None:
        # automatic: `previous` is the bad revision, the message says why
        bad, reason = rolled_back
        what = "applied" if outcome == "succeeded" else f"failed: {_listed(errors)}"
        return event(
            "rollback",
            f"revision {bad} rolled back automatically ({reason}): revision {revision} "
            f"({subject}) {what}",
            bad,
        )
    if "rollback" in kinds:
        what = "applied" if outcome == "succeeded" else f"failed: {_listed(errors)}"
        return event("rollback", f"rollback to revision {revision} ({subject}) {what}")
    if outcome == "failed":
        return event("failed", f"revision {revision} ({subject}) failed: {_listed(errors)}")
    if new_revision:
        done = f": {len(changes)} change(s)" if changes else ": nothing to change"
        return event("applied", f"revision {revision} ({subject}) applied{done}")
    if changes:
        texts = [c["text"] for c in changes]
        return event(
            "drift_repaired", f"drift repaired at revision {revision}: {_listed(texts, 10)}"
        )
    return None


def rejected_event(
    *, revision: str, subject: str, trigger: str, outcome: str, errors: Sequence[str], at: float
) -> Event:
    """A revision not applied: `failed` (does not load, denied by the policy) or
    `refused` (it would empty a stack)."""
    why = "does not load" if outcome == "failed" else "refused"
    return Event(
        "failed" if outcome == "failed" else "refused",
        revision,
        subject,
        f"revision {revision} ({subject}) {why}: {_listed(errors)}; the last good state stays",
        outcome,
        trigger,
        at,
        tuple(errors),
    )


def render(doc: dict[str, Any], fmt: str) -> bytes:
    """The request body for one target's format (`doc`: a redacted event, with `host`
    and `source`)."""
    if fmt == "slack":
        text = f"pyapply on {doc['host']}: {doc['message']}"
        details = [c["text"] for c in doc.get("changes") or []]
        if doc["event"] != "drift_repaired" and details:
            text += "\n" + "\n".join(f"• {d}" for d in details[:10])
        return json.dumps({"text": text}).encode()
    return json.dumps(doc).encode()


# ---------------------------------------------------------------------------------------------
# Targets


def shown_url(url: str) -> str:
    """A URL as logs and the status show it: scheme, host and port only (the path and the
    query often are the token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a bad URL)"
    host = f"[{host}]" if ":" in host else host
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Target(Hidden, msgspec.Struct, frozen=True):
    __hidden__ = frozenset({"url"})
    url: str
    fmt: str
    shown: str


def parse_target(text: str, default_fmt: str = "json") -> Target:
    """A `--notify` value: `[slack+|json+]https://...`, or http to a loopback host."""
    fmt, url = default_fmt, text.strip()
    scheme, sep, rest = url.partition("+")
    if sep and scheme in FORMATS and "://" not in scheme:
        fmt, url = scheme, rest
    shown = shown_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise NotifyError(f"--notify {shown}: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(f"--notify {shown}: needs an http(s)://host/... URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise NotifyError(
            f"--notify {shown}: plain http only to a loopback address (127.0.0.1, ::1, "
            "localhost); use https"
        )
    if parts.username or parts.password:
        raise NotifyError(f"--notify {shown}: put no user or password in the URL")
    return Target(url, fmt, f"{fmt}+{shown}" if fmt != default_fmt else shown)


# ---------------------------------------------------------------------------------------------
# Sending


class SendError(PyapplyError):
    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


def post(url: str, body: bytes, timeout: float = TIMEOUT_S) -> int:
    """POST `body` as JSON; the HTTP status. A redirect is not followed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(
            "POST",
            target,
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"pyapply/{__version__}",
            },
        )
        resp = conn.getresponse()
        resp.read(64 * 1024)
        return resp.status
    finally:
        conn.close()


def send_once(url: str, body: bytes, timeout: float = TIMEOUT_S) -> None:
    """One attempt; SendError saying whether another attempt may help."""
    try:
        status = post(url, body, timeout)
    except (OSError, http.client.HTTPException) as exc:
        raise SendError(f"{type(exc).__name__}: {exc}", retry=True) from None
    if 200 <= status < 300:
        return
    retry = status >= 500 or status in (408, 429)
    raise SendError(f"HTTP {status}", retry=retry)


class Sender:
    """One target's queue and thread."""

    def __init__(
        self,
        target: Target,
        *,
        metrics: Metrics | None = None,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        timeout_s: float = TIMEOUT_S,
        send: Callable[[str, bytes, float], None] = send_once,
    ) -> None:
        self.target = target
        self.metrics = metrics
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._send = send
        self._queue: deque[bytes] = deque()
        self._size = queue_size
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._busy = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_sent: float | None = None
        self.last_failed: float | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"pyapply-notify {target.shown}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def put(self, body: bytes) -> None:
        """Queue one body; never waits (the oldest is dropped when the queue is full)."""
        dropped = False
        with self._cond:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
                dropped = True
            self._queue.append(body)
            self._cond.notify()
        if dropped:
            self._count("dropped")
            log.warning(
                "notify %s: the queue is full (%d); the oldest event was dropped",
                self.target.shown,
                self._size,
            )

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notification(outcome)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue) + (1 if self._busy else 0)

    def stop(self, grace_s: float = 2.0) -> None:
        """Send what is queued for up to `grace_s`, then stop (the rest is given up)."""
        deadline = time.monotonic() + grace_s
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._stopping.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                body = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(body)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, body: bytes) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self._send(self.target.url, body, self.timeout_s)
            except SendError as exc:
                last = str(exc)
                if exc.retry and attempt < self.attempts and not self._stopping.is_set():
                    pause = min(self.backoff_s * 2 ** (attempt - 1), BACKOFF_MAX_S)
                    pause *= random.uniform(0.8, 1.2)
                    log.debug(
                        "notify %s: attempt %d/%d failed (%s); again in %.1fs",
                        self.target.shown,
                        attempt,
                        self.attempts,
                        last,
                        pause,
                    )
                    if self._stopping.wait(pause):
                        break
                    continue
                break
            except Exception as exc:  # a bug in sending must not end the thread
                last = f"{type(exc).__name__}: {exc}"
                log.error(
                    "notify %s: sending failed unexpectedly", self.target.shown, exc_info=True
                )
                break
            else:
                self.sent += 1
                self.last_sent = time.time()
                self._count("sent")
                return
        self.failed += 1
        self.last_failed = time.time()
        self.last_error = last
        self._count("failed")
        log.warning("notify %s: an event could not be sent: %s", self.target.shown, last)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.target.shown,
            "format": self.target.fmt,
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "last_sent": self.last_sent,
            "last_failed": self.last_failed,
            "last_error": self.last_error,
        }


class Notifier:
    """Every target's sender, fed with events made redacted at the moment they are sent
    off (`redactor()` is the agent's current one)."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        host: str,
        source: str,
        redactor: Callable[[], Redactor] = lambda: NO_SECRETS,
        metrics: Metrics | None = None,
        **sender_options: Any,
    ) -> None:
        self.host = host
        self.source = source
        self.redactor = redactor
        self.senders = [Sender(t, metrics=metrics, **sender_options) for t in targets]
        self._lock = threading.Lock()
        self._last_failure: tuple[str, tuple[str, ...]] | None = None
        self.suppressed = 0
        self.events: dict[str, int] = {}

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def stop(self, grace_s: float = 2.0) -> None:
        deadline = time.monotonic() + grace_s
        for sender in self.senders:
            sender.stop(max(0.0, deadline - time.monotonic()))

    def emit(self, event: Event) -> None:
        """Queue `event` for every target; never waits. A failure repeating the last one
        (same revision, same errors) is not sent again."""
        with self._lock:
            if event.kind in ("failed", "refused"):
                key = (event.revision, event.errors)
                if key == self._last_failure:
                    self.suppressed += 1
                    return
                self._last_failure = key
            else:
                self._last_failure = None
            self.events[event.kind] = self.events.get(event.kind, 0) + 1
        doc = {**event.to_json(), "host": self.host, "source": self.source}
        doc = self.redactor().value(doc)
        rendered: dict[str, bytes] = {}
        for sender in self.senders:
            fmt = sender.target.fmt
            if fmt not in rendered:
                rendered[fmt] = render(doc, fmt)
            sender.put(rendered[fmt])

    def succeeded(self) -> None:
        """A pass succeeded: the next failure is news again."""
        with self._lock:
            self._last_failure = None

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            events, suppressed = dict(self.events), self.suppressed
        return {
            "events": events,
            "suppressed": suppressed,
            "targets": [s.to_json() for s in self.senders],
        }
