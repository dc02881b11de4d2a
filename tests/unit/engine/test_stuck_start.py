"""A start that keeps failing on stale runtime state escalates to remove and recreate.

After dockerd is SIGKILLed, it may keep a task of a container, or a port allocated to it or
held by a leaked docker-proxy, and every start of that container fails the same way. The
executor tries such a start `stuck_attempts` times, then removes the container and makes it
again (once), and says so in the result line; the Docker driver classifies the daemon's
messages that mean this (`Stuck`).
"""

from __future__ import annotations

import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.core.diff import diff
from pyapply.reconciler.core.model import ServiceSpec, Stack
from pyapply.reconciler.core.plan import Plan, build
from pyapply.reconciler.core.translate import desired_state
from pyapply.reconciler.engine.execute import ActionResult, Executor, Outcome, Settings
from pyapply.reconciler.engine.reconcile import observe
from pyapply.reconciler.view.plan_text import result_line
from pyapply.runtime.base import ImageInfo, PermanentError, Stuck, TransientError
from pyapply.runtime.docker.errors import classify_api_error

IMAGE = "registry.local/busybox:1"
STACK = Stack(name="shop", services=(ServiceSpec(name="web", image=IMAGE),))
WEB = "shop-web-1"


def plan_of(rt: FakeRuntime) -> Plan:
    d = desired_state(STACK, revision="r", file_contents={}, files_root="/tmp/files")
    return build(d, diff(d, observe(rt, d.stack, d)))


def run(rt: FakeRuntime, plan: Plan, **settings: int) -> Outcome:
    return Executor(rt, Settings(sleep=lambda s: None, **settings)).run(plan)  # type: ignore[arg-type]


def the(outcome: Outcome, action_id: str) -> ActionResult:
    return next(r for r in outcome.results if r.action.id == action_id)


@pytest.fixture
def rt() -> FakeRuntime:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ("PATH=/bin",))})
    assert run(rt, plan_of(rt)).ok
    rt.mutate(WEB, status="exited", exit_code=255)  # dockerd was killed under it
    rt.calls.clear()
    return rt


def test_a_stuck_start_is_recreated_after_a_bounded_number_of_tries(rt: FakeRuntime) -> None:
    old_id = rt.containers[WEB].id
    rt.stuck_ids.add(old_id)
    plan = plan_of(rt)
    assert [(c.kind, c.name) for c in plan.changes] == [("start", WEB)]
    outcome = run(rt, plan)
    assert outcome.ok
    result = the(outcome, f"container:{WEB}:start")
    assert result.attempts == 3
    assert rt.calls == [
        f"start {WEB}",
        f"start {WEB}",
        f"start {WEB}",
        f"stop {WEB}",
        f"remove {WEB}",
        f"create {WEB}",
        f"start {WEB}",
    ]
    assert rt.containers[WEB].id != old_id and rt.containers[WEB].running
    assert result.note is not None and "recreated: start failed 3 times" in result.note
    line = result_line(result)
    assert line.startswith(f"container {WEB}: Started (")
    assert "recreated" in line and "port 8080 is already allocated" in line
    assert plan_of(rt).empty


def test_the_bound_is_a_setting(rt: FakeRuntime) -> None:
    rt.stuck_ids.add(rt.containers[WEB].id)
    outcome = run(rt, plan_of(rt), stuck_attempts=1)
    assert the(outcome, f"container:{WEB}:start").attempts == 1
    assert rt.calls[:3] == [f"start {WEB}", f"stop {WEB}", f"remove {WEB}"]


def test_a_start_stuck_whatever_the_container_recreates_once_then_fails(
    rt: FakeRuntime,
) -> None:
    rt.stuck_names.add(WEB)  # e.g. the port is held by another program
    outcome = run(rt, plan_of(rt))
    assert not outcome.ok
    result = the(outcome, f"container:{WEB}:start")
    assert result.attempts == Settings().attempts
    assert rt.calls.count(f"create {WEB}") == 1  # one recreate, never a loop of them
    # the recreated container's first start is in the same try as the recreate
    assert rt.calls.count(f"start {WEB}") == Settings().attempts + 1
    assert result.error is not None
    assert "port 8080 is already allocated" in result.error
    assert "even after it was recreated" in result.error
    assert "FAILED" in result_line(result) and "recreated" in result_line(result)


