"""One revision per directory (issue 10, fix 2): what `pyapply apply -f DIR` records and what
the agent watching DIR records must be the same id, because both read the same files (the
one YAML walk of `manifest.discovery`) and hash them the same way.

The agent once walked every YAML file while the loader stopped at the compose project, so a
compose directory holding an unrelated `notes.yaml` had two revisions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyapply.reconciler.agent.sources import Source, directory_revision
from pyapply.reconciler.manifest.loader import load
from pyapply.reconciler.manifest.revision import identify

COMPOSE = "services:\n  web:\n    image: busybox:latest\n    command: [sleep, '{n}']\n"
NOTES = "# not a manifest: the loader never reads this file\ntodo: [backups, alerts]\n"


def apply_revision(directory: Path) -> str:
    """The revision `pyapply apply -f DIRECTORY` records (cli: load, then identify)."""
    loaded = load([str(directory)], environ={})
    return identify(loaded.files, loaded.content_digest).id


def agent_revision(directory: Path) -> str:
    """The revision the agent records for a pass over DIRECTORY (its source's snapshot)."""
    snapshot = Source.of(str(directory)).snapshot()
    assert snapshot.directory == str(directory)
    assert snapshot.revision.id == directory_revision(str(directory)).id
    return snapshot.revision.id


def project(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "compose.yaml").write_text(COMPOSE.format(n=1))
    (directory / "notes.yaml").write_text(NOTES)
    return directory


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.strip()


@pytest.fixture
def outside_git(tmp_path: Path) -> Path:
    """A directory git does not see as a work tree (tmp_path's parents are not one)."""
    assert (
        subprocess.run(
            ["git", "-C", str(tmp_path), "rev-parse", "--show-toplevel"],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ), "tmp_path is inside a git work tree: the plain case cannot be tested"
    return tmp_path


def test_a_compose_directory_with_unrelated_yaml_has_one_revision(outside_git: Path) -> None:
    shop = project(outside_git / "shop")
    applied = apply_revision(shop)
    assert applied.startswith("sha256:")
    assert agent_revision(shop) == applied
    # the unrelated file is not part of the revision, for either
    (shop / "notes.yaml").write_text(NOTES + "more: notes\n")
    assert apply_revision(shop) == agent_revision(shop) == applied
    # a change to the project is a new revision, the same for both
    (shop / "compose.yaml").write_text(COMPOSE.format(n=2))
    changed = apply_revision(shop)
    assert changed != applied
    assert agent_revision(shop) == changed


def test_an_override_file_is_part_of_the_revision_for_both(outside_git: Path) -> None:
    shop = project(outside_git / "shop")
    before = apply_revision(shop)
    (shop / "compose.override.yaml").write_text("services:\n  web:\n    init: true\n")
    after = apply_revision(shop)
    assert after != before
    assert agent_revision(shop) == after


def test_a_git_work_tree_is_its_commit_for_both(tmp_path: Path) -> None:
    repo = project(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", "-A")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "shop")
    head = git(repo, "rev-parse", "HEAD")
    assert apply_revision(repo) == agent_revision(repo) == head[:12]
    # an uncommitted edit of a file the loader does not read leaves the commit as it is
    (repo / "notes.yaml").write_text(NOTES + "more: notes\n")
    assert apply_revision(repo) == agent_revision(repo) == head[:12]
    # one of the project's own files edited: the commit plus the content hash, for both
    (repo / "compose.yaml").write_text(COMPOSE.format(n=2))
    dirty = apply_revision(repo)
    assert dirty.startswith(head[:12] + "+")
    assert agent_revision(repo) == dirty
