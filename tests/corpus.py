"""Where the tests find the shared corpus of real inputs (compose projects, SOPS files and
their age keys, Docker's default seccomp profile): `$PYAPPLY_CORPUS` when set, else
`../shared/corpus` beside the checkout. One place, one meaning of the variable: the corpus's
root, which holds `compose/`, `sops/` and `seccomp/`.

A missing corpus fails the test that needs it, naming the path: under `make test` a missing
input is a failure, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def root() -> Path:
    return Path(os.environ.get("PYAPPLY_CORPUS") or REPO.parent / "shared" / "corpus")


def need(*parts: str) -> Path:
    """root()/parts, which must exist; the test fails otherwise."""
    path = root().joinpath(*parts)
    if not path.exists():
        pytest.fail(f"the test corpus has no {path} (set PYAPPLY_CORPUS to the corpus's root)")
    return path
