"""Progress of an apply: a live table on a terminal (rich), plain lines otherwise."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, TextIO

from pyapply.reconciler.core.plan import Action
from pyapply.reconciler.core.redact import NO_SECRETS, Redactor
from pyapply.reconciler.view.plan_text import result_line

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from pyapply.reconciler.engine.execute import ActionResult


class PlainReporter:
    """One line per finished action (and per retry): what CI logs and pipes want."""

    def __init__(self, out: TextIO, redactor: Redactor = NO_SECRETS) -> None:
        self.out = out
        self.redactor = redactor
        self._lock = threading.Lock()

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out, flush=True)

    def started(self, action: Action) -> None:
        pass

    def retrying(self, action: Action, attempt: int, error: str, delay: float) -> None:
        self._print(
            self.redactor.text(
                f"{action.id}: attempt {attempt} failed ({error}); retrying in {delay:.1f}s"
            )
        )

    def finished(self, result: ActionResult) -> None:
        if result.action.op != "write_file":
            self._print(result_line(result, self.redactor))


class LiveReporter:
    """A table of the actions under way and done, redrawn in place, like compose's."""

    def __init__(self, console: Console | None = None, redactor: Redactor = NO_SECRETS) -> None:
        from rich.console import Console  # only on a terminal: rich is slow to import
        from rich.live import Live

        self.redactor = redactor
        self.console = console or Console()
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[str, str, float]] = {}
        self._live = Live(
            self._table(), console=self.console, refresh_per_second=8, transient=False
        )

    def __enter__(self) -> LiveReporter:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._table())
        self._live.__exit__(None, None, None)

    def _table(self) -> Table:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for _aid, (label, state, since) in self._rows.items():
            style = {"done": "green", "failed": "red", "skipped": "yellow"}.get(state, "cyan")
            shown = state if state != "running" else f"running {now - since:.1f}s"
            table.add_row(Text(label), Text(shown, style=style))
        return table

    def started(self, action: Action) -> None:
        if action.op == "write_file":
            return
        with self._lock:
            self._rows[action.id] = (f"{action.op} {action.target}", "running", time.monotonic())
            self._live.update(self._table())

    def retrying(self, action: Action, attempt: int, error: str, delay: float) -> None:
        with self._lock:
            label = f"{action.op} {action.target}"
            shown = self.redactor.text(f"retry {attempt}: {error}")
            self._rows[action.id] = (label, shown, time.monotonic())
            self._live.update(self._table())

    def finished(self, result: ActionResult) -> None:
        if result.action.op == "write_file":
            return
        with self._lock:
            a = result.action
            detail = (
                result.status
                if result.status == "done"
                else self.redactor.text(f"{result.status}: {result.error}")
            )
            label = result_line(result, self.redactor).split(":")[0]
            self._rows[a.id] = (label, detail, time.monotonic())
            self._live.update(self._table())
