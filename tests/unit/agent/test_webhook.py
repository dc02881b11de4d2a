"""Push webhooks: each provider's signature (good, wrong, missing, repeated, compared in
constant time), the generic form's timestamp and replay checks, the body and ref rules,
the secret file's checks, and the listener itself on loopback (size limit, methods,
routes, slow clients, the connection limit)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import subprocess
import threading
import time
from email.message import Message
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pyapply.reconciler.agent import webhook
from pyapply.reconciler.agent.sources import Source
from pyapply.reconciler.agent.webhook import (
    MAX_BODY_BYTES,
    Push,
    Refusal,
    ReplayGuard,
    WebhookError,
    WebhookServer,
    authenticate,
    decide,
    parse_address,
    parse_push,
    push_filter,
    read_secret,
)

SECRET = b"0123456789abcdef-webhook-secret"
BODY = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()
NOW = 1_700_000_000.0


def headers(**values: str) -> Message:
    msg = Message()
    for name, value in values.items():
        msg[name.replace("_", "-")] = value
    return msg


def hexmac(data: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def signed(provider: str, body: bytes = BODY, secret: bytes = SECRET, now: float = NOW) -> Message:
    if provider == "github":
        return headers(
            X_Hub_Signature_256="sha256=" + hexmac(body, secret),
            X_GitHub_Event="push",
            Content_Type="application/json",
        )
    if provider == "gitea":
        return headers(X_Gitea_Signature=hexmac(body, secret), X_Gitea_Event="push")
    if provider == "gitlab":
        return headers(X_Gitlab_Token=secret.decode(), X_Gitlab_Event="Push Hook")
    stamp = str(int(now))
    return headers(
        X_Pyapply_Timestamp=stamp,
        X_Pyapply_Signature="sha256=" + hexmac(stamp.encode() + b"." + body, secret),
    )


PROVIDERS = ["github", "gitea", "gitlab", "generic"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_signature_is_accepted(provider: str) -> None:
    h = signed(provider)
    assert authenticate(h, BODY, SECRET, NOW, ReplayGuard()) == provider
    push = parse_push(provider, h, BODY)
    assert push == Push(provider, "push", "refs/heads/main")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_wrong_secret_or_a_changed_body_is_401(provider: str) -> None:
    with pytest.raises(Refusal) as wrong:
        authenticate(
            signed(provider, secret=b"another-secret-of-16+"), BODY, SECRET, NOW, ReplayGuard()
        )
    assert (wrong.value.status, wrong.value.outcome) == (401, "unauthorized")
    if provider != "gitlab":  # GitLab's token does not cover the body
        with pytest.raises(Refusal) as changed:
            authenticate(signed(provider), BODY + b" ", SECRET, NOW, ReplayGuard())
        assert changed.value.status == 401


def test_no_signature_and_a_repeated_one_are_401() -> None:
    with pytest.raises(Refusal) as none:
        authenticate(headers(X_GitHub_Event="push"), BODY, SECRET, NOW, ReplayGuard())
    assert none.value.status == 401 and "no signature" in none.value.message
    twice = signed("github")
    twice["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    with pytest.raises(Refusal) as repeated:
        authenticate(twice, BODY, SECRET, NOW, ReplayGuard())
    assert repeated.value.status == 401 and "more than once" in repeated.value.message
    # a sha1 signature (X-Hub-Signature) alone is not enough
    with pytest.raises(Refusal):
        authenticate(
            headers(X_Hub_Signature="sha1=" + hmac.new(SECRET, BODY, "sha1").hexdigest()),
            BODY,
            SECRET,
            NOW,
            ReplayGuard(),
        )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_signatures_are_compared_in_constant_time(
    provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhook.hmac, "compare_digest", spy)
    authenticate(signed(provider), BODY, SECRET, NOW, ReplayGuard())
    with pytest.raises(Refusal):
        authenticate(signed(provider, secret=b"x" * 20), BODY, SECRET, NOW, ReplayGuard())
    assert len(calls) == 2 and all(isinstance(a, bytes) for a, _ in calls)


def test_the_generic_form_refuses_old_future_and_replayed_requests() -> None:
    guard = ReplayGuard()
    old = signed("generic", now=NOW - 301)
    with pytest.raises(Refusal, match="away"):
        authenticate(old, BODY, SECRET, NOW, guard)
    future = signed("generic", now=NOW + 301)
    with pytest.raises(Refusal, match="away"):
        authenticate(future, BODY, SECRET, NOW, guard)
    fresh = signed("generic", now=NOW - 10)
    assert authenticate(fresh, BODY, SECRET, NOW, guard) == "generic"
    with pytest.raises(Refusal, match="already received"):
        authenticate(fresh, BODY, SECRET, NOW + 1, guard)
    # the timestamp is signed: moving it forward breaks the signature
    moved = signed("generic", now=NOW - 400)
    moved.replace_header("X-Pyapply-Timestamp", str(int(NOW)))
    with pytest.raises(Refusal, match="does not match"):
        authenticate(moved, BODY, SECRET, NOW, guard)
    no_stamp = headers(X_Pyapply_Signature="sha256=" + hexmac(BODY))
    with pytest.raises(Refusal, match="Timestamp"):
        authenticate(no_stamp, BODY, SECRET, NOW, guard)


def test_the_replay_memory_is_bounded() -> None:
    guard = ReplayGuard(window_s=300, size=3)
    for i in range(10):
        assert guard.first_time(str(i).encode(), NOW)
    assert len(guard._seen) == 3
    assert not guard.first_time(b"9", NOW)
    assert guard.first_time(b"9", NOW + 601)  # long forgotten: refused by its timestamp


def test_bodies_events_and_refs() -> None:
    # GitHub's form-encoded delivery
    form = b"payload=" + json.dumps({"ref": "refs/heads/dev"}).encode().replace(b" ", b"+")
    h = signed("github", form)
    h.replace_header("Content-Type", "application/x-www-form-urlencoded")
    assert parse_push("github", h, form).ref == "refs/heads/dev"
    with pytest.raises(Refusal) as bad:
        parse_push("github", signed("github", b"not json"), b"not json")
    assert bad.value.status == 400
    with pytest.raises(Refusal):
        parse_push("github", signed("github", b"[1]"), b"[1]")
    with pytest.raises(Refusal, match="without a ref"):
        parse_push("gitea", signed("gitea", b"{}"), b"{}")
    # the generic form may leave the ref out: a push of whatever the agent follows
    assert parse_push("generic", signed("generic", b""), b"") == Push("generic", "push", None)
    tag = parse_push("gitlab", headers(X_Gitlab_Event="Tag Push Hook"), b'{"ref": "refs/tags/v1"}')
    assert tag == Push("gitlab", "push", "refs/tags/v1")
    mr = parse_push("gitlab", headers(X_Gitlab_Event="Merge Request Hook"), b'{"ref": "x"}')
    follows = lambda ref: ref == "refs/heads/main"  # noqa: E731
    with pytest.raises(Refusal) as ignored:
        decide(mr, follows)
    assert (ignored.value.status, ignored.value.outcome) == (202, "ignored")
    with pytest.raises(Refusal) as other:
        decide(Push("github", "push", "refs/heads/feature"), follows)
    assert other.value.status == 202 and "does not follow" in other.value.message
    with pytest.raises(Refusal) as ping:
        decide(Push("github", "ping", None), follows)
    assert (ping.value.status, ping.value.outcome) == (200, "ignored")
    decide(Push("github", "push", "refs/heads/main"), follows)  # goes through


def test_the_ref_followed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    follows = push_filter(Source.of(str(repo)), None)
    assert follows("refs/heads/main") and not follows("refs/heads/other")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "other"], check=True)
    assert follows("refs/heads/other") and not follows("refs/heads/main")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert push_filter(Source.of(str(plain)), None)("refs/heads/anything")
    tagged = push_filter(Source.of(str(plain)), "v2")
    assert tagged("refs/tags/v2") and tagged("refs/heads/v2") and not tagged("refs/tags/v3")


def test_the_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o644)
    with pytest.raises(WebhookError, match="mode 0644") as loose:
        read_secret(str(path))
    assert SECRET.decode() not in str(loose.value)
    path.chmod(0o600)
    assert read_secret(str(path)) == SECRET
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(WebhookError, match="cannot open"):
        read_secret(str(link))
    short = tmp_path / "short"
    short.write_bytes(b"abc\n")
    short.chmod(0o600)
    with pytest.raises(WebhookError, match="at least 16"):
        read_secret(str(short))
    with pytest.raises(WebhookError, match="cannot open"):
        read_secret(str(tmp_path / "missing"))
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9000", "host:", "host:70000", ":80"):
        with pytest.raises(WebhookError):
            parse_address(bad)


# -- the listener on loopback ------------------------------------------------------------------


class Listener:
    def __init__(self, **options: Any) -> None:
        self.pushes: list[str | None] = []
        self.server = WebhookServer(
            ("127.0.0.1", 0),
            SECRET,
            self.on_push,
            lambda ref: ref == "refs/heads/main",
            **options,
        )
        self.server.start()
        assert self.server._server is not None
        self.port = int(self.server._server.server_address[1])

    def on_push(self, ref: str | None) -> int:
        self.pushes.append(ref)
        return len(self.pushes)

    def post(
        self, body: bytes, hdrs: Message, path: str = "/webhook", method: str = "POST"
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=dict(hdrs.items()))
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()


@pytest.fixture
def listener() -> Any:
    # a read deadline long enough for a loaded machine: these tests are not about it
    lst = Listener(read_timeout_s=5.0, max_connections=2)
    yield lst
    lst.server.stop()


@pytest.fixture
def quick_listener() -> Any:
    """A listener that cuts slow clients after 0.5 s, for the test of that cut."""
    lst = Listener(read_timeout_s=0.5, max_connections=2)
    yield lst
    lst.server.stop()


def test_the_listener_triggers_only_signed_pushes_to_the_ref(listener: Listener) -> None:
    status, doc = listener.post(BODY, signed("github"))
    assert (status, doc) == (202, {"triggered": True, "pass": 1, "ref": "refs/heads/main"})
    status, doc = listener.post(BODY, signed("github", secret=b"w" * 20))
    assert status == 401 and "does not match" in doc["error"]
    other = json.dumps({"ref": "refs/heads/feature"}).encode()
    status, doc = listener.post(other, signed("gitea", other))
    assert status == 202 and "ignored" in doc
    assert listener.post(BODY, signed("github"), method="GET")[0] == 405
    assert listener.post(BODY, signed("github"), path="/other")[0] == 404
    assert listener.post(BODY, signed("github"), method="PATCH")[0] == 405
    assert listener.pushes == ["refs/heads/main"]
    state = listener.server.status()
    assert state["requests"] == {
        "triggered": 1,
        "unauthorized": 1,
        "ignored": 1,
        "method_not_allowed": 2,
        "not_found": 1,
    }
    assert state["last"]["outcome"] == "method_not_allowed" and state["last_triggered"] is not None
    schema = json.loads(
        (Path(__file__).parents[3] / "schemas" / "v1" / "agent-api.openapi.json").read_text()
    )
    jsonschema.Draft202012Validator(
        {
            "$ref": "#/components/schemas/Status/properties/webhook",
            "components": schema["components"],
        }
    ).validate(state)


def test_the_listener_refuses_large_bodies_unread(listener: Listener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as s:
        s.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as s:
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411 ")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as s:
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert listener.pushes == []


def test_slow_clients_are_cut_and_the_connections_bounded(quick_listener: Listener) -> None:
    listener = quick_listener
    # two slow clients hold both slots; a third is answered 503 at once
    slow = [socket.create_connection(("127.0.0.1", listener.port), timeout=5) for _ in range(2)]
    for s in slow:
        s.sendall(b"POST /webhook HTTP/1.1\r\n")
    time.sleep(0.1)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as third:
        assert third.recv(4096).startswith(b"HTTP/1.1 503 ")
    # the slow ones are cut at the read deadline (0.5 s), however they trickle
    started = time.monotonic()
    for s in slow:
        with s:
            while True:
                try:
                    s.sendall(b"X")
                except OSError:
                    break
                if time.monotonic() - started > 5:
                    pytest.fail("a slow client was not cut off")
                time.sleep(0.05)
    assert time.monotonic() - started < 3
    # then a push goes through again
    wait_until = time.monotonic() + 5
    while time.monotonic() < wait_until:
        status, _ = listener.post(BODY, signed("gitlab"))
        if status != 503:
            break
        time.sleep(0.1)
    assert status == 202 and listener.pushes == ["refs/heads/main"]
    counts = listener.server.status()["requests"]
    assert counts["busy"] >= 1 and counts["timeout"] == 2


def test_a_stopping_agent_answers_503() -> None:
    lst = Listener()
    lst.on_push = lambda ref: -1  # type: ignore[method-assign]
    lst.server.on_push = lst.on_push
    try:
        status, doc = lst.post(BODY, signed("github"))
        assert status == 503 and "stopping" in doc["error"]
    finally:
        lst.server.stop()


def test_the_secret_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, listener: Listener
) -> None:
    caplog.set_level("DEBUG", logger="pyapply")
    listener.post(BODY, signed("gitlab", secret=b"wrong-secret-but-long"))
    listener.post(BODY, signed("gitlab"))
    text = caplog.text + repr(listener.server)
    assert SECRET.decode() not in text and "wrong-secret-but-long" not in text
    assert "webhook from 127.0.0.1" in caplog.text


def test_threads_left_are_the_listeners_own() -> None:
    before = {t.name for t in threading.enumerate()}
    lst = Listener()
    lst.server.stop()
    time.sleep(0.1)
    assert "pyapply-webhook" not in {t.name for t in threading.enumerate()} - before
