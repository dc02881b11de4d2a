"""Push webhooks and notifications end to end: a real `pyapply watch` process with
`--webhook` (signed requests sent over loopback TCP; on both runtimes) and `--notify` (an
HTTP receiver on loopback started here, and a URL where nothing listens; native only). The
agent is always ended by pid (the `AgentProc` of test_agent.py); the receiver is shut down
here.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.runtimes import RuntimeUnderTest, free_port
from tests.e2e.test_agent import (
    AgentProc,
    Repo,
    agent_on,
    label,
    openapi_validator,
    running,
    wait_for,
)

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-0123456789"
TOKEN = "tok-e2e-S3cret-value"  # a stack secret, also put in commit subjects


@pytest.fixture
def agent(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[AgentProc]:
    """The agent on the native runtime (what needs no second runtime)."""
    with agent_on(tmp_path, native) as proc:
        yield proc


@pytest.fixture
def runtime_agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    """The agent on each runtime (docker, native)."""
    with agent_on(tmp_path, runtime) as proc:
        yield proc


def manifest(stack: str, value: str, memory: str = "64m") -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  secrets:
    tok: {{content: "{TOKEN}"}}
  services:
    app:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      environment: {{V: "{value}"}}
      secrets: [tok]
      deploy: {{resources: {{limits: {{memory: {memory}}}}}}}
"""


def post_webhook(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhook", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def github(body: bytes, secret: str = SECRET) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={mac}",
        "Content-Type": "application/json",
    }


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.touch(mode=0o600)
    path.write_text(SECRET + "\n")
    return path


