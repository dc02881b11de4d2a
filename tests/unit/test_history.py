"""The agent's sqlite record: passes, revisions' files, pin and managed stacks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler.history import (
    AmbiguousRevision,
    BadRevision,
    History,
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

    from reconciler.cli import main

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
    from reconciler.revision import is_prefix, match_revision

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
