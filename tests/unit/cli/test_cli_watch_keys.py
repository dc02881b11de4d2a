"""`pyapply watch` refuses, at start, a key file kept in the tree it syncs (the watched
directory, a git-sync link's checkout, or with --repo the agent's own clones and a
repository on this host) and a key file others may read: one line on stderr, exit 1,
nothing started. The real CLI, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
WEBHOOK_SECRET = "0123456789abcdef-watch-keys"


def watch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYAPPLY, "watch", *args, "--root", str(tmp_path / "root"),
         "--socket", str(tmp_path / "agent.sock")],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
    )  # fmt: skip


def private(path: Path, text: str, mode: int = 0o600) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def refused(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], out.stderr
    assert "Traceback" not in out.stderr and WEBHOOK_SECRET not in out.stderr


@pytest.fixture
def age_key() -> str:
    return str(pyrage.x25519.Identity.generate()) + "\n"


def test_key_files_in_the_watched_directory_are_refused(tmp_path: Path, age_key: str) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    inside_key = private(watched / "keys" / "age.txt", age_key)
    out = watch(tmp_path, str(watched), "--age-key-file", inside_key)
    refused(out, f"--age-key-file {inside_key} is inside the watched {watched}", "history")
    # the same file named by SOPS_AGE_KEY_FILE
    out = watch(tmp_path, str(watched), SOPS_AGE_KEY_FILE=inside_key)
    refused(out, "--age-key-file", "inside the watched")
    # a key outside, reached through a link in the tree: the tree decides where it points
    outside = private(tmp_path / "etc" / "age.txt", age_key)
    (watched / "age-link.txt").symlink_to(outside)
    out = watch(tmp_path, str(watched), "--age-key-file", str(watched / "age-link.txt"))
    refused(out, "inside the watched")
    secret = private(watched / "hook.secret", WEBHOOK_SECRET)
    out = watch(tmp_path, str(watched), "--webhook", "127.0.0.1:0", "--webhook-secret-file", secret)
    refused(out, "--webhook-secret-file", "inside the watched")
    assert not (tmp_path / "agent.sock").exists()
    assert not (tmp_path / "root" / "agent").exists()


def test_a_key_in_the_checkout_of_a_git_sync_link_is_refused(tmp_path: Path, age_key: str) -> None:
    sync = tmp_path / "git"
    checkout = sync / ".worktrees" / ("a" * 40)
    (checkout / "deploy").mkdir(parents=True)
    (sync / "current").symlink_to(checkout)
    key = private(checkout / "age.txt", age_key)  # named by its real path, not the link's
    out = watch(tmp_path, str(sync / "current" / "deploy"), "--age-key-file", key)
    refused(out, "--age-key-file", "inside the watched")


def test_key_files_others_can_read_are_refused(tmp_path: Path, age_key: str) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    loose = private(tmp_path / "etc" / "age.txt", age_key, 0o640)
    refused(watch(tmp_path, str(watched), "--age-key-file", loose), "lets others read")
    hook = private(tmp_path / "etc" / "hook.secret", WEBHOOK_SECRET, 0o604)
    out = watch(tmp_path, str(watched), "--webhook", "127.0.0.1:0", "--webhook-secret-file", hook)
    refused(out, "mode 0604")
    known = private(tmp_path / "etc" / "known_hosts", "", 0o644)
    key = private(tmp_path / "etc" / "deploy_key", "not read\n", 0o640)
    out = watch(
        tmp_path, "--repo", "ssh://git@127.0.0.1:1/r.git", "--ssh-key", key, "--known-hosts", known
    )
    refused(out, f"--ssh-key {key}: mode 0640 lets others read", "chmod 600")
    cred = private(tmp_path / "etc" / "cred", "u:pw-not-shown\n", 0o660)
    out = watch(tmp_path, "--repo", "https://h.example/r.git", "--git-credentials-file", cred)
    refused(out, "mode 0660 lets others read")
    assert "pw-not-shown" not in out.stderr
    assert not (tmp_path / "root" / "agent").exists()


def test_key_files_in_the_agents_own_checkouts_or_the_local_repository_are_refused(
    tmp_path: Path, age_key: str
) -> None:
    # the agent's clones and work trees: <root>/agent/git/<id>/current/... is the repository
    tree = tmp_path / "root" / "agent" / "git" / "0123456789abcdef" / "trees" / ("b" * 40)
    key = private(tree / "deploy_key", "not read\n")
    known = private(tmp_path / "etc" / "known_hosts", "", 0o644)
    ssh = ("--repo", "ssh://git@127.0.0.1:1/r.git", "--known-hosts", known)
    out = watch(tmp_path, *ssh, "--ssh-key", key)
    refused(out, "--ssh-key", "inside the watched checkout of --repo ssh://git@127.0.0.1:1/r.git")
    cred = private(tree / "cred", "u:pw-not-shown\n")
    out = watch(tmp_path, "--repo", "https://h.example/r.git", "--git-credentials-file", cred)
    refused(out, "--git-credentials-file", "inside the watched checkout")
    assert "pw-not-shown" not in out.stderr
    hook = private(tree / "hook.secret", WEBHOOK_SECRET)
    out = watch(
        tmp_path, "--repo", "https://h.example/r.git",
        "--webhook", "127.0.0.1:0", "--webhook-secret-file", hook,
    )  # fmt: skip
    refused(out, "--webhook-secret-file", "inside the watched checkout")
    # a known_hosts file there could be changed by a push: refused too
    moved = private(tree / "known_hosts", "")
    out = watch(tmp_path, "--repo", "ssh://git@127.0.0.1:1/r.git", "--known-hosts", moved)
    refused(out, "--known-hosts", "whoever can push there could change it")
    # a repository on this host: keys kept in it are in the synced tree
    local = tmp_path / "local-repo"
    age = private(local / "age.txt", age_key)
    for url in (str(local), f"file://{local}"):
        out = watch(tmp_path, "--repo", url, "--age-key-file", age)
        refused(out, "--age-key-file", f"inside the watched {local}")
    assert sorted(p.name for p in (tmp_path / "root" / "agent" / "git").iterdir()) == [
        "0123456789abcdef"
    ]
    assert not (tmp_path / "agent.sock").exists()
