"""Restart policies as dockerd applies them: whether a container that ended is started
again, after how long, and when a policy has given up. Pure: no clock, no files.

One decision in one place. The native runtime's keeper (runtime/native/restarter.py) asks
`delay_before_restart` when a container ends, the container manager asks it again under
the container's lock before it restarts one (so a `stop` that came meanwhile wins), the
native observation asks it to show such a container as "restarting", and `pyapply system
start` asks it with `boot=True`. The docker driver only asks `gave_up`, since dockerd keeps
its own books.

dockerd's rules (its restartmanager), followed here:
- `no`: never. `always`: whatever the exit code. `unless-stopped`: likewise, unless the
  container was stopped on purpose. `on-failure[:N]`: only after a non-zero exit, at most N
  times (N = 0: no limit) since the container was last started on purpose.
- A container stopped on purpose (`docker stop`, here `pyapply stop`, a stop by an update
  or a removal) is not restarted by any policy until it is started again.
- The wait before a restart starts at 100 ms and doubles with each restart, up to a
  minute; a run that lasted 10 s or more starts the series anew.
- When the daemon starts (here: `pyapply system start`, at boot), `always` containers are
  started even if they had been stopped on purpose, `unless-stopped` ones unless they had,
  and `on-failure` ones if their last exit was a failure and they had not given up. Such a
  start counts as a start on purpose: the restart count begins again.
"""

from __future__ import annotations

import msgspec

POLICIES = ("no", "always", "unless-stopped", "on-failure")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 60.0
RESET_AFTER_S = 10.0  # a run at least this long resets the backoff


class Policy(msgspec.Struct, frozen=True):
    """A container's restart policy; `max_retries` counts for on-failure only (0: none)."""

    name: str = "no"
    max_retries: int = 0

    @classmethod
    def parse(cls, name: str | None, max_retries: int | None = 0) -> Policy:
        """The runtime's spelling (`on-failure` with a count apart), or the manifest's
        (`on-failure:3`); anything unknown is `no`."""
        text = (name or "no").strip()
        base, _, count = text.partition(":")
        if base not in POLICIES:
            return cls()
        retries = int(count) if count.isdigit() else int(max_retries or 0)
        return cls(base, max(0, retries) if base == "on-failure" else 0)


class Record(msgspec.Struct, frozen=True):
    """What a container keeps of its restarts: how many the policy made since the last
    start on purpose, the last wait before one, and whether it was stopped on purpose."""

    count: int = 0
    delay_s: float = 0.0
    stopped: bool = False


def next_delay(previous_s: float, ran_for_s: float | None) -> float:
    """The wait before the next restart, after a run that lasted `ran_for_s` (None: not
    known) and a previous wait of `previous_s` (0: none yet)."""
    if ran_for_s is not None and ran_for_s >= RESET_AFTER_S:
        previous_s = 0.0
    if previous_s <= 0:
        return FIRST_DELAY_S
    return min(previous_s * 2, MAX_DELAY_S)


def gave_up(policy: Policy, record: Record, exit_code: int | None) -> bool:
    """An on-failure:N container whose last run failed after N restarts: not restarted
    again until someone starts it."""
    return (
        policy.name == "on-failure"
        and policy.max_retries > 0
        and record.count >= policy.max_retries
        and exit_code not in (None, 0)
    )


def wants_restart(
    policy: Policy, record: Record, exit_code: int | None, *, boot: bool = False
) -> bool:
    """Whether the policy starts again a container that ended with `exit_code` (None: not
    known, counted as a failure, as dockerd counts a run it lost track of)."""
    failed = exit_code != 0
    if policy.name == "always":
        return boot or not record.stopped
    if policy.name == "unless-stopped":
        return not record.stopped
    if policy.name == "on-failure":
        return failed and (boot or not record.stopped) and not gave_up(policy, record, exit_code)
    return False


def delay_before_restart(
    policy: Policy,
    record: Record,
    exit_code: int | None,
    ran_for_s: float | None,
    *,
    boot: bool = False,
) -> float | None:
    """How long to wait before the restart of a container that ended; None: no restart.
    At boot there is no wait: the machine, not the container, was down."""
    if not wants_restart(policy, record, exit_code, boot=boot):
        return None
    return 0.0 if boot else next_delay(record.delay_s, ran_for_s)


def after_restart(record: Record, delay_s: float, *, boot: bool = False) -> Record:
    """The record once the policy has started the container again (a start at boot is a
    start on purpose: the count begins again)."""
    if boot:
        return Record()
    return Record(count=record.count + 1, delay_s=delay_s, stopped=False)
