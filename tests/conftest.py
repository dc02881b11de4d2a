"""Root of the test tree.

The package itself is importable through the editable install; this only puts the repository
root on sys.path so test helpers import as `tests.<dir>.<module>` (e.g. tests.e2e.helpers)
whatever pytest's import mode, with no __init__.py files in the test tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


# What makes a test one of the host dockerd's (`make test` runs those in a stream of their
# own, beside the rest: tests/streams.py): an end-to-end test with a docker or swarm parameter of the runtime
# fixtures, a fixture of the host dockerd or its swarm, or a module named for them.
DOCKERD_PARAMS = frozenset({"docker", "swarm"})
DOCKERD_FIXTURES = frozenset({"docker_client", "stack_name", "swarm_prefix"})
DOCKERD_MODULE_WORDS = ("docker", "swarm")


_E2E = Path(__file__).resolve().parent / "e2e"


def uses_dockerd(item: pytest.Item) -> bool:
    if _E2E not in item.path.parents:
        return False  # unit tests use no daemon
    params = getattr(getattr(item, "callspec", None), "params", {})
    if any(isinstance(v, str) and v in DOCKERD_PARAMS for v in params.values()):
        return True
    if DOCKERD_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    return any(word in item.path.name for word in DOCKERD_MODULE_WORDS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if uses_dockerd(item):
            item.add_marker(pytest.mark.dockerd)
