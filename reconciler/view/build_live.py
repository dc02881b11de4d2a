"""Build progress on a terminal: the steps with their state and time, and the running
step's last output lines, redrawn in place (rich's Live, at most 10 redraws a second, from
its own refresh thread) instead of one line per event. NO_COLOR is honoured by rich; the
view uses no colour a plain terminal would need anyway.

`BuildBoard` is the pure part (events in, lines out, the clock passed in), `LiveBuildView`
draws it. Where stdout is not a terminal the CLI prints build_progress.py's lines instead.
"""

from __future__ import annotations

import collections
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import msgspec

from pyapply.runtime.base import BuildEvent

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

TAIL = 5  # output lines of the running step shown under it
REFRESH_PER_SECOND = 10


class _Step(msgspec.Struct):
    number: int
    instruction: str
    state: str  # running, cached, done, failed
    started: float
    seconds: float = 0.0


class BuildBoard:
    """The state of one build's view: a row per step started, and the last output lines
    of the step running now."""

    def __init__(self, title: str = "", tail: int = TAIL) -> None:
        self.title = title
        self.total = 0
        self.steps: dict[int, _Step] = {}
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)

    def feed(self, event: BuildEvent, now: float) -> None:
        self.total = max(self.total, event.total)
        step = self.steps.get(event.step)
        if event.state == "output":
            self.tail.append(event.line)
            return
        if event.state == "running" or step is None:
            self.tail.clear()
            step = _Step(event.step, event.instruction, "running", now)
            self.steps[event.step] = step
        if event.state != "running":
            step.state = event.state
            step.seconds = event.seconds

    def rows(self, now: float) -> list[tuple[str, str]]:
        """The screen as (text, state) rows: a title, then a row per step (`[3/10] RUN
        make`, `running 1.2s`), the running step followed by its last output lines."""
        width = len(str(self.total or 1))
        out = []
        done = sum(1 for s in self.steps.values() if s.state in ("done", "cached"))
        if self.title:
            out.append((self.title, f"{done}/{self.total} steps" if self.total else ""))
        for n in sorted(self.steps):
            s = self.steps[n]
            head = f"[{s.number:>{width}}/{self.total}] {s.instruction}"
            if s.state == "running":
                out.append((head, f"running {now - s.started:.1f}s"))
                out += [(f"    | {line}", "") for line in self.tail]
            elif s.state == "cached":
                out.append((head, "CACHED"))
            elif s.state == "failed":  # its last output is printed with the error
                out.append((head, f"ERROR {s.seconds:.1f}s"))
            else:
                out.append((head, f"DONE {s.seconds:.1f}s"))
        return out

    def lines(self, now: float) -> list[str]:
        return [f"{text}  {state}".rstrip() for text, state in self.rows(now)]


class LiveBuildView:
    """A BuildBoard drawn in place on a terminal while a build runs (a context manager);
    the final screen stays. `__call__` is the build's progress callback."""

    def __init__(self, title: str = "", console: Console | None = None) -> None:
        from rich.console import Console  # only on a terminal: rich is slow to import
        from rich.live import Live

        self.board = BuildBoard(title)
        self._lock = threading.Lock()
        self.console = console or Console()
        self._live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
        )

    def _render(self) -> RenderableType:
        from rich.table import Table

        with self._lock:
            rows = self.board.rows(time.monotonic())
        # a row is one terminal line: the text is cut (…) to leave the state its room, so
        # the redraw moves the cursor by the right count
        table = Table.grid(padding=(0, 2), expand=True)
        table.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column(no_wrap=True, justify="right")
        for text, state in rows:
            table.add_row(text, state)
        return table

    def __call__(self, event: BuildEvent) -> None:
        with self._lock:
            self.board.feed(event, time.monotonic())

    def __enter__(self) -> LiveBuildView:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()
