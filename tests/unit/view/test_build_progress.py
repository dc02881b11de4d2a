"""Build progress lines and JSON (reconciler/view/build_progress.py)."""

from __future__ import annotations

from pyapply.reconciler.view.build_progress import (
    event_line,
    failure_json,
    failure_lines,
    result_lines,
)
from pyapply.runtime.base import BuildEvent, BuildFailed, BuildResult


def test_lines() -> None:
    assert event_line(BuildEvent(3, 10, "RUN make", "running")) == "[3/10] RUN make"
    assert event_line(BuildEvent(3, 10, "RUN make", "output", line="cc x.c")) == "  | cc x.c"
    assert event_line(BuildEvent(3, 10, "RUN make", "cached")) == "[3/10] CACHED"
    assert event_line(BuildEvent(3, 10, "RUN make", "done", seconds=1.25)) == "[3/10] DONE 1.2s"
    assert (
        event_line(BuildEvent(3, 10, "RUN make", "failed", seconds=2)) == "[3/10] ERROR after 2.0s"
    )
    res = BuildResult("sha256:" + "ab" * 32, ("app:1",), 10, 4)
    assert result_lines(res) == ["built abababababab (10 steps, 4 cached): app:1"]


def test_failure() -> None:
    e = BuildFailed(
        "Dockerfile:4: RUN false failed",
        where="Dockerfile:4",
        step="RUN false",
        exit_code=1,
        tail=("a", "b"),
    )
    assert failure_lines(e) == ["step: RUN false", "last 2 lines of its output:", "  | a", "  | b"]
    assert failure_json(e)["exit_code"] == 1 and failure_json(e)["where"] == "Dockerfile:4"
