"""Restart policies as dockerd applies them (runtime/restarts.py): the backoff, the decision
after an exit and at boot, giving up, and the books after a restart; and the docker
driver's containers, which show the count and a given-up policy the same way."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from pyapply.runtime.docker.normalise import container_state
from pyapply.runtime.restarts import (
    FIRST_DELAY_S,
    MAX_DELAY_S,
    Policy,
    Record,
    after_restart,
    delay_before_restart,
    gave_up,
    next_delay,
    wants_restart,
)


def test_the_backoff_starts_at_100ms_doubles_and_stops_at_a_minute() -> None:
    waits = [0.0]
    for _ in range(12):
        waits.append(next_delay(waits[-1], ran_for_s=0.5))
    assert waits[1:6] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert waits[-1] == MAX_DELAY_S and max(waits) == MAX_DELAY_S
    assert all(b == min(a * 2, MAX_DELAY_S) for a, b in itertools.pairwise(waits[1:]))


@pytest.mark.parametrize(("ran_for", "expected"), [(9.99, 12.8), (10.0, 0.1), (3600, 0.1)])
def test_a_run_of_ten_seconds_resets_the_backoff(ran_for: float, expected: float) -> None:
    assert next_delay(6.4, ran_for) == pytest.approx(expected)


def test_an_unknown_run_length_keeps_the_backoff_going() -> None:
    assert next_delay(0.4, None) == pytest.approx(0.8)
    assert next_delay(0.0, None) == FIRST_DELAY_S


@pytest.mark.parametrize(
    ("spelling", "retries", "policy"),
    [
        ("no", 0, Policy("no")),
        (None, 0, Policy("no")),
        ("always", 5, Policy("always")),  # a count only means something for on-failure
        ("unless-stopped", 0, Policy("unless-stopped")),
        ("on-failure", 3, Policy("on-failure", 3)),
        ("on-failure:2", 0, Policy("on-failure", 2)),  # the manifest's spelling
        ("on-failure", 0, Policy("on-failure", 0)),
        ("sometimes", 0, Policy("no")),
    ],
)
def test_policies_parse_both_spellings(spelling: str | None, retries: int, policy: Policy) -> None:
    assert Policy.parse(spelling, retries) == policy


FRESH = Record()
STOPPED = Record(stopped=True)

# (policy, record, exit code, boot) -> restarts?
CASES = [
    (Policy("no"), FRESH, 1, False, False),
    (Policy("no"), FRESH, 1, True, False),
    (Policy("always"), FRESH, 0, False, True),
    (Policy("always"), FRESH, 137, False, True),
    (Policy("always"), STOPPED, 143, False, False),  # stopped on purpose
    (Policy("always"), STOPPED, 143, True, True),  # ... but dockerd starts it at boot
    (Policy("unless-stopped"), FRESH, 0, False, True),
    (Policy("unless-stopped"), STOPPED, 143, False, False),
    (Policy("unless-stopped"), STOPPED, 143, True, False),  # not even at boot
    (Policy("unless-stopped"), FRESH, None, True, True),  # ran when the machine went down
    (Policy("on-failure"), FRESH, 0, False, False),  # a success is not a failure
    (Policy("on-failure"), FRESH, 1, False, True),
    (Policy("on-failure"), Record(count=1000), 1, False, True),  # no limit given
    (Policy("on-failure", 2), Record(count=1), 1, False, True),
    (Policy("on-failure", 2), Record(count=2), 1, False, False),  # gave up
    (Policy("on-failure", 2), Record(count=2), 1, True, False),  # also at boot
    (Policy("on-failure"), STOPPED, 143, False, False),
    (Policy("on-failure"), STOPPED, 143, True, True),  # boot: dockerd asks the exit code
    (Policy("on-failure"), FRESH, None, True, True),  # an unknown end counts as a failure
]


@pytest.mark.parametrize(("policy", "record", "code", "boot", "restarts"), CASES)
def test_the_policy_decides_as_dockerd_does(
    policy: Policy, record: Record, code: int | None, boot: bool, restarts: bool
) -> None:
    assert wants_restart(policy, record, code, boot=boot) is restarts
    delay = delay_before_restart(policy, record, code, 1.0, boot=boot)
    assert (delay is not None) is restarts
    if restarts:
        assert delay == (0.0 if boot else next_delay(record.delay_s, 1.0))


def test_on_failure_gives_up_after_its_count_and_says_so() -> None:
    policy = Policy("on-failure", 2)
    record = FRESH
    made = 0
    while (delay := delay_before_restart(policy, record, 1, 0.05)) is not None:
        record = after_restart(record, delay)
        made += 1
        assert made <= 2
    assert made == 2 and record == Record(count=2, delay_s=0.2)
    assert gave_up(policy, record, 1)
    assert not gave_up(policy, record, 0)  # its last run succeeded: done, not given up
    assert not gave_up(Policy("on-failure", 0), Record(count=99), 1)
    assert not gave_up(Policy("always"), Record(count=99), 1)


def test_a_restart_counts_and_a_boot_start_begins_the_books_anew() -> None:
    assert after_restart(Record(count=3, delay_s=0.4), 0.8) == Record(count=4, delay_s=0.8)
    assert after_restart(Record(count=2, delay_s=0.4, stopped=True), 0.0, boot=True) == Record()


def _docker_info(status: str, code: int, count: int, policy: str, retries: int) -> dict[str, Any]:
    return {
        "Id": "c1",
        "Name": "/st-job-1",
        "State": {"Status": status, "ExitCode": code},
        "RestartCount": count,
        "HostConfig": {"RestartPolicy": {"Name": policy, "MaximumRetryCount": retries}},
    }


@pytest.mark.parametrize(
    ("info", "count", "gave"),
    [
        (_docker_info("exited", 1, 2, "on-failure", 2), 2, True),
        (_docker_info("exited", 1, 1, "on-failure", 2), 1, False),
        (_docker_info("exited", 0, 2, "on-failure", 2), 2, False),
        (_docker_info("restarting", 1, 2, "always", 0), 2, False),
        ({"Id": "c2", "State": {"Status": "running"}}, 0, False),
    ],
)
def test_docker_containers_say_the_same(info: dict[str, Any], count: int, gave: bool) -> None:
    state = container_state(info)
    assert (state.restart_count, state.restart_gave_up) == (count, gave)
