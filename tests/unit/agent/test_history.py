"""The agent's sqlite record: passes, revisions' files, pin and managed stacks."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pyapply.reconciler.agent.agent_history import AgentHistory
from pyapply.reconciler.agent.history import (
    AmbiguousRevision,
    BadRevision,
    History,
    HistoryError,
    Reset,
    UnknownRevision,
    materialise,
    snapshot_files,
)


def test_passes_are_recorded_newest_first(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    a = h.begin("aaa111", "first", "start", started=100.0)
    h.finish(a, "succeeded", {"actions": {"create": 2}}, [])
    b = h.begin("bbb222", "second", "file")
    h.finish(b, "failed", {}, ["x.yaml:1:1: spec: bad"])
    records = h.passes()
    assert [r.revision for r in records] == ["bbb222", "aaa111"]
    assert records[0].outcome == "failed"
    assert records[0].errors == ("x.yaml:1:1: spec: bad",)
    assert records[1].summary == {"actions": {"create": 2}}
    assert records[1].started == 100.0 and records[1].ended is not None
    assert h.succeeded("aaa111") and not h.succeeded("bbb222")
    assert [r.id for r in h.passes(revision="aaa111")] == [a]
    assert h.passes(limit=1)[0].id == b
    assert stat.S_IMODE(os.stat(h.path).st_mode) == 0o600


def test_running_passes_of_a_dead_agent_become_interrupted(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    h.begin("aaa", "", "start")
    assert History(str(tmp_path)).close_running() == 1
    assert h.passes()[0].outcome == "interrupted"


def test_revision_files_round_trip_and_prefixes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "stack.yaml").write_text("a: 1\n")
    (src / ".env").write_text("X=1\n")
    (src / "sub" / "secret.txt").write_bytes(b"\xff\x00bin")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    files = snapshot_files(str(src))
    assert sorted(files) == [".env", "stack.yaml", "sub/secret.txt"]
    h = History(str(tmp_path / "root"))
    h.store_revision("abcdef123456", "subject", str(src), files)
    h.store_revision("abcdef100000", "other", str(src), {})
    full, subject, back = h.revision_files("abcdef12")
    assert (full, subject, back) == ("abcdef123456", "subject", files)
    with pytest.raises(AmbiguousRevision, match="ambiguous"):
        h.resolve("abcdef1")
    with pytest.raises(BadRevision, match="at least 7 hex digits"):
        h.resolve("abcd")  # too short to stand for anything
    with pytest.raises(UnknownRevision, match="no recorded revision"):
        h.resolve("0000000")
    out = tmp_path / "out"
    materialise(back, str(out))
    assert (out / "sub" / "secret.txt").read_bytes() == b"\xff\x00bin"


def test_links_out_of_the_tree_are_not_recorded(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.write_text("root:hash\n")
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "stack.yaml").write_text("a: 1\n")
    (src / "data" / "shadow").symlink_to(outside)
    (src / "data" / "same").symlink_to(src / "stack.yaml")
    assert snapshot_files(str(src)) == {"stack.yaml": b"a: 1\n", "data/same": b"a: 1\n"}


def test_materialise_never_writes_outside(tmp_path: Path) -> None:
    materialise({"../evil": b"x", "ok.yaml": b"y"}, str(tmp_path / "d"))
    assert not (tmp_path / "evil").exists()
    assert (tmp_path / "d" / "ok.yaml").read_bytes() == b"y"


def test_pin_and_managed_stacks(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    assert h.pinned() is None and h.managed_stacks() == set()
    h.pin("abc")
    h.set_managed_stacks({"b", "a"})
    again = History(str(tmp_path))
    assert again.pinned() == "abc" and again.managed_stacks() == {"a", "b"}
    again.pin(None)
    assert h.pinned() is None


def test_prune_keeps_the_newest_passes_and_their_revisions(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    for i in range(10):
        rev = f"rev{i}"
        h.store_revision(rev, "", "", {"a.yaml": b"x"})
        h.finish(h.begin(rev, "", "file"), "succeeded")
    h.pin("rev0")
    assert h.prune(keep=3) == 7
    assert [r.revision for r in h.passes()] == ["rev9", "rev8", "rev7"]
    assert h.resolve("rev0") == "rev0"  # pinned: kept
    with pytest.raises(UnknownRevision):
        h.resolve("rev5")
    assert h.prune(keep=3) == 0


def test_cli_without_an_agent_reads_and_unpins_the_database(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from pyapply.reconciler.cli.main import main

    h = History(str(tmp_path))
    h.finish(h.begin("abc123", "subject one", "start"), "succeeded", {}, [])
    h.pin("abc123")
    env = {"PYAPPLY_ROOT": str(tmp_path), "PYAPPLY_SOCKET": str(tmp_path / "none.sock")}
    runner = CliRunner()
    out = runner.invoke(main, ["history", "-o", "json"], env=env)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["passes"][0]["subject"] == "subject one"
    out = runner.invoke(main, ["history"], env=env)
    assert "abc123" in out.output and "succeeded" in out.output
    out = runner.invoke(main, ["resume"], env=env)
    assert out.exit_code == 0 and "unpinned" in out.output
    assert h.pinned() is None
    out = runner.invoke(main, ["status"], env=env)
    assert out.exit_code != 0


# -- a damaged record ---------------------------------------------------------------------------


def _filled(root: Path) -> History:
    h = History(str(root))
    pid = h.begin("rev000000000", "first", "start")
    h.finish(pid, "succeeded", {}, [])
    db = sqlite3.connect(h.path)  # many pages at once, so that a cut lands in the data
    with db:
        db.executemany(
            "INSERT INTO passes (revision, subject, trigger, started, outcome, errors)"
            " VALUES (?, ?, 'file', 1.0, 'succeeded', ?)",
            [(f"rev{i:09d}", "subject " * 20, json.dumps(["e" * 100])) for i in range(1, 300)],
        )
    db.close()
    h.store_revision("abcdef123456", "s", "/src", {"a.yaml": b"x" * 20000})
    h.set_managed_stacks({"st"})
    return h


def _garbage(path: str) -> None:
    with open(path, "r+b") as fh:  # over the file, in place, as a bad disk or tool would
        fh.write(os.urandom(os.path.getsize(path)))


def _truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 3)


def _not_sqlite(path: str) -> None:
    Path(path).write_text("these are not the bytes of a database\n" * 50)


def _wrong_schema(path: str) -> None:
    os.unlink(path)
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE passes (x INTEGER); CREATE TABLE revisions (revision TEXT, y TEXT);"
    )
    db.close()


DAMAGES = {
    "garbage": _garbage,
    "truncated": _truncate,
    "not-sqlite": _not_sqlite,
    "wrong-schema": _wrong_schema,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("which", ["history.db", "revisions.db"])
def test_the_cli_names_a_damaged_database(tmp_path: Path, damage: str, which: str) -> None:
    h = _filled(tmp_path)
    DAMAGES[damage](str(tmp_path / which))
    with pytest.raises(HistoryError, match=f"{which} is damaged") as caught:
        fresh = History(str(tmp_path))
        fresh.passes(limit=5000)
        fresh.revision_files("abcdef1")
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.glob("*.corrupt-*")), "the CLI never moves the record"
    del h


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("which", ["history.db", "revisions.db"])
def test_the_agent_moves_a_damaged_database_aside(tmp_path: Path, damage: str, which: str) -> None:
    _filled(tmp_path)
    before = (tmp_path / which).read_bytes()
    DAMAGES[damage](str(tmp_path / which))
    damaged = (tmp_path / which).read_bytes()
    assert damaged != before
    resets: list[Reset] = []
    h = AgentHistory(str(tmp_path), on_reset=resets.append)
    assert [os.path.basename(r.path) for r in resets] == [which]
    moved = Path(resets[0].moved_to)
    assert moved.name.startswith(f"{which}.corrupt-") and moved.read_bytes() == damaged
    assert stat.S_IMODE(moved.stat().st_mode) == 0o600
    assert resets[0].reason
    # a new one, in use at once
    pid = h.begin("new", "", "start")
    h.finish(pid, "succeeded")
    h.store_revision("fedcba654321", "s", "/src", {"b.yaml": b"y"})
    assert h.revision_files("fedcba6")[2] == {"b.yaml": b"y"}
    if which == "revisions.db":  # the record itself survives; the rollback targets do not
        assert len(h.passes(limit=5000)) == 301 and h.managed_stacks() == {"st"}
        with pytest.raises(UnknownRevision):
            h.resolve("abcdef1")
    else:
        assert [p.revision for p in h.passes()] == ["new"]
        assert h.revision_files("abcdef1")[0] == "abcdef123456"


def test_damage_while_in_use_is_mended_and_the_statement_tried_again(tmp_path: Path) -> None:
    resets: list[Reset] = []
    failures: list[str] = []
    h = AgentHistory(
        str(tmp_path), on_reset=resets.append, on_failure=lambda w, e: failures.append(w)
    )
    h.set_managed_stacks({"a", "b"})
    _garbage(h.path)
    pid = h.begin("r", "", "file")  # the write that finds the damage lands in the new db
    assert pid > 0 and len(resets) == 1 and failures == []
    assert [p.revision for p in h.passes()] == ["r"]
    # the small state outlives the database: kept in memory, written to the new one
    assert h.managed_stacks() == {"a", "b"}
    assert History(str(tmp_path)).managed_stacks() == {"a", "b"}
    _not_sqlite(h.revisions_path)
    assert h.pinned() is None  # every statement attaches revisions.db: found at once
    assert [os.path.basename(r.path) for r in resets] == ["history.db", "revisions.db"]
    h.store_revision("7" * 12, "", "", {})
    assert len(resets) == 2 and h.resolve("7" * 12) == "7" * 12


def test_an_unwritable_record_is_reported_not_raised(tmp_path: Path) -> None:
    failures: list[tuple[str, str]] = []
    h = AgentHistory(str(tmp_path), on_failure=lambda w, e: failures.append((w, str(e))))
    h.set_managed_stacks({"st"})
    os.unlink(h.path)
    os.mkdir(h.path)
    assert h.begin("r", "", "file") == -1
    h.finish(-1, "succeeded")
    h.store_revision("r" * 12, "", "", {})
    h.set_managed_stacks({"st", "two"})
    assert h.managed_stacks() == {"st", "two"}  # from memory
    assert [w for w, _ in failures][:3] == ["record a pass", "store a revision", "record state"]
    assert all(str(h.path) in e for _, e in failures)
    with pytest.raises(HistoryError):
        h.passes()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_damage_that_cannot_be_moved_aside_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[str] = []
    h = AgentHistory(str(tmp_path), on_failure=lambda w, e: failures.append(str(e)))
    _garbage(h.path)

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted", src)

    monkeypatch.setattr("pyapply.reconciler.agent.history.os.replace", refuse)
    assert h.begin("r", "", "file") == -1
    assert len(failures) == 1 and "cannot move it aside" in failures[0]
    assert "history.db is damaged" in failures[0]
    monkeypatch.undo()
    assert h.begin("r", "", "file") > 0  # once it can be moved, it is
    assert list(tmp_path.glob("history.db.corrupt-*"))


@pytest.mark.parametrize("given", ["%", "_", "abc%", "%abc1234", "abcdef_", "abcdef1%", "a" * 6])
def test_no_argument_matches_by_pattern(tmp_path: Path, given: str) -> None:
    """A LIKE pattern once matched every revision ("%" as a prefix): an argument is an id
    or a prefix of at least 7 hex digits, compared as a string."""
    h = History(str(tmp_path))
    h.store_revision("aaaaaaaaaaaa", "", "", {"a.yaml": b"x"})
    h.finish(h.begin("aaaaaaaaaaaa", "", "file"), "succeeded")
    with pytest.raises(BadRevision):
        h.resolve(given)
    with pytest.raises(BadRevision):
        h.passes(revision=given)


def test_the_history_filter_takes_ids_and_unambiguous_prefixes(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    for rev in ("1234567aaaaa", "1234567aaaaa+0badf00d", "1234568bbbbb", "sha256:0123456789ab"):
        h.finish(h.begin(rev, "", "file"), "succeeded")
    assert [r.revision for r in h.passes(revision="1234568")] == ["1234568bbbbb"]
    assert [r.revision for r in h.passes(revision="1234567aaaaa")] == ["1234567aaaaa"]  # exact
    assert [r.revision for r in h.passes(revision="sha256:0123456")] == ["sha256:0123456789ab"]
    with pytest.raises(AmbiguousRevision, match=r"1234567aaaaa, 1234567aaaaa\+0badf00d"):
        h.passes(revision="1234567")
    assert h.passes(revision="fffffff") == []  # a filter: nothing of an unknown revision
    with pytest.raises(BadRevision):
        h.passes(revision="sha256:0123")


def test_match_revision_is_pure_and_strict() -> None:
    from pyapply.reconciler.manifest.revision import is_prefix, match_revision

    known = ["0123456789ab", "0123456789ab+deadbeef", "fedcba987654"]
    assert match_revision("fedcba9", known) == "fedcba987654"
    assert match_revision("0123456789ab", known) == "0123456789ab"  # exact wins
    assert match_revision("0123456789ab+d", known) == "0123456789ab+deadbeef"
    assert match_revision("weird id", ["weird id"]) == "weird id"  # exact, whatever its shape
    assert [is_prefix(p) for p in ("abcdef0", "sha256:abcdef0", "ABCDEF0", "abcdef", "")] == [
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(BadRevision):
        match_revision("FEDCBA9", known)
    with pytest.raises(UnknownRevision, match="no recorded revision"):
        match_revision("1111111", known)
