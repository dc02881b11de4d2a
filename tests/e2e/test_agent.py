"""The watch agent end to end, on each real runtime (docker, native): a real `pyapply watch`
process on real git repositories made here, real file events, the real runtime, its REST API
through real HTTP clients on its UNIX socket (curl and http.client). Each agent has the
runtime's private PYAPPLY_ROOT and its own socket in a tmp dir and is always ended by pid in
teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest

from pyapply.reconciler.agent.api import AgentClient
from pyapply.runtime.base import ContainerState
from tests.e2e.helpers import REPO_ROOT, TEST_IMAGE, http_get
from tests.e2e.runtimes import PYAPPLY, Observer, RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def stack_yaml(stack: str, services: dict[str, str], restart: str = "unless-stopped") -> str:
    """A stack whose services sleep, each with an environment value V (to change it)."""
    body = "".join(
        f"""    {name}:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      restart: {restart}
      environment: {{V: "{value}"}}
"""
        for name, value in services.items()
    )
    return (
        f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n"
        f"  services:\n{body}"
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "-q", "-b", "main")
        git(path, "config", "user.email", "test@example.invalid")
        git(path, "config", "user.name", "test")

    def commit(self, files: dict[str, str | None], message: str) -> str:
        for rel, text in files.items():
            if text is None:
                (self.path / rel).unlink()
            else:
                (self.path / rel).write_text(text)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # a probe racing a container being recreated
            last = exc
        if last:
            return last  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class AgentProc:
    """A `pyapply watch` process on the runtime's state root, with its own socket."""

    def __init__(self, tmp: Path, runtime: RuntimeUnderTest) -> None:
        self.tmp = tmp
        self.root = runtime.root
        self.socket = str(tmp / "run" / "agent.sock")
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {**runtime.env, "PYAPPLY_SOCKET": self.socket}
        self.client = AgentClient(self.socket)

    def start(self, path: Path, *args: str) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [PYAPPLY, "watch", str(path), "--debounce", "0.2", "--interval", "30", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("the agent's socket", lambda: self.alive() and self.client.available())

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.logs()}")
        return True

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"the agent ignored SIGTERM for {timeout}s") from None
        return proc.returncode

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.client.request(method, path, body, timeout=120)
        assert status < 300, (status, doc)
        return doc

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [PYAPPLY, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if ok:
            assert out.returncode == 0, (
                f"pyapply {args}: {out.returncode}\n{out.stdout}{out.stderr}"
            )
        return out

    def history(self) -> list[dict[str, Any]]:
        return list(self.api("GET", "/v1/history?limit=100")["passes"])


@contextlib.contextmanager
def agent_on(
    tmp_path: Path, rut: RuntimeUnderTest, kind: type[AgentProc] = AgentProc
) -> Iterator[AgentProc]:
    """An agent (`kind`) on `rut`'s state root, always ended by pid afterwards whatever the
    test did (SIGTERM, then SIGKILL), its log printed (pytest shows it when the test fails)."""
    proc = kind(tmp_path, rut)
    try:
        yield proc
    finally:
        with contextlib.suppress(AssertionError):
            proc.stop(timeout=30)
        print(f"--- agent log ({proc.log}):\n{proc.logs()}")


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, runtime) as proc:
        yield proc


@pytest.fixture
def stack_name(runtime: RuntimeUnderTest) -> str:
    return runtime.stack


@pytest.fixture
def obs(runtime: RuntimeUnderTest) -> Observer:
    return runtime.observe


def env_of(obs: Observer, name: str) -> dict[str, str]:
    return obs.env(name)


def label(obs: Observer, name: str, key: str = "io.pyapply.revision") -> str:
    state = obs.container(name)
    return "" if state is None else str(state.labels.get(key, ""))


def running(obs: Observer, name: str) -> bool:
    try:
        return obs.running(name)
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------


