"""What the agent watches: the manifests' source on disk, and the runtime's events.

A source is one of
- a plain directory, edited in place;
- a git work tree, moved on by `git pull`;
- a git-sync link: `<root>/<link>` is a symlink to `.worktrees/<sha>`, replaced by an
  atomic rename when a new commit is checked out. The path given may be the link or a
  directory below it.

Changes are seen with watchdog (inotify): a directory recursively; for a link, its parent
directory, where the rename happens. A slow poll of a cheap fingerprint backs it up (events
can be lost: inotify queue overflow, network file systems). Bursts are debounced, and a
pass then loads one snapshot: the link is read once and its target (which git-sync never
changes once published) is loaded.

Runtime events: every container of a managed stack that dies or is removed triggers a pass,
with a back-off per container when it keeps dying.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.manifest import discovery
from pyapply.reconciler.manifest.revision import Revision, of_directory
from pyapply.runtime.base import Runtime

log = logging.getLogger("pyapply.agent")

_SHA = re.compile(r"^[0-9a-f]{7,64}$")
# watchdog event types that mean "content may have changed" (not opened / closed_no_write)
_CHANGE_EVENTS = frozenset({"created", "deleted", "modified", "moved", "closed"})


class Snapshot(msgspec.Struct, frozen=True):
    """One consistent view of the manifests: the directory to load, and its revision."""

    directory: str
    revision: Revision


class Source(msgspec.Struct, frozen=True):
    path: str  # absolute, as given
    link: str | None = None  # the git-sync symlink at or above `path`
    sub: str = ""  # `path` relative to the link

    @classmethod
    def of(cls, path: str) -> Source:
        absolute = os.path.abspath(path)
        probe = absolute
        while True:
            if os.path.islink(probe):
                rel = os.path.relpath(absolute, probe)
                return cls(absolute, probe, "" if rel == "." else rel)
            parent = os.path.dirname(probe)
            if parent == probe:
                return cls(absolute)
            probe = parent

    @property
    def kind(self) -> str:
        if self.link is not None:
            return "link"
        return "git" if _git_dir(self.path) else "dir"

    def resolve(self) -> str:
        """The directory to load now: the link read once, so a flip in the middle of a load
        cannot mix two revisions."""
        if self.link is None:
            return self.path
        target = os.path.realpath(self.link)
        return os.path.join(target, self.sub) if self.sub else target

    def snapshot(self) -> Snapshot:
        directory = self.resolve()
        return Snapshot(directory, directory_revision(directory, self.link))

    def watch_dirs(self) -> list[tuple[str, bool]]:
        """(directory, recursive) pairs for watchdog."""
        if self.link is not None:
            return [(os.path.dirname(self.link), False)]
        dirs = [(self.path, True)]
        git_dir = self.git_dir
        if git_dir is not None and not git_dir.startswith(self.path + os.sep):
            dirs.append((git_dir, True))
        return dirs

    def relevant(self, path: str) -> bool:
        """Whether a file event on `path` can change the manifests or their revision."""
        if self.link is not None:
            return path == self.link
        git_dir = self.git_dir
        if git_dir is not None and (path + os.sep).startswith(git_dir + os.sep):
            # a commit, a pull or a checkout moves HEAD or a branch; the rest is noise
            inside = os.path.relpath(path, git_dir)
            return inside in ("HEAD", "packed-refs") or inside.startswith("refs" + os.sep + "heads")
        rel = os.path.relpath(path, self.path)
        if rel == "." or rel.startswith(".."):
            return False
        parts = rel.split(os.sep)
        # like the loader: nothing inside dot-directories (.git, .worktrees ...) matters
        return not any(p.startswith(".") and p != "." for p in parts[:-1]) and parts[-1] != ".git"

    @property
    def git_dir(self) -> str | None:
        """The .git directory of the work tree holding `path` (not for a git-sync link)."""
        if self.link is not None:
            return None
        probe = self.path
        while True:
            candidate = os.path.join(probe, ".git")
            if os.path.isdir(candidate):
                return candidate
            if os.path.exists(candidate):
                return None  # a worktree's .git file: its refs live elsewhere; the poll sees it
            parent = os.path.dirname(probe)
            if parent == probe:
                return None
            probe = parent

    def trees(self) -> list[str]:
        """The directories whose content the source brings: the path as given, and for a
        git-sync link the checkout it points at now (what a key file must stay out of)."""
        out = [self.path]
        if self.link is not None:
            out.append(os.path.realpath(self.link))
        return out

    def fingerprint(self) -> str:
        """Cheap identity of the current state, for the poll fallback."""
        if self.link is not None:
            try:
                return "link:" + os.readlink(self.link)
            except OSError as exc:
                return f"link-error:{exc.errno}"
        h = hashlib.sha256()
        git_dir = self.git_dir
        if git_dir is not None:
            for name in ("HEAD", "packed-refs"):
                with contextlib.suppress(OSError):
                    st = os.stat(os.path.join(git_dir, name))
                    h.update(f"{name}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
            for directory, _, files in os.walk(os.path.join(git_dir, "refs", "heads")):
                for name in files:
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(directory, name))
                        h.update(f"{name}\0{st.st_mtime_ns}\n".encode())
        for directory, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                p = os.path.join(directory, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                h.update(f"{p}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
        return h.hexdigest()


def inside(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or below it, either as written or with its links
    resolved (a link in the tree to a file outside counts as inside: the tree decides
    where it points)."""
    given = {os.path.abspath(path), os.path.realpath(path)}
    trees = {os.path.abspath(directory), os.path.realpath(directory)}
    return any(g == t or g.startswith(t.rstrip("/") + "/") for g in given for t in trees)


