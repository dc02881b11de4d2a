"""The agent's git source: the pure parts (URL checks and redaction, refs, credentials,
tree retention, back-off, error kinds) and the fetcher against real local repositories
(file://): publish by link flip, force push, a pinned SHA, a deleted ref, retention and the
clean-up after a killed agent."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from pyapply.reconciler.agent.git_source import (
    TOKEN_USER,
    Credentials,
    GitFetcher,
    GitSourceError,
    SourceNotReady,
    check_subpath,
    check_url,
    classify,
    credentials_from_env,
    next_delay,
    parse_credentials,
    parse_ref,
    read_credentials_file,
    redact_text,
    redact_url,
    ssh_command,
    stale_trees,
)

# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@git.example/r.git", "https://user:***@git.example/r.git"),
        ("https://tok3n@git.example/r.git", "https://tok3n@git.example/r.git"),
        ("https://git.example:8443/r.git", "https://git.example:8443/r.git"),
        ("ssh://git@git.example:2222/r.git", "ssh://git@git.example:2222/r.git"),
        ("git@git.example:org/r.git", "git@git.example:org/r.git"),
        ("http://a:b:c@h/x", "http://a:***@h/x"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_hides_url_passwords_and_known_secrets() -> None:
    text = "fatal: unable to access 'https://bob:hunter2@h/r/': 401; token hunter2 again"
    shown = redact_text(text, ["hunter2"])
    assert "hunter2" not in shown
    assert "https://bob:***@h/r/" in shown


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example/r.git",
        "http://127.0.0.1:8080/r.git",
        "ssh://git@127.0.0.1:2222/srv/r.git",
        "git@github.com:org/r.git",
        "file:///srv/r.git",
        "/srv/r.git",
        "https://deploy@git.example/r.git",
    ],
)
def test_usable_urls(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://u:pw@git.example/r.git", "a password in the URL"),
        ("ext::sh -c touch% /tmp/x", "not a repository URL"),
        ("--upload-pack=touch /tmp/x", "not a repository URL"),
        ("ftp://git.example/r.git", "transport 'ftp' is not supported"),
        ("https:///r.git", "no host"),
        ("relative/dir", "not a repository URL"),
        ("", "not a repository URL"),
    ],
)
def test_unusable_urls_are_refused_without_showing_a_password(url: str, why: str) -> None:
    with pytest.raises(GitSourceError, match=why) as info:
        check_url(url)
    assert "pw@" not in str(info.value)


# -- refs and paths --------------------------------------------------------------------------


def test_refs() -> None:
    assert parse_ref(None).kind == "default"
    assert parse_ref(None).refspec == "+HEAD:refs/pyapply/fetched"
    assert parse_ref("main").refspec == "+main:refs/pyapply/fetched"
    assert parse_ref("refs/tags/v1.2").kind == "name"
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert parse_ref(sha).kind == "sha"
    assert parse_ref("f" * 64).kind == "sha"
    assert str(parse_ref(None)) == "(default branch)"


@pytest.mark.parametrize(
    "ref",
    [
        "-main",
        "--upload-pack=x",
        "a..b",
        "a:b",
        "main.lock",
        "a b",
        "feature/",
        "/main",
        "x/.hidden",
        "0123abc",
        "@",
        "a@{1}",
    ],
)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(GitSourceError, match="--ref"):
        parse_ref(ref)


def test_subpaths() -> None:
    assert check_subpath(None) == ""
    assert check_subpath("./") == ""
    assert check_subpath("deploy/prod/") == "deploy/prod"
    for bad in ("/etc", "..", "a/../../b"):
        with pytest.raises(GitSourceError, match="--path"):
            check_subpath(bad)


# -- credentials -----------------------------------------------------------------------------


def test_credentials_forms() -> None:
    url = "https://git.example/r.git"
    assert parse_credentials("bob:pw\n", url, "f") == Credentials("bob", "pw")
    assert parse_credentials("ghp_tok\n", url, "f") == Credentials(TOKEN_USER, "ghp_tok")
    store = "https://x:1@other.example\nhttps://bob:p%40ss@git.example\n"
    assert parse_credentials(store, url, "f") == Credentials("bob", "p@ss")
    with pytest.raises(GitSourceError, match=r"no credentials for host git\.example"):
        parse_credentials("https://x:1@other.example\n", url, "f")
    with pytest.raises(GitSourceError, match="f: empty"):
        parse_credentials("\n# nothing\n", url, "f")
    with pytest.raises(GitSourceError, match="f:1: `user:password` with an empty part"):
        parse_credentials("bob:\n", url, "f")


def test_credentials_never_show_in_repr() -> None:
    assert "pw" not in repr(Credentials("bob", "pw"))


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "cred"
    path.write_text("bob:pw\n")
    path.chmod(0o644)
    with pytest.raises(GitSourceError, match="mode 0644 lets others read it; chmod 0600"):
        read_credentials_file(str(path), "https://h/r")
    path.chmod(0o600)
    assert read_credentials_file(str(path), "https://h/r") == Credentials("bob", "pw")
    with pytest.raises(GitSourceError, match="No such file"):
        read_credentials_file(str(tmp_path / "none"), "https://h/r")


def test_credentials_from_env() -> None:
    assert credentials_from_env({}) is None
    assert credentials_from_env({"PYAPPLY_GIT_TOKEN": "t"}) == Credentials(TOKEN_USER, "t")
    env = {"PYAPPLY_GIT_USERNAME": "bob", "PYAPPLY_GIT_PASSWORD": "pw"}
    assert credentials_from_env(env) == Credentials("bob", "pw")
    with pytest.raises(GitSourceError, match="without PYAPPLY_GIT_USERNAME"):
        credentials_from_env({"PYAPPLY_GIT_PASSWORD": "pw"}, "https://h/r")
    assert credentials_from_env({"PYAPPLY_GIT_PASSWORD": "pw"}, "https://al@h/r") == Credentials(
        "al", "pw"
    )


# -- retention, back-off, error kinds, ssh ---------------------------------------------------


def test_stale_trees_keeps_current_protected_and_the_newest() -> None:
    trees = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("e", 5.0)]
    assert stale_trees(trees, "e", 2, ()) == ["a", "b"]
    assert stale_trees(trees, "e", 2, ["a"]) == ["b"]
    assert stale_trees(trees, "a", 0, ()) == ["b", "c", "d", "e"]
    assert stale_trees(trees, None, 10, ()) == []
    assert stale_trees([], None, 0, ()) == []


def test_backoff_grows_and_is_capped() -> None:
    assert next_delay(10, 0) == 10
    assert next_delay(10, 1) == 10
    assert next_delay(10, 2) == 20
    assert next_delay(10, 4) == 80
    assert next_delay(10, 50) == 300
    assert next_delay(600, 5) == 600  # never shorter than the poll interval


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("fatal: Authentication failed for 'http://127.0.0.1/r'", "auth"),
        ("git@127.0.0.1: Permission denied (publickey).", "auth"),
        ("Host key verification failed.; fatal: Could not read from remote repository.", "auth"),
        ("fatal: couldn't find remote ref main", "ref"),
        ("fatal: unable to access 'http://127.0.0.1:1/r/': Failed to connect", "network"),
        ("git fetch timed out after 5s", "timeout"),
        ("something else", "other"),
    ],
)
def test_classify(message: str, kind: str) -> None:
    assert classify(message) == kind


def test_ssh_command_checks_host_keys_and_uses_only_the_key() -> None:
    argv = shlex.split(ssh_command("/usr/bin/ssh", "/k ey", "/kh", 30))
    assert argv[0] == "/usr/bin/ssh"
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert "StrictHostKeyChecking=yes" in opts
    assert "UserKnownHostsFile=/kh" in opts
    assert "IdentitiesOnly=yes" in opts
    assert "BatchMode=yes" in opts
    assert argv[argv.index("-i") + 1] == "/k ey"


def test_ssh_repositories_need_known_hosts(tmp_path: Path) -> None:
    with pytest.raises(GitSourceError, match="needs --known-hosts"):
        GitFetcher("ssh://git@127.0.0.1:2222/r.git", str(tmp_path))
    with pytest.raises(GitSourceError, match="--ssh-key is for ssh repositories"):
        GitFetcher("https://h/r.git", str(tmp_path), ssh_key="/k")


# -- the fetcher against real local repositories ---------------------------------------------


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), "-c", "user.email=t@e.invalid", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "deploy").mkdir()
    (repo / "deploy" / "stack.yaml").write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def commit(repo: Path, text: str, message: str) -> str:
    (repo / "deploy" / "stack.yaml").write_text(text)
    git(repo, "commit", "-q", "-am", message)
    return git(repo, "rev-parse", "HEAD")


def test_fetch_publishes_each_commit_and_follows_a_force_push(
    tmp_path: Path, upstream: Path
) -> None:
    updates: list[str] = []
    f = GitFetcher(
        f"file://{upstream}",
        str(tmp_path / "root"),
        ref="main",
        subpath="deploy",
        keep=1,
        on_update=updates.append,
    )
    f.prepare()
    source = f.source()
    with pytest.raises(SourceNotReady, match="nothing fetched yet"):
        source.snapshot()
    first = f.fetch_once()
    assert first.ok and first.changed
    snap = source.snapshot()
    assert snap.revision.commit == git(upstream, "rev-parse", "HEAD")
    assert snap.revision.subject == "first"
    assert Path(snap.directory, "stack.yaml").read_text() == "one\n"
    assert stat.S_IMODE(os.stat(f.base).st_mode) == 0o700
    assert f.fetch_once().changed is False  # nothing new: the link stays
    second = commit(upstream, "two\n", "second")
    assert f.fetch_once().commit == second
    assert Path(source.snapshot().directory, "stack.yaml").read_text() == "two\n"
    # a force push to an unrelated history
    git(upstream, "reset", "-q", "--hard", "HEAD~1")
    forced = commit(upstream, "forced\n", "rewritten")
    assert f.fetch_once().commit == forced
    assert source.snapshot().revision.subject == "rewritten"
    # retention: the current tree and one other
    assert sorted(os.listdir(f.trees)) == sorted([second, forced])
    assert updates == [f"git:{c[:12]}" for c in (first.commit or "", second, forced)]
    # the repository's config names no URL and no credentials
    assert str(upstream) not in (Path(f.repo) / "config").read_text()


def test_a_deleted_ref_is_an_error_and_the_last_commit_stays(
    tmp_path: Path, upstream: Path
) -> None:
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), ref="main")
    f.prepare()
    good = f.fetch_once().commit
    git(upstream, "branch", "-q", "-m", "main", "renamed")
    failed = f.fetch_once()
    assert not failed.ok and failed.reason == "ref"
    status = f.status()
    assert status["commit"] == good
    assert status["failures"] == 1
    assert "couldn't find remote ref main" in status["last_error"]
    assert f.source().snapshot().revision.commit == good


def test_a_pinned_sha_is_fetched_once(tmp_path: Path, upstream: Path) -> None:
    pinned = git(upstream, "rev-parse", "HEAD")
    commit(upstream, "later\n", "later")
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), ref=pinned)
    f.prepare()
    assert f.fetch_once().commit == pinned
    (upstream / ".git").rename(upstream / "gone")  # the remote is gone: no fetch is needed
    again = f.fetch_once()
    assert again.ok and again.commit == pinned and not again.changed


def test_leftovers_of_a_killed_agent_are_removed(tmp_path: Path, upstream: Path) -> None:
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"))
    f.prepare()
    good = f.fetch_once().commit
    assert good
    # what a SIGKILL at each step could leave: a half tree, a temp link, git locks
    half = Path(f.trees, ".tmp-abc123")
    half.mkdir()
    (half / "stack.yaml").write_text("half\n")
    Path(f.base, ".tmp-link-99").symlink_to("trees/.tmp-abc123")
    Path(f.repo, "shallow.lock").write_text("")
    Path(f.repo, "refs", "pyapply", "fetched.lock").write_text("")
    again = GitFetcher(f"file://{upstream}", str(tmp_path / "root"))
    again.prepare()
    assert not half.exists()
    assert not Path(f.base, ".tmp-link-99").is_symlink()
    assert not Path(f.repo, "shallow.lock").exists()
    assert again.current() == good
    newer = commit(upstream, "newer\n", "newer")
    assert again.fetch_once().commit == newer


def test_a_link_to_a_missing_tree_is_dropped(tmp_path: Path, upstream: Path) -> None:
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"))
    f.prepare()
    os.symlink("trees/" + "a" * 40, f.link)
    f.prepare()
    assert f.current() is None
    assert f.fetch_once().ok
