"""The agent's own git source: `pyapply watch --repo URL [--ref R] [--path SUBDIR]`.

The agent fetches the repository itself instead of needing git-sync beside it, and lays the
result out the way git-sync does, so that the existing `Source` reads it unchanged:

    <state root>/agent/git/<digest of URL and ref>/      0700
        repo.git/          a bare repository, fetched shallow (depth 1) into refs/pyapply/fetched
        trees/<sha>/       one checked-out commit each; never changed once published
        current -> trees/<sha>   the symlink a pass reads once, replaced by an atomic rename

A new commit is checked out into `trees/.tmp-*` (with a private index file, so the bare
repository is never touched by a checkout), renamed to `trees/<sha>` and only then published
by the link flip: a pass never sees a half-written tree. Old trees are removed, keeping the
current one, the agent's last good one and a bounded number of others. An agent killed at
any step leaves at most `.tmp-*` entries and git lock files behind, which the next start
removes before the first fetch; every git child also dies with its parent (PR_SET_PDEATHSIG).

Credentials never reach the command line, the clone's config or the logs: an SSH deploy key
goes through GIT_SSH_COMMAND (host keys checked against the given known_hosts only), and an
HTTPS user name and password or token through GIT_ASKPASS, a private script that prints them
from the git child's environment. A URL carrying a password is refused; URLs are shown with
their user info redacted. Fetches run with a time limit; failures are recorded (the status
shows them), back off, and leave the last good revision applied.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pyapply.reconciler.agent.sources import Snapshot, Source
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.revision import Revision
from pyapply.runtime.native.hostbins import GIT, SSH

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics

log = logging.getLogger("pyapply.agent")

# the only transports a repository URL may use (git refuses the others, e.g. ext::)
ALLOWED_SCHEMES = ("https", "http", "ssh", "git", "file")
# user@host:path (git's scp-like ssh syntax); `<helper>::<address>` is a remote helper: refused
_SCP_LIKE = re.compile(
    r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.\-\[\]]+):(?P<path>[^:\s]\S*)$"
)
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_FETCHED = "refs/pyapply/fetched"
# what git says of a damaged local repository (a disk fault, a file removed by hand)
_DAMAGED = (
    "not a git repository",
    "bad object",
    "corrupt",
    "unable to read",
    "did not receive expected object",
    "missing blob",
    "missing tree",
    "packfile",
)
# git's advice after any failed remote access: says nothing about the cause
_BOILERPLATE = ("Please make sure you have the correct access rights", "and the repository exists")
DEFAULT_KEEP = 3
GC_EVERY = 25  # published commits between two `git gc` of the bare repository
DEFAULT_TIMEOUT_S = 60.0
MAX_BACKOFF_S = 300.0
TOKEN_USER = "x-access-token"  # GitHub's name for a token's user; most forges accept any


class GitSourceError(PyapplyError):
    """A git source that cannot be used as given (URL, ref, path, credentials)."""


class SourceNotReady(PyapplyError):
    """Nothing has been fetched yet: there is no revision to apply."""


# -- pure parts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefSpec:
    """What to follow: the remote's default branch, a branch or tag name, or a pinned SHA."""

    kind: str  # "default" | "name" | "sha"
    value: str = "HEAD"

    @property
    def refspec(self) -> str:
        """The forced refspec that fetches it (a force-pushed branch is followed)."""
        return f"+{self.value}:{_FETCHED}"

    def __str__(self) -> str:
        return "(default branch)" if self.kind == "default" else self.value


def parse_ref(ref: str | None) -> RefSpec:
    """`--ref`: nothing (the remote's HEAD), a full 40/64-hex commit (pinned), else a branch or
    tag name (`main`, `v1.2`, `refs/heads/main`), checked like `git check-ref-format` so that
    it can never be read as an option or a refspec of our own."""
    if ref is None or ref == "":
        return RefSpec("default")
    if _FULL_SHA.match(ref):
        return RefSpec("sha", ref)
    problem = _ref_problem(ref)
    if problem:
        raise GitSourceError(f"--ref {ref!r}: {problem}")
    return RefSpec("name", ref)


