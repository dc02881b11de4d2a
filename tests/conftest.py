"""Root of the test tree.

The package itself is importable through the editable install; this only puts the repository
root on sys.path so test helpers import as `tests.<dir>.<module>` (e.g. tests.e2e.helpers)
whatever pytest's import mode, with no __init__.py files in the test tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


def pytest_configure(config: object) -> None:
    """Keep the loader's validation cache out of the user's home, for this run only (the
    CLI processes the e2e tests start inherit it)."""
    import os
    import tempfile

    if "PYAPPLY_CACHE_DIR" not in os.environ:
        os.environ["PYAPPLY_CACHE_DIR"] = tempfile.mkdtemp(prefix="pyapply-test-cache-")
        os.environ["_PYAPPLY_TEST_CACHE_OWNED"] = "1"


def pytest_unconfigure(config: object) -> None:
    import os
    import shutil

    if os.environ.pop("_PYAPPLY_TEST_CACHE_OWNED", None):
        shutil.rmtree(os.environ.pop("PYAPPLY_CACHE_DIR"), ignore_errors=True)
