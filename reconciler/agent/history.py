"""The agent's record: every reconcile pass and the manifests of every revision, in sqlite.

Two databases under the state root, written by the watch agent and by `pyapply rollback`
when no agent runs, both mode 0600 from creation:

- `history.db`, the record people read and share (`pyapply history`, the API). It holds
  nothing secret: pass errors and subjects are redacted by the agent before they are
  written (`reconciler.core.redact`). Tables:
  - `passes`: one row per recorded pass (revision, trigger, start, end, plan summary,
    outcome, errors);
  - `state`: small key/value facts that outlive the agent: the pinned revision, the stacks
    the agent manages.
- `revisions.db`, attached to every connection as `rev`: table `revisions`, the files of
  each revision seen (so that a rollback can apply exactly what was applied then, even
  after git has moved on or garbage-collected it). Those files are the manifests, `.env`
  files and secrets' files as they are: secret, so kept apart from the record. A
  `history.db` of an earlier version that still has this table is moved here on open.

Every method opens its own short transaction; sqlite's own locking makes the CLI and the
agent safe to use it at the same time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.revision import (
    AmbiguousRevision,
    BadRevision,
    UnknownRevision,
    is_prefix,
    match_revision,
)
from pyapply.runtime.statefs import PRIVATE_FILE_MODE, open_private, private_dir, rmtree

__all__ = [
    "AmbiguousRevision",
    "BadRevision",
    "History",
    "PassRecord",
    "UnknownRevision",
    "materialise",
    "snapshot_files",
]

# `rolled-back`: a pass of a revision that `watch --progress-deadline` rolled back afterwards
Outcome = Literal["running", "succeeded", "failed", "refused", "interrupted", "rolled-back"]

DB_NAME = "history.db"
REVISIONS_DB_NAME = "revisions.db"
MAX_FILE_BYTES = 1 << 20  # a revision's file larger than this is not stored
MAX_REVISION_BYTES = 16 << 20
KEEP_PASSES = 5000  # the agent prunes older passes when it starts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    trigger TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    errors TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS passes_revision ON passes (revision);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rev.revisions (
    revision TEXT PRIMARY KEY,
    subject TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    recorded REAL NOT NULL,
    files TEXT NOT NULL
);
"""


class PassRecord(msgspec.Struct, frozen=True):
    id: int
    revision: str
    subject: str
    trigger: str
    started: float
    ended: float | None
    outcome: str
    summary: Mapping[str, Any] = msgspec.field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        doc = msgspec.structs.asdict(self)
        doc["errors"] = list(self.errors)
        doc["summary"] = dict(self.summary)
        return doc


class HistoryError(PyapplyError):
    """The record cannot be read or written; the message is one line for people.
    `mended` says that a damaged database was moved aside meanwhile (trying again works
    on the new one)."""

    def __init__(self, message: str, *, mended: bool = False) -> None:
        super().__init__(message)
        self.mended = mended


class Reset(msgspec.Struct, frozen=True):
    """A damaged database moved aside and started afresh."""

    at: float  # Unix time
    path: str  # the database that was damaged
    moved_to: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)


# The columns each table must have; a database whose tables lack them is of another schema.
_TABLES: dict[str, dict[str, frozenset[str]]] = {
    DB_NAME: {
        "passes": frozenset(
            {"id", "revision", "subject", "trigger", "started", "ended", "outcome"}
            | {"summary", "errors"}
        ),
        "state": frozenset({"key", "value"}),
    },
    REVISIONS_DB_NAME: {
        "revisions": frozenset({"revision", "subject", "source", "recorded", "files"}),
    },
}