def _ref_problem(ref: str) -> str | None:
    if ref.startswith("-"):
        return "must not start with '-'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\" for c in ref):
        return "has a space, a control character or one of ~^:?*[\\"
    if ".." in ref or "@{" in ref or ref == "@":
        return "has '..' or '@{'"
    if ref.endswith((".", "/", ".lock")) or ref.startswith("/") or "//" in ref:
        return "is not a valid ref name (leading/trailing '/', '//', trailing '.' or '.lock')"
    if any(part.startswith(".") for part in ref.split("/")):
        return "has a component starting with '.'"
    if re.match(r"^[0-9a-f]{7,39}$", ref):
        return "looks like an abbreviated commit: give the full 40-hex SHA to pin one"
    return None


def check_url(url: str) -> str:
    """The repository URL as given, once it is known to be usable: a known transport, no
    leading '-', and no password in it (passwords come from a file or the environment)."""
    if not url or url.startswith("-") or any(ord(c) < 0x20 for c in url):
        raise GitSourceError(f"--repo {redact_url(url)!r}: not a repository URL")
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ALLOWED_SCHEMES:
            raise GitSourceError(
                f"--repo {redact_url(url)}: transport {parts.scheme!r} is not supported "
                f"(use one of {', '.join(ALLOWED_SCHEMES)})"
            )
        if parts.password is not None:
            raise GitSourceError(
                f"--repo {redact_url(url)}: a password in the URL would show in process lists "
                "and logs; give it with --git-credentials-file or PYAPPLY_GIT_PASSWORD / "
                "PYAPPLY_GIT_TOKEN"
            )
        if parts.username and _TOKEN_LIKE.match(parts.username):
            raise GitSourceError(
                f"--repo {redact_url(url)}: the user name looks like an access token, which "
                "would show in process lists and logs; give it with PYAPPLY_GIT_TOKEN or "
                "--git-credentials-file"
            )
        if parts.scheme != "file" and not parts.hostname:
            raise GitSourceError(f"--repo {redact_url(url)}: no host")
        return url
    if url.startswith("/"):
        return url  # a local path
    if _SCP_LIKE.match(url):
        return url  # user@host:path, ssh
    raise GitSourceError(f"--repo {redact_url(url)!r}: not a repository URL")


# forges' token formats (GitHub, GitLab), or anything long and random-looking
_TOKEN_LIKE = re.compile(r"^(?:gh[pousr]_|github_pat_|glpat-|[A-Za-z0-9_\-]{32,}$)")


def url_scheme(url: str) -> str:
    if "://" in url:
        return urlsplit(url).scheme
    return "file" if url.startswith("/") else "ssh"


def redact_url(url: str) -> str:
    """The URL as it may be shown: any password (or token given as a user) replaced."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"://[^/@]*@", "://***@", url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if _TOKEN_LIKE.match(user):
        user = "***"  # a token given as the user name
    shown = f"{user}:***" if colon else user
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@")


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """A message from git, safe to log: URL passwords and every known secret replaced."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def check_subpath(path: str | None) -> str:
    """`--path`: a directory inside the repository, relative, without '..'."""
    if path is None or path in ("", ".", "./"):
        return ""
    norm = os.path.normpath(path)
    if os.path.isabs(path) or norm == ".." or norm.startswith("../") or "\0" in path:
        raise GitSourceError(f"--path {path!r}: must be a directory inside the repository")
    return norm


