"""Faults of the operator's worst day, on each real runtime: a revision that would empty a
stack by accident (the agent refuses it and keeps the containers; `pyapply -f` refuses it off
a terminal) and a damaged history (the agent moves it aside, keeps self-healing and says so;
the CLI gives one-line errors). A real `pyapply watch` on a real git repository, the real CLI,
the real runtime; each agent is ended by pid in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.runtime.base import ContainerState
from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.runtimes import PYAPPLY, Observer, RuntimeUnderTest, free_port
from tests.e2e.test_agent import AgentProc, Repo, finished, running, stack_yaml, wait_for

pytestmark = pytest.mark.e2e

EMPTY = (
    "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  services: {{}}\n"
)


def behind_profiles(stack: str) -> str:
    """A compose file whose every service is behind a profile nobody enables."""
    return f"""name: {stack}
services:
  app:
    image: {TEST_IMAGE}
    command: ["sleep", "100000"]
    profiles: [debug]
  worker:
    image: {TEST_IMAGE}
    command: ["sleep", "100000"]
    profiles: [batch, debug]
"""


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    proc = AgentProc(tmp_path, runtime)
    try:
        yield proc
    finally:
        with contextlib.suppress(AssertionError):
            proc.stop(timeout=30)
        print(f"--- agent log ({proc.log}):\n{proc.logs()}")  # shown when the test fails


def ids(obs: Observer, stack: str) -> dict[str, str]:
    return {name: c.id for name, c in obs.containers(stack).items()}


def one_line_error(out: object) -> str:
    """The CLI failed with exit 1 and one line on stderr, no traceback."""
    code, stderr = out.returncode, out.stderr  # type: ignore[attr-defined]
    assert code == 1, (code, out)
    assert "Traceback" not in stderr and "sqlite3." not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return str(lines[0])


def on_a_terminal(
    env: dict[str, str], args: list[str], answer: str
) -> subprocess.CompletedProcess[str]:
    """`pyapply ARGS` with a pseudo-terminal as stdin, answering its question."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [PYAPPLY, *args],
            env=env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(master, answer.encode())
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# -- no accidental emptying ---------------------------------------------------------------------


