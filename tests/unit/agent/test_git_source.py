"""The agent's git source: the pure parts (URL checks and redaction, refs, credentials,
tree retention, back-off, error kinds) and the fetcher against real local repositories
(file://): publish by link flip, force push, a pinned SHA, a deleted ref, retention and the
clean-up after a killed agent."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeRuntime

from pyapply.reconciler.agent.agent import Agent, AgentOptions
from pyapply.reconciler.agent.git_rules import (
    TOKEN_USER,
    Credentials,
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
from pyapply.reconciler.agent.git_source import GitFetcher, end_orphans
from pyapply.reconciler.agent.status import status_view
from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.view.agent_text import status_lines
from pyapply.runtime.base import ImageInfo

IMAGE = "pyapply-test/busybox:latest"

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
        ("https://ghp_0123abc@github.com/o/r", "https://***@github.com/o/r"),
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
        ("https://ghp_abcdef0123@github.com/o/r.git", "looks like an access token"),
        ("https://" + "a1B2" * 10 + "@git.example/r.git", "looks like an access token"),
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
    assert "ghp_abcdef0123" not in str(info.value)
    assert "a1B2a1B2" not in str(info.value)


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
    with pytest.raises(
        GitSourceError, match="mode 0644 lets others read or change it; make it 0600"
    ):
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
        ("error: RPC failed; curl 28 Operation too slow. Less than 1 bytes/sec", "timeout"),
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
        keep=0,
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
    # shallow: the clone holds the fetched commit, not its history
    assert git(Path(f.repo), "rev-parse", "--is-shallow-repository") == "true"
    assert git(Path(f.repo), "rev-list", "--count", "refs/pyapply/fetched") == "1"
    # a force push to an unrelated history
    git(upstream, "reset", "-q", "--hard", "HEAD~1")
    forced = commit(upstream, "forced\n", "rewritten")
    assert f.fetch_once().commit == forced
    assert source.snapshot().revision.subject == "rewritten"
    # retention (keep=0): the current tree, and the one a pass read last (it may be loading)
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


def test_processes_of_a_killed_fetch_are_ended_by_their_marker(tmp_path: Path) -> None:
    base = str(tmp_path / "src")
    ours = subprocess.Popen(["sleep", "30"], env={"PYAPPLY_GIT_SOURCE": base})
    other = subprocess.Popen(["sleep", "30"], env={"PYAPPLY_GIT_SOURCE": base + "-other"})
    try:
        # until both have exec'd: between fork and exec a child's environ is still ours
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
            b"PYAPPLY_GIT_SOURCE" in Path(f"/proc/{p.pid}/environ").read_bytes()
            for p in (ours, other)
        ):
            time.sleep(0.01)
        assert end_orphans(base) == [ours.pid]
        assert ours.wait(5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for p in (ours, other):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_stalled_server_is_a_timeout_in_bounded_time(tmp_path: Path) -> None:
    """A server that accepts and never answers: the fetch ends after its time limit."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        f = GitFetcher(f"http://127.0.0.1:{port}/r.git", str(tmp_path / "root"), timeout_s=1)
        f.prepare()
        started = time.monotonic()
        result = f.fetch_once()
        assert time.monotonic() - started < 10
    assert not result.ok and result.reason == "timeout", result
    assert f.status()["error_kind"] == "timeout"


def test_the_loop_fetches_when_asked_not_only_on_its_timer(tmp_path: Path, upstream: Path) -> None:
    updates: list[str] = []
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), poll_s=3600)
    f.on_update = updates.append
    f.prepare()
    f.start()
    try:
        assert f.fetch_now(wait=True, timeout=20)
        assert f.current() == git(upstream, "rev-parse", "HEAD")
        newer = commit(upstream, "newer\n", "newer")
        assert f.fetch_now(wait=True, timeout=20)  # not the hour-long poll: asked for
        assert f.current() == newer
        assert updates[-1] == f"git:{newer[:12]}"
        assert f.status()["next_fetch"] > time.time() + 3000
    finally:
        f.stop()


def fake_git_agent(tmp_path: Path, upstream: Path) -> tuple[Agent, GitFetcher, FakeRuntime]:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ())})
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), subpath="deploy", keep=0)
    f.prepare()
    agent = Agent(
        f.source(), str(tmp_path / "root"), AgentOptions(runtime_events=False), lambda: rt
    )
    agent.attach_git(f)
    return agent, f, rt


