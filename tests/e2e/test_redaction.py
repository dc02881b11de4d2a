"""Redaction by value, end to end, on each real runtime: a stack whose environment holds the
contents of its secrets (file, content and environment sources) and a URL with a password.
Through the real CLI (`apply`, `diff`, `diff -o json`, `get`, `history`, `status`) and a
real `pyapply watch` agent (its API, its JSON logs, its history.db), the secrets and the URL
passwords never appear, while the places that would have shown them show `***`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import sleeper_stack
from tests.e2e.runtimes import RuntimeUnderTest
from tests.e2e.test_agent import AgentProc, Repo, wait_for

pytestmark = pytest.mark.e2e


class Secrets:
    def __init__(self) -> None:
        tag = secrets.token_hex(6)
        self.file = f"filesecret{tag}"  # a secret's file
        self.content = f"contentsecret{tag}"  # a secret's `content:`
        self.env = f"envsecret{tag}"  # a secret's `environment:` source (from .env)
        self.url = [f"urlpw{i}{tag}" for i in range(3)]  # URL passwords, not secrets

    def all(self) -> list[str]:
        return [self.file, self.content, self.env, *self.url]


def stack_files(stack: str, s: Secrets, version: int) -> dict[str, str]:
    """The manifests: version 1 and 2 differ in the values that embed the secrets."""
    return {
        "stack.yaml": sleeper_stack(
            stack,
            f"""\
      environment:
        DATABASE_URL: "postgres://app:{s.url[version - 1]}@db:5432/shop"
        FROM_FILE: "v{version}-{s.file}-tail"
        FROM_CONTENT: "v{version}:{s.content}"
        FROM_ENV: "{s.env} v{version}"
      secrets: [pw, tok, key]
""",
            f"""\
  secrets:
    pw: {{file: ./pw.txt}}
    tok: {{content: "{s.content}"}}
    key: {{environment: KEY_SOURCE}}
""",
        ),
        "pw.txt": s.file + "\n",
        ".env": f"KEY_SOURCE={s.env}\n",
    }


def broken_files(stack: str, s: Secrets) -> dict[str, str]:
    """A revision that does not load, whose errors quote a secret and a URL password."""
    files = stack_files(stack, s, 1)
    files["stack.yaml"] = files["stack.yaml"].replace(
        "      init: true\n",
        f'      init: true\n      ports: ["{s.file}", "postgres://app:{s.url[2]}@x"]\n',
    )
    return files


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (directory / rel).write_text(text)
    return directory


def assert_clean(what: str, text: str | bytes, s: Secrets) -> None:
    data = text if isinstance(text, bytes) else text.encode()
    for value in s.all():
        assert value.encode() not in data, f"{what} shows {value!r}:\n{data[:4000]!r}"


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    proc = AgentProc(tmp_path, runtime)
    try:
        yield proc
    finally:  # ended by pid, whatever the test did
        with contextlib.suppress(AssertionError):
            proc.stop(timeout=30)


def test_secrets_and_url_passwords_never_shown(
    runtime: RuntimeUnderTest, tmp_path: Path, agent: AgentProc
) -> None:
    s = Secrets()
    stack = runtime.stack
    repo = Repo(tmp_path / "repo")
    repo.commit(stack_files(stack, s, 1), "v1")
    v2 = write(tmp_path / "v2", stack_files(stack, s, 2))
    cli = runtime.cli()

    # the agent applies v1; its logs are JSON (escapes must not hide a secret from the mask)
    agent.start(repo.path, "--no-events", "--interval", "300", "--log-format", "json")
    wait_for(
        "v1 applied",
        lambda: any(p["outcome"] == "succeeded" for p in agent.history()),
        timeout=120,
    )

    # apply v2 by hand: the plan shows every changed variable, masked
    out = cli.run("-f", str(v2))
    assert out.returncode == 0, out.stdout + out.stderr
    assert_clean("apply", out.stdout + out.stderr, s)
    assert "env.DATABASE_URL: postgres://app:***@db:5432/shop -> postgres://app:***@db" in (
        out.stdout
    )
    assert "env.FROM_FILE: v1-***-tail -> v2-***-tail" in out.stdout
    assert "env.FROM_CONTENT: v1:*** -> v2:***" in out.stdout
    assert "env.FROM_ENV: *** v1 -> *** v2" in out.stdout

    # diff the repo (v1) against the live v2, as text and JSON
    out = cli.run("diff", "-f", str(repo.path), "--exit-code")
    assert out.returncode == 2, out.stdout + out.stderr
    assert_clean("diff", out.stdout + out.stderr, s)
    assert "env.FROM_FILE: v2-***-tail -> v1-***-tail" in out.stdout
    out = cli.run("diff", "-f", str(repo.path), "-o", "json")
    assert_clean("diff -o json", out.stdout + out.stderr, s)
    fields = {
        f["field"]: f
        for st in json.loads(out.stdout)["stacks"]
        for ch in st["changes"]
        for f in ch["fields"]
    }
    assert fields["env.FROM_ENV"] == {"field": "env.FROM_ENV", "old": "*** v2", "new": "*** v1"}
    assert fields["env.DATABASE_URL"]["new"] == "postgres://app:***@db:5432/shop"

    out = cli.run("-f", str(repo.path), "--dry-run", "-o", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_clean("apply --dry-run -o json", out.stdout + out.stderr, s)
    assert '"old": "v2-***-tail"' in out.stdout

    for args in (["get", "-f", str(repo.path)], ["get", "-f", str(repo.path), "-o", "json"]):
        out = cli.run(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert_clean(" ".join(args[::2]), out.stdout + out.stderr, s)

    # the agent's view of the same drift, then a pass that heals it
    diff_doc = json.dumps(agent.api("GET", "/v1/diff"))
    assert_clean("GET /v1/diff", diff_doc, s)
    assert "v2-***-tail" in diff_doc and "postgres://app:***@db:5432/shop" in diff_doc
    agent.api("POST", "/v1/sync?wait=true&timeout=120")

    # a revision that does not load: its errors quote a secret and a URL password
    repo.commit(broken_files(stack, s), "broken")
    rejected = wait_for(
        "the broken revision rejected",
        lambda: [p for p in agent.history() if p["outcome"] == "failed"],
        timeout=60,
    )
    errors = " ".join(rejected[0]["errors"])
    assert "ports[0]" in errors and '"***" is not a valid port' in errors, errors
    assert "postgres://app:***@x" in errors, errors

    for path in ("/v1/status", "/v1/history?limit=100", "/v1/diff"):
        assert_clean(f"GET {path}", json.dumps(agent.api("GET", path)), s)
    for args in (["history"], ["history", "-o", "json"], ["status", "-o", "json"], ["status"]):
        out = agent.cli(*args)
        assert_clean(" ".join(args), out.stdout + out.stderr, s)
    assert agent.stop() == 0
    logs = agent.logs()
    assert "pass " in logs and "***" in logs  # the log did carry the masked error
    assert_clean("the agent's log", logs, s)
    root = Path(runtime.root)
    assert_clean("history.db", (root / "history.db").read_bytes(), s)
    # the files a rollback needs are kept apart, readable by root only
    assert (root / "revisions.db").stat().st_mode & 0o777 == 0o600
    assert s.file.encode() in (root / "revisions.db").read_bytes()
