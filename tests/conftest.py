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