def stack(value: str) -> str:
    return (
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: gs}\nspec:\n  services:\n"
        f"    s:\n      image: {IMAGE}\n      command: [sleep, '1000']\n"
        f"      environment: {{V: '{value}'}}\n"
    )


def openapi_validator(name: str) -> Any:
    import jsonschema

    doc = json.loads(
        (Path(__file__).parents[3] / "schemas" / "v1" / "agent-api.openapi.json").read_text()
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


def test_the_agent_applies_what_the_fetcher_publishes_and_shows_it(
    tmp_path: Path, upstream: Path
) -> None:
    commit(upstream, stack("1"), "one")
    agent, f, rt = fake_git_agent(tmp_path, upstream)
    agent.reconcile({"start"})  # nothing fetched yet: nothing done, no failure recorded
    assert rt.containers == {} and agent.history.passes() == []
    f.fetch_once()
    agent.reconcile(agent.triggers.take(0))
    assert any("V=1" in e for e in rt.containers["gs-s-1"].env)
    first = agent.good
    assert first is not None and first.revision.subject == "one"
    # the good revision's tree survives retention (keep=0) while it is the desired state
    commit(upstream, "not: [valid\n", "broken")
    f.fetch_once()
    agent.reconcile(agent.triggers.take(0))
    assert agent.good is first
    assert os.path.isdir(first.directory)
    # the remote goes away: an error in the status, the last good revision stays
    (upstream / ".git").rename(upstream / "gone")
    assert not f.fetch_once().ok
    doc = status_view(agent, rt)
    openapi_validator("Status").validate(doc)
    assert doc["agent"]["source_kind"] == "repo"
    assert doc["agent"]["source"] == f"file://{upstream}"
    assert doc["git"]["failures"] == 1 and doc["git"]["last_error"]
    assert doc["revision"]["applied"] == first.revision.id
    text = "\n".join(status_lines(doc))
    assert "fetch:     FAILED (" in text and "  error: " in text, text


def run_cli(*args: str, monkeypatch: pytest.MonkeyPatch, root: Path) -> tuple[int, str]:
    monkeypatch.setenv("PYAPPLY_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", ["pyapply", *args])
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.run()
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch"], "give either PATH"),
        (["watch", ".", "--repo", "https://h/r.git"], "give either PATH"),
        (["watch", ".", "--ref", "main"], "--ref: only with --repo"),
        (["watch", "--repo", "https://u:sekrit@h/r.git"], "a password in the URL"),
        (["watch", "--repo", "https://h/r.git", "--ref", "-x"], "must not start with '-'"),
        (["watch", "--repo", "ssh://git@h/r.git"], "needs --known-hosts"),
        (["watch", "--repo", "https://h/r.git", "--path", "../up"], "--path"),
    ],
)
def test_watch_repo_arguments_are_checked(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(*args, monkeypatch=monkeypatch, root=tmp_path / "root")
    assert code == 1, err
    assert message in err, err
    assert "sekrit" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "root" / "agent").exists()


def test_a_tag_is_followed_to_its_commit_and_old_objects_are_collected(
    tmp_path: Path, upstream: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pyapply.reconciler.agent.git_source.GC_EVERY", 2)
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), ref="v1", keep=0)
    f.prepare()
    first = git(upstream, "rev-parse", "HEAD")
    git(upstream, "tag", "-a", "-m", "release", "v1")
    assert f.fetch_once().commit == first  # an annotated tag: its commit

    def have(sha: str) -> bool:
        probe = ["git", "--git-dir", f.repo, "cat-file", "-e", f"{sha}^{{commit}}"]
        return subprocess.run(probe, capture_output=True).returncode == 0

    assert have(first)
    second = commit(upstream, "two\n", "two")
    git(upstream, "tag", "-f", "-a", "-m", "moved", "v1")
    assert f.fetch_once().commit == second  # a moved tag is followed; gc ran (2nd publish)
    assert not have(first), "the first commit's objects were not collected"
    assert Path(f.trees, second, "deploy", "stack.yaml").read_text() == "two\n"


