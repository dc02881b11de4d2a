"""The swarm's everyday commands' pure parts: which prefix a task's log lines get
(`cli.swarm.task_labels`), and how a line of the Engine's service logs is split into its
task and its text (`runtime.swarm.driver._log_lines`). The real swarm is driven by
tests/e2e/test_swarm_everyday.py."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from pyapply.reconciler.cli import swarm
from pyapply.reconciler.cli.main import Failure
from pyapply.reconciler.cli.swarm import task_labels
from pyapply.reconciler.core import identity
from pyapply.runtime.base import PermanentError
from pyapply.runtime.services import (
    ServiceConfig,
    ServiceLogLine,
    ServiceState,
    TaskState,
    UpdateState,
    UpdateStatus,
)
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


# ---------------------------------------------------------------------------------------------
# rollback: waiting for the swarm's own rollback to end


class RollingBack:
    """A swarm of one service whose rollback goes through `states` (one per look after it
    was asked for); before that, its last update (started "t1") completed."""

    name = "swarm"

    def __init__(self, *states: UpdateState, previous: bool = True) -> None:
        self.states = list(states)
        self.previous = previous
        self.asked = False
        self.looks = 0

    def list_services(self, labels: Mapping[str, str]) -> list[ServiceState]:
        state = self.get_service("shop_web")
        return [state] if state is not None and labels.get(identity.SERVICE, "web") == "web" else []

    def get_service(self, name: str) -> ServiceState | None:
        update = UpdateStatus("completed", started_at="t1")
        if self.asked:
            self.looks += 1
            i = min(self.looks, len(self.states)) - 1
            state = self.states[i]
            # "completed": still the update before the rollback (it has not started)
            update = UpdateStatus(state, started_at="t1" if state == "completed" else f"t2-{i}")
        config = ServiceConfig(name="shop_web", image="x")
        labels = {identity.STACK: "shop", identity.SERVICE: "web"}
        return ServiceState("id", "shop_web", 3, config, labels, 2, 2, update)

    def rollback_service(self, name: str) -> None:
        if not self.previous:
            raise PermanentError(f"swarm: cannot roll back service {name}: it has no previous spec")
        self.asked = True


def test_a_rollback_is_waited_for_until_the_swarm_says_it_completed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the update before the rollback still shows at first: not taken for the rollback's end
    rt = RollingBack("completed", "rollback_started", "rollback_completed")
    swarm.rollback(rt, ["shop"], (), wait_timeout=30)  # type: ignore[arg-type]
    assert "rolled back shop_web to its previous spec" in capsys.readouterr().out
    assert rt.looks == 3


def test_a_paused_rollback_or_none_to_roll_back_to_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(Failure, match="some services were not rolled back"):
        swarm.rollback(RollingBack("rollback_paused"), ["shop"], ("web",), wait_timeout=30)  # type: ignore[arg-type]
    assert "rollback of shop_web: paused" in capsys.readouterr().out
    with pytest.raises(Failure):
        swarm.rollback(RollingBack(previous=False), ["shop"], ("web",), wait_timeout=30)  # type: ignore[arg-type]
    assert "not rolled back: swarm: cannot roll back service shop_web" in capsys.readouterr().out
