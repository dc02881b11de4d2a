"""The agent's own git source end to end (`pyapply watch --repo`), on the native runtime:
a real agent process fetching from real git servers on loopback that the test starts and
removes -- `git http-backend` behind a small HTTP server with basic auth, and `sshd`
(Debian's openssh-server) with a deploy key and a known_hosts file.

Over HTTP: a wrong password is a fetch error in the status and nothing is applied; then a
commit, a new commit, a force push, a deleted ref (an error; the last revision keeps
running and is still healed), and an agent SIGKILLed in the middle of a fetch and started
again. Over SSH: an unknown host key is an error; then a commit and a new one are applied;
the second one fetched because a signed push webhook asked (the poll slowed right down);
then the agent started on another ref starts clean and removes the earlier clone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest

from pyapply.reconciler.agent.git_source import MARKER
from tests.e2e.helpers import http_get
from tests.e2e.runtimes import PYAPPLY, RuntimeUnderTest, free_port
from tests.e2e.test_agent import (
    AgentProc,
    Repo,
    agent_on,
    git,
    label,
    openapi_validator,
    running,
    stack_yaml,
)
from tests.e2e.test_agent_hooks import github, post_webhook

T = TypeVar("T")

pytestmark = pytest.mark.e2e

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
SSHD = "/usr/sbin/sshd"
USER = "deploy"
PASSWORD = "pw-Zq8d1xT4"  # looked for in logs, the status and the state root
HOOK_SECRET = "e2e-git-webhook-secret-0123"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """The probe's first truthy answer; an exception is retried, never returned, and
    an assertion (the agent exited) ends the wait at once."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            answer = probe()
        except AssertionError:
            raise
        except Exception as exc:
            last = exc
        else:
            if answer:
                return answer
            last = answer
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class GitHttp:
    """`git http-backend` (CGI) behind basic auth on 127.0.0.1. `stall` holds upload-pack
    requests (at most 20 s) to catch an agent in the middle of a fetch."""

    def __init__(self, project_root: Path) -> None:
        self.root = project_root
        self.stall = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.denied = 0
        server = self
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.cgi()

            def do_POST(self) -> None:
                self.cgi()

            def cgi(self) -> None:
                if self.headers.get("Authorization") != expected:
                    server.denied += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "POST" and server.stall.is_set():
                    server.stalled.set()
                    server.release.wait(20)
                env = {
                    "PATH": os.environ["PATH"],
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": unquote(path),
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": USER,
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                out = subprocess.run(
                    [HTTP_BACKEND], input=body, env=env, capture_output=True, timeout=30
                ).stdout
                sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
                head, _, payload = out.partition(sep)
                status = 200
                headers = []
                for line in head.decode("latin-1").splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class RepoAgent(AgentProc):
    def start_repo(self, url: str, *args: str, env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(PYAPPLY, "watch", "--repo", url, "--debounce", "0.2", "--interval", "30"),
                    *("--poll", "1", "--fetch-timeout", "30", "--no-events", *args),
                ],
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for("the agent's socket", lambda: self.alive() and self.client.available())

    def git_status(self) -> dict[str, Any]:
        return dict(self.api("GET", "/v1/status")["git"])

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a power cut would end it."""
        proc, self.proc = self.proc, None
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def git_agent(tmp_path: Path, native: RuntimeUnderTest) -> Iterator[RepoAgent]:
    with agent_on(tmp_path, native, RepoAgent) as proc:
        assert isinstance(proc, RepoAgent)
        yield proc


def upstream(tmp_path: Path, bare: Path) -> Repo:
    """A work repository whose `push()` goes to the served bare repository."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = Repo(tmp_path / "work")
    git(work.path, "remote", "add", "origin", str(bare))
    (work.path / "deploy").mkdir()
    return work


def push(work: Repo, files: dict[str, str | None], message: str, force: bool = False) -> str:
    sha = work.commit(files, message)
    git(work.path, "push", "-q", *(["-f"] if force else []), "origin", "HEAD:main")
    return sha


def marked(base: str) -> list[int]:
    """Pids of the processes a fetch of this source started (they carry its marker)."""
    wanted = f"{MARKER}={base}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if wanted in Path("/proc", name, "environ").read_bytes().split(b"\0"):
                    pids.append(int(name))
    return pids


def no_secret_under(directory: Path, secret: str) -> None:
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret.encode() not in path.read_bytes(), f"{secret!r} is in {path}"


def test_https_basic_auth_commits_force_push_deleted_ref_and_kill_mid_fetch(
    git_agent: RepoAgent, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack = native.stack
    obs = native.observe
    app = f"{stack}-app-1"
    served = tmp_path / "srv"
    work = upstream(tmp_path, served / "app.git")
    sha1 = push(work, {"deploy/stack.yaml": stack_yaml(stack, {"app": "1"})}, "first")
    server = GitHttp(served)
    try:
        url = f"http://{USER}@127.0.0.1:{server.port}/app.git"

        # a wrong password: a fetch error in the status, nothing applied
        git_agent.start_repo(
            url,
            *("--ref", "main", "--path", "deploy"),
            env={"PYAPPLY_GIT_PASSWORD": "wrong-" + PASSWORD},
        )
        st = wait_for("an auth error", lambda: (s := git_agent.git_status())["failures"] and s)
        assert st["error_kind"] == "auth", st
        assert st["commit"] is None
        doc = git_agent.api("GET", "/v1/status")
        openapi_validator("Status").validate(doc)  # with git: {... the failure}
        assert doc["revision"]["applied"] is None
        assert doc["agent"]["source_kind"] == "repo"
        shown = git_agent.cli("status").stdout
        assert "FAILED (auth)" in shown, shown
        assert obs.container(app) is None
        assert server.denied >= 1
        assert git_agent.stop() == 0
        assert PASSWORD not in git_agent.logs()

        # the right one, from a 0600 file: the first commit is applied
        cred = tmp_path / "cred"
        cred.touch(mode=0o600)
        cred.write_text(f"{USER}:{PASSWORD}\n")
        metrics_port = free_port()
        git_agent.start_repo(
            url,
            *("--ref", "main", "--path", "deploy"),
            "--git-credentials-file",
            str(cred),
            "--metrics",
            f"127.0.0.1:{metrics_port}",
        )
        wait_for("sha1 running", lambda: running(obs, app) and label(obs, app) == sha1[:12])
        st = git_agent.git_status()
        assert st["commit"] == sha1 and st["last_error"] is None, st
        assert st["url"] == url
        base = Path(native.root, "agent", "git")
        no_secret_under(base, PASSWORD)
        assert oct(base.stat().st_mode & 0o777) == "0o700"
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'pyapply_git_fetch_failures_total{reason="auth"}' not in text
        assert "pyapply_git_fetch_duration_seconds_count" in text, (status, text)
        assert git_agent.history()[0]["subject"] == "first"

        # a new commit, then a force push
        sha2 = push(work, {"deploy/stack.yaml": stack_yaml(stack, {"app": "2"})}, "second")
        wait_for("sha2", lambda: running(obs, app) and label(obs, app) == sha2[:12])
        git(work.path, "reset", "-q", "--hard", sha1)
        sha3 = push(work, {"deploy/stack.yaml": stack_yaml(stack, {"app": "3"})}, "rewritten", True)
        wait_for("the force push", lambda: running(obs, app) and label(obs, app) == sha3[:12])
        assert obs.env(app)["V"] == "3"

        # the branch deleted: an error in the status; sha3 stays and is still healed
        git(served / "app.git", "update-ref", "-d", "refs/heads/main")
        st = wait_for("a ref error", lambda: (s := git_agent.git_status())["last_error"] and s)
        assert st["error_kind"] == "ref" and st["commit"] == sha3, st
        native.stop(app, timeout=1)
        git_agent.cli("sync")  # a pass heals with the last good revision
        wait_for("healed", lambda: running(obs, app) and label(obs, app) == sha3[:12])
        assert git_agent.api("GET", "/v1/status")["revision"]["applied"] == sha3[:12]
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'pyapply_git_fetch_failures_total{reason="ref"}' in text

        # killed in the middle of a fetch, then started again
        source_dir = next(base.iterdir())
        server.stall.set()
        sha4 = push(work, {"deploy/stack.yaml": stack_yaml(stack, {"app": "4"})}, "fourth")
        git_agent.cli("sync", "--no-wait")  # fetch now, not after the back-off
        assert server.stalled.wait(20), "no fetch reached the server"
        left = wait_for("the fetch's processes", lambda: marked(str(source_dir)))
        git_agent.kill()
        server.stall.clear()
        git_agent.start_repo(
            url, *("--ref", "main", "--path", "deploy"), "--git-credentials-file", str(cred)
        )
        wait_for(
            "the killed fetch's processes ended",
            lambda: not set(left) & set(marked(str(source_dir))),
        )
        server.release.set()
        wait_for(
            "sha4 after the restart", lambda: label(obs, app) == sha4[:12] and running(obs, app)
        )
        assert not [p for p in source_dir.rglob(".tmp-*")]
        assert sorted(os.listdir(source_dir / "trees"))  # retention kept some trees
        assert len(os.listdir(source_dir / "trees")) <= 1 + 1 + 3  # current, good, --keep-trees
        doc = git_agent.api("GET", "/v1/status")
        openapi_validator("Status").validate(doc)
        assert PASSWORD not in json.dumps(doc) + json.dumps(git_agent.history())
        assert git_agent.stop() == 0
        assert PASSWORD not in git_agent.logs()
        no_secret_under(Path(native.root, "agent"), PASSWORD)  # the clone, the trees
        for db in ("history.db", "revisions.db"):
            assert PASSWORD.encode() not in Path(native.root, db).read_bytes()
    finally:
        server.close()


@contextlib.contextmanager
def sshd(tmp_path: Path, client_pub: Path) -> Iterator[tuple[int, Path]]:
    """A private sshd on a loopback port: root may log in with the deploy key only.
    Yields (port, host public key). Ended by pid afterwards."""
    d = tmp_path / "sshd"
    d.mkdir()
    host_key = d / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = d / "authorized_keys"
    authorized.write_text(client_pub.read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {d / 'pid'}\n"
        f"AuthorizedKeysFile {authorized}\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
    )
    # Debian's sshd needs its privilege separation directory; made here only when missing
    made_run = not os.path.isdir("/run/sshd")
    if made_run:
        os.makedirs("/run/sshd", mode=0o755)
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        import socket

        def accepting() -> bool:
            assert proc.poll() is None, (d / "log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for("sshd", accepting, timeout=10)
        yield port, host_key.with_suffix(".pub")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if made_run:
            with contextlib.suppress(OSError):
                os.rmdir("/run/sshd")
        print(f"--- sshd log:\n{(d / 'log').read_text(errors='replace')}")


def test_ssh_deploy_key_with_known_hosts(
    git_agent: RepoAgent, native: RuntimeUnderTest, tmp_path: Path
) -> None:
    stack = native.stack
    obs = native.observe
    app = f"{stack}-app-1"
    key = tmp_path / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    bare = tmp_path / "private" / "app.git"
    work = upstream(tmp_path, bare)
    sha1 = push(work, {"stack.yaml": stack_yaml(stack, {"app": "1"})}, "first")
    with sshd(tmp_path, key.with_suffix(".pub")) as (port, host_pub):
        url = f"ssh://root@127.0.0.1:{port}{bare}"
        unknown = tmp_path / "known_hosts.unknown"
        unknown.write_text(f"[127.0.0.1]:{port} {stranger.with_suffix('.pub').read_text()}")
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {host_pub.read_text()}")

        empty = tmp_path / "known_hosts.empty"
        empty.write_text("")

        # a host not in known_hosts, or known with another key: an error, never accepted
        for hosts, lines in ((empty, 0), (unknown, 1)):
            git_agent.start_repo(url, "--ssh-key", str(key), "--known-hosts", str(hosts))
            st = wait_for(
                "a host key error", lambda: (s := git_agent.git_status())["failures"] and s
            )
            assert st["error_kind"] == "auth", st
            assert "Host key verification failed" in st["last_error"], st
            assert st["commit"] is None
            assert obs.container(app) is None
            assert hosts.read_text().count("\n") == lines  # nothing was added to it
            assert git_agent.stop() == 0

        # the poll slowed right down: the next commit is fetched because a webhook says so
        hook = free_port()
        secret = tmp_path / "webhook.secret"
        secret.touch(mode=0o600)
        secret.write_text(HOOK_SECRET)
        git_agent.start_repo(
            url,
            *("--ssh-key", str(key), "--known-hosts", str(known), "--poll", "600"),
            *("--webhook", f"127.0.0.1:{hook}", "--webhook-secret-file", str(secret)),
        )
        wait_for("sha1 running", lambda: running(obs, app) and label(obs, app) == sha1[:12])
        sha2 = push(work, {"stack.yaml": stack_yaml(stack, {"app": "2"})}, "second")
        body = json.dumps({"ref": "refs/heads/main", "after": sha2}).encode()
        code, answer = post_webhook(hook, body, github(body, HOOK_SECRET))
        assert code == 202 and answer["triggered"] is True, answer
        # well before the resync timer (--interval 30) could have started a pass
        wait_for("sha2", lambda: running(obs, app) and label(obs, app) == sha2[:12], 10)
        st = git_agent.git_status()
        assert st["commit"] == sha2 and st["last_error"] is None, st
        passes = git_agent.history()
        assert any(
            p["revision"] == sha2[:12] and p["trigger"] in ("webhook", f"git:{sha2[:12]}")
            for p in passes
        ), passes
        assert git_agent.stop() == 0

        # started again on another ref (the commit, pinned): its own clean directory, and
        # the earlier source's clone and work trees are gone
        sources = Path(native.root, "agent", "git")
        (earlier,) = sources.iterdir()
        git_agent.start_repo(url, "--ssh-key", str(key), "--known-hosts", str(known), "--ref", sha2)
        wait_for("the pin fetched", lambda: git_agent.git_status()["commit"] == sha2)
        (now,) = sources.iterdir()
        assert now != earlier and not earlier.exists()
        assert json.loads((now / "source.json").read_text()) == {"url": url, "ref": sha2}
        assert running(obs, app) and label(obs, app) == sha2[:12]
        assert git_agent.stop() == 0