def test_a_path_that_leads_out_of_the_repository_is_refused(tmp_path: Path, upstream: Path) -> None:
    os.symlink("/etc", upstream / "escape")
    git(upstream, "add", "escape")
    git(upstream, "commit", "-q", "-m", "escape")
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"), subpath="escape")
    f.prepare()
    result = f.fetch_once()
    assert not result.ok
    assert "--path escape leads out of the repository" in (result.error or "")
    assert f.current() is None
    assert [n for n in os.listdir(f.trees)] == []


def test_a_damaged_clone_is_fetched_afresh_while_the_tree_in_use_stays(
    tmp_path: Path, upstream: Path
) -> None:
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"))
    f.prepare()
    good = f.fetch_once().commit
    for path in Path(f.repo, "objects").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")  # every object and pack damaged
    newer = commit(upstream, "newer\n", "newer")
    failed = f.fetch_once()
    assert not failed.ok and "corrupt" in (failed.error or ""), failed
    assert f.current() == good  # still in use
    assert not os.path.exists(f.repo)  # dropped: the next fetch starts afresh
    again = f.fetch_once()
    assert again.ok and again.commit == newer, again
    assert f.current() == newer


def test_another_url_or_ref_starts_clean_and_removes_the_earlier_sources(
    tmp_path: Path, upstream: Path
) -> None:
    root = tmp_path / "root"
    first = GitFetcher(f"file://{upstream}", str(root), ref="main")
    first.prepare()
    sha = first.fetch_once().commit
    assert sha
    assert json.loads(Path(first.base, "source.json").read_text()) == {
        "url": f"file://{upstream}",
        "ref": "main",
    }
    assert stat.S_IMODE(os.stat(Path(first.base, "source.json")).st_mode) == 0o600
    parent = Path(first.base).parent
    # what is not a source directory this code made stays, whatever its name
    foreign = [parent / "notes", parent / "0123456789abcdef", root / "agent" / "pinned"]
    for d in foreign:
        d.mkdir(parents=True)
        (d / "keep").write_text("not pyapply's\n")
    (parent / "fedcba9876543210").symlink_to(first.base)
    # a source directory made before source.json existed: known by our askpass script
    legacy = parent / "00000000000000aa"
    legacy.mkdir()
    (legacy / "askpass.sh").write_text(Path(first.base, "askpass.sh").read_text())
    (legacy / "trees").mkdir()
    # a helper a killed fetch of the first source left running
    orphan = subprocess.Popen(["sleep", "30"], env={"PYAPPLY_GIT_SOURCE": first.base})
    try:
        pinned = GitFetcher(f"file://{upstream}", str(root), ref=sha)
        assert pinned.base != first.base
        pinned.prepare()
        assert orphan.wait(5) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    assert not os.path.exists(first.base) and not legacy.exists()
    assert pinned.current() is None  # a clean start: its own first fetch
    for d in foreign:
        assert (d / "keep").read_text() == "not pyapply's\n"
    assert (parent / "fedcba9876543210").is_symlink()
    assert pinned.fetch_once().commit == sha and pinned.current() == sha

    # another URL: the same again
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(upstream), str(other))
    moved = GitFetcher(f"file://{other}", str(root))
    moved.prepare()
    assert not os.path.exists(pinned.base)
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        [Path(moved.base).name, "notes", "0123456789abcdef", "fedcba9876543210"]
    )
    assert moved.fetch_once().ok


def test_a_source_directory_made_for_another_source_is_emptied(
    tmp_path: Path, upstream: Path
) -> None:
    f = GitFetcher(f"file://{upstream}", str(tmp_path / "root"))
    os.makedirs(Path(f.trees, "a" * 40))
    Path(f.base, "source.json").write_text('{"url": "https://elsewhere/r.git", "ref": "x"}')
    f.prepare()
    assert os.listdir(f.trees) == []
    assert json.loads(Path(f.base, "source.json").read_text())["url"] == f"file://{upstream}"
    # one made before source.json existed, for this URL and ref (its name says so): kept
    g = GitFetcher(f"file://{upstream}", str(tmp_path / "root2"))
    os.makedirs(Path(g.trees, "b" * 40))
    g.prepare()
    assert os.listdir(g.trees) == ["b" * 40]