def test_successive_commits_each_converge(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    """A work tree moved on by `git pull`, as a cron job or a CI hook would."""
    upstream = Repo(tmp_path / "upstream")
    sha1 = upstream.commit({"stack.yaml": stack_yaml(stack_name, {"app": "1"})}, "first")
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(upstream.path), str(work)], check=True)

    def push(files: dict[str, str | None], message: str) -> str:
        sha = upstream.commit(files, message)
        git(work, "pull", "-q", "--ff-only")
        return sha

    agent.start(work)
    app = f"{stack_name}-app-1"
    wait_for("v1", lambda: running(obs, app) and env_of(obs, app)["V"] == "1")
    assert label(obs, app) == sha1[:12]
    sha2 = push({"stack.yaml": stack_yaml(stack_name, {"app": "2"})}, "second")
    wait_for("v2", lambda: label(obs, app) == sha2[:12] and running(obs, app))
    assert env_of(obs, app)["V"] == "2"
    sha3 = push({"stack.yaml": stack_yaml(stack_name, {"app": "2", "worker": "3"})}, "add a worker")
    wait_for("worker", lambda: running(obs, f"{stack_name}-worker-1"))

    def committed() -> list[dict[str, Any]] | None:
        # a pass may also have seen the tree between the files' and HEAD's update
        # (revision `<old commit>+<hash>`): legitimate, but not one of the commits
        done = [p for p in agent.history() if p["outcome"] == "succeeded"]
        done = [p for p in done if "+" not in p["revision"]]
        return done if len(done) >= 3 else None

    done = wait_for("three passes recorded", committed)
    assert [p["revision"] for p in done] == [sha3[:12], sha2[:12], sha1[:12]], done
    assert done[0]["subject"] == "add a worker"
    # an already applied revision is not applied again because of a file event
    count = len(agent.history())
    (work / "README.txt").write_text("not a manifest\n")
    time.sleep(1.5)
    assert len(agent.history()) == count
    assert agent.stop() == 0


def test_git_sync_symlink_flip_is_picked_up(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    """git-sync layout: <root>/.worktrees/<sha> checkouts, <root>/current a symlink swapped
    by an atomic rename."""
    repo = Repo(tmp_path / "upstream")
    sync_root = tmp_path / "git"
    (sync_root / ".worktrees").mkdir(parents=True)
    link = sync_root / "current"

    def publish(sha: str) -> None:
        wt = sync_root / ".worktrees" / sha
        git(repo.path, "worktree", "add", "-q", "--detach", str(wt), sha)
        tmp = sync_root / "current.tmp"
        os.symlink(f".worktrees/{sha}", tmp)
        os.replace(tmp, link)

    sha1 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "1"})}, "one")
    publish(sha1)
    agent.start(link)
    app = f"{stack_name}-app-1"
    wait_for("first revision", lambda: running(obs, app))
    assert label(obs, app) == sha1[:12]
    sha2 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "2"})}, "two")
    publish(sha2)
    wait_for("the flip", lambda: label(obs, app) == sha2[:12])
    status = agent.api("GET", "/v1/status")
    assert status["agent"]["source_kind"] == "link"
    wait_for("synced", lambda: agent.api("GET", "/v1/status")["sync"] == "Synced")
    assert agent.api("GET", "/v1/status")["revision"]["applied"] == sha2[:12]


def finished(agent: AgentProc, sha: str) -> dict[str, Any] | None:
    """The recorded pass of revision `sha` once it is over (a pass is recorded as "running"
    when it starts)."""
    done = (p for p in agent.history() if p["revision"] == sha[:12] and p["outcome"] != "running")
    return next(done, None)


def test_bad_commit_is_recorded_and_nothing_is_torn_down(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    good = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "1", "worker": "1"})}, "good")
    agent.start(repo.path)
    app, worker = f"{stack_name}-app-1", f"{stack_name}-worker-1"
    wait_for("good", lambda: running(obs, app) and running(obs, worker))
    ids = {obs.must(n).id for n in (app, worker)}
    broken = stack_yaml(stack_name, {"app": "1"}).replace(f"image: {TEST_IMAGE}", "image: [1]")
    bad = repo.commit({"stack.yaml": broken}, "broken")
    rec = wait_for(
        "the failure",
        lambda: finished(agent, bad),
    )
    assert rec["outcome"] == "failed" and rec["subject"] == "broken"
    assert any("image" in e for e in rec["errors"]), rec
    # manifests that vanish entirely are refused too
    gone = repo.commit({"stack.yaml": None}, "delete everything")
    rec = wait_for(
        "the refusal",
        lambda: finished(agent, gone),
    )
    assert rec["outcome"] == "refused" and "--allow-empty" in rec["errors"][0]
    time.sleep(1)
    assert {obs.must(n).id for n in (app, worker)} == ids
    status = agent.api("GET", "/v1/status")
    assert status["revision"]["applied"] == good[:12]
    assert status["sync"] == "OutOfSync"
    # the next good commit applies
    fixed = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "2"})}, "fixed")
    wait_for("fixed", lambda: label(obs, app) == fixed[:12])
    wait_for("worker removed", lambda: not running(obs, worker))
    wait_for(
        "the fixed pass recorded",
        lambda: (
            (agent.history()[0]["revision"], agent.history()[0]["outcome"])
            == (fixed[:12], "succeeded")
        ),
    )