def _git_dir(path: str) -> bool:
    probe = os.path.abspath(path)
    while True:
        if os.path.exists(os.path.join(probe, ".git")):
            return True
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent


def manifest_files(directory: str) -> list[str]:
    """The manifest files the loader reads below `directory` (absolute paths, sorted): the
    loader's own walk (`reconciler.manifest.discovery`), so the agent sees what apply sees."""
    return discovery.manifest_files(directory)


def directory_revision(directory: str, link: str | None = None) -> Revision:
    """The revision of a directory, as `apply` records it (git commit with subject, else a
    content hash of the manifests; `reconciler.manifest.revision.of_directory`), without
    loading it: a revision that fails to load still has one. Under a git-sync link without
    a usable git, the target's name (the commit) is the revision."""
    revision = of_directory(directory)
    if revision.commit is None and link is not None:
        name = os.path.basename(os.path.realpath(link))
        if _SHA.match(name):
            return Revision(id=name[:12], commit=name)
    return revision


class FileWatcher:
    """Calls `fire("file")` once a burst of relevant file events has been quiet for
    `debounce_s` (at most 10 x debounce_s after the first), and `fire("poll")` when the poll
    sees a change (the pass's trigger then tells which of the two saw it)."""

    def __init__(
        self,
        source: Source,
        fire: Callable[[str], object],
        *,
        debounce_s: float = 0.5,
        poll_s: float = 10.0,
    ) -> None:
        self.source = source
        self.fire = fire
        self.debounce_s = debounce_s
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._first: float | None = None
        self._last = 0.0
        self._stopped = False
        self._stop_event = threading.Event()
        self._observer: object | None = None
        self._threads: list[threading.Thread] = []
        self._owner = os.getpid()

    def start(self) -> None:
        self._start_observer()
        for target, name in ((self._debounce_loop, "debounce"), (self._poll_loop, "poll")):
            t = threading.Thread(target=target, name=f"pyapply-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - a dependency; the poll still works
            log.warning("watchdog is not installed: polling every %gs", self.poll_s)
            return
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in _CHANGE_EVENTS:
                    return
                if event.is_directory and event.event_type in ("modified", "closed"):
                    return  # the entries' own events tell what changed
                paths = [event.src_path, getattr(event, "dest_path", "")]
                if any(
                    p and watcher.source.relevant(os.fsdecode(p))
                    for p in paths  # bytes or str, depending on the watchdog version
                ):
                    watcher.touch()

        observer = Observer()
        try:
            for directory, recursive in self.source.watch_dirs():
                observer.schedule(Handler(), directory, recursive=recursive)
            observer.daemon = True
            observer.start()
        except OSError as exc:
            log.warning(
                "cannot watch %s (%s): polling every %gs", self.source.path, exc, self.poll_s
            )
            return
        self._observer = observer

    def touch(self) -> None:
        with self._cond:
            now = time.monotonic()
            if self._first is None:
                self._first = now
            self._last = now
            self._cond.notify_all()

    def _debounce_loop(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._first is None:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                due = min(self._last + self.debounce_s, self._first + 10 * self.debounce_s)
                if now < due:
                    self._cond.wait(due - now)
                    continue
                self._first = None
                self._cond.release()
                try:
                    self.fire("file")
                finally:
                    self._cond.acquire()

    def _poll_loop(self) -> None:
        last = self.source.fingerprint()
        while not self._stop_event.wait(self.poll_s):
            current = self.source.fingerprint()
            if current != last:
                last = current
                log.debug("poll: %s changed", self.source.path)
                self.fire("poll")

    def stop(self) -> None:
        if os.getpid() != self._owner:
            # a forked child holds copies of the watcher, sharing its inotify instance:
            # stopping it would remove the watches for the parent too
            return
        self._stop_event.set()
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        observer = self._observer
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]


class Backoff:
    """Per-container crash back-off: the first deaths are acted on at once; a container that
    died `free` times within `window_s` waits 1, 2, 4 ... up to `max_s` seconds."""

    def __init__(self, free: int = 3, window_s: float = 60.0, max_s: float = 60.0) -> None:
        self.free = free
        self.window_s = window_s
        self.max_s = max_s
        self._deaths: dict[str, deque[float]] = {}

    def delay(self, name: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        deaths = self._deaths.setdefault(name, deque())
        deaths.append(now)
        while deaths and deaths[0] < now - self.window_s:
            deaths.popleft()
        extra = len(deaths) - self.free
        if extra <= 0:
            return 0.0
        return float(min(self.max_s, 2 ** (extra - 1)))


# container actions that can leave a managed container not as desired
DEATH_ACTIONS = frozenset({"die", "destroy", "oom"})


SUBSCRIBE_WAIT_S = 5.0  # how long the agent's start waits for the event stream


class EventWatcher:
    """Follows the runtime's event stream (reconnecting with back-off) and calls
    `fire("event:<container>")` when a container of a managed stack dies or is removed."""

    def __init__(
        self,
        open_runtime: Callable[[], Runtime],
        fire: Callable[[str], object],
        managed: Callable[[], set[str]],
        *,
        backoff: Backoff | None = None,
        ours: Callable[[str], bool] | None = None,
        seen: Callable[[str, str], object] | None = None,
    ) -> None:
        self.open_runtime = open_runtime
        # told (name, action) of each death or removal of a managed container that the
        # agent did not cause (the dashboard's live pages and restart counts), at once
        self.seen = seen
        self.fire = fire
        self.managed = managed
        self.ours = ours or (lambda name: False)
        self.backoff = backoff or Backoff()
        self._stopped = threading.Event()
        self._subscribed = threading.Event()
        self._runtime: Runtime | None = None
        self._timers: list[threading.Timer] = []
        self._owner = os.getpid()

    def start(self, wait_s: float = SUBSCRIBE_WAIT_S) -> None:
        """Follow the runtime's events from a thread; return once its first stream is open
        (at most `wait_s`), so a container that dies right after the agent's first pass is
        not missed until the resync (dockerd sends only what happens after the request)."""
        threading.Thread(target=self._run, name="pyapply-events", daemon=True).start()
        if not self._subscribed.wait(wait_s):
            log.warning("runtime events: not subscribed after %gs; going on", wait_s)

    def stop(self) -> None:
        if os.getpid() != self._owner:
            return  # a forked child: the event stream's connection is the parent's
        self._stopped.set()
        for t in self._timers:
            t.cancel()
        rt = self._runtime
        if rt is not None:
            with contextlib.suppress(Exception):  # closing a stream being read may complain
                rt.close()

    def _run(self) -> None:
        delay = 0.5
        first = True
        while not self._stopped.is_set():
            try:
                if self._runtime is not None:
                    with contextlib.suppress(Exception):
                        self._runtime.close()
                self._runtime = self.open_runtime()
                stream = self._runtime.events({identity.STACK: ""})
                self._subscribed.set()
                if not first:  # events were missed while disconnected
                    self.fire("resync")
                first = False
                delay = 0.5
                for event in stream:
                    if self._stopped.is_set():
                        return
                    self.handle(event.kind, event.action, event.name, event.labels)
            except Exception as exc:
                if self._stopped.is_set():
                    return
                log.warning("runtime events: %s; reconnecting in %gs", exc, delay)
            if self._stopped.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def handle(self, kind: str, action: str, name: str, labels: Mapping[str, str]) -> None:
        if kind == "container" and action.startswith("health_status") and self.seen is not None:
            # (dockerd's "health_status: healthy"): what live pages show, no reason for a pass
            if labels.get(identity.STACK) in self.managed():
                self.seen(name, "health_status")
            return
        if kind != "container" or action not in DEATH_ACTIONS:
            return
        if labels.get(identity.STACK) not in self.managed():
            return
        if self.ours(name):
            log.debug("container %s: %s by the agent itself", name, action)
            return
        if self.seen is not None:
            self.seen(name, action)
        # a removal is acted on at once; deaths count towards the crash back-off
        wait = 0.0 if action == "destroy" else self.backoff.delay(name)
        reason = f"event:{name}"
        if wait <= 0:
            self.fire(reason)
            return
        log.info("container %s keeps dying: acting on it in %gs", name, wait)
        timer = threading.Timer(wait, self.fire, args=(reason,))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()
