"""The agent's own git source: `pyapply watch --repo URL [--ref R] [--path SUBDIR]`.

The agent fetches the repository itself instead of needing git-sync beside it, and lays the
result out the way git-sync does, so that the existing `Source` reads it unchanged:

    <state root>/agent/git/<digest of URL and ref>/      0700
        source.json        the URL (redacted) and ref this directory is for
        repo.git/          a bare repository, fetched shallow (depth 1) into refs/pyapply/fetched
        trees/<sha>/       one checked-out commit each; never changed once published
        current -> trees/<sha>   the symlink a pass reads once, replaced by an atomic rename

One agent runs on a state root (its lifetime lock), with one source: an agent started with
another URL or ref gets another directory, starts clean, and removes the directories of the
sources it had before (those that carry `source.json`, or older ones our askpass script);
nothing else under the state root is touched.

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
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from pyapply.reconciler.agent.git_rules import (
    ALLOWED_SCHEMES,
    BOILERPLATE,
    DAMAGED,
    DEFAULT_KEEP,
    DEFAULT_TIMEOUT_S,
    FETCHED_REF,
    FULL_SHA,
    GC_EVERY,
    Credentials,
    GitSourceError,
    SourceNotReady,
    check_ssh_key,
    check_subpath,
    check_url,
    classify,
    next_delay,
    parse_ref,
    redact_text,
    redact_url,
    ssh_command,
    stale_trees,
    url_scheme,
)
from pyapply.reconciler.agent.sources import Snapshot, Source
from pyapply.reconciler.manifest.revision import Revision
from pyapply.runtime.base import Hidden, Uncompared
from pyapply.runtime.native.hostbins import GIT, SSH
from pyapply.runtime.statefs import fsync_dir

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics

log = logging.getLogger("pyapply.agent")

# -- git runs --------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the git child, before exec: a SIGKILLed agent takes its fetch down with it, so a
    restarted agent finds no git still writing into the repository."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class FetchResult(msgspec.Struct, frozen=True):
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
            if not os.path.isfile(known_hosts):
                raise GitSourceError(f"--known-hosts {known_hosts}: not a file")
            if ssh_key is not None:
                check_ssh_key(ssh_key)
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
        return name if FULL_SHA.match(name) else None

    def prepare(self) -> None:
        """Create the private directories and clear what an interrupted agent left: temp
        trees and links, and git's lock and temp files; and what an agent on another URL or
        ref left (`_forget_other_sources`). Runs before any git does."""
        os.makedirs(os.path.dirname(self.base), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(self.base), 0o700)
        self._forget_other_sources()
        self._claim()
        for directory in (self.base, self.trees):
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

    def identity(self) -> dict[str, str]:
        """What `source.json` holds: the URL as shown (never a password) and the ref."""
        return {"url": self.shown_url, "ref": self.ref.value}

    def _claim(self) -> None:
        """Make `base` this source's: a directory that says it was made for another URL or
        ref under the same name (only a digest collision or a hand edit could do that) is
        removed first, so the first fetch starts clean; then `source.json` says whose it
        is (one made before that file existed is for this URL and ref: its name says so)."""
        path = os.path.join(self.base, IDENTITY)
        found = read_identity(self.base)
        if found == self.identity():
            return
        if found is not None:
            log.warning(
                "git source: %s was made for %s %s: starting clean",
                self.base,
                found["url"],
                found["ref"],
            )
            end_orphans(self.base)
            _remove(self.base)
        os.makedirs(self.base, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.base, f".tmp-{IDENTITY}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.identity(), fh)
            fh.write("\n")
        os.replace(tmp, path)

    def _forget_other_sources(self) -> None:
        """Remove the directories of the sources an earlier agent on this state root
        followed (another URL or ref): their clones and work trees would otherwise stay
        forever. Only directories this code made are removed (`made_by_us`); a process a
        killed fetch of theirs left running is ended first, by its marker."""
        parent = os.path.dirname(self.base)
        for name in sorted(os.listdir(parent)):
            path = os.path.join(parent, name)
            if path == self.base or not made_by_us(path):
                continue
            was = read_identity(path) or {}
            log.info(
                "git source: removing %s, the clone and work trees of an earlier source (%s %s)",
                path,
                was.get("url", "unknown URL"),
                was.get("ref", ""),
            )
            end_orphans(path)
            _remove(path)

    def _askpass(self) -> str:
        """A private script that answers git's prompts from its own environment: the
        password is never in a file, an argv, or the repository's config."""
        path = os.path.join(self.base, "askpass.sh")
        body = (
            "#!/bin/sh\n"
            f"{_ASKPASS_HEADER} from its environment\n"
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
                if any(m in message.lower() for m in DAMAGED):
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
                *repo, "rev-parse", "--verify", "--quiet", f"{FETCHED_REF}^{{commit}}", timeout=30
            )
            have = resolved.stdout.strip()
            if resolved.returncode != 0 or not FULL_SHA.match(have):
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
            if ln.strip() and not any(b in ln for b in BOILERPLATE)
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
        with contextlib.suppress(OSError):
            fsync_dir(self.base)
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


class GitSource(Hidden, Uncompared, Source, frozen=True):
    """The git-sync link the fetcher keeps: the existing `Source`, plus the commit's subject,
    and a clear error instead of an empty directory before the first fetch."""

    __hidden__ = frozenset({"fetcher"})
    __uncompared__ = frozenset({"fetcher"})
    fetcher: GitFetcher | None = None

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
        if not os.path.islink(self.link) or not FULL_SHA.match(commit):
            why = fetcher.last_error or "the first fetch has not finished"
            raise SourceNotReady(f"nothing fetched yet from {fetcher.shown_url}: {why}")
        fetcher.reading = commit  # a pass may be loading it: retention spares it
        directory = os.path.join(target, self.sub) if self.sub else target
        revision = Revision(id=commit[:12], subject=fetcher.subject(commit), commit=commit)
        return Snapshot(directory, revision)


MARKER = "PYAPPLY_GIT_SOURCE"
IDENTITY = "source.json"
_ASKPASS_HEADER = "# written by pyapply: answers git's credential prompts"
_SOURCE_DIR = re.compile(r"[0-9a-f]{16}")


def read_identity(base: str) -> dict[str, str] | None:
    """The URL and ref a source directory was made for, or None if it does not say."""
    try:
        with open(os.path.join(base, IDENTITY)) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("url", "ref")):
        return None
    return {"url": doc["url"], "ref": doc["ref"]}


def made_by_us(path: str) -> bool:
    """Whether `path` (under `<root>/agent/git`) is a source directory a GitFetcher made: a
    real directory named by a digest that holds `source.json`, or, made before that file
    existed, our askpass script."""
    if not _SOURCE_DIR.fullmatch(os.path.basename(path)):
        return False
    if os.path.islink(path) or not os.path.isdir(path):
        return False
    if read_identity(path) is not None:
        return True
    try:
        with open(os.path.join(path, "askpass.sh")) as fh:
            return _ASKPASS_HEADER in fh.read(4096)
    except OSError:
        return False


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
