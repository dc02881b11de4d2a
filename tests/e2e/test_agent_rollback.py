"""Automatic rollback end to end: a real `pyapply watch --progress-deadline` process on a git
work tree made here, a notification receiver on loopback. A commit whose service never
becomes healthy is rolled back within the deadline and then superseded by a good commit, on
both runtimes (health is the runtime's to report); a commit that does not load leaves the
running stack alone until its fix (native only: no runtime is asked anything new)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.runtimes import RuntimeUnderTest, free_port
from tests.e2e.test_agent import AgentProc, Repo, openapi_validator, running, wait_for
from tests.e2e.test_agent_hooks import Receiver, agent_on

pytestmark = pytest.mark.e2e

DEADLINE_S = 6


@pytest.fixture
def agent(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, native) as proc:
        yield proc


@pytest.fixture
def runtime_agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    """The agent on each runtime (docker, native)."""
    with agent_on(tmp_path, runtime) as proc:
        yield proc


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    try:
        yield rec
    finally:
        rec.shutdown()
        rec.server_close()


def manifest(stack: str, value: str, *, healthy: bool = True, image: str = TEST_IMAGE) -> str:
    # the bad revision's healthcheck fails at once and is retried twice, 0.5 s apart
    check = (
        ""
        if healthy
        else '      healthcheck: {test: ["CMD", "false"], interval: 0.5s, retries: 2}\n'
    )
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app:
      image: {image}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      environment: {{V: "{value}"}}
{check}"""


def status(agent: AgentProc) -> dict[str, Any]:
    return dict(agent.api("GET", "/v1/status"))


def test_an_unhealthy_commit_is_rolled_back_then_superseded_by_a_good_one(
    runtime_agent: AgentProc, runtime: RuntimeUnderTest, receiver: Receiver, tmp_path: Path
) -> None:
    agent = runtime_agent
    stack, obs = runtime.stack, runtime.observe
    app = f"{stack}-app-1"
    repo = Repo(tmp_path / "repo")
    good = repo.commit({"stack.yaml": manifest(stack, "1")}, "good")[:12]
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks"
    metrics = free_port()
    agent.start(
        repo.path,
        "--progress-deadline",
        str(DEADLINE_S),
        "--notify",
        url,
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--interval",
        "600",
    )
    wait_for("the good commit healthy", lambda: status(agent)["rollback"]["last_healthy"] == good)
    assert obs.env(app)["V"] == "1"

    bad = repo.commit({"stack.yaml": manifest(stack, "2", healthy=False)}, "never healthy")[:12]
    committed = time.monotonic()
    wait_for("the bad commit applied", lambda: running(obs, app) and obs.env(app)["V"] == "2")
    doc = wait_for(
        "the automatic rollback",
        lambda: (s := status(agent))["revision"]["pin_reason"] == "auto" and s,
        timeout=DEADLINE_S + 20,
    )
    took = time.monotonic() - committed
    assert DEADLINE_S <= took < DEADLINE_S + 15, took  # at the deadline, not before
    assert doc["revision"]["pinned"] == good
    assert doc["rollback"]["last"]["revision"] == bad
    assert doc["rollback"]["last"]["to"] == good
    assert "not Healthy within" in doc["rollback"]["last"]["reason"]
    wait_for("the good commit back", lambda: running(obs, app) and obs.env(app)["V"] == "1")
    doc = wait_for(
        "the rollback pass recorded",
        lambda: (s := status(agent))["revision"]["applied"] == good and s,
    )
    openapi_validator("Status").validate(doc)
    outcomes = {(p["revision"], p["outcome"]) for p in agent.history()}
    assert (bad, "rolled-back") in outcomes and (good, "succeeded") in outcomes
    event = wait_for(
        "the rollback notification",
        lambda: next((e for e in list(receiver.got) if e["event"] == "rollback"), None),
    )
    assert (event["revision"], event["previous"]) == (good, bad)
    assert "not Healthy within" in event["message"]
    text = agent.cli("status").stdout
    assert "pinned by an automatic rollback" in text and f"{bad} rolled back to {good}" in text
    table = agent.cli("history").stdout
    assert any(bad in line and "rolled-back" in line for line in table.splitlines())
    _, body = http_get(f"http://127.0.0.1:{metrics}/metrics")
    assert 'pyapply_rollbacks_total{kind="auto"} 1.0' in body

    # a resync applies the pinned good revision, never the bad one
    agent.cli("sync")
    assert obs.env(app)["V"] == "1" and status(agent)["revision"]["pinned"] == good

    # a newer commit lifts the automatic pin and is followed
    newer = repo.commit({"stack.yaml": manifest(stack, "3")}, "fixed")[:12]
    wait_for("the newer commit", lambda: running(obs, app) and obs.env(app)["V"] == "3")
    doc = wait_for(
        "it healthy", lambda: (s := status(agent))["rollback"]["last_healthy"] == newer and s
    )
    assert doc["revision"]["pinned"] is None and doc["revision"]["pin_reason"] is None
    assert agent.stop() == 0


def test_a_commit_that_does_not_load_then_its_fix(
    agent: AgentProc, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack, obs = native.stack, native.observe
    app = f"{stack}-app-1"
    repo = Repo(tmp_path / "repo")
    good = repo.commit({"stack.yaml": manifest(stack, "1")}, "good")[:12]
    agent.start(repo.path, "--progress-deadline", str(DEADLINE_S), "--interval", "600")
    wait_for("the good commit healthy", lambda: status(agent)["rollback"]["last_healthy"] == good)
    state = obs.container(app)
    assert state is not None
    broken = repo.commit(
        {"stack.yaml": manifest(stack, "2").replace("image: ", "image: [")}, "broken"
    )[:12]
    wait_for(
        "the broken commit failed",
        lambda: any(p["revision"] == broken and p["outcome"] == "failed" for p in agent.history()),
    )
    doc = status(agent)
    assert doc["revision"]["applied"] == good and doc["revision"]["pinned"] is None
    assert doc["rejected"]["revision"] == broken and doc["rejected"]["errors"]
    after = obs.container(app)
    assert after is not None and after.id == state.id and obs.env(app)["V"] == "1"
    fix = repo.commit({"stack.yaml": manifest(stack, "4")}, "fix")[:12]
    wait_for("the fix", lambda: running(obs, app) and obs.env(app)["V"] == "4")
    wait_for("the fix healthy", lambda: status(agent)["rollback"]["last_healthy"] == fix)
    assert all(p["outcome"] != "rolled-back" for p in agent.history())
    assert agent.stop() == 0