def test_a_signed_push_triggers_a_pass_and_a_bad_one_nothing(
    runtime_agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    agent = runtime_agent
    stack, obs = runtime.stack, runtime.observe
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": manifest(stack, "1")}, "one")
    port, metrics = free_port(), free_port()
    secret = secret_file(tmp_path)
    # the file watch and its poll slowed right down: only the webhook can start the pass
    agent.start(
        repo.path,
        "--debounce", "60", "--poll", "600", "--interval", "600",
        "--webhook", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret),
        "--metrics", f"127.0.0.1:{metrics}",
    )  # fmt: skip
    app = f"{stack}-app-1"
    wait_for("one", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    sha2 = repo.commit({"stack.yaml": manifest(stack, "2")}, "two")
    push = json.dumps({"ref": "refs/heads/main", "after": sha2}).encode()

    # a wrong signature, none, another ref: no pass
    first = wait_for(
        "the first pass over",
        lambda: agent.api("GET", "/v1/status")["last_result"]["outcome"] == "succeeded",
    )
    assert first
    before = agent.api("GET", "/v1/status")["last_result"]["started"]
    assert post_webhook(port, push, github(push, "not-the-secret-at-all"))[0] == 401
    assert post_webhook(port, push, {"X-GitHub-Event": "push"})[0] == 401
    other = json.dumps({"ref": "refs/heads/feature"}).encode()
    status, doc = post_webhook(port, other, github(other))
    assert status == 202 and "ignored" in doc
    time.sleep(1.5)
    status_doc = agent.api("GET", "/v1/status")
    assert status_doc["last_result"]["started"] == before
    assert label(obs, app) == sha1[:12]
    assert status_doc["webhook"]["requests"] == {"unauthorized": 2, "ignored": 1}

    # a signed push to the branch checked out: a pass at once, which applies `two`
    status, doc = post_webhook(port, push, github(push))
    assert status == 202 and doc["triggered"] is True
    wait_for("two, by the webhook", lambda: label(obs, app) == sha2[:12], timeout=30)

    def webhook_pass() -> dict[str, Any] | None:
        doc = agent.api("GET", "/v1/status")
        return doc if doc["last_result"]["trigger"] == "webhook" else None

    status_doc = wait_for("the webhook's pass over", webhook_pass)
    assert status_doc["last_result"]["outcome"] == "succeeded"
    assert status_doc["revision"]["applied"] == sha2[:12]
    assert status_doc["webhook"]["last"]["outcome"] == "triggered"
    assert status_doc["webhook"]["last"]["provider"] == "github"
    openapi_validator("Status").validate(status_doc)
    assert any(p["trigger"] == "webhook" for p in agent.history())
    _, text = http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert 'pyapply_webhook_requests_total{outcome="triggered"} 1.0' in text
    assert 'pyapply_webhook_requests_total{outcome="unauthorized"} 2.0' in text
    shown = agent.cli("status").stdout
    assert f"webhook:   http://127.0.0.1:{port}/webhook, 1 push(es)" in shown, shown
    assert SECRET not in agent.logs()
    assert agent.stop() == 0


class Receiver(http.server.ThreadingHTTPServer):
    """Collects the JSON bodies posted to it, in order."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.raw.append(body)
                    outer.got.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        with self.lock:
            return [d["event"] for d in self.got]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    try:
        yield rec
    finally:
        rec.shutdown()
        rec.server_close()


def test_notifications_of_each_event_in_order_and_a_receiver_that_is_down(
    agent: AgentProc, native: RuntimeUnderTest, receiver: Receiver, tmp_path: Path
) -> None:
    stack, obs = native.stack, native.observe
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": manifest(stack, "1")}, f"one (token {TOKEN})")
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/abc-url-token?key=xyz"
    down = f"http://127.0.0.1:{free_port()}/down-url-token"  # nothing listens there
    metrics = free_port()
    agent.start(
        repo.path,
        *("--notify", url, "--notify", f"slack+{down}", "--interval", "600"),
        *("--metrics", f"127.0.0.1:{metrics}"),
    )
    app = f"{stack}-app-1"
    wait_for("applied", lambda: receiver.kinds() == ["applied"])
    assert running(obs, app) and label(obs, app) == sha1[:12]

    broken = manifest(stack, "2").replace(f"image: {TEST_IMAGE}", "image: [1]")
    bad = repo.commit({"stack.yaml": broken}, f"broken (token {TOKEN})")
    wait_for("failed", lambda: receiver.kinds()[1:] == ["failed"])
    gone = repo.commit({"stack.yaml": None}, "delete everything")
    wait_for("refused", lambda: receiver.kinds()[2:] == ["refused"])

    # a change by hand, repaired by the next pass (asked for here, as a resync would)
    native.by_hand.set_memory_limit(app, 48 * 1024 * 1024)
    started = time.monotonic()
    result = agent.api("POST", "/v1/sync?wait=true")["result"]
    assert result["outcome"] == "succeeded", result
    # the down receiver's retries never held the passes up
    assert time.monotonic() - started < 20
    wait_for("drift repaired", lambda: receiver.kinds()[3:] == ["drift_repaired"])
    agent.cli("rollback", sha1[:12])
    wait_for("rollback", lambda: receiver.kinds()[4:] == ["rollback"])

    applied, failed, refused, drift, rollback = receiver.got
    for doc in receiver.got:
        openapi_validator("Notification").validate(doc)
    assert applied["revision"] == sha1[:12] and applied["subject"] == "one (token ***)"
    assert failed["revision"] == bad[:12] and any("image" in e for e in failed["errors"])
    assert refused["revision"] == gone[:12] and "--allow-empty" in refused["errors"][0]
    (change,) = drift["changes"]
    assert change["name"] == app and "memory limit changed" in change["fields"], change
    assert "memory limit changed" in drift["message"]
    assert rollback["revision"] == sha1[:12] and rollback["outcome"] == "succeeded"
    assert all(TOKEN.encode() not in raw for raw in receiver.raw)

    # the receiver that is down: its failures are counted, shown without its token
    def down_failed() -> dict[str, Any] | None:
        targets = agent.api("GET", "/v1/status")["notifications"]["targets"]
        return targets[1] if targets[1]["failed"] >= 1 else None

    target = wait_for("a failure counted", down_failed, timeout=30)
    assert target["format"] == "slack" and "token" not in target["url"]
    status_doc = agent.api("GET", "/v1/status")
    openapi_validator("Status").validate(status_doc)
    assert status_doc["notifications"]["targets"][0]["sent"] == 5
    _, text = http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert 'pyapply_notifications_total{outcome="sent"} 5.0' in text, text
    shown = agent.cli("status").stdout
    assert "notify:    http://127.0.0.1:" in shown and ": 5 sent, 0 failed" in shown, shown
    failed = re.search(r'^pyapply_notifications_total\{outcome="failed"\} (\d+)\.0$', text, re.M)
    assert failed and int(failed[1]) >= 1, text  # the down receiver's, still growing
    logs = agent.logs()
    assert "abc-url-token" not in logs and "down-url-token" not in logs
    assert TOKEN not in logs
    assert agent.stop() == 0
