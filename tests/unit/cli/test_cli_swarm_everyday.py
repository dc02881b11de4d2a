"""The swarm's everyday commands' pure parts: which prefix a task's log lines get
(`cli.swarm.task_labels`), and how a line of the Engine's service logs is split into its
task and its text (`runtime.swarm.driver._log_lines`). The real swarm is driven by
tests/e2e/test_swarm_everyday.py."""

from __future__ import annotations

from collections.abc import Iterator

from pyapply.reconciler.cli.swarm import task_labels
from pyapply.runtime.services import ServiceLogLine, TaskState
from pyapply.runtime.swarm import driver


def task(tid: str, slot: int | None, node: str = "n1") -> TaskState:
    return TaskState(tid, "service-id", node, "node-" + node, slot, "running", "running")


def test_a_task_is_named_by_its_slot_or_for_a_global_service_its_node() -> None:
    labels = task_labels("shop_web", [task("aaaaaaaa1", 1), task("bbbbbbbb2", 2)])
    assert labels == {"aaaaaaaa1": "shop_web.1", "bbbbbbbb2": "shop_web.2"}
    assert task_labels("shop_web", [task("c1", None, "w1")]) == {"c1": "shop_web.w1"}


def test_an_older_task_of_the_same_slot_gets_its_short_id() -> None:
    labels = task_labels(
        "shop_web", [task("aaaaaaaa1", 1), task("dddddddd9", 1), task("bbbbbbbb2", 2)]
    )
    assert labels == {
        "aaaaaaaa1": "shop_web.1.aaaaaa",
        "dddddddd9": "shop_web.1.dddddd",
        "bbbbbbbb2": "shop_web.2",
    }


def chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts


def test_log_lines_are_recut_and_their_details_split_off() -> None:
    details = (
        b"com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,com.docker.swarm.task.id="
    )
    stream = chunks(
        details + b"t1 hello wor",
        b"ld\n" + details + b"t2 second = line\n",
        b"no details here\n",
        details + b"t1 partial",
    )
    assert list(driver._log_lines(stream)) == [
        ServiceLogLine("t1", b"hello world\n"),
        ServiceLogLine("t2", b"second = line\n"),
        ServiceLogLine("", b"no details here\n"),
        ServiceLogLine("t1", b"partial"),
    ]


def test_closing_the_lines_closes_the_stream() -> None:
    closed: list[bool] = []

    def stream() -> Iterator[bytes]:
        try:
            yield b"com.docker.swarm.task.id=t1 a\ncom.docker.swarm.task.id=t1 b\n"
        finally:
            closed.append(True)

    lines = driver._log_lines(stream())
    assert next(lines) == ServiceLogLine("t1", b"a\n")
    lines.close()  # type: ignore[attr-defined]
    assert closed == [True]