@dataclass(frozen=True)
class Credentials:
    """An HTTPS user name and password (or token). Never printed."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def parse_credentials(text: str, url: str, where: str) -> Credentials:
    """A credentials file's content: a git-credentials line (`https://user:pass@host`, the
    first whose host matches the URL's), or `user:password`, or a token alone."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise GitSourceError(f"{where}: empty: expected `user:password`, a token, or a URL")
    host = urlsplit(url).hostname if "://" in url else None
    for n, line in enumerate(lines, 1):
        if "://" in line:
            parts = urlsplit(line)
            if parts.password is None:
                raise GitSourceError(f"{where}:{n}: a credentials URL without a password")
            if host is None or parts.hostname == host:
                return Credentials(_unquote(parts.username or ""), _unquote(parts.password))
            continue
        if len(lines) > 1:
            raise GitSourceError(f"{where}:{n}: expected one line, `user:password` or a token")
        user, colon, password = line.partition(":")
        if colon:
            if not user or not password:
                raise GitSourceError(f"{where}:{n}: `user:password` with an empty part")
            return Credentials(user, password)
        return Credentials(TOKEN_USER, line)
    raise GitSourceError(f"{where}: no credentials for host {host}")


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def read_credentials_file(path: str, url: str) -> Credentials:
    """The credentials file, refused unless it is a regular file only its owner can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise GitSourceError(f"--git-credentials-file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise GitSourceError(f"--git-credentials-file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise GitSourceError(
                f"--git-credentials-file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets "
                "others read it; chmod 0600"
            )
        return parse_credentials(fh.read(), url, path)


def credentials_from_env(env: Mapping[str, str], url: str = "") -> Credentials | None:
    """PYAPPLY_GIT_TOKEN, or PYAPPLY_GIT_PASSWORD with PYAPPLY_GIT_USERNAME (or the URL's
    user name)."""
    token = env.get("PYAPPLY_GIT_TOKEN")
    url_user = urlsplit(url).username if "://" in url else None
    user = env.get("PYAPPLY_GIT_USERNAME") or (_unquote(url_user) if url_user else None)
    password = env.get("PYAPPLY_GIT_PASSWORD")
    if token:
        return Credentials(user or TOKEN_USER, token)
    if password:
        if not user:
            raise GitSourceError(
                "PYAPPLY_GIT_PASSWORD is set without PYAPPLY_GIT_USERNAME or a user in the URL"
            )
        return Credentials(user, password)
    return None


def stale_trees(
    trees: Iterable[tuple[str, float]], current: str | None, keep: int, protect: Iterable[str]
) -> list[str]:
    """The trees to remove: all but the current one, the protected ones (the agent's last
    good revision) and the `keep` most recently used others. (name, last used) pairs."""
    spared = {current, *protect}
    others = sorted((t for t in trees if t[0] not in spared), key=lambda t: (-t[1], t[0]))
    return sorted(name for name, _ in others[max(0, keep) :])


def next_delay(poll_s: float, failures: int, cap_s: float = MAX_BACKOFF_S) -> float:
    """Seconds until the next fetch: the poll interval, doubled for each failure in a row
    after the first, up to `cap_s` (or the poll interval, when that is longer)."""
    if failures <= 1:
        return poll_s
    return float(min(max(cap_s, poll_s), poll_s * 2.0 ** min(failures - 1, 20)))


def classify(message: str) -> str:
    """What kind of failure git's message describes, for the metrics and the status."""
    text = message.lower()
    if ("timed out" in text and "ssh" not in text) or "operation too slow" in text:
        return "timeout"
    if any(
        s in text
        for s in (
            "authentication failed",
            "permission denied",
            "could not read username",
            "could not read password",
            "401",
            "403",
            "host key verification failed",
            "no matching host key",
        )
    ):
        return "auth"
    if any(s in text for s in ("couldn't find remote ref", "not our ref", "no such remote ref")):
        return "ref"
    if any(
        s in text
        for s in (
            "could not resolve",
            "connection refused",
            "connection timed out",
            "failed to connect",
            "network is unreachable",
            "could not read from remote",
            "unable to access",
            "no route to host",
            "early eof",
        )
    ):
        return "network"
    return "other"


# -- git runs --------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the git child, before exec: a SIGKILLed agent takes its fetch down with it, so a
    restarted agent finds no git still writing into the repository."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class FetchResult:
    ok: bool
    commit: str | None = None
    changed: bool = False
    error: str | None = None
    reason: str | None = None
    seconds: float = 0.0


