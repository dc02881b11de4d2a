"""The dashboard listener's pure parts: the token file, sessions, CSRF and origin checks,
the failed-login limit, the log follower's new lines."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pyapply.reconciler.agent.triggers import Changes
from pyapply.reconciler.agent.web import (
    DocCache,
    LoginLimiter,
    Sessions,
    TokenTable,
    WebError,
    csrf_ok,
    new_lines,
    parse_cookies,
    parse_tokens,
    read_tokens,
    same_origin,
)

OP = "operator-token-0123456789"
VIEW = "viewer-token-abcdefghijkl"


def test_a_token_file_with_comments_roles_and_blank_lines() -> None:
    text = f"# who may look\n\nviewer {VIEW}\n  operator   {OP}  # not a comment\n"
    with pytest.raises(WebError, match=r"t:4:.*more than one token"):
        parse_tokens(text, "t")
    tokens = parse_tokens(f"# who may look\n\nviewer {VIEW}\n  operator   {OP}\n", "t")
    assert [(t.role, t.line) for t in tokens] == [("viewer", 3), ("operator", 4)]
    assert OP not in repr(tokens) and VIEW not in repr(tokens)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (f"admin {OP}\n", "f:1:1:", "unknown role 'admin'"),
        ("\n  viewer short-token\n", "f:2:10:", "11 characters; at least 16"),
        ("operator\n", "f:1:1:", "no token after the role"),
        (f"viewer {OP}\noperator {OP}\n", "f:2:10:", "same token as on line 1"),
        ("# nothing\n", "f:1:1:", "no token"),
        ("viewer tok\u00e9n-0123456789abc\n", "f:1:8:", "printable ASCII"),
    ],
)
def test_a_bad_token_file_is_a_located_error_that_never_shows_a_token(
    text: str, where: str, what: str
) -> None:
    with pytest.raises(WebError) as info:
        parse_tokens(text, "f")
    message = str(info.value)
    assert message.startswith(where), message
    assert what in message
    assert OP not in message and "short-token" not in message


def test_the_token_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"operator {OP}\n")
    os.chmod(path, 0o640)
    with pytest.raises(WebError, match=r"mode 0640 .*chmod 600"):
        read_tokens(str(path))
    os.chmod(path, 0o600)
    assert [t.role for t in read_tokens(str(path))] == ["operator"]
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(WebError, match="cannot open it"):
        read_tokens(str(link))
    with pytest.raises(WebError, match="not a regular file"):
        read_tokens(str(tmp_path))


def test_a_token_is_compared_with_every_token() -> None:
    table = TokenTable(parse_tokens(f"viewer {VIEW}\noperator {OP}\n", "t"))
    assert table.role_for(OP) == "operator"
    assert table.role_for(VIEW) == "viewer"
    assert table.role_for(OP[:-1]) is None
    assert table.role_for(OP + "x") is None
    assert table.role_for("") is None
    assert table.role_for("\u00e9" * 20) is None
    assert OP not in repr(table)


def test_sessions_are_random_bounded_and_expire() -> None:
    sessions = Sessions(size=3, idle_s=100, max_s=1000)
    first = sessions.new("viewer", 0)
    assert len(first.id) == 64 and len(first.csrf) == 64 and first.id != first.csrf
    assert sessions.get(first.id, 50) is first
    assert sessions.get(first.id, 151) is None  # idle for more than 100 s
    a = sessions.new("operator", 200)
    others = [sessions.new("viewer", 200 + i) for i in range(3)]
    assert sessions.get(a.id, 210) is None  # the least recently used went first
    assert len(sessions) == 3
    assert all(sessions.get(s.id, 250) is s for s in others)
    long = others[-1]
    for t in range(300, 1201, 90):
        assert sessions.get(long.id, t) is long  # used, but...
    assert sessions.get(long.id, 1203) is None  # ... not past its lifetime (created at 202)
    sessions.drop(others[0].id)
    assert sessions.get(others[0].id, 260) is None
    assert sessions.get(None, 0) is None and sessions.get("nope", 0) is None


def test_csrf_and_origin() -> None:
    assert csrf_ok("a" * 64, "a" * 64)
    assert not csrf_ok("a" * 64, "b" * 64)
    assert not csrf_ok("a" * 64, None)
    assert not csrf_ok("a" * 64, "")
    assert same_origin(None, "h:1", False)  # no Origin: the CSRF token decides
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080", False)
    assert not same_origin("https://127.0.0.1:8080", "127.0.0.1:8080", False)
    assert same_origin("https://dash.example:8443", "DASH.example:8443", True)
    assert not same_origin("http://evil.example", "127.0.0.1:8080", False)
    assert same_origin("null", "127.0.0.1:8080", False)  # no-referrer: the token decides
    assert same_origin("null", "h:1", False, "same-origin")
    assert not same_origin("null", "h:1", False, "cross-site")
    assert not same_origin("http://h:1", "h:1", False, "same-site")
    assert not same_origin("http://127.0.0.1:8080", None, False)


def test_failed_logins_are_limited_per_address_in_bounded_memory() -> None:
    limiter = LoginLimiter(failures=5, window_s=60, tracked=100)
    for i in range(5):
        assert limiter.retry_after("10.0.0.1", i) == 0
        limiter.failed("10.0.0.1", i)
    assert limiter.retry_after("10.0.0.1", 10) == pytest.approx(50)
    assert limiter.retry_after("10.0.0.2", 10) == 0  # another address is not held back
    assert limiter.retry_after("10.0.0.1", 60.5) == 0  # the first failure has aged out
    for i in range(1000):
        limiter.failed(f"192.0.2.{i}", 100)
    assert len(limiter) <= 100


def test_a_log_follower_sends_only_the_new_lines() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]  # the tail moved
    assert new_lines(["x", "x"], ["x", "x", "x"]) == ["x"]
    assert new_lines(["a"], ["q", "r"]) == ["q", "r"]  # nothing in common: a new container


def test_cookies() -> None:
    assert parse_cookies("a=1; pyapply_session=abc ; b=2") == {
        "a": "1",
        "pyapply_session": "abc",
        "b": "2",
    }
    assert parse_cookies(None) == {}
    assert parse_cookies("x=1; x=2") == {"x": "1"}


def test_changes_wake_a_waiter_and_count_restarts() -> None:
    changes = Changes()
    assert changes.wait(0, 0.01) == 0
    changes.container_event("s-a-1", "die")
    changes.container_event("s-a-1", "destroy")
    assert changes.wait(0, 1) == 2
    assert changes.deaths == {"s-a-1": 1}
    changes.close()
    assert changes.wait(2, 5) == 2  # closed: no wait


def test_documents_are_computed_once_per_change_and_not_again_during_a_pass() -> None:
    seq, busy, calls = [0], [False], []

    def compute() -> int:
        calls.append(seq[0])
        return len(calls)

    docs = DocCache(lambda: seq[0], lambda: busy[0], max_age_s=0.05)
    assert docs.get("status", compute) == 1
    assert docs.get("status", compute) == 1  # the same change: the same document
    seq[0] = 1
    assert docs.get("status", compute) == 2  # a change: computed again
    time.sleep(0.06)
    busy[0] = True
    assert docs.get("status", compute) == 2  # old, but a pass runs: its end will tell
    seq[0] = 2
    assert docs.get("status", compute) == 3  # a change during a pass is computed at once
    busy[0] = False
    time.sleep(0.06)
    assert docs.get("status", compute) == 4  # too old once the pass is over
    with pytest.raises(ZeroDivisionError):
        docs.get("broken", lambda: 1 // 0)
    assert calls == [0, 1, 2, 2]


# -- the pages on the socket, in process (an agent on the in-memory runtime) ------------------

SECRET_VALUE = "unit-s3cret-value-42"


def _socket_agent(tmp_path: Path) -> tuple[Any, Any, Any]:
    from fakes import FakeRuntime

    from pyapply.reconciler.agent.agent import Agent, AgentOptions
    from pyapply.reconciler.agent.api import Api
    from pyapply.reconciler.agent.sources import Source
    from pyapply.reconciler.agent.web import Web, socket_handler
    from pyapply.runtime.base import ImageInfo

    image = "pyapply-test/busybox:latest"
    d = tmp_path / "stack"
    d.mkdir()
    (d / "s.yaml").write_text(
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: st}\nspec:\n"
        f'  secrets:\n    tok: {{content: "{SECRET_VALUE}"}}\n'
        f"  services:\n    web:\n      image: {image}\n"
        f'      environment: {{DB_PASSWORD: "{SECRET_VALUE}-env", V: "1"}}\n'
        "      secrets: [tok]\n"
    )
    rt = FakeRuntime(images_={image: ImageInfo("sha256:one", ())})
    agent = Agent(
        Source.of(str(d)), str(tmp_path / "root"), AgentOptions(runtime_events=False), lambda: rt
    )
    api = Api(agent, str(tmp_path / "agent.sock"), lambda: rt)
    web = Web(agent, api)
    api.handler_class = socket_handler(web)
    return agent, api, rt


def _get(sock: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any, str]:
    from pyapply.reconciler.agent.api import UnixHTTPConnection

    conn = UnixHTTPConnection(sock, timeout=10)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp, resp.read().decode()
    finally:
        conn.close()


def test_the_socket_serves_the_pages_redacted_with_their_headers(tmp_path: Path) -> None:
    import re

    agent, api, _ = _socket_agent(tmp_path)
    agent.reconcile({"start"})
    api.start()
    try:
        sock = api.path
        status, resp, page = _get(sock, "GET", "/")
        assert status == 200 and "st" in page and "Synced" in page
        assert "script-src 'self'" in resp.getheader("Content-Security-Policy")
        assert resp.getheader("X-Content-Type-Options") == "nosniff"
        assert resp.getheader("Referrer-Policy") == "no-referrer"
        assert resp.getheader("Cache-Control") == "no-store"
        status, _, page = _get(sock, "GET", "/stacks/st")
        assert status == 200 and "st-web-1" in page and "running" in page
        status, _, doc = _get(sock, "GET", "/v1/stacks/st")
        assert status == 200 and SECRET_VALUE not in doc
        status, _, frag = _get(sock, "GET", "/history?fragment=1")
        assert status == 200 and "<html" not in frag and "<table" in frag
        status, _, js = _get(sock, "GET", "/static/dashboard.js")
        assert status == 200 and "EventSource" in js
        assert _get(sock, "GET", "/static/../web.py")[0] == 404
        assert _get(sock, "GET", "/stacks/nope")[0] == 404
        # an action needs the page's CSRF token
        assert _get(sock, "POST", "/actions/sync", b"csrf=" + b"0" * 64)[0] == 403
        csrf = re.search(
            r'name="csrf" value="([0-9a-f]{64})"', _get(sock, "GET", "/confirm/sync")[2]
        )
        assert csrf is not None
        before = agent.triggers.started
        status, resp, _ = _get(sock, "POST", "/actions/sync", f"csrf={csrf.group(1)}".encode())
        assert status == 303 and resp.getheader("Location") == "/"
        assert agent.triggers.take(0) == {"api"} and agent.triggers.started == before + 1
        # and the API is the API: JSON for what is not a page
        status, _, text = _get(sock, "GET", "/v2/nothing")
        assert status == 404 and text.startswith("{")
        for _, _, text in (_get(sock, "GET", p) for p in ("/", "/stacks/st", "/history")):
            assert SECRET_VALUE not in text
    finally:
        api.stop()


def test_health_events_of_managed_containers_reach_live_pages_without_a_pass() -> None:
    from fakes import FakeRuntime

    from pyapply.reconciler.agent.sources import EventWatcher
    from pyapply.reconciler.core import identity

    fired: list[str] = []
    changes = Changes()
    w = EventWatcher(FakeRuntime, fired.append, lambda: {"mine"}, seen=changes.container_event)
    w.handle("container", "health_status: healthy", "mine-a-1", {identity.STACK: "mine"})
    w.handle("container", "health_status: unhealthy", "x-a-1", {identity.STACK: "other"})
    assert changes.seq == 1 and fired == [] and changes.deaths == {}
    w.handle("container", "die", "mine-a-1", {identity.STACK: "mine"})
    assert changes.seq == 2 and changes.deaths == {"mine-a-1": 1}
    assert fired == ["event:mine-a-1"]
