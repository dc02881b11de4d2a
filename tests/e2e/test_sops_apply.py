"""Secrets kept in git, end to end on both runtimes: a stack whose secret file and env_file
are SOPS files written by the real `sops` tool (the corpus in ../shared/corpus/sops, with
its age test keys), applied with `pyapply -f --age-key-file`.

The secret reaches the running container decrypted, mode 0400; the env file's variable is
set; the decrypted secret is nowhere in the state root but its 0400 file; the plan and the
output never show it; a wrong key or a loose key file is exit 1 with nothing created."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyrage

from tests import corpus as test_corpus
from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import RuntimeUnderTest

SECRET = "global-value"  # stringData.key of global/secret.yaml, once decrypted
MAX_SCANNED = 64 << 20  # files of the state root larger than this are image blobs

STACK = f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: {{stack}}
spec:
  services:
    app:
      image: {TEST_IMAGE}
      command: [sleep, "100000"]
      init: true
      stop_grace_period: 1s
      env_file: [./app.env]
      secrets: [token]
  secrets:
    token:
      file: ./token.yaml
"""


def _sops() -> Path:
    """The SOPS corpus (files made by the real sops tool, and their age keys)."""
    return test_corpus.need("sops", "keys", "age.txt").parents[1]


def _project(tmp_path: Path, stack: str) -> tuple[Path, Path]:
    """The manifest (clear), its SOPS env file and SOPS secret, and a key file holding both
    corpus identities (mode 0600, as age-keygen makes it)."""
    corpus = _sops()
    d = tmp_path / "project"
    d.mkdir()
    (d / "stack.yaml").write_text(STACK.format(stack=stack))
    shutil.copyfile(corpus / "envs/env.env", d / "app.env")
    shutil.copyfile(corpus / "global/secret.yaml", d / "token.yaml")
    keys = tmp_path / "keys.txt"
    keys.write_text(
        (corpus / "keys/age.txt").read_text() + (corpus / "keys/age-global.txt").read_text()
    )
    keys.chmod(0o600)
    return d / "stack.yaml", keys


def _holding(root: Path, needle: bytes) -> list[str]:
    """The regular files under `root` (not following links) whose bytes contain `needle`."""
    found = []
    for current, _, names in os.walk(root):
        for name in names:
            path = os.path.join(current, name)
            try:
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                if os.path.getsize(path) > MAX_SCANNED:
                    continue
                with open(path, "rb") as fh:
                    if needle in fh.read():
                        found.append(os.path.relpath(path, root))
            except OSError:
                continue
    return found


