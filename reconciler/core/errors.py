"""The one root of every error `reconciler/` raises for a person to read.

Each room keeps its own error classes (a manifest that does not load, a pass that cannot
go on, a lock not taken, a damaged history, ...), but they all derive from `PyapplyError`,
so that the command line turns them into a message and an exit status in one place
(`reconciler.cli.main.run`). The runtime's errors (`runtime.base.RuntimeFailure`) stay apart:
`runtime/` never imports `reconciler/`.
"""

from __future__ import annotations


class PyapplyError(Exception):
    """An error of pyapply's own making whose message is one sentence for the user."""
