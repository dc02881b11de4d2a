"""The watch agent: triggers in, one reconcile pass at a time, history out.

Triggers -- file changes, the resync timer, runtime events, API requests -- go into one
`Triggers` set (`triggers.py`). The main thread takes everything pending and runs one pass;
whatever arrives during a pass is coalesced into exactly one more pass. Each pass holds the
host-wide lock that `pyapply apply` takes, so the agent and the CLI never act at once.

A pass:
1. picks what to apply: the pinned revision (after `rollback`) from the history, else one
   snapshot of the source;
2. skips it when only files changed and that revision was already attempted;
3. loads it; a revision that fails to load, or that would leave a stack that has
   containers with none (`reconciler.core.guard`), is recorded as failed/refused and the last
   good revision stays the desired state (self-healing goes on with it);
4. applies every stack, and removes the stacks whose manifests are gone (`--allow-empty`),
   through `engine.apply.apply_all` (the CLI's pass), recording a history entry when the
   revision is new, something was done, or someone asked (`passes.py`);
5. with `--progress-deadline`, judges a new revision: an apply that failed, or stacks not
   Healthy in time (looked at between passes, from the main loop), roll it back to the last
   Healthy revision, pinned `auto` until a newer revision arrives (`rollback.py` decides).

The history is never a single point of failure (`AgentHistory`): a damaged database is
moved aside and started afresh, and a record that cannot be written is logged and counted
while the pass goes on. What the agent shows (the status, each stack's health) is in
`status.py`; its log set-up in `logs.py`.

SIGTERM stops the trigger sources, cancels the executor (running actions finish, no new
ones start), and the agent exits 0 once the pass is over.
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import msgspec

from pyapply.reconciler.agent.actions import OwnStops
from pyapply.reconciler.agent.agent_history import AgentHistory
from pyapply.reconciler.agent.git_rules import SourceNotReady
from pyapply.reconciler.agent.git_source import GitFetcher
from pyapply.reconciler.agent.history import (
    HistoryError,
    Reset,
    UnknownRevision,
    materialise,
    snapshot_files,
)
from pyapply.reconciler.agent.logs import info, log, log_redaction
from pyapply.reconciler.agent.notify import rejected_event
from pyapply.reconciler.agent.passes import LastPass, Target, apply_target
from pyapply.reconciler.agent.rollback import (
    Probation,
    after_pass,
    check_every,
    judge,
    lift_auto_pin,
    remember,
)
from pyapply.reconciler.agent.sources import EventWatcher, FileWatcher, Snapshot, Source
from pyapply.reconciler.agent.status import stacks_health, status_view
from pyapply.reconciler.agent.triggers import FORCING, Changes, Triggers
from pyapply.reconciler.core import identity
from pyapply.reconciler.core.guard import ALLOW_HINT, Labelled, at_risk, emptied
from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import NO_SECRETS, Redactor
from pyapply.reconciler.core.translate import Desired
from pyapply.reconciler.engine.forks import default_signals_in_children
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    plan_stack,
)
from pyapply.reconciler.manifest.loader import Loaded, load
from pyapply.reconciler.manifest.policy import Policy, builtin, check
from pyapply.reconciler.manifest.revision import Revision
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.services import ServiceRuntime

if TYPE_CHECKING:
    from pyapply.reconciler.agent.metrics import Metrics
    from pyapply.reconciler.agent.notify import Notifier
    from pyapply.reconciler.agent.web import HttpServer
    from pyapply.reconciler.agent.webhook import WebhookServer
    from pyapply.reconciler.core.swarm import SwarmDesired
    from pyapply.reconciler.engine.execute import Executor

# The signals that stop the agent (a forked child gets their default action back).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class AgentOptions(msgspec.Struct):
    interval_s: float = 60.0
    jitter: float = 0.1
    debounce_s: float = 0.5
    poll_s: float = 10.0
    allow_empty: bool = False
    apply: ApplyOptions = msgspec.field(default_factory=ApplyOptions)
    runtime_events: bool = True
    # what the watched manifests may ask of the host: a revision with an ask this policy
    # denies is refused (recorded as failed, nothing applied)
    policy: Policy = msgspec.field(default_factory=lambda: builtin("restricted"))
    # `--progress-deadline`: seconds a new revision has to become Healthy before it is
    # rolled back to the last healthy one (None: no automatic rollback)
    progress_deadline_s: float | None = None


class Agent:
    def __init__(
        self,
        source: Source,
        root: str,
        options: AgentOptions,
        open_runtime: Callable[[], Runtime | ServiceRuntime],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.source = source
        self.root = root
        self.options = options
        self.open_runtime = open_runtime
        self.metrics = metrics
        self.history_resets: list[Reset] = []
        self.history_failures = 0
        self.history_last_failure: str | None = None
        self.history = AgentHistory(
            root, on_reset=self._history_reset, on_failure=self._history_failure
        )
        self.triggers = Triggers()
        # what live dashboard pages wait on: a pass ended, a container changed
        self.changes = Changes()
        self.runtime = open_runtime()
        self.started_at = time.time()
        self.pid = os.getpid()
        self.stopping = threading.Event()
        self.running = threading.Event()  # a pass is in progress
        self.executor: Executor | None = None
        self.state_lock = threading.Lock()
        self.good: Target | None = None  # the last revision that loaded (the desired state)
        # a swarm manager's (SwarmDesired) or one host's (Desired), as the runtime runs
        self.desired: list[Desired | SwarmDesired] = []
        self.attempted: str | None = None  # the last revision a pass was made for
        self.rejected: dict[str, list[str]] = {}  # revision -> why it was not applied
        # the last revision not applied, for the status: (revision, outcome, when, errors)
        self.last_rejected: tuple[str, str, float, list[str]] | None = None
        self.last = LastPass()
        self.source_revision: str | None = None
        self.own_stops = OwnStops()
        self.file_watcher: FileWatcher | None = None
        self.event_watcher: EventWatcher | None = None
        # `watch --repo`: the agent's own fetcher keeps the source's link up to date
        self.git: GitFetcher | None = None
        # the secrets of every stack loaded so far (a rotated secret's old value stays
        # hidden too): what the logs, the API and the history records never show
        self.redactor: Redactor = NO_SECRETS
        # set by `watch` when asked for (--notify, --webhook); shown in the status
        self.notifier: Notifier | None = None
        self.webhook: WebhookServer | None = None
        self.http: HttpServer | None = None  # --http: the dashboard and API over TCP
        # --progress-deadline: the revision applied and not yet Healthy, when its health is
        # looked at next (monotonic), and the automatic rollback the next pass applies
        # (bad revision, why) so that its notification can say so
        self.probation: Probation | None = None
        self.next_check = 0.0
        self.rolling_back: tuple[str, str] | None = None
        # revisions rolled back are never applied again: known bad, like those that fail
        # to load (a resync heals with the good one)
        for bad in self.history.rolled_back():
            self.rejected[bad] = ["rolled back automatically"]

    # -- the record is never a single point of failure ---------------------------------------

    def _history_reset(self, reset: Reset) -> None:
        self.history_resets.append(reset)
        if self.metrics is not None:
            self.metrics.history_reset(os.path.basename(reset.path))
        log.error(
            "HISTORY RESET: %s is damaged (%s); moved aside to %s and a new one started. "
            "Past passes%s are in the moved file; reconciling goes on",
            reset.path,
            reset.reason,
            reset.moved_to,
            " and rollback targets" if reset.path.endswith("revisions.db") else "",
            extra={"fields": {"history_reset": reset.to_json()}},
        )

    def _history_failure(self, what: str, exc: HistoryError) -> None:
        self.history_failures += 1
        self.history_last_failure = f"{what}: {exc}"
        if self.metrics is not None:
            self.metrics.history_failure(what)
        log.error(
            "history: cannot %s (%s); the pass goes on without it",
            what,
            exc,
            extra={"fields": {"history_failure": what}},
        )

    def learn_secrets(self, redactor: Redactor) -> None:
        self.redactor = self.redactor.union(redactor)
        log_redaction.use(self.redactor)

    # -- requests from the API (any thread) -----------------------------------------------

    def request(self, reason: str) -> int:
        return self.triggers.put(reason)

    def on_push(self, ref: str | None) -> int:
        """A push webhook for `ref` was accepted: a pass now (a git source fetches first).
        Returns the ticket of the pass, < 0 when the agent is stopping."""
        if self.git is not None:
            # the fetch publishes the new tree, whose switch asks for the pass (on_update)
            self.git.fetch_now()
        return self.request("webhook")

    def rollback(self, revision: str) -> tuple[str, int]:
        full = self.history.resolve(revision)
        self.history.pin(full, "manual")
        self.probation = None
        if self.metrics is not None:
            self.metrics.rollback("manual")
        info(f"rollback to {full} requested: pinned until resume", revision=full)
        return full, self.request("rollback")

    def resume(self) -> int:
        self.history.pin(None)
        info("resume requested: following the source again")
        return self.request("resume")

    # -- the main loop (main thread) ------------------------------------------------------

    def install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            self.shutdown(f"signal {signal.Signals(signum).name}")

        # children forked by libraries (pyroute2, for netns work) must not run these
        default_signals_in_children(STOP_SIGNALS, faulthandler_signals=(signal.SIGUSR1,))
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_term)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # thread dump on demand

    def shutdown(self, why: str) -> None:
        if os.getpid() != self.pid:
            return  # a forked child: the agent, its watchers and its log are not its own
        if self.stopping.is_set():
            return
        info(f"{why}: stopping (the running action, if any, finishes first)")
        self.stopping.set()
        self.triggers.close()
        self.changes.close()
        executor = self.executor
        if executor is not None:
            executor.cancel()
        for watcher in (self.file_watcher, self.event_watcher, self.git):
            if watcher is not None:
                watcher.stop()

    def attach_git(self, fetcher: GitFetcher) -> None:
        """Fetch on our own: a new commit triggers a pass; the trees of the last good
        revision are kept while old ones are removed."""
        fetcher.on_update = self.request
        fetcher.in_use = lambda: [self.good.directory] if self.good is not None else []
        self.git = fetcher

    def start_watchers(self) -> None:
        self.file_watcher = FileWatcher(
            self.source,
            self.request,
            debounce_s=self.options.debounce_s,
            poll_s=self.options.poll_s,
        )
        self.file_watcher.start()
        if self.git is not None:
            self.git.start()
        if isinstance(self.runtime, ServiceRuntime):
            # a swarm's service events are not followed: drift is repaired on the resync
            log.info("swarm runtime: no runtime events followed; drift is repaired on resync")
        elif self.options.runtime_events:
            # not a swarm (just checked): the opener gives a container runtime
            opener = cast(Callable[[], Runtime], self.open_runtime)
            self.event_watcher = EventWatcher(
                opener,
                self.request,
                self.history.managed_stacks,
                ours=self.own_stops,
                seen=self.changes.container_event,
            )
            self.event_watcher.start()

    def next_resync(self) -> float:
        spread = self.options.interval_s * self.options.jitter
        return time.monotonic() + self.options.interval_s + random.uniform(-spread, spread)

    def run(self) -> int:
        pruned = self.history.prune()
        if pruned:
            log.info("history: %d old pass(es) pruned", pruned)
        interrupted = self.history.close_running()
        if interrupted:
            log.warning("%d pass(es) of an earlier agent were interrupted", interrupted)
        where = self.source.path if self.git is None else f"{self.git.shown_url} {self.git.ref}"
        info(
            f"watching {where} ({self.source.kind}), resync every {self.options.interval_s:g}s",
            source=self.source.path,
            kind=self.source.kind,
            pinned=self.history.pinned(),
        )
        self.start_watchers()
        self.request("start")
        resync_at = self.next_resync()
        while not self.stopping.is_set():
            wake = resync_at if self.probation is None else min(resync_at, self.next_check)
            reasons = self.triggers.take(wake - time.monotonic())
            if self.stopping.is_set():
                break
            if self.probation is not None and time.monotonic() >= self.next_check:
                # between passes, bounded by the runtime's answers: a rollback it decides
                # on is a trigger like any other
                try:
                    self.check_progress()
                except Exception:
                    log.exception("health check of the revision on probation failed")
            if not reasons:
                if time.monotonic() < resync_at:
                    continue
                self.triggers.put("resync")
                reasons = self.triggers.take(0)
                if not reasons:
                    break  # closed meanwhile
            if "resync" in reasons or any(r.split(":")[0] in FORCING for r in reasons):
                resync_at = self.next_resync()  # any full pass repairs drift: restart the timer
            try:
                self.running.set()
                self.reconcile(reasons)
            except Exception:
                log.exception("pass failed unexpectedly")
            finally:
                self.running.clear()
                self.triggers.done()
                self.changes.bump()
        info("stopped")
        for watcher in (self.file_watcher, self.event_watcher, self.git):
            if watcher is not None:
                watcher.stop()
        return 0

    # -- one pass -------------------------------------------------------------------------

    def pick(self) -> tuple[Snapshot, bool]:
        """The snapshot to apply now and whether it is a pinned one."""
        pinned = self.history.pinned()
        if pinned and self.history.pin_reason() == "auto":
            # an automatic rollback's pin lasts until the source shows a newer revision
            try:
                snap = self.source.snapshot()
            except Exception as exc:  # the source unreadable: stay on the pinned one
                log.debug("source not readable while pinned (%s)", exc)
            else:
                rolled_back = self.history.rolled_back()
                if lift_auto_pin("auto", snap.revision.id, pinned, rolled_back):
                    info(
                        f"revision {snap.revision.id} arrived: the automatic rollback to "
                        f"{pinned} is lifted, following the source again",
                        revision=snap.revision.id,
                    )
                    self.history.pin(None)
                    return snap, False
        if pinned:
            directory = os.path.join(self.root, "agent", "pinned", pinned.replace("/", "_"))
            if self.good is not None and self.good.directory == directory:
                return Snapshot(directory, self.good.revision), True
            try:
                full, subject, files = self.history.revision_files(pinned)
            except (HistoryError, UnknownRevision) as exc:
                # its files went with a damaged revisions.db: following the source is the
                # only desired state left (the pin would otherwise stop all reconciling)
                log.error(
                    "the pinned revision %s cannot be read (%s): unpinned, following the "
                    "source again",
                    pinned,
                    exc,
                )
                self.history.pin(None)
                return self.source.snapshot(), False
            materialise(files, directory)
            return Snapshot(directory, Revision(id=full, subject=subject)), True
        return self.source.snapshot(), False

    def reconcile(self, reasons: set[str]) -> None:
        kinds = {r.split(":")[0] for r in reasons}
        trigger = ",".join(sorted(reasons))
        started = time.time()
        try:
            snap, pinned = self.pick()
        except SourceNotReady as exc:
            log.info("%s", exc)  # `watch --repo` before its first successful fetch
            return
        except Exception as exc:
            log.error("cannot read the source %s: %s", self.source.path, exc)
            return
        rev = snap.revision
        self.source_revision = rev.id
        forcing = bool(kinds & FORCING)
        if not forcing and rev.id == self.attempted:
            log.debug("revision %s already attempted; file event ignored", rev.id)
            return
        target: Target | None
        if rev.id in self.rejected and not (kinds & {"api", "resume"}):
            # still a revision known to be bad: heal with the good one (asked-for passes
            # load it again, so that the answer says why the source is not applied)
            target, new_revision = self.good, False
        else:
            new_revision = rev.id != self.attempted
            target = self.load(snap, pinned, trigger, started)
            if target is not None:
                try:
                    refusal = self.refusal(target)
                except RuntimeFailure as exc:
                    log.error(
                        "revision %s: cannot observe the runtime to check it (%s); "
                        "trying again on the next pass",
                        rev.id,
                        exc.message,
                    )
                    return
                if refusal:
                    self.reject(rev, trigger, started, "refused", [refusal], snap.directory)
                    target = None
            if target is None:
                if not forcing:
                    return
                target, new_revision = self.good or self.recorded_good(), False
        if target is None:
            return
        self.apply(target, trigger, kinds, started, new_revision=new_revision)

    def recorded_good(self) -> Target | None:
        """After a restart on a bad revision: the last revision that succeeded, from the
        history, so that self-healing has a desired state."""
        try:
            records = self.history.passes(limit=200)
        except HistoryError as exc:
            log.error("cannot read the history for the last applied revision: %s", exc)
            return None
        for record in records:
            if record.outcome != "succeeded":
                continue
            try:
                full, subject, files = self.history.revision_files(record.revision)
                directory = os.path.join(self.root, "agent", "last-good")
                materialise(files, directory)
                loaded = self.checked(directory)[0]
            except Exception as exc:  # a revision whose files are lost, or no longer load
                log.warning("cannot use the recorded revision %s: %s", record.revision, exc)
                return None
            if loaded is None:
                log.warning("the recorded revision %s is denied by the policy", record.revision)
                return None
            log.info("the source does not load: keeping %s (last applied) in place", full)
            self.good = Target(Revision(id=full, subject=subject), directory, loaded)
            return self.good
        return None

    def load(self, snap: Snapshot, pinned: bool, trigger: str, started: float) -> Target | None:
        rev = snap.revision
        loaded: Loaded | None = None
        errors: list[str] = []
        try:
            loaded, errors = self.checked(snap.directory)
        except ManifestError as exc:
            errors = [str(p) for p in exc.problems]
        except OSError as exc:
            errors = [str(exc)]
        if not pinned and self.source.link is None:
            again = self.source.snapshot().revision
            if again.id != rev.id:
                # the tree moved while it was read (a commit or pull in progress): again
                log.info(
                    "the source moved while loading (%s -> %s): reading it again", rev.id, again.id
                )
                self.request("file")
                return None
        if loaded is None:
            self.reject(rev, trigger, started, "failed", errors, snap.directory)
            return None
        for warning in loaded.warnings:
            log.warning("%s", warning)
        return Target(rev, snap.directory, loaded, pinned)

    def checked(self, directory: str) -> tuple[Loaded | None, list[str]]:
        """Load a revision and check it against the policy: (the loaded manifests, []) or,
        when the policy denies something, (None, the located denials). Env files the policy
        denies are not even read. Raises ManifestError when it does not load."""
        policy = self.options.policy
        loaded = load([directory], file_guard=policy.file_guard())
        findings = check(loaded, policy)
        for finding in findings:
            if finding.action == "warn":
                log.warning("%s", finding)
        denied = [str(f) for f in findings if f.action == "deny"]
        if isinstance(self.runtime, ServiceRuntime):
            # what cannot exist on a swarm refuses the revision, as `pyapply apply` does
            from pyapply.reconciler.manifest.swarm_check import check_swarm

            for problem in check_swarm(loaded):
                if problem.severity == "error":
                    denied.append(str(problem))
                else:
                    log.warning("%s", problem)
        return (None, denied) if denied else (loaded, [])

    def reject(
        self,
        rev: Revision,
        trigger: str,
        started: float,
        outcome: str,
        errors: list[str],
        directory: str,
    ) -> None:
        self.attempted = rev.id
        self.rejected[rev.id] = errors
        with suppress(OSError):
            self.history.store_revision(rev.id, rev.subject, directory, snapshot_files(directory))
        errors = self.redactor.value(errors)
        self.last_rejected = (rev.id, outcome, time.time(), errors)
        pid = self.history.begin(rev.id, self.redactor.text(rev.subject), trigger, started=started)
        self.history.finish(pid, outcome, {}, errors)  # type: ignore[arg-type]
        with self.state_lock:
            self.last = LastPass(
                rev.id,
                trigger,
                outcome,
                started,
                time.time(),
                errors,
                {},
                pid if pid >= 0 else None,
            )
        if self.metrics is not None:
            self.metrics.rejected(outcome)
        if self.notifier is not None:
            self.notifier.emit(
                rejected_event(
                    revision=rev.id,
                    subject=rev.subject,
                    trigger=trigger,
                    outcome=outcome,
                    errors=errors,
                    at=time.time(),
                )
            )
        log.error(
            "revision %s %s: %s; the last good state stays in place",
            rev.id,
            "does not load" if outcome == "failed" else "refused",
            "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""),
            extra={"fields": {"revision": rev.id, "outcome": outcome, "errors": errors}},
        )

    def refusal(self, target: Target) -> str | None:
        """Why this revision must not be applied: it would leave a stack with containers with
        none (`reconciler.core.guard` decides). Raises RuntimeFailure when the runtime cannot be
        observed (the revision is then tried again on the next pass)."""
        if self.options.allow_empty:
            return None
        gone = self.history.managed_stacks() - {s.name for s in target.loaded.stacks}
        risky = at_risk(target.loaded.stacks, gone)
        if not risky:
            return None
        rt = self.runtime
        owned: list[Labelled]
        if isinstance(rt, ServiceRuntime):  # a swarm stack's services count as its containers
            owned = [s for name in risky for s in rt.list_services({identity.STACK: name})]
        else:
            owned = [c for name in risky for c in rt.list_containers({identity.STACK: name})]
        found = emptied(target.loaded.stacks, owned, gone)
        if not found:
            return None
        return "; ".join(str(e) for e in found) + f"; {ALLOW_HINT}"

    def keep_executor(self, executor: Executor) -> None:
        self.executor = executor
        if self.stopping.is_set():
            executor.cancel()

    def apply(
        self, target: Target, trigger: str, kinds: set[str], started: float, *, new_revision: bool
    ) -> None:
        apply_target(self, target, trigger, kinds, started, new_revision=new_revision)
        self.after_apply(target, new_revision=new_revision)

    # -- automatic rollback (--progress-deadline) --------------------------------------------

    def after_apply(self, target: Target, *, new_revision: bool) -> None:
        """A revision was applied: put it on probation, or roll it back at once when its
        apply failed (`rollback.after_pass` decides)."""
        if target.pinned:
            self.probation = None  # a rollback's target is not judged again
        with self.state_lock:
            last = self.last
        verdict = after_pass(
            deadline_s=self.options.progress_deadline_s,
            pinned=target.pinned,
            new_revision=new_revision,
            outcome=last.outcome,
            errors=last.errors,
        )
        rev = target.revision.id
        if verdict.action == "rollback":
            self.roll_back(rev, verdict.reason)
        elif verdict.action == "wait" and self.options.progress_deadline_s is not None:
            now = time.time()
            self.probation = Probation(rev, now, now + self.options.progress_deadline_s)
            self.next_check = time.monotonic()  # right away: it may be Healthy already

    def check_progress(self) -> None:
        """Look at the health of the revision on probation: it passes (the new rollback
        target), waits, or is rolled back past its deadline."""
        probation = self.probation
        if probation is None:
            return
        deadline_s = self.options.progress_deadline_s or 0.0
        self.next_check = time.monotonic() + check_every(deadline_s)
        if self.good is None or self.good.revision.id != probation.revision:
            self.probation = None  # superseded meanwhile
            return
        with self.state_lock:
            desired = list(self.desired)
        health = stacks_health(self, self.runtime, desired)
        verdict = judge(probation, health, time.time())
        if verdict.action == "healthy":
            self.probation = None
            self.history.set_last_healthy(probation.revision)
            info(
                f"revision {probation.revision} is Healthy: the target of an automatic "
                "rollback from now on",
                revision=probation.revision,
            )
        elif verdict.action == "rollback":
            self.roll_back(probation.revision, verdict.reason)

    def roll_back(self, bad: str, reason: str) -> None:
        """Mark `bad` rolled back, pin the last healthy revision (`auto`) and ask for the
        pass that applies it. Without a healthy revision to go back to, `bad` stays."""
        self.probation = None
        good = self.history.last_healthy()
        if good is None or good == bad:
            log.error(
                "revision %s is bad (%s), but no earlier revision was Healthy: nothing to "
                "roll back to, it stays",
                bad,
                reason,
                extra={"fields": {"revision": bad, "reason": reason}},
            )
            return
        self.history.mark_rolled_back(bad, self.redactor.text(reason))
        self.history.set_rolled_back(remember(self.history.rolled_back(), bad))
        self.rejected[bad] = [reason]
        # the record first: a status that shows the automatic pin (read by another thread)
        # always shows the rollback that made it
        self.history.set_state(
            "last_rollback",
            {"revision": bad, "to": good, "reason": self.redactor.text(reason), "at": time.time()},
        )
        self.history.pin(good, "auto")
        if self.metrics is not None:
            self.metrics.rollback("auto")
        self.rolling_back = (bad, self.redactor.text(reason))
        log.error(
            "revision %s rolled back to %s: %s; pinned until a newer revision arrives",
            bad,
            good,
            reason,
            extra={"fields": {"revision": bad, "to": good, "reason": reason}},
        )
        self.request("rollback:auto")

    # -- views for the API (any thread) ---------------------------------------------------

    def status(self, runtime: Runtime | ServiceRuntime) -> dict[str, Any]:
        return status_view(self, runtime)

    def diff(self, runtime: Runtime | ServiceRuntime) -> list[Plan]:
        with self.state_lock:
            desired = list(self.desired)
        if isinstance(runtime, ServiceRuntime):
            from pyapply.reconciler.core.swarm import SwarmDesired
            from pyapply.reconciler.engine.swarm import plan_swarm

            return [plan_swarm(runtime, d) for d in desired if isinstance(d, SwarmDesired)]
        return [
            plan_stack(runtime, d, prune_volumes=self.options.apply.prune_volumes)
            for d in desired
            if isinstance(d, Desired)
        ]
