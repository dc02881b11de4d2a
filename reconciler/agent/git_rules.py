"""The pure rules of the agent's git source: which URLs, refs and paths are accepted, where
credentials come from and how they are checked, how a URL is shown (its user info
redacted), how a fetch failure is classed and how long to wait after it, which old trees go,
and the one ssh command line. No git runs here; `git_source` runs it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.runtime.statefs import secret_file_problem

# the only transports a repository URL may use (git refuses the others, e.g. ext::)
ALLOWED_SCHEMES = ("https", "http", "ssh", "git", "file")
# user@host:path (git's scp-like ssh syntax); `<helper>::<address>` is a remote helper: refused
_SCP_LIKE = re.compile(
    r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.\-\[\]]+):(?P<path>[^:\s]\S*)$"
)
FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
FETCHED_REF = "refs/pyapply/fetched"
# what git says of a damaged local repository (a disk fault, a file removed by hand)
DAMAGED = (
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
BOILERPLATE = ("Please make sure you have the correct access rights", "and the repository exists")
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


class RefSpec(msgspec.Struct, frozen=True):
    """What to follow: the remote's default branch, a branch or tag name, or a pinned SHA."""

    kind: str  # "default" | "name" | "sha"
    value: str = "HEAD"

    @property
    def refspec(self) -> str:
        """The forced refspec that fetches it (a force-pushed branch is followed)."""
        return f"+{self.value}:{FETCHED_REF}"

    def __str__(self) -> str:
        return "(default branch)" if self.kind == "default" else self.value


def parse_ref(ref: str | None) -> RefSpec:
    """`--ref`: nothing (the remote's HEAD), a full 40/64-hex commit (pinned), else a branch or
    tag name (`main`, `v1.2`, `refs/heads/main`), checked like `git check-ref-format` so that
    it can never be read as an option or a refspec of our own."""
    if ref is None or ref == "":
        return RefSpec("default")
    if FULL_SHA.match(ref):
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


def local_path(url: str) -> str | None:
    """The directory of a repository on this host (`/path`, `file:///path`), else None."""
    if url.startswith("/"):
        return url
    if "://" in url and urlsplit(url).scheme == "file":
        return _unquote(urlsplit(url).path) or None
    return None


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


class Credentials(msgspec.Struct, frozen=True):
    """An HTTPS user name and password (or token). Never printed."""

    username: str
    password: str

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


def check_ssh_key(path: str) -> None:
    """A deploy key must be a regular file only its owner can read (ssh refuses a looser
    one too, but only at the first fetch; here it is refused at start)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GitSourceError(f"--ssh-key {path}: {exc.strerror}") from None
    problem = secret_file_problem(st, path)
    if problem:
        raise GitSourceError(f"--ssh-key {path}: {problem}")


def read_credentials_file(path: str, url: str) -> Credentials:
    """The credentials file, refused unless it is a regular file only its owner can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise GitSourceError(f"--git-credentials-file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        problem = secret_file_problem(st, path)
        if problem:
            raise GitSourceError(f"--git-credentials-file {path}: {problem}")
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