def test_container_killed_by_hand_is_restarted(
    agent: AgentProc, runtime: RuntimeUnderTest, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    """A `restart: always` container killed (its process, SIGKILL) or stopped by hand is
    running again soon, and one removed by hand is recreated: dockerd does not restart a
    container stopped by hand, even with a restart policy (it counts as a manual stop), nor
    does the native runtime's keeper: the agent does it, told by the runtime's events,
    because the desired state says running. A killed one is restarted by its policy
    (dockerd, the native keeper), or else by the agent: either way, once."""
    repo = Repo(tmp_path / "repo")
    repo.commit(
        {"stack.yaml": stack_yaml(stack_name, {"app": "1", "once": "1"}, restart="always")},
        "one",
    )
    agent.start(repo.path)
    app = f"{stack_name}-app-1"
    wait_for("running", lambda: running(obs, app))
    for how in ("kill", "stop", "rm"):
        before = wait_for("running", lambda: obs.must(app) if running(obs, app) else None)
        if how == "kill":
            runtime.by_hand.kill(app)
        elif how == "stop":
            runtime.by_hand.stop(app, timeout=1)
        else:
            runtime.by_hand.remove(app)

        def restarted(was: ContainerState = before) -> bool:
            now = obs.container(app)
            if now is None or now.status != "running":
                return False
            return now.id != was.id or now.started_at != was.started_at

        # The events path restarts it (the 30 s resync is a slower backstop); how fast is
        # bench_agent.py's business, not the suite's.
        wait_for(f"restart after {how} by hand", restarted, timeout=20)
    passes = agent.history()
    assert any(p["trigger"].startswith("event:") for p in passes), passes


def test_rollback_and_resume(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    app = f"{stack_name}-app-1"
    sha1 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "1"})}, "one")
    agent.start(repo.path)
    wait_for("one", lambda: running(obs, app) and label(obs, app) == sha1[:12])
    sha2 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "2"})}, "two")
    wait_for("two", lambda: label(obs, app) == sha2[:12])
    out = agent.cli("rollback", sha1[:8])
    assert "pinned" in out.stdout
    assert label(obs, app) == sha1[:12] and env_of(obs, app)["V"] == "1"
    # pinned: a new commit is not followed
    sha3 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "3"})}, "three")
    time.sleep(1.5)
    assert label(obs, app) == sha1[:12]
    status = json.loads(agent.cli("status", "-o", "json").stdout)
    assert status["revision"]["pinned"] == sha1[:12]
    agent.cli("resume")
    wait_for("three", lambda: label(obs, app) == sha3[:12])
    assert env_of(obs, app)["V"] == "3"
    assert json.loads(agent.cli("status", "-o", "json").stdout)["revision"]["pinned"] is None
    # without an agent: history from sqlite, rollback applied by the CLI and pinned
    assert agent.stop() == 0
    hist = json.loads(agent.cli("history", "-o", "json").stdout)["passes"]
    assert {p["revision"] for p in hist} >= {sha1[:12], sha2[:12], sha3[:12]}
    agent.cli("rollback", sha2[:12])
    assert label(obs, app) == sha2[:12]
    agent.start(repo.path)  # the new agent stays pinned
    time.sleep(1.5)
    assert label(obs, app) == sha2[:12]
    assert agent.api("GET", "/v1/status")["revision"]["pinned"] == sha2[:12]
    agent.api("POST", "/v1/resume?wait=true")
    assert label(obs, app) == sha3[:12]


