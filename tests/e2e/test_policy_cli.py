"""The policy end to end, through the real CLI: `validate` on a restricted policy, `apply -f`
warning by default and still applying (native), `apply --policy strict.yaml` refusing before
anything exists (both runtimes), and the agent refusing a revision that asks for too much
while the previous one keeps running (native, a real `pyapply watch` on a real git repo).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.e2e.helpers import REPO_ROOT, sleeper_stack
from tests.e2e.runtimes import PYAPPLY, RuntimeUnderTest
from tests.e2e.test_agent import (
    AgentProc,
    Repo,
    agent_on,
    finished,
    label,
    running,
    stack_yaml,
    wait_for,
)

pytestmark = pytest.mark.e2e

STRICT = """\
apiVersion: pyapply/v1
kind: Policy
metadata: {name: strict}
enforcement: deny
rules:
  cap_add: {allow: [NET_BIND_SERVICE]}
"""


def risky(stack: str) -> str:
    """A stack that asks for a capability beyond the default set and binds /etc."""
    return sleeper_stack(stack, '      cap_add: [NET_ADMIN]\n      volumes: ["/etc:/hostetc:ro"]\n')


def pyapply(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYAPPLY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_validate_fails_on_a_restricted_policy(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stack.yaml").write_text(
        risky("shop").replace("      volumes:", "      privileged: true\n      volumes:")
        + '      security_opt: ["seccomp=unconfined"]\n'
    )
    (tmp_path / "strict.yaml").write_text(STRICT)
    # by hand: warnings, exit 0
    out = pyapply("validate", "-f", "m", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        "m/stack.yaml:12:7: warning: spec.services.app.privileged: a privileged container has "
        'every capability and the host\'s devices (policy rule "privileged")'
    ) in out.stderr.splitlines()
    # restricted: the same asks denied, exit 1, every one located
    for policy in ("restricted", "strict.yaml"):
        out = pyapply("validate", "-f", "m", "--policy", policy, cwd=tmp_path)
        assert out.returncode == 1, out
        lines = out.stderr.splitlines()
        denied = [line for line in lines if "the policy denies this" in line]
        assert [line.split(": ")[1] for line in denied] == [
            "spec.services.app.cap_add[0]",
            "spec.services.app.privileged",
            "spec.services.app.volumes[0]",
            "spec.services.app.security_opt[0]",
        ], out.stderr
        assert denied[0].startswith("m/stack.yaml:11:17: ")
        assert lines[-1] == f"error: 4 asks denied by the policy {policy}"
    out = pyapply("validate", "-f", "m", "--policy", "restricted", "-o", "json", cwd=tmp_path)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["valid"] is False and doc["policy"] == "restricted"
    assert {f["rule"] for f in doc["findings"]} == {
        "cap_add",
        "privileged",
        "bind_mounts",
        "security_opt",
    }
    assert doc["findings"][0]["file"] == "m/stack.yaml" and doc["findings"][0]["line"] == 11
    # env_file: /etc/shadow: denied, it is not even read; by hand it is read but no line of
    # it is ever shown (a pull request's CI run must not print the runner's secrets)
    (tmp_path / "s").mkdir()
    shadow = stack_yaml("shadow", {"app": "1"}) + "      env_file: [/etc/shadow]\n"
    (tmp_path / "s" / "stack.yaml").write_text(shadow)
    out = pyapply("validate", "-f", "s", "--policy", "restricted", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        's/stack.yaml:13:18: spec.services.app.env_file[0]: env file "/etc/shadow" is outside '
        'the manifest\'s directory; the policy denies this (rule "outside_files")',
        "error: 1 ask denied by the policy restricted",
    ]
    # By hand it is read. Its `name:hash:...` lines are KEY: VALUE lines to the reference
    # dotenv parser (issue 16), so it loads; nothing of it is shown.
    out = pyapply("validate", "-f", "s", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "root" not in out.stdout + out.stderr and ":::" not in out.stdout + out.stderr
    # A file outside the manifest's directory that does not parse: the error is located,
    # and its line is never shown.
    (tmp_path / "outside.env").write_text("FINE=1\nhunter2 is the password\n")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "stack.yaml").write_text(
        stack_yaml("outside", {"app": "1"}) + f"      env_file: [{tmp_path / 'outside.env'}]\n"
    )
    out = pyapply("validate", "-f", "o", cwd=tmp_path)
    assert out.returncode == 1
    assert (
        f"{tmp_path / 'outside.env'}:2:1: cannot be read as KEY=VALUE (the line is not shown"
        in (out.stderr)
    )
    assert "hunter2" not in out.stdout + out.stderr
    # a policy file's own mistakes are located
    (tmp_path / "typo.yaml").write_text(STRICT.replace("enforcement: deny", "enforcement: no"))
    out = pyapply("validate", "-f", "m", "--policy", "typo.yaml", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (
        'typo.yaml:4:14: enforcement: must be one of "allow", "warn" or "deny", got "no"'
    )


def test_apply_with_a_strict_policy_refuses_and_creates_nothing(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(risky(runtime.stack))
    (tmp_path / "strict.yaml").write_text(STRICT)
    cli = runtime.cli()
    for args in (["apply"], ["diff"], ["apply", "-o", "json"]):
        out = cli.run(*args, "-f", str(manifest), "--policy", str(tmp_path / "strict.yaml"))
        assert out.returncode == 1, out
        assert f"{manifest}:11:17: spec.services.app.cap_add[0]: cap_add gives" in out.stderr
        assert f"{manifest}:12:17: spec.services.app.volumes[0]: bind mount" in out.stderr
    doc = json.loads(out.stdout)
    assert doc["denied"] is True and doc["stacks"] == []
    assert [f["rule"] for f in doc["findings"]] == ["cap_add", "bind_mounts"]
    plan_schema = json.loads((REPO_ROOT / "schemas" / "v1" / "plan.schema.json").read_text())
    jsonschema.validate(doc, plan_schema)
    assert "nothing was changed" in out.stderr.splitlines()[-1]
    assert runtime.observe.containers(runtime.stack) == {}
    assert runtime.observe.networks(runtime.stack) == {}
    assert runtime.observe.volumes(runtime.stack) == {}


@pytest.mark.parametrize("runtime", ["native"], indirect=True)
def test_apply_by_hand_warns_and_applies(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(risky(runtime.stack))
    cli = runtime.cli()
    out = cli.run("apply", "-f", str(manifest))
    assert out.returncode == 0, out
    assert (
        f"{manifest}:11:17: warning: spec.services.app.cap_add[0]: cap_add gives the container "
        'capability NET_ADMIN (policy rule "cap_add")'
    ) in out.stderr.splitlines()
    app = f"{runtime.stack}-app-1"
    assert runtime.observe.running(app)
    code, text = runtime.exec(app, "cat", "/hostetc/hostname")
    assert code == 0 and text.strip() == Path("/etc/hostname").read_text().strip()
    # -o json carries the findings
    out = cli.run("diff", "-f", str(manifest), "-o", "json")
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    assert [f["rule"] for f in doc["findings"]] == ["cap_add", "bind_mounts"]
    assert doc["findings"][0]["action"] == "warn" and doc["findings"][0]["line"] == 11
    plan_schema = json.loads((REPO_ROOT / "schemas" / "v1" / "plan.schema.json").read_text())
    jsonschema.validate(doc, plan_schema)
    cli.ok("down", "-f", str(manifest))


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    with agent_on(tmp_path, runtime) as proc:
        yield proc


@pytest.mark.parametrize("runtime", ["native"], indirect=True)
def test_the_agent_refuses_a_revision_the_policy_denies(
    agent: AgentProc, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "repo")
    app = f"{runtime.stack}-app-1"
    good = repo.commit({"stack.yaml": stack_yaml(runtime.stack, {"app": "1"})}, "good")
    # a policy kept inside the watched tree could be changed by a push: refused
    (repo.path / "policy.yaml").write_text(STRICT)
    out = agent.cli("watch", str(repo.path), "--policy", str(repo.path / "policy.yaml"), ok=False)
    assert out.returncode == 1 and "is inside the watched" in out.stderr
    (repo.path / "policy.yaml").unlink()
    (tmp_path / "strict.yaml").write_text(STRICT)  # outside, but through a link in the tree
    (repo.path / "policy.yaml").symlink_to(tmp_path / "strict.yaml")
    out = agent.cli("watch", str(repo.path), "--policy", str(repo.path / "policy.yaml"), ok=False)
    assert out.returncode == 1 and "is inside the watched" in out.stderr
    (repo.path / "policy.yaml").unlink()
    agent.start(repo.path)
    wait_for("good", lambda: running(runtime.observe, app) and label(runtime.observe, app))
    before = runtime.observe.must(app).id
    greedy = stack_yaml(runtime.stack, {"app": "2"}).replace(
        "      init: true\n",
        "      init: true\n      privileged: true\n"
        '      volumes: ["/var/run/docker.sock:/var/run/docker.sock"]\n',
    )
    bad = repo.commit({"stack.yaml": greedy}, "greedy")
    rec = wait_for("the refusal", lambda: finished(agent, bad))
    assert rec["outcome"] == "failed" and rec["subject"] == "greedy"
    assert [e.split(": ")[1] for e in rec["errors"]] == [
        "spec.services.app.privileged",
        "spec.services.app.volumes[0]",
        "spec.services.app.volumes[0]",
    ], rec
    assert rec["errors"][0].startswith(f"{repo.path / 'stack.yaml'}:10:7: ")
    assert all("the policy denies this" in e for e in rec["errors"])
    # the previous revision keeps running, untouched
    assert runtime.observe.must(app).id == before and running(runtime.observe, app)
    assert label(runtime.observe, app) == good[:12]
    status = agent.api("GET", "/v1/status")
    assert status["revision"]["applied"] == good[:12] and status["sync"] == "OutOfSync"
    assert "the policy denies this" in status["last_result"]["errors"][0]
    assert agent.stop() == 0