def test_sops_secret_and_env_file_reach_the_container(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    cli = runtime.cli()
    s = cli.stack
    manifest, keys = _project(tmp_path, s)
    app = f"{s}-app-1"

    # a wrong key: exit 1, the file named, nothing created
    wrong = tmp_path / "wrong.txt"
    wrong.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    wrong.chmod(0o600)
    bad = cli.run("-f", str(manifest), "--age-key-file", str(wrong))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "app.env" in bad.stderr and "no identity in the age key file" in bad.stderr
    assert "nothing was changed" in bad.stderr
    assert runtime.observe.containers(s) == {} and runtime.observe.networks(s) == {}
    # the secret file alone with the wrong key (the env file dropped): also refused, named
    no_env = manifest.parent / "no-env.yaml"
    no_env.write_text(manifest.read_text().replace("      env_file: [./app.env]\n", ""))
    bad = cli.run("-f", str(no_env), "--age-key-file", str(wrong))
    assert bad.returncode == 1 and "token.yaml" in bad.stderr, bad.stdout + bad.stderr
    assert runtime.observe.containers(s) == {}
    # a key file others can read is refused before anything is read
    keys.chmod(0o644)
    loose = cli.run("-f", str(manifest), "--age-key-file", str(keys))
    assert loose.returncode == 1 and "lets others read" in loose.stderr, loose.stderr
    keys.chmod(0o600)
    # no key at all
    none = cli.run("-f", str(manifest))
    assert none.returncode == 1 and "--age-key-file" in none.stderr, none.stderr
    assert runtime.observe.containers(s) == {}

    try:
        valid = cli.run("validate", "-f", str(manifest), "--age-key-file", str(keys))
        assert valid.returncode == 0, valid.stderr
        out = cli.ok("-f", str(manifest), "--age-key-file", str(keys))
        assert SECRET not in out
        code, content = runtime.exec(app, "cat", "/run/secrets/token")
        assert code == 0 and f"key: {SECRET}" in content, content
        assert "sops" not in content and "ENC[" not in content
        code, mode = runtime.exec(app, "stat", "-c", "%a", "/run/secrets/token")
        assert code == 0 and mode.strip() == "400", mode
        assert runtime.observe.env(app).get("key") == "value"

        # the decrypted secret is on disk only in its 0400 file of the state root
        holders = _holding(runtime.root, SECRET.encode())
        assert holders, "the secret file was not found in the state root"
        for rel in holders:
            assert os.path.basename(rel).startswith("secret-token-"), holders
            assert (os.stat(runtime.root / rel).st_mode & 0o777) == 0o400, rel

        # SOPS_AGE_KEY_FILE works as well, and the stack is converged (no drift, no leak)
        d = cli.run("diff", "-f", str(manifest), "--exit-code", SOPS_AGE_KEY_FILE=str(keys))
        assert d.returncode == 0, d.stdout + d.stderr
        assert SECRET not in d.stdout + d.stderr
    finally:
        cli.run("down", "-f", str(manifest), "--age-key-file", str(keys))


# ---------------------------------------------------------------------------------------------
# The watch agent: the same secrets from a git work tree, and a tampered commit refused


def test_watch_decrypts_and_refuses_a_tampered_commit(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    from tests.e2e.test_agent import AgentProc, Repo, finished, wait_for

    s = runtime.stack
    _, keys = _project(tmp_path, s)
    repo = Repo(tmp_path / "repo")
    corpus = _sops()
    token = (corpus / "global/secret.yaml").read_text()
    good = repo.commit(
        {
            # the agent loads every *.yaml of the tree: the SOPS secret (YAML inside, told
            # by its content) takes another name
            "stack.yaml": STACK.format(stack=s).replace("./token.yaml", "./token.sops"),
            "app.env": (corpus / "envs/env.env").read_text(),
            "token.sops": token,
        },
        "encrypted secrets",
    )
    app = f"{s}-app-1"
    agent = AgentProc(tmp_path, runtime)
    try:
        agent.start(repo.path, "--age-key-file", str(keys))
        wait_for("the first pass", lambda: finished(agent, good))
        assert finished(agent, good)["outcome"] == "succeeded", agent.history()  # type: ignore[index]
        code, content = runtime.exec(app, "cat", "/run/secrets/token")
        assert code == 0 and f"key: {SECRET}" in content, content
        code, mode = runtime.exec(app, "stat", "-c", "%a", "/run/secrets/token")
        assert code == 0 and mode.strip() == "400", mode
        assert runtime.observe.env(app).get("key") == "value"
        before = runtime.observe.must(app).id

        # a tampered secret: the pass fails, naming the file; what runs stays
        tampered = token.replace("key: ENC[AES256_GCM,data:5", "key: ENC[AES256_GCM,data:6")
        assert tampered != token
        bad = repo.commit({"token.sops": tampered}, "tampered")
        rec = wait_for("the tampered pass", lambda: finished(agent, bad))
        assert rec["outcome"] == "failed", rec
        assert any("token.sops:8:8" in e and "does not decrypt" in e for e in rec["errors"]), rec
        assert runtime.observe.must(app).id == before

        # the record and the stored revisions hold the encrypted form only
        for db in ("history.db", "revisions.db"):
            assert SECRET.encode() not in (runtime.root / db).read_bytes(), db
        assert SECRET not in agent.logs()
    finally:
        agent.stop(timeout=30)
        print(f"--- agent log:\n{agent.logs()}")
        runtime.cli().run("down", "-f", str(repo.path / "stack.yaml"), "--age-key-file", str(keys))
