"""Notifications: events of the agent's passes (on an in-memory runtime), the words for
the fields changed by hand, both formats, redaction, the URL rules, and the senders (a
queue that never blocks and drops the oldest, retries with back-off, a real receiver on
loopback and one that is down)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeRuntime
from test_watch import IMAGE, commit, make_repo, openapi_validator, stack_yaml

from pyapply.reconciler.agent.agent import Agent, AgentOptions
from pyapply.reconciler.agent.metrics import Metrics
from pyapply.reconciler.agent.notify import (
    Event,
    Notifier,
    NotifyError,
    Sender,
    SendError,
    Target,
    describe_fields,
    parse_target,
    render,
    send_once,
    shown_url,
)
from pyapply.reconciler.agent.sources import Source
from pyapply.reconciler.core.diff import FieldDiff
from pyapply.reconciler.core.redact import Redactor
from pyapply.runtime.base import ImageInfo

SECRET = "s3cr3t-notify-value"


def test_fields_changed_by_hand_in_words() -> None:
    fields = (
        FieldDiff("env", ["LOG_LEVEL=debug", "EXTRA=1"], ["LOG_LEVEL=info", "GONE=x"]),
        FieldDiff("memory", 48 << 20, 64 << 20),
        FieldDiff("networks", ["a"], ["a", "b"]),
        FieldDiff("labels.team", "x", "y"),
        FieldDiff("env.DB_URL", "a", "b"),
        FieldDiff("image_id", "sha256:a", "sha256:b"),
    )
    assert describe_fields(fields) == [
        "env EXTRA added",
        "env GONE removed",
        "env LOG_LEVEL changed",
        "memory limit changed",
        "networks changed",
        "label team changed",
        "env DB_URL changed",
        "image changed",
    ]


def event(**kw: Any) -> Event:
    base: dict[str, Any] = dict(
        kind="applied",
        revision="abc123",
        subject="deploy",
        message="revision abc123 (deploy) applied",
        outcome="succeeded",
        trigger="file",
        at=1.0,
    )
    return Event(**{**base, **kw})


def test_both_formats() -> None:
    doc = {**event().to_json(), "host": "h1", "source": "/srv"}
    assert json.loads(render(doc, "slack")) == {
        "text": "pyapply on h1: revision abc123 (deploy) applied"
    }
    assert json.loads(render(doc, "json")) == doc


def test_urls_are_checked_and_shown_without_their_token() -> None:
    t = parse_target("slack+https://hooks.example.com/services/T0/B0/tok3n?x=1")
    assert (t.fmt, t.shown) == ("slack", "slack+https://hooks.example.com/…")
    assert "tok3n" not in repr(t)
    assert parse_target("http://127.0.0.1:8080/hook").shown == "http://127.0.0.1:8080/…"
    assert parse_target("http://[::1]:8080/").fmt == "json"
    assert parse_target("json+https://x.example/", "slack").shown == "json+https://x.example"
    for bad, why in (
        ("http://hooks.example.com/tok3n", "loopback"),
        ("ftp://127.0.0.1/tok3n", "http"),
        ("https://user:tok3n@example.com/", "no user or password"),
        ("https://example.com:99999/tok3n", "not a URL"),
        ("nonsense", "http"),
    ):
        with pytest.raises(NotifyError, match=why) as info:
            parse_target(bad)
        assert "tok3n" not in str(info.value)
    assert shown_url("https://h.example/a/b?token=1") == "https://h.example/…"


class Recorder:
    """A send function that keeps what it was given (and can be held or made to fail)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: SendError | None = None
        self.calls = 0

    def __call__(self, url: str, body: bytes, timeout: float) -> None:
        self.calls += 1
        self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        self.bodies.append(json.loads(body))

    def kinds(self) -> list[str]:
        return [b["event"] for b in self.bodies]


