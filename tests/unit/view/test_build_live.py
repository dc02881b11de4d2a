"""The live build view's board (reconciler/view/build_live.py): events in, the rows of the
screen out, with the clock passed in."""

from __future__ import annotations

from pyapply.reconciler.view.build_live import BuildBoard
from pyapply.runtime.base import BuildEvent


def test_the_board_shows_steps_states_times_and_the_running_steps_last_lines() -> None:
    board = BuildBoard("build app:1", tail=2)
    assert board.rows(0.0) == [("build app:1", "")]
    board.feed(BuildEvent(1, 3, "FROM busybox", "running"), 10.0)
    board.feed(BuildEvent(1, 3, "FROM busybox", "done", seconds=0.25), 10.2)
    board.feed(BuildEvent(2, 3, "COPY . /src", "running"), 10.3)
    board.feed(BuildEvent(2, 3, "COPY . /src", "cached"), 10.3)
    board.feed(BuildEvent(3, 3, "RUN make", "running"), 11.0)
    for n in range(1, 4):
        board.feed(BuildEvent(3, 3, "RUN make", "output", line=f"cc {n}.c"), 11.5)
    assert board.lines(12.5) == [
        "build app:1  2/3 steps",
        "[1/3] FROM busybox  DONE 0.2s",
        "[2/3] COPY . /src  CACHED",
        "[3/3] RUN make  running 1.5s",
        "    | cc 2.c",
        "    | cc 3.c",
    ]
    # the step ends: its output goes from the screen (the error prints it if it failed)
    board.feed(BuildEvent(3, 3, "RUN make", "failed", seconds=1.75), 12.75)
    assert board.lines(13.0)[1:] == [
        "[1/3] FROM busybox  DONE 0.2s",
        "[2/3] COPY . /src  CACHED",
        "[3/3] RUN make  ERROR 1.8s",
    ]


def test_numbers_are_aligned_and_a_step_seen_first_at_its_end_is_shown() -> None:
    board = BuildBoard()
    board.feed(BuildEvent(9, 12, "ENV A=1", "done", seconds=0.0), 1.0)
    board.feed(BuildEvent(10, 12, "RUN x", "running"), 1.0)
    assert board.lines(1.0) == ["[ 9/12] ENV A=1  DONE 0.0s", "[10/12] RUN x  running 0.0s"]
