"""Take one stack down: everything it owns, then the files it wrote.

`pyapply down` and the agent's removal of a stack whose manifests are gone
(`--allow-empty`) both come here, so a stack leaves nothing behind either way: its
containers, networks (and named volumes when asked), and its config and secret files under
`<root>/files/<stack>` once every object is gone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.engine.reconcile import StackResult, plan_down
from pyapply.runtime.base import Runtime

if TYPE_CHECKING:
    from pyapply.reconciler.engine.execute import Executor, Reporter


def files_dir(root: str, stack: str) -> str:
    """Where the stack's config and secret files live (`core.translate` puts them there)."""
    return os.path.join(root, "files", stack)


def down_stack(
    runtime: Runtime,
    stack: str,
    root: str,
    *,
    volumes: bool,
    reporter: Callable[[], Reporter | None] | None = None,
    on_plan: Callable[[Plan], object] | None = None,
    on_executor: Callable[[Executor], None] | None = None,
) -> StackResult:
    """Remove what `stack` owns (named volumes only with `volumes`). `on_plan` sees the
    teardown plan first (to print it); `reporter` makes the executor's reporter when there
    is something to remove; `on_executor` is handed the executor before it runs.
    The files go only when nothing is left: a failed removal keeps what the stack's
    containers still mount."""
    plan = plan_down(runtime, stack, volumes=volumes)
    if on_plan is not None:
        on_plan(plan)
    result = StackResult(stack, plan)
    if not plan.empty:
        from pyapply.reconciler.engine.execute import Executor  # only when there is work

        executor = Executor(runtime, reporter=reporter() if reporter is not None else None)
        if on_executor is not None:
            on_executor(executor)
        result = StackResult(stack, plan, executor.run(plan))
    if result.ok:
        shutil.rmtree(files_dir(root, stack), ignore_errors=True)
    return result