def test_a_recreate_interrupted_by_a_transient_error_is_finished(rt: FakeRuntime) -> None:
    """The removal went through, the create hit a busy daemon: the next try makes it."""
    rt.stuck_ids.add(rt.containers[WEB].id)
    real_create = rt.create_container
    failures = iter([TransientError("daemon busy")])

    def flaky_create(config):  # type: ignore[no-untyped-def]
        if config.name == WEB and WEB not in rt.containers:
            err = next(failures, None)
            if err is not None:
                raise err
        return real_create(config)

    rt.create_container = flaky_create  # type: ignore[method-assign]
    outcome = run(rt, plan_of(rt))
    assert outcome.ok, [r.error for r in outcome.failed]
    assert rt.containers[WEB].running
    assert the(outcome, f"container:{WEB}:start").note is not None


def test_transient_start_failures_are_retried_not_escalated(rt: FakeRuntime) -> None:
    old_id = rt.containers[WEB].id
    rt.fail_next["start"] = 3
    outcome = run(rt, plan_of(rt))
    assert outcome.ok
    result = the(outcome, f"container:{WEB}:start")
    assert result.attempts == 4 and result.note is None
    assert rt.containers[WEB].id == old_id and "remove " + WEB not in rt.calls


def test_a_new_container_whose_first_start_is_stuck_is_made_again(rt: FakeRuntime) -> None:
    """The create op starts what it made; a stuck start there escalates the same way."""
    del rt.containers[WEB]
    real_create = rt.create_container

    def create_stuck_once(config):  # type: ignore[no-untyped-def]
        cid = real_create(config)
        if not rt.stuck_ids:
            rt.stuck_ids.add(cid)
        return cid

    rt.create_container = create_stuck_once  # type: ignore[method-assign]
    outcome = run(rt, plan_of(rt))
    assert outcome.ok
    assert "recreated" in (the(outcome, f"container:{WEB}:create").note or "")
    assert rt.containers[WEB].running


# -- the Docker driver's classification -------------------------------------------------------

PROXY = (
    "driver failed programming external connectivity on endpoint t-web-1 (5e7b8269): "
    "Error starting userland proxy: listen tcp4 127.0.0.1:35851: bind: address already in use"
)
ALLOCATED = (
    "driver failed programming external connectivity on endpoint t-web-1 (5e7b8269): "
    "Bind for 0.0.0.0:8080 failed: port is already allocated"
)


@pytest.mark.parametrize(
    ("status", "explanation"),
    [
        (500, PROXY),
        (500, ALLOCATED),
        (409, "Container 5e7b8269 is marked for removal and cannot be started"),
        (500, "OCI runtime create failed: container with id exists: 5e7b8269: unknown"),
        (
            500,
            "failed to create task for container: failed to create shim task: "
            "task 5e7b8269: already exists: unknown",
        ),
    ],
)
def test_docker_start_failures_on_stale_state_are_stuck(status: int, explanation: str) -> None:
    err = classify_api_error(status, explanation, "start container t-web-1")
    assert isinstance(err, Stuck), err
    assert err.message.startswith("docker: cannot start container t-web-1: ")


def test_docker_port_message_stays_plain() -> None:
    err = classify_api_error(500, PROXY, "start container t-web-1")
    assert "port 35851 is already in use on 127.0.0.1 by another program" in err.message


@pytest.mark.parametrize(
    ("status", "explanation", "action", "kind"),
    [
        # the same words outside a start: fail fast, as before
        (500, PROXY, "create container t-web-1", PermanentError),
        (409, "removal of container t-web-1 is already in progress", "remove container x", None),
        # a start failing for a reason a new container would share: not escalated
        (
            500,
            'OCI runtime create failed: exec: "nope": executable file not found in $PATH',
            "start container t-web-1",
            PermanentError,
        ),
        (404, "No such container: t-web-1", "start container t-web-1", None),
    ],
)
def test_other_docker_failures_are_not_stuck(
    status: int, explanation: str, action: str, kind: type[Exception] | None
) -> None:
    err = classify_api_error(status, explanation, action)
    assert not isinstance(err, Stuck), err
    if kind is not None:
        assert type(err) is kind


def test_escalation_needs_the_config_to_recreate_from(rt: FakeRuntime) -> None:
    """A start action always carries its container's config; without it (a hand-made
    plan), a stuck start just fails after the retries."""
    rt.stuck_ids.add(rt.containers[WEB].id)
    plan = plan_of(rt)
    bare = msgspec.structs.replace(
        plan, actions=tuple(msgspec.structs.replace(a, container=None) for a in plan.actions)
    )
    outcome = run(rt, bare)
    assert not outcome.ok and f"create {WEB}" not in rt.calls