class GitFetcher:
    """Keeps `<base>/current` at the latest commit of `ref`: fetches on a timer and on
    `fetch_now()` (webhooks, `pyapply sync`), one fetch at a time, in its own thread."""

    def __init__(
        self,
        url: str,
        root: str,
        *,
        ref: str | None = None,
        subpath: str | None = None,
        poll_s: float = 60.0,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        keep: int = DEFAULT_KEEP,
        ssh_key: str | None = None,
        known_hosts: str | None = None,
        credentials: Credentials | None = None,
        metrics: Metrics | None = None,
        on_update: Callable[[str], object] | None = None,
        in_use: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.url = check_url(url)
        self.ref = parse_ref(ref)
        self.subpath = check_subpath(subpath)
        self.scheme = url_scheme(self.url)
        if self.scheme == "ssh":
            if known_hosts is None:
                raise GitSourceError(
                    f"--repo {redact_url(url)}: an SSH repository needs --known-hosts FILE "
                    "(host keys are checked, never accepted blindly)"
                )
            for option, path in (("--ssh-key", ssh_key), ("--known-hosts", known_hosts)):
                if path is not None and not os.path.isfile(path):
                    raise GitSourceError(f"{option} {path}: not a file")
        elif ssh_key is not None:
            raise GitSourceError(f"--ssh-key is for ssh repositories, not {self.scheme}")
        if credentials is not None and self.scheme == "http":
            host = urlsplit(self.url).hostname or ""
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "git source: %s is plain http: the credentials cross the network "
                    "unencrypted; use https",
                    redact_url(self.url),
                )
        self.ssh_key = os.path.abspath(ssh_key) if ssh_key else None
        self.known_hosts = os.path.abspath(known_hosts) if known_hosts else None
        self.credentials = credentials
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.keep = keep
        self.metrics = metrics
        self.on_update = on_update
        self.in_use = in_use or (lambda: ())
        digest = hashlib.sha256(f"{redact_url(self.url)}\0{self.ref.value}".encode()).hexdigest()
        self.base = os.path.join(root, "agent", "git", digest[:16])
        self.repo = os.path.join(self.base, "repo.git")
        self.trees = os.path.join(self.base, "trees")
        self.link = os.path.join(self.base, "current")
        self._lock = threading.Lock()  # one fetch at a time
        self._cond = threading.Condition()
        self._wanted = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._subjects: dict[str, str] = {}
        self._published = 0  # commits published by this agent, for _gc
        self.reading: str | None = None  # the commit the last pass read (GitSource)
        # what the status shows
        self.fetches = 0
        self.failures = 0  # in a row
        self.last_fetch: float | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_reason: str | None = None
        self.fetched: str | None = None
        self.next_fetch: float | None = None

    # -- layout ------------------------------------------------------------------------------

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)

    def source(self) -> GitSource:
        path = os.path.join(self.link, self.subpath) if self.subpath else self.link
        return GitSource(path, self.link, self.subpath, fetcher=self)

    def current(self) -> str | None:
        """The commit the link points at (the one in use), or None before the first."""
        try:
            name = os.path.basename(os.readlink(self.link))
        except OSError:
            return None
        return name if _FULL_SHA.match(name) else None

    def prepare(self) -> None:
        """Create the private directories and clear what an interrupted agent left: temp
        trees and links, and git's lock and temp files. Runs before any git does."""
        for directory in (os.path.dirname(self.base), self.base, self.trees):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
        end_orphans(self.base)
        for parent in (self.base, self.trees):
            for name in os.listdir(parent):
                if name.startswith(".tmp-"):
                    log.info("git source: removing %s left by an interrupted agent", name)
                    _remove(os.path.join(parent, name))
        if os.path.isdir(self.repo):
            for directory, dirs, files in os.walk(self.repo):
                for name in files:
                    if name.endswith(".lock") or name.startswith("tmp_"):
                        log.info("git source: removing a stale %s", name)
                        _remove(os.path.join(directory, name))
                for name in list(dirs):
                    if name.startswith(("incoming-", "tmp_objdir")):
                        _remove(os.path.join(directory, name))
                        dirs.remove(name)
        target = self.current()
        if os.path.islink(self.link) and (
            target is None or not os.path.isdir(os.path.join(self.trees, target))
        ):
            log.warning("git source: the current link points nowhere; removed")
            os.unlink(self.link)
        self._askpass()

    def _askpass(self) -> str:
        """A private script that answers git's prompts from its own environment: the
        password is never in a file, an argv, or the repository's config."""
        path = os.path.join(self.base, "askpass.sh")
        body = (
            "#!/bin/sh\n"
            "# written by pyapply: answers git's credential prompts from its environment\n"
            'case "$1" in\n'
            '  Username*) printf "%s\\n" "$PYAPPLY_ASKPASS_USERNAME" ;;\n'
            '  *) printf "%s\\n" "$PYAPPLY_ASKPASS_PASSWORD" ;;\n'
            "esac\n"
        )
        try:
            with open(path) as fh:
                if fh.read() == body:
                    return path
        except OSError:
            pass
        tmp = os.path.join(self.base, ".tmp-askpass")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        os.replace(tmp, path)
        return path

    def env(self) -> dict[str, str]:
        """The environment of every git child: no user or system config (a credential
        helper there could store the password), no prompts, only our transports."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": self.base,
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": ":".join(ALLOWED_SCHEMES),
            "GIT_ASKPASS": os.path.join(self.base, "askpass.sh"),
            "SSH_ASKPASS_REQUIRE": "never",
            # inherited by git's helpers (ssh, remote-http): how a restarted agent finds
            # what a killed one left running (`end_orphans`)
            MARKER: self.base,
        }
        if self.credentials is not None:
            env["PYAPPLY_ASKPASS_USERNAME"] = self.credentials.username
            env["PYAPPLY_ASKPASS_PASSWORD"] = self.credentials.password
        if self.scheme == "ssh":
            env["GIT_SSH_COMMAND"] = ssh_command(
                SSH.find() or "ssh", self.ssh_key, self.known_hosts, self.timeout_s
            )
            env["GIT_SSH_VARIANT"] = "ssh"
        return env

    def _git(
        self, *args: str, timeout: float | None = None, extra: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            GIT.find() or "git",
            "-c",
            "credential.helper=",
            "-c",
            f"http.lowSpeedTime={max(1, int(timeout or self.timeout_s))}",
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            "gc.auto=0",  # no background gc that outlives the fetch; see _gc
            *args,
        ]
        env = self.env()
        if extra:
            env.update(extra)
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a time-out ends git and its helpers (ssh, remote-http)
            preexec_fn=_die_with_parent,
        )
        try:
            out, err = proc.communicate(timeout=timeout or self.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    # -- fetching ----------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        return [self.credentials.password] if self.credentials else []

    def _init_repo(self) -> None:
        if os.path.isfile(os.path.join(self.repo, "HEAD")):
            return
        # made aside and renamed: a repository is either complete or absent
        tmp = tempfile.mkdtemp(prefix=".tmp-repo-", dir=self.base)
        out = self._git("init", "-q", "--bare", tmp, timeout=30)
        if out.returncode != 0:
            _remove(tmp)
            raise GitSourceError(f"git init: {out.stderr.strip()}")
        if os.path.exists(self.repo):
            _remove(self.repo)
        os.rename(tmp, self.repo)

    def fetch_once(self) -> FetchResult:
        """One fetch, checkout and flip. Never raises: the outcome is recorded."""
        with self._lock:
            started = time.monotonic()
            try:
                commit, changed = self._fetch_and_publish()
            except subprocess.TimeoutExpired:
                result = FetchResult(
                    False,
                    error=f"git fetch timed out after {self.timeout_s:g}s",
                    reason="timeout",
                    seconds=time.monotonic() - started,
                )
            except (GitSourceError, OSError) as exc:
                message = redact_text(str(exc), self._secrets())
                if any(m in message.lower() for m in _DAMAGED):
                    # the published trees are whole and stay in use; the next fetch clones
                    log.warning(
                        "git source: %s is damaged (%s): fetched afresh", self.repo, message
                    )
                    _remove(self.repo)
                result = FetchResult(
                    False,
                    error=message,
                    reason=classify(message),
                    seconds=time.monotonic() - started,
                )
            else:
                result = FetchResult(True, commit, changed, seconds=time.monotonic() - started)
            self._record(result)
        if result.ok and result.changed and self.on_update is not None and result.commit:
            self.on_update(f"git:{result.commit[:12]}")
        return result

    def _fetch_and_publish(self) -> tuple[str, bool]:
        self._init_repo()
        repo = ["--git-dir", self.repo]
        have = None
        if self.ref.kind == "sha":
            # a pinned commit already here needs no network
            probe = self._git(*repo, "cat-file", "-e", f"{self.ref.value}^{{commit}}", timeout=30)
            if probe.returncode == 0:
                have = self.ref.value
        if have is None:
            out = self._git(
                *repo,
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--depth",
                "1",
                "--",
                self.url,
                self.ref.refspec,
            )
            if out.returncode != 0:
                raise GitSourceError(self._message(out.stderr) or "git fetch failed")
            resolved = self._git(
                *repo, "rev-parse", "--verify", "--quiet", f"{_FETCHED}^{{commit}}", timeout=30
            )
            have = resolved.stdout.strip()
            if resolved.returncode != 0 or not _FULL_SHA.match(have):
                raise GitSourceError(f"{self.ref} does not name a commit")
        self.fetched = have
        changed = self._publish(have)
        self._prune()
        if changed:
            self._gc()
        return have, changed

    def _gc(self) -> None:
        """Now and then, drop the objects of commits no longer fetched (each shallow fetch
        adds a pack; nothing else refers to old ones). In the fetch's thread and time limit,
        never git's background auto-gc, which would outlive a fetch and hold locks."""
        self._published += 1
        if self._published % GC_EVERY:
            return
        out = self._git("--git-dir", self.repo, "gc", "--quiet", "--prune=now")
        if out.returncode != 0:
            log.warning("git source: gc failed: %s", self._message(out.stderr))

    def _message(self, stderr: str) -> str:
        lines = [
            ln.strip()
            for ln in stderr.splitlines()
            if ln.strip() and not any(b in ln for b in _BOILERPLATE)
        ]
        # the last lines say what failed (ssh's reason comes before git's "fatal:")
        return redact_text("; ".join(lines[-4:])[-800:], self._secrets())

    def _publish(self, commit: str) -> bool:
        """Check `commit` out into its own tree (unless it is there) and point the link at
        it. True when the link moved."""
        tree = os.path.join(self.trees, commit)
        if not os.path.isdir(tree):
            stage = tempfile.mkdtemp(prefix=".tmp-", dir=self.trees)
            index = os.path.join(self.base, f".tmp-index-{os.path.basename(stage)}")
            try:
                own_index = {"GIT_INDEX_FILE": index}
                for args in (
                    ("--git-dir", self.repo, "read-tree", commit),
                    ("--git-dir", self.repo, "--work-tree", stage, "checkout-index", "-a", "-f"),
                ):
                    out = self._git(*args, extra=own_index)
                    if out.returncode != 0:
                        raise GitSourceError(
                            f"checkout of {commit[:12]}: {self._message(out.stderr)}"
                        )
                if self.subpath:
                    inside = os.path.realpath(os.path.join(stage, self.subpath))
                    if not inside.startswith(os.path.realpath(stage) + os.sep):
                        raise GitSourceError(
                            f"commit {commit[:12]}: --path {self.subpath} leads out of the "
                            "repository (a symbolic link)"
                        )
                os.chmod(stage, 0o755)
                os.rename(stage, tree)
            finally:
                _remove(stage)
                _remove(index)
        if self.current() == commit:
            return False
        os.utime(tree)  # last used: what retention goes by
        tmp_link = os.path.join(self.base, f".tmp-link-{os.getpid()}")
        _remove(tmp_link)
        os.symlink(os.path.join("trees", commit), tmp_link)
        os.replace(tmp_link, self.link)
        _fsync_dir(self.base)
        log.info(
            "git source: %s %s is at %s; published",
            self.shown_url,
            self.ref,
            commit[:12],
            extra={"fields": {"commit": commit}},
        )
        return True

    def _prune(self) -> None:
        protect = {self.reading} if self.reading else set()
        trees = os.path.realpath(self.trees)
        for directory in self.in_use():
            rel = os.path.relpath(os.path.realpath(directory), trees)
            if not rel.startswith(".."):
                protect.add(rel.split(os.sep)[0])
        found = []
        for name in os.listdir(self.trees):
            if name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                found.append((name, os.stat(os.path.join(self.trees, name)).st_mtime))
        for name in stale_trees(found, self.current(), self.keep, protect):
            log.debug("git source: removing old tree %s", name)
            _remove(os.path.join(self.trees, name))

    def _record(self, result: FetchResult) -> None:
        now = time.time()
        self.fetches += 1
        self.last_fetch = now
        if self.metrics is not None:
            self.metrics.git_fetch(result.seconds, result.reason if not result.ok else None)
        if result.ok:
            self.failures = 0
            self.last_success = now
            self.last_error = None
            self.last_reason = None
            return
        self.failures += 1
        self.last_error = result.error
        self.last_reason = result.reason
        log.error(
            "git source: fetching %s %s failed (%s): %s; the last good revision (%s) stays",
            self.shown_url,
            self.ref,
            result.reason,
            result.error,
            (self.current() or "none")[:12],
            extra={"fields": {"fetch_error": result.error, "reason": result.reason}},
        )

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pyapply-git", daemon=True)
        self._thread.start()

    def fetch_now(self, wait: bool = False, timeout: float | None = None) -> bool:
        """Ask for a fetch now (a webhook, `pyapply sync`). With `wait`, return once a fetch
        that started after this call is over (True), or after `timeout` (False)."""
        with self._cond:
            ticket = self.fetches + (2 if self._lock.locked() else 1)
            self._wanted = True
            self._cond.notify_all()
            if not wait:
                return True
            deadline = time.monotonic() + (timeout if timeout is not None else self.timeout_s + 5)
            while self.fetches < ticket and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.fetches >= ticket

    def _run(self) -> None:
        last_try = 0.0
        while True:
            with self._cond:
                if self._stopped:
                    return
            # at most one attempt a second, however often it is asked
            pause = last_try + 1.0 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            last_try = time.monotonic()
            self.fetch_once()
            delay = next_delay(self.poll_s, self.failures)
            due = time.monotonic() + delay
            self.next_fetch = time.time() + delay
            with self._cond:
                self._cond.notify_all()  # fetch_now(wait=True) callers
                while not self._stopped and not self._wanted:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._wanted = False

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- views -------------------------------------------------------------------------------

    def subject(self, commit: str) -> str:
        subject = self._subjects.get(commit)
        if subject is None:
            try:
                out = self._git(
                    "--git-dir", self.repo, "log", "-1", "--format=%s", commit, timeout=30
                )
                subject = out.stdout.strip() if out.returncode == 0 else ""
            except (OSError, subprocess.TimeoutExpired):
                subject = ""
            if len(self._subjects) > 1000:
                self._subjects.clear()
            self._subjects[commit] = subject
        return subject

    def status(self) -> dict[str, Any]:
        """The `git` part of the agent's status (the API's Status.git)."""
        return {
            "url": self.shown_url,
            "ref": str(self.ref),
            "path": self.subpath or None,
            "commit": self.current(),
            "fetched": self.fetched,
            "last_fetch": self.last_fetch,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "error_kind": self.last_reason,
            "failures": self.failures,
            "next_fetch": self.next_fetch,
        }