class History:
    """The record. `repair=True` (the agent) moves a damaged database aside and starts a
    new one, telling `on_reset`; otherwise (the CLI) a damaged database is an error that
    names it. Every failure of sqlite reaches callers as a HistoryError."""

    def __init__(
        self,
        root: str,
        *,
        repair: bool = False,
        on_reset: Callable[[Reset], None] | None = None,
    ) -> None:
        self.path = os.path.join(root, DB_NAME)
        self.revisions_path = os.path.join(root, REVISIONS_DB_NAME)
        self.repair = repair
        self.on_reset = on_reset
        self._lock = threading.Lock()
        with self._lock:
            try:
                private_dir(root)
                self._open(thorough=repair)
            except OSError as exc:
                raise HistoryError(f"history {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc

    def _open(self, *, thorough: bool) -> None:
        """Check both databases (moving damaged ones aside when repairing), then create
        what is missing. Called with the lock held."""
        damaged = self._diagnose(thorough=thorough)
        if damaged and not self.repair:
            raise HistoryError(_damaged_message(damaged))
        for path, reason in damaged:
            self._move_aside(path, reason)
        _private_db(self.path)
        _private_db(self.revisions_path)
        db = self._connect()
        try:
            with db:
                db.executescript(_SCHEMA)
                moved = db.execute(
                    "SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = 'revisions'"
                ).fetchone()
                if moved:  # an earlier version kept the revisions' files in history.db
                    db.execute("INSERT OR IGNORE INTO rev.revisions SELECT * FROM main.revisions")
                    db.execute("DROP TABLE main.revisions")
        finally:
            db.close()
        if moved:
            vacuum = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                vacuum.execute("VACUUM")  # the dropped pages still held the files' bytes
            finally:
                vacuum.close()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("ATTACH DATABASE ? AS rev", (self.revisions_path,))
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._connect()
                try:
                    with db:
                        yield db
                finally:
                    db.close()
            except sqlite3.Error as exc:
                raise self._failure(exc) from exc

    def _failure(self, exc: sqlite3.Error) -> HistoryError:
        """What a failed statement means: a damaged database (moved aside when repairing)
        or something else (read-only, full, locked, an I/O error). Lock held."""
        damaged: list[tuple[str, str]] = []
        if _suspect(exc):
            # when it cannot even tell (unreadable, locked), it is not called damaged
            with suppress(OSError, sqlite3.Error):
                damaged = self._diagnose(thorough=True)
        if not damaged:
            return HistoryError(f"history {self.path}: {exc}")
        if not self.repair:
            return HistoryError(_damaged_message(damaged))
        try:
            for path, reason in damaged:
                self._move_aside(path, reason)
        except OSError as cannot:
            return HistoryError(f"{_damaged_message(damaged)}; cannot move it aside: {cannot}")
        try:
            self._open(thorough=False)
        except (OSError, sqlite3.Error) as again:
            return HistoryError(f"history {self.path}: started afresh, but: {again}")
        return HistoryError(_damaged_message(damaged) + "; moved aside", mended=True)

    def _diagnose(self, *, thorough: bool) -> list[tuple[str, str]]:
        """The databases that are damaged: (path, why). `thorough` also reads every page
        (a truncated file can look sound until a page past its end is read)."""
        out = []
        for path in (self.path, self.revisions_path):
            why = _check(path, _TABLES[os.path.basename(path)], thorough=thorough)
            if why:
                out.append((path, why))
        return out

    def _move_aside(self, path: str, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = f"{path}.corrupt-{stamp}"
        n = 1
        while os.path.lexists(target):
            n += 1
            target = f"{path}.corrupt-{stamp}-{n}"
        os.chmod(path, PRIVATE_FILE_MODE)  # it may hold the files of secrets, however made
        os.replace(path, target)
        # a journal left beside it belongs to the damaged file: it must not be played
        # into the new one
        for suffix in ("-journal", "-wal", "-shm"):
            if os.path.lexists(path + suffix):
                os.replace(path + suffix, target + suffix)
        if self.on_reset is not None:
            self.on_reset(Reset(time.time(), path, target, reason))

    # -- passes ---------------------------------------------------------------------------

    def begin(self, revision: str, subject: str, trigger: str, started: float | None = None) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO passes (revision, subject, trigger, started, outcome)"
                " VALUES (?, ?, ?, ?, 'running')",
                (revision, subject, trigger, time.time() if started is None else started),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish(
        self,
        pass_id: int,
        outcome: Outcome,
        summary: Mapping[str, Any] | None = None,
        errors: list[str] | tuple[str, ...] = (),
    ) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE passes SET ended = ?, outcome = ?, summary = ?, errors = ? WHERE id = ?",
                (
                    time.time(),
                    outcome,
                    json.dumps(dict(summary or {}), sort_keys=True),
                    json.dumps(list(errors)),
                    pass_id,
                ),
            )

    def close_running(self) -> int:
        """Mark passes left 'running' by an agent that died as interrupted."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE passes SET outcome = 'interrupted', ended = COALESCE(ended, started)"
                " WHERE outcome = 'running'"
            )
            return cur.rowcount

    def prune(self, keep: int = KEEP_PASSES) -> int:
        """Forget all but the newest `keep` passes, and the files of revisions that no
        kept pass mentions (the pinned and the last healthy revision are always kept)."""
        with self._db() as db:
            cur = db.execute(
                "DELETE FROM passes WHERE id <= (SELECT COALESCE(MAX(id), 0) FROM passes) - ?",
                (keep,),
            )
            removed = cur.rowcount
            # the pinned revision and the last healthy one (an automatic rollback's
            # target) keep their files
            kept = [
                json.loads(row[0]) or ""
                for row in db.execute(
                    "SELECT value FROM state WHERE key IN ('pinned', 'last_healthy')"
                ).fetchall()
            ]
            kept += ["", ""]
            db.execute(
                "DELETE FROM rev.revisions WHERE revision NOT IN (?, ?)"
                " AND revision NOT IN (SELECT DISTINCT revision FROM passes)",
                (kept[0], kept[1]),
            )
            return removed

    def passes(self, limit: int = 50, revision: str | None = None) -> list[PassRecord]:
        """The newest `limit` passes; with `revision` (an id or an unambiguous prefix, see
        `match_revision`), only that revision's: none when no pass has it. Raises
        BadRevision / AmbiguousRevision for an argument that names no single revision."""
        query = "SELECT * FROM passes"
        args: list[Any] = []
        if revision:
            try:
                full = match_revision(revision, self._candidates("passes", revision))
            except (BadRevision, AmbiguousRevision):
                raise
            except UnknownRevision:
                return []
            query += " WHERE revision = ?"
            args.append(full)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(max(0, limit))
        with self._db() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(query, args).fetchall()
        return [_record(r) for r in rows]

    def get(self, pass_id: int) -> PassRecord | None:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return _record(row) if row is not None else None

    def mark_rolled_back(self, revision: str, reason: str) -> int | None:
        """Mark the last pass of `revision` `rolled-back`, with `reason` added to its errors;
        its id (None when no pass has it)."""
        with self._db() as db:
            row = db.execute(
                "SELECT id, errors FROM passes WHERE revision = ? ORDER BY id DESC LIMIT 1",
                (revision,),
            ).fetchone()
            if row is None:
                return None
            errors = [*json.loads(row[1] or "[]"), reason]
            db.execute(
                "UPDATE passes SET outcome = 'rolled-back', errors = ?,"
                " ended = COALESCE(ended, ?) WHERE id = ?",
                (json.dumps(errors), time.time(), row[0]),
            )
            return int(row[0])

    def succeeded(self, revision: str) -> bool:
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM passes WHERE revision = ? AND outcome = 'succeeded' LIMIT 1",
                (revision,),
            ).fetchone()
        return row is not None

    # -- revisions ------------------------------------------------------------------------

    def store_revision(
        self, revision: str, subject: str, source: str, files: Mapping[str, bytes]
    ) -> None:
        """Keep the files of a revision (relative path -> bytes); first write wins."""
        encoded = {
            path: content.decode("utf-8", "surrogateescape") for path, content in files.items()
        }
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO rev.revisions (revision, subject, source, recorded, files)"
                " VALUES (?, ?, ?, ?, ?)",
                (revision, subject, source, time.time(), json.dumps(encoded, sort_keys=True)),
            )

    def resolve(self, revision: str) -> str:
        """The full id of a stored revision from its id or an unambiguous prefix of at least
        7 hex digits (`match_revision`)."""
        return match_revision(revision, self._candidates("rev.revisions", revision))

    def _candidates(self, table: str, revision: str) -> set[str]:
        """The revisions of `table` that `revision` is, or begins: compared as strings
        (substr), never as a LIKE pattern."""
        where = "revision = ?"
        args: list[Any] = [revision]
        if is_prefix(revision):
            where += " OR substr(revision, 1, ?) = ?"
            args += [len(revision), revision]
        with self._db() as db:
            rows = db.execute(f"SELECT DISTINCT revision FROM {table} WHERE {where}", args)
            return {str(r[0]) for r in rows.fetchall()}

    def revision_files(self, revision: str) -> tuple[str, str, dict[str, bytes]]:
        """(full id, subject, files) of a stored revision."""
        full = self.resolve(revision)
        with self._db() as db:
            row = db.execute(
                "SELECT subject, files FROM rev.revisions WHERE revision = ?", (full,)
            ).fetchone()
        files = {
            path: text.encode("utf-8", "surrogateescape")
            for path, text in json.loads(row[1]).items()
        }
        return full, str(row[0]), files

    # -- state ----------------------------------------------------------------------------

    def get_state(self, key: str) -> Any:
        with self._db() as db:
            row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row is not None else None

    def set_state(self, key: str, value: Any) -> None:
        with self._db() as db:
            if value is None:
                db.execute("DELETE FROM state WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO state (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)),
                )

    def pinned(self) -> str | None:
        value = self.get_state("pinned")
        return str(value) if value else None

    def pin(self, revision: str | None, reason: str = "manual") -> None:
        """Pin `revision` (None: unpin). `reason`: `manual` (`pyapply rollback`, lifted by
        `resume` only) or `auto` (an automatic rollback, lifted by a newer revision)."""
        self.set_state("pinned", revision)
        self.set_state("pin_reason", reason if revision else None)

    def pin_reason(self) -> str | None:
        """Why the agent is pinned: `manual` or `auto`; None when it is not (a pin of an
        earlier version, without a reason, is a manual one)."""
        if not self.pinned():
            return None
        reason = self.get_state("pin_reason")
        return str(reason) if reason else "manual"

    def rolled_back(self) -> list[str]:
        """The revisions rolled back automatically, oldest first (never applied again)."""
        return [str(r) for r in self.get_state("rolled_back") or []]

    def set_rolled_back(self, revisions: list[str]) -> None:
        self.set_state("rolled_back", revisions)

    def last_healthy(self) -> str | None:
        """The last revision that became Healthy within the progress deadline."""
        value = self.get_state("last_healthy")
        return str(value) if value else None

    def set_last_healthy(self, revision: str) -> None:
        self.set_state("last_healthy", revision)

    def managed_stacks(self) -> set[str]:
        return set(self.get_state("stacks") or [])

    def set_managed_stacks(self, stacks: set[str]) -> None:
        self.set_state("stacks", sorted(stacks))


def _record(row: sqlite3.Row) -> PassRecord:
    return PassRecord(
        id=int(row["id"]),
        revision=str(row["revision"]),
        subject=str(row["subject"]),
        trigger=str(row["trigger"]),
        started=float(row["started"]),
        ended=float(row["ended"]) if row["ended"] is not None else None,
        outcome=str(row["outcome"]),
        summary=json.loads(row["summary"] or "{}"),
        errors=tuple(json.loads(row["errors"] or "[]")),
    )


def snapshot_files(directory: str) -> dict[str, bytes]:
    """Every regular file below `directory` (not in dot-directories such as .git), as
    relative path -> bytes, within the size limits: what a rollback needs to load the
    revision again (manifests, `.env` files, the files of configs and secrets)."""
    out: dict[str, bytes] = {}
    total = 0
    inside = os.path.join(os.path.realpath(directory), "")
    for current, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(current, name)
            if not os.path.isfile(path):
                continue
            if not os.path.realpath(path).startswith(inside):
                # a link out of the tree (`data/s -> /etc/shadow`): in a container it points
                # into the container's own files, but copied here it would bring the host's
                # file back as a plain file on rollback
                continue
            try:
                size = os.path.getsize(path)
                if size > MAX_FILE_BYTES or total + size > MAX_REVISION_BYTES:
                    continue
                with open(path, "rb") as fh:
                    content = fh.read()
            except OSError:
                continue
            total += len(content)
            out[os.path.relpath(path, directory)] = content
    return out


def materialise(files: Mapping[str, bytes], directory: str) -> None:
    """Write a stored revision's files into `directory` (created, emptied first), 0600 in
    0700 directories from creation: they include the files of secrets."""
    rmtree(directory)
    private_dir(directory)
    for rel, content in files.items():
        target = os.path.normpath(os.path.join(directory, rel))
        if not target.startswith(os.path.join(directory, "")):
            continue  # never write outside the directory
        private_dir(os.path.dirname(target))
        with os.fdopen(open_private(target, os.O_WRONLY | os.O_TRUNC), "wb") as fh:
            fh.write(content)


def _check(path: str, tables: Mapping[str, frozenset[str]], *, thorough: bool) -> str | None:
    """Why the database at `path` is damaged, or None when it is sound, empty or absent.
    Raises sqlite3.Error when it cannot tell (unreadable, locked)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=30)
        try:
            if thorough:
                row = db.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    return f"damaged: {row[0] if row else 'no answer from quick_check'}"
            for table, columns in tables.items():
                have = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
                missing = sorted(columns - have)
                if have and missing:
                    return f"table {table} is of another schema (no column {', '.join(missing)})"
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if _damage(exc):
            return str(exc)
        raise
    return None


def _damage(exc: sqlite3.Error) -> bool:
    """Errors that mean the file itself is bad, as against locked, read-only or full."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _suspect(exc: sqlite3.Error) -> bool:
    """Errors worth checking the files for: damage, or a generic error such as a missing
    column (another schema). Read-only, full, busy, locked and I/O errors are not: checking
    every page on each of those would cost much and find nothing."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return _damage(exc) or name in ("", "SQLITE_ERROR")


def _damaged_message(damaged: list[tuple[str, str]]) -> str:
    return "; ".join(f"{path} is damaged ({why})" for path, why in damaged)


def _private_db(path: str) -> None:
    """Make the database file 0600 before sqlite opens it, so it is never readable by
    others, not even for a moment: it holds every revision's files, secrets among them.
    sqlite gives its -journal, -wal and -shm files the database file's mode. A database
    an older version left readable (it chmod'ed after creating) is tightened here."""
    fd = open_private(path)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