def test_the_agent_refuses_to_empty_a_stack_and_allow_empty_lets_it(
    agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack, obs = runtime.stack, runtime.observe
    repo = Repo(tmp_path / "repo")
    repo.commit({"stack.yaml": stack_yaml(stack, {"app": "1", "worker": "1"})}, "good")
    agent.start(repo.path, "--poll", "1")
    app, worker = f"{stack}-app-1", f"{stack}-worker-1"
    wait_for("good", lambda: running(obs, app) and running(obs, worker))
    before = ids(obs, stack)
    # `services: {}`, then every service behind a disabled profile: both refused
    empty = repo.commit({"stack.yaml": EMPTY.format(stack=stack)}, "empty")
    rec = wait_for("the refusal of services: {}", lambda: finished(agent, empty))
    assert rec["outcome"] == "refused", rec
    assert f"stack {stack} would be left with no containers while it has 2" in rec["errors"][0]
    assert "--allow-empty" in rec["errors"][0]
    profiles = repo.commit(
        {"stack.yaml": None, "compose.yaml": behind_profiles(stack)}, "all behind profiles"
    )
    rec = wait_for("the refusal of the profiles", lambda: finished(agent, profiles))
    assert rec["outcome"] == "refused" and "declares no services" in rec["errors"][0], rec
    # nothing was touched, self-healing goes on, and the refusal is shown and logged
    runtime.by_hand.remove(worker)
    wait_for("the worker healed", lambda: running(obs, worker), timeout=40)
    assert ids(obs, stack)[app] == before[app] and set(ids(obs, stack)) == set(before)
    status = json.loads(agent.cli("status", "-o", "json").stdout)
    assert status["rejected"]["revision"] == profiles[:12]
    assert status["rejected"]["outcome"] == "refused"
    text = agent.cli("status").stdout
    assert f"source {profiles[:12]}: refused, not applied" in text, text
    assert "would be left with no containers" in text
    assert re.search(
        rf"revision {profiles[:12]} refused: stack {stack} would be left", agent.logs()
    )
    # with --allow-empty the same revision applies: the stack is emptied on purpose
    assert agent.stop() == 0
    agent.start(repo.path, "--poll", "1", "--allow-empty")
    wait_for("emptied", lambda: not obs.containers(stack), timeout=60)
    wait_for(
        "the applied pass recorded",
        lambda: any(
            p["revision"] == profiles[:12] and p["outcome"] == "succeeded" for p in agent.history()
        ),
    )


def test_apply_asks_on_a_terminal_and_refuses_off_one(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack, obs = runtime.stack, runtime.observe
    cli = runtime.cli()
    full, empty = tmp_path / "full", tmp_path / "empty"
    full.mkdir()
    empty.mkdir()
    (full / "stack.yaml").write_text(stack_yaml(stack, {"app": "1", "worker": "1"}))
    (empty / "stack.yaml").write_text(EMPTY.format(stack=stack))
    cli.ok("-f", str(full))
    before = ids(obs, stack)
    assert len(before) == 2
    # off a terminal (stdin is not a tty here): refused, nothing touched
    out = cli.run("-f", str(empty))
    line = one_line_error(out)
    assert f"stack {stack} would be left with no containers while it has 2" in line
    assert "--allow-empty" in line and "nothing was changed" in line
    assert ids(obs, stack) == before
    # the same for every service behind a disabled profile
    (empty / "stack.yaml").unlink()
    (empty / "compose.yaml").write_text(behind_profiles(stack))
    line = one_line_error(cli.run("-f", str(empty)))
    assert "declares no services" in line
    assert ids(obs, stack) == before
    # on a terminal it asks; "n" changes nothing
    out = on_a_terminal(cli.env, ["-f", str(empty)], answer="n\n")
    assert out.returncode == 1, out
    assert "Remove them all?" in out.stderr and "not confirmed" in out.stderr, out
    assert ids(obs, stack) == before
    # a dry run and a diff show the plan, with a warning
    out = cli.run("-f", str(empty), "--dry-run")
    assert out.returncode == 0, out
    assert "warning: stack" in out.stderr and "remove" in out.stdout, out
    out = cli.run("diff", "-f", str(empty), "--exit-code")
    assert out.returncode == 2 and "warning: stack" in out.stderr, out
    assert ids(obs, stack) == before
    # --allow-empty does it on purpose
    cli.ok("-f", str(empty), "--allow-empty")
    assert obs.containers(stack) == {}


# -- history is not a single point of failure ----------------------------------------------------


def restarted_after_kill(runtime: RuntimeUnderTest, name: str) -> None:
    obs = runtime.observe
    was = wait_for("running", lambda: obs.must(name) if running(obs, name) else None)
    runtime.by_hand.kill(name)

    def back(before: ContainerState = was) -> bool:
        now = obs.container(name)
        if now is None or now.status != "running":
            return False
        return now.id != before.id or now.started_at != before.started_at

    # by the events path: well before the 30 s resync
    wait_for(f"{name} back after a kill", back, timeout=20)


def garbage(path: Path) -> None:
    with open(path, "r+b") as fh:  # in place, as a failing disk or a stray tool would
        fh.write(os.urandom(max(4096, path.stat().st_size)))


def test_a_damaged_history_is_moved_aside_and_self_healing_goes_on(
    agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack, obs = runtime.stack, runtime.observe
    root = Path(runtime.root)
    repo = Repo(tmp_path / "repo")
    # restart "no": a killed container is the agent's to start again (the manifest says it
    # runs), on both runtimes; with a policy, the native keeper would restart it unrecorded
    sha = repo.commit({"stack.yaml": stack_yaml(stack, {"app": "1"}, restart="no")}, "one")
    port = free_port()
    agent.start(repo.path, "--poll", "1", "--metrics", f"127.0.0.1:{port}")
    app = f"{stack}-app-1"
    wait_for("running", lambda: running(obs, app))
    wait_for("recorded", lambda: finished(agent, sha))

    # while it runs: garbage over history.db
    garbage(root / "history.db")
    restarted_after_kill(runtime, app)
    moved = wait_for("moved aside", lambda: list(root.glob("history.db.corrupt-*")))
    assert re.fullmatch(r"history\.db\.corrupt-\d{8}T\d{6}Z", moved[0].name), moved
    status = json.loads(agent.cli("status", "-o", "json").stdout)
    reset = status["history_reset"]
    assert reset["moved_to"] == str(moved[0]) and "not a database" in reset["reason"]
    assert "WARNING" in agent.cli("status").stdout
    assert agent.history(), "the new record is in use"
    _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
    assert 'pyapply_history_resets_total{database="history.db"} 1.0' in metrics
    assert "HISTORY RESET" in agent.logs()

    # read-only (immutable: root writes through a mere chmod): passes go on unrecorded,
    # the failures logged and counted
    subprocess.run(["chattr", "+i", str(root / "history.db")], check=True)
    try:
        restarted_after_kill(runtime, app)
        status = json.loads(agent.cli("status", "-o", "json").stdout)
        assert status["history"]["write_failures"] >= 1, status["history"]
        assert "readonly" in status["history"]["last_failure"], status["history"]
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert "pyapply_history_failures_total{" in metrics
    finally:
        subprocess.run(["chattr", "-i", str(root / "history.db")], check=True)
    assert "cannot record a pass" in agent.logs()

    # stopped: garbage over both; the CLI says so in one line, never repairs
    assert agent.stop() == 0
    garbage(root / "history.db")
    garbage(root / "revisions.db")
    for args in (("history",), ("rollback", sha[:12]), ("resume",)):
        line = one_line_error(agent.cli(*args, ok=False))
        assert "is damaged" in line and "pyapply watch" in line, (args, line)
    assert len(list(root.glob("*.corrupt-*"))) == 1

    # the next agent starts, moves both aside, and heals
    agent.start(repo.path, "--poll", "1")
    assert len(list(root.glob("history.db.corrupt-*"))) == 2
    assert len(list(root.glob("revisions.db.corrupt-*"))) == 1
    restarted_after_kill(runtime, app)
    status = json.loads(agent.cli("status", "-o", "json").stdout)
    assert {os.path.basename(r["path"]) for r in status["history"]["resets"]} == {
        "history.db",
        "revisions.db",
    }
    assert "DatabaseError" not in agent.logs() and "sqlite3." not in agent.logs()
    assert agent.cli("history").returncode == 0