def openapi_validator(name: str) -> Any:
    doc = json.loads((REPO_ROOT / "schemas" / "v1" / "agent-api.openapi.json").read_text())
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def curl(sock: str, method: str, path: str, data: str | None = None) -> tuple[int, Any]:
    args = ["curl", "-sS", "--unix-socket", sock, "-X", method, "-w", "\n%{http_code}"]
    if data is not None:
        args += ["-H", "Content-Type: application/json", "--data", data]
    out = subprocess.run(
        [*args, f"http://agent{path}"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body) if body.strip().startswith(("{", "[")) else body


def test_every_api_endpoint_over_the_socket(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    sha1 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "1", "db": "1"})}, "one")
    port = free_port()
    agent.start(repo.path, "--metrics", f"127.0.0.1:{port}", "--log-format", "json")
    sock = agent.socket
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    app = f"{stack_name}-app-1"
    wait_for("running", lambda: running(obs, app))

    code, doc = curl(sock, "POST", "/v1/sync?wait=true")
    assert code == 200 and doc["result"]["outcome"] == "succeeded"
    code, doc = curl(sock, "GET", "/v1/status")
    assert code == 200
    assert doc["sync"] == "Synced" and doc["revision"]["applied"] == sha1[:12]
    assert doc["revision"]["subject"] == "one"
    openapi_validator("Status").validate(doc)
    (st,) = doc["stacks"]
    assert st["name"] == stack_name and st["health"] == "Healthy"
    assert {s["name"]: s["health"] for s in st["services"]} == {"app": "Healthy", "db": "Healthy"}

    # drift seen by status and diff (the agent is told by the events, so stop it racing:
    # look at a container removed while the agent is paused on the host lock)
    code, doc = curl(sock, "GET", "/v1/diff")
    assert code == 200 and doc["drift"] is False and doc["stacks"][0]["stack"] == stack_name
    code, doc = curl(sock, "GET", "/v1/history?limit=5")
    assert code == 200 and doc["passes"][0]["revision"] == sha1[:12]
    for record in doc["passes"]:
        openapi_validator("Pass").validate(record)

    sha2 = repo.commit({"stack.yaml": stack_yaml(stack_name, {"app": "2", "db": "1"})}, "two")
    wait_for("two", lambda: label(obs, app) == sha2[:12])
    code, doc = curl(sock, "POST", "/v1/rollback?wait=true", json.dumps({"revision": sha1[:7]}))
    assert code == 200 and doc["revision"] == sha1[:12] and doc["pinned"] is True
    assert doc["result"]["outcome"] == "succeeded"
    assert label(obs, app) == sha1[:12]
    code, doc = curl(sock, "POST", "/v1/rollback", json.dumps({"revision": "0000000"}))
    assert code == 404 and "no recorded revision" in doc["error"]
    code, doc = curl(sock, "POST", "/v1/rollback", "not json")
    assert code == 400
    code, doc = curl(sock, "POST", "/v1/resume?wait=true")
    assert code == 200 and doc["pinned"] is False
    assert label(obs, app) == sha2[:12]
    code, doc = curl(sock, "DELETE", "/v1/status")
    assert code == 405
    code, doc = curl(sock, "GET", "/v2/nothing")
    assert code == 404

    # the same through http.client, and the CLI commands that use it
    status, doc = agent.client.request("GET", "/v1/status")
    assert status == 200 and doc["revision"]["applied"] == sha2[:12]
    status, doc = agent.client.request("POST", "/v1/sync")
    assert status == 202 and doc["queued"] is True
    assert "sync: revision" in agent.cli("sync").stdout
    out = agent.cli("status").stdout
    assert f"stack {stack_name}: Healthy" in out and "sync:      Synced" in out
    assert sha2[:12] in agent.cli("history").stdout

    # Prometheus metrics on loopback, and the same on the socket
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'pyapply_reconcile_passes_total{outcome="succeeded",trigger="start"} 1.0' in text
    assert 'pyapply_actions_total{kind="create",status="done"}' in text
    assert "pyapply_last_applied_revision_timestamp_seconds" in text
    assert f'pyapply_objects_drifted{{stack="{stack_name}"}}' in text
    code, body = curl(sock, "GET", "/metrics")
    assert code == 200 and "pyapply_reconcile_duration_seconds_bucket" in body
    # JSON log lines
    lines = [json.loads(line) for line in agent.logs().splitlines() if line.startswith("{")]
    assert any(d.get("revision") == sha2[:12] and d.get("outcome") == "succeeded" for d in lines)