def wait(what: str, probe: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_the_queue_never_blocks_and_drops_the_oldest() -> None:
    rec = Recorder()
    rec.gate.clear()  # the receiver hangs
    metrics = Metrics()
    sender = Sender(
        Target("http://127.0.0.1:1/", "json", "x"), send=rec, queue_size=5, metrics=metrics
    )
    sender.start()
    try:
        sender.put(b'{"event": "first", "n": -1}')
        wait("the first send to start", lambda: rec.calls == 1)
        started = time.monotonic()
        for n in range(1000):
            sender.put(json.dumps({"event": "e", "n": n}).encode())
        assert time.monotonic() - started < 0.5  # never waits for the receiver
        assert sender.dropped == 995 and sender.queued == 6
        rec.gate.set()
        wait("everything sent", lambda: sender.sent == 6)
        assert [b["n"] for b in rec.bodies] == [-1, 995, 996, 997, 998, 999]  # newest kept
        text = metrics.render().decode()
        assert 'pyapply_notifications_total{outcome="dropped"} 995.0' in text
        assert 'pyapply_notifications_total{outcome="sent"} 6.0' in text
    finally:
        rec.gate.set()
        sender.stop(0.5)


def test_retries_with_backoff_then_counts_a_failure() -> None:
    rec = Recorder()
    rec.fail = SendError("HTTP 503", retry=True)
    sender = Sender(
        Target("http://127.0.0.1:1/", "json", "x"), send=rec, attempts=3, backoff_s=0.05
    )
    sender.start()
    try:
        started = time.monotonic()
        sender.put(b"{}")
        wait("the failure", lambda: sender.failed == 1)
        # two pauses, 0.05 s then 0.1 s, each with jitter down to 0.8 of it (the bound was
        # 0.05 + 0.1 * 0.8, which a low first jitter broke once in CI: 0.1226 s)
        assert rec.calls == 3 and time.monotonic() - started >= (0.05 + 0.1) * 0.8
        assert sender.last_error == "HTTP 503"
        rec.fail = SendError("HTTP 404", retry=False)  # not worth trying again
        sender.put(b"{}")
        wait("the second failure", lambda: sender.failed == 2)
        assert rec.calls == 4
        rec.fail = None
        sender.put(b'{"event": "ok"}')
        wait("a send", lambda: sender.sent == 1)
        assert sender.to_json()["url"] == "x"
    finally:
        sender.stop(0.5)


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self, answer: int = 200) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.answer = answer
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((self.path, json.loads(body)))
                self.send_response(outer.answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook/tok3n?x=1"


def test_real_sends_to_a_receiver_and_one_that_is_down() -> None:
    receiver = Receiver()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{probe.getsockname()[1]}/tok3n"  # bound, never listening
    notifier = Notifier(
        [parse_target(receiver.url), parse_target("slack+" + down)],
        host="h",
        source="/srv",
        redactor=lambda: Redactor([SECRET]),
        attempts=2,
        backoff_s=0.05,
    )
    notifier.start()
    try:
        send_once(receiver.url, b'{"direct": true}')
        notifier.emit(event(subject=f"rotate {SECRET}", errors=(f"x {SECRET}",)))
        wait("the receiver", lambda: len(receiver.got) == 2)
        path, doc = receiver.got[1]
        assert path == "/hook/tok3n?x=1"
        assert doc["subject"] == "rotate ***" and doc["errors"] == ["x ***"]
        assert doc["host"] == "h" and doc["event"] == "applied"
        down_sender = notifier.senders[1]
        wait("the failure", lambda: down_sender.failed == 1)
        state = notifier.to_json()
        assert state["targets"][0]["sent"] == 1 and state["targets"][1]["failed"] == 1
        assert "tok3n" not in json.dumps(state)
        assert "Connection refused" in (state["targets"][1]["last_error"] or "")
        receiver.answer = 500
        with pytest.raises(SendError) as failed:
            send_once(receiver.url, b"{}")
        assert failed.value.retry
    finally:
        notifier.stop(0.5)
        receiver.shutdown()
        receiver.server_close()
        probe.close()


def test_a_repeated_failure_is_sent_once_until_a_success() -> None:
    rec = Recorder()
    notifier = Notifier(
        [Target("http://127.0.0.1:1/", "json", "x")], host="h", source="/", send=rec
    )
    notifier.start()
    try:
        failed = event(kind="failed", outcome="failed", errors=("boom",))
        notifier.emit(failed)
        notifier.emit(failed)
        notifier.emit(event(kind="failed", outcome="failed", errors=("other",)))
        notifier.succeeded()
        notifier.emit(failed)
        wait("three sends", lambda: len(rec.bodies) == 3)
        assert [b["errors"] for b in rec.bodies] == [["boom"], ["other"], ["boom"]]
        assert notifier.to_json()["suppressed"] == 1
    finally:
        notifier.stop(0.5)


# -- the agent's passes ---------------------------------------------------------------------


def test_the_agent_notifies_each_kind_of_event_in_order(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    secret_stack = (
        stack_yaml("st", "1")
        .replace("spec:\n", f"spec:\n  secrets:\n    tok: {{content: {SECRET}}}\n")
        .replace(
            '      command: ["sleep", "1000"]\n',
            '      command: ["sleep", "1000"]\n      secrets: [tok]\n',
        )
    )
    sha1 = commit(repo, {"s.yaml": secret_stack}, "one")
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ())})
    agent = Agent(
        Source.of(str(repo)), str(tmp_path / "root"), AgentOptions(runtime_events=False), lambda: rt
    )
    rec = Recorder()
    agent.notifier = Notifier(
        [Target("http://127.0.0.1:1/", "json", "x")],
        host="h",
        source=str(repo),
        redactor=lambda: agent.redactor,
        send=rec,
    )
    agent.notifier.start()
    try:
        agent.reconcile({"start"})  # applied
        broken = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: st}\nspec:\n  services:\n    s0: {image: 3}\n"
        sha2 = commit(repo, {"s.yaml": broken}, f"broken, see {SECRET}")
        agent.reconcile({"file"})  # failed
        (repo / "s.yaml").unlink()
        commit(repo, {}, "everything gone")
        agent.reconcile({"file"})  # refused
        agent.reconcile({"resync"})  # nothing to do: no event
        rt.mutate("st-s0-1", env=("V=1", "LOG_LEVEL=debug"), memory_bytes=48 << 20)
        agent.reconcile({"resync"})  # drift repaired
        agent.rollback(sha1[:8])
        agent.reconcile({"rollback"})  # rollback (to the revision applied: nothing to change)
        wait("six events", lambda: len(rec.bodies) == 5)
        status = agent.status(rt)
        openapi_validator("Status").validate(status)
        assert status["notifications"]["events"] == {
            "applied": 1,
            "failed": 1,
            "refused": 1,
            "drift_repaired": 1,
            "rollback": 1,
        }
        assert status["webhook"] is None
    finally:
        agent.notifier.stop(1.0)
    for body in rec.bodies:
        openapi_validator("Notification").validate(body)
    assert rec.kinds() == ["applied", "failed", "refused", "drift_repaired", "rollback"]
    applied, failed, refused, drift, rollback = rec.bodies
    assert applied["revision"] == sha1[:12] and applied["outcome"] == "succeeded"
    assert failed["revision"] == sha2[:12] and failed["errors"]
    assert failed["subject"] == "broken, see ***"  # the secret learned from revision one
    assert "--allow-empty" in refused["errors"][0]
    (change,) = drift["changes"]
    assert change["name"] == "st-s0-1" and change["action"] == "recreate"
    assert change["fields"] == ["env LOG_LEVEL added", "memory limit changed"]
    assert "env LOG_LEVEL added, memory limit changed" in drift["message"]
    assert rollback["revision"] == sha1[:12] and rollback["trigger"] == "rollback"
    assert SECRET not in json.dumps(rec.bodies)