@dataclass(frozen=True)
class GitSource(Source):
    """The git-sync link the fetcher keeps: the existing `Source`, plus the commit's subject,
    and a clear error instead of an empty directory before the first fetch."""

    fetcher: GitFetcher | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return "repo"

    def snapshot(self) -> Snapshot:
        """The link read once; the revision is the commit the tree is named after (trees
        never change once published, and no enclosing work tree can be mistaken for it)."""
        fetcher = self.fetcher
        assert fetcher is not None and self.link is not None
        target = os.path.realpath(self.link)
        commit = os.path.basename(target)
        if not os.path.islink(self.link) or not _FULL_SHA.match(commit):
            why = fetcher.last_error or "the first fetch has not finished"
            raise SourceNotReady(f"nothing fetched yet from {fetcher.shown_url}: {why}")
        fetcher.reading = commit  # a pass may be loading it: retention spares it
        directory = os.path.join(target, self.sub) if self.sub else target
        revision = Revision(id=commit[:12], subject=fetcher.subject(commit), commit=commit)
        return Snapshot(directory, revision)


def ssh_command(ssh: str, key: str | None, known_hosts: str | None, timeout_s: float) -> str:
    """GIT_SSH_COMMAND: only the given key and known_hosts, no user config, no prompts; an
    unknown or changed host key fails the fetch."""
    args = [
        ssh,
        "-F",
        os.devnull,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts or os.devnull}",
        "-o",
        f"GlobalKnownHostsFile={os.devnull}",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"ConnectTimeout={max(1, int(timeout_s))}",
        "-o",
        "ServerAliveInterval=15",
    ]
    if key is not None:
        args += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", key]
    return " ".join(shlex.quote(a) for a in args)


MARKER = "PYAPPLY_GIT_SOURCE"


def end_orphans(base: str, proc: str = "/proc") -> list[int]:
    """SIGKILL the processes a killed agent's fetch left behind: git dies with its agent,
    but its helpers (git-remote-http, ssh) can hang on a stalled server. They are the
    processes whose environment carries our marker with this source's directory; only
    they are ended, by pid. Returns their pids."""
    wanted = f"{MARKER}={base}".encode()
    ended = []
    me = os.getpid()
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(os.path.join(proc, name, "environ"), "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if wanted in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(name), signal.SIGKILL)
                ended.append(int(name))
    if ended:
        log.warning(
            "git source: ended %d process(es) of an interrupted fetch: %s", len(ended), ended
        )
    return ended


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