def test_sigterm_mid_apply_leaves_a_state_the_next_pass_converges(
    agent: AgentProc, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    services = {f"s{i}": "1" for i in range(8)}
    repo.commit({"stack.yaml": stack_yaml(stack_name, services)}, "eight")
    agent.start(repo.path, "--parallel", "1")
    wait_for("the first create", lambda: "create " + stack_name in agent.logs(), timeout=30)
    assert agent.stop() == 0
    logs = agent.logs()
    assert "SIGTERM" in logs and "stopped" in logs
    diff = agent.cli("diff", "-f", str(repo.path), "--exit-code", ok=False)
    assert diff.returncode in (0, 2), diff.stderr  # drift is expected, errors are not
    created = list(obs.containers(stack_name))
    assert len(created) < 8, "the apply was not interrupted; nothing to check"
    hist = json.loads(agent.cli("history", "-o", "json").stdout)["passes"]
    assert hist[0]["outcome"] == "interrupted", hist[0]
    agent.start(repo.path)
    wait_for(
        "convergence",
        lambda: agent.cli("diff", "-f", str(repo.path), "--exit-code", ok=False).returncode == 0,
        timeout=60,
    )
    assert agent.api("GET", "/v1/status")["sync"] == "Synced"


def test_status_agrees_with_diff_on_a_one_shot_and_removal_cleans_up_like_down(
    agent: AgentProc, runtime: RuntimeUnderTest, stack_name: str, obs: Observer, tmp_path: Path
) -> None:
    """Issue 10: a `restart: on-failure` one-shot that exited 0 is Healthy to `status` as
    it is no drift to `diff`; with `--allow-empty`, the removal of a stack whose manifests
    are gone takes its config and secret files with it, as `pyapply down` does."""
    repo = Repo(tmp_path / "repo")
    manifest = f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack_name}}}
spec:
  configs:
    settings: {{content: "a=1\\n"}}
  secrets:
    token: {{content: "e2e-s3cr3t"}}
  services:
    app:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      configs: [settings]
      secrets: [token]
    job:
      image: {TEST_IMAGE}
      command: ["true"]
      restart: on-failure
"""
    repo.commit({"stack.yaml": manifest}, "app and job")
    agent.start(repo.path, "--allow-empty")
    app, job = f"{stack_name}-app-1", f"{stack_name}-job-1"

    def job_done() -> bool:
        state = obs.container(job)
        return state is not None and state.status == "exited" and state.exit_code == 0

    wait_for("app up, job done", lambda: running(obs, app) and job_done())
    files = Path(runtime.root) / "files" / stack_name
    assert files.is_dir() and any(files.iterdir())

    def no_drift() -> str | None:
        # `diff` reads the runtime, which may still settle after the job's exit event
        out = agent.cli("diff", "-f", str(repo.path), "--exit-code", ok=False)
        return out.stdout if out.returncode == 0 else None

    assert "no changes" in wait_for("diff: no drift", no_drift)

    def settled() -> dict[str, Any] | None:
        doc = json.loads(agent.cli("status", "-o", "json").stdout)
        return doc if doc["sync"] == "Synced" and not doc["agent"]["reconciling"] else None

    status = wait_for("Synced", settled)
    (stack,) = status["stacks"]
    services = {s["name"]: s for s in stack["services"]}
    assert services["job"]["health"] == "Healthy", status
    assert (stack["health"], services["app"]["health"]) == ("Healthy", "Healthy"), status
    # the manifests go: with --allow-empty the stack is removed, and its files too
    repo.commit({"stack.yaml": None}, "remove the stack")
    wait_for("the stack removed", lambda: not obs.containers(stack_name) or None)
    wait_for("its files removed", lambda: not files.exists() or None)
    assert not obs.networks(stack_name)
    assert agent.stop() == 0
