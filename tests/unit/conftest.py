"""Fixtures of the unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules import helpers from test modules of other rooms (test_watch's fake agent,
# test_reconcile's stacks). pytest puts only a test's own folder on sys.path, so each room's
# folder is put there once, here: any file or room runs alone as well as in the whole suite.
for _room in sorted(
    p
    for p in Path(__file__).parent.iterdir()
    if p.is_dir() and p.name not in ("data", "__pycache__")
):
    if str(_room) not in sys.path:
        sys.path.append(str(_room))


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch directory that is also the working directory (relative -f paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
