"""The shape of a native container's `state.json` (and what of its OCI spec tells which
container it was), checked whenever it is read: by the container manager, the driver's
event poll and the keeper (statefile.read_json); and what a state says of its restart
policy, read the same way by the manager and the keeper."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from pyapply.runtime import restarts
from pyapply.runtime.native.statefile import (
    anything,
    boolean,
    integer,
    list_of,
    map_of,
    nonempty,
    number,
    optional,
    record,
    string,
)

# a removed container's dir is renamed to this before it is deleted (never a container name,
# which starts with a letter or digit): what scans the containers dir skips it
REMOVED_PREFIX = ".removed-"

# what the code relies on in a container's state.json (fields added later are optional)
_HOOK = record(
    {"command": list_of(string)},
    {
        "user": optional(string),
        "privileged": boolean,
        "working_dir": optional(string),
        "env": list_of(string),
    },
)
STATE_SHAPE = record(
    {
        "id": nonempty,
        "labels": map_of(string),
        "layer_dirs": list_of(string),
        "hostname": string,
    },
    {
        "name": string,
        "image": string,
        "image_id": string,
        "env": list_of(string),
        "created_at": optional(string),
        "started_at": optional(string),
        "finished_at": optional(string),
        "exit_code": optional(integer),
        "stop_signal": optional(string),
        "stop_timeout_s": optional(number),
        "health": optional(
            record(
                {"test": list_of(string)},
                {
                    "interval_s": number,
                    "timeout_s": number,
                    "retries": integer,
                    "start_period_s": number,
                },
            )
        ),
        "memory_bytes": optional(integer),
        "ports": list_of(
            record(
                {"container_port": integer},
                {
                    "protocol": string,
                    "host_ip": string,
                    "host_port": optional(integer),
                    "host_port_last": optional(integer),
                },
            )
        ),
        "networks": list_of(string),
        "netns_path": optional(string),
        # a container without a namespace of its own: "host", or "container" (`joined` is
        # the key of the container whose namespace and /etc files it shares, `joined_id`
        # that container's id)
        "network_mode": optional(string),
        "joined": optional(string),
        "joined_id": optional(string),
        "expose": list_of(string),
        "pending": boolean,
        "log": record({}, {"max_size": integer, "files": integer}),
        "cgroup_parent": optional(string),
        "tty": boolean,
        "stdin_open": boolean,
        # the containers (keys) whose pid / ipc namespace it joins: found again at each start
        "joins": map_of(string),
        "shm": optional(string),  # a host tmpfs mounted at its /dev/shm (ipc: shareable)
        "mac": list_of(string),  # [ip, mac]: the interface of ip gets mac (mac_address)
        "post_start": list_of(_HOOK),
        "pre_stop": list_of(_HOOK),
        # the restart policy and its books (runtime/restarts.py), kept by the manager
        "restart": record(
            {"policy": string},
            {"max_retries": integer, "count": integer, "delay_s": number, "stopped": boolean},
        ),
    },
)
# the OCI spec's annotations: what is left to say which container a damaged state was
SPEC_SHAPE = record({}, {"annotations": map_of(anything)})
LABELS_ANNOTATION = "io.pyapply.labels"


def restart_policy(doc: Mapping[str, Any]) -> restarts.Policy:
    """The restart policy a container was created with (none before it was recorded)."""
    r = doc.get("restart") or {}
    return restarts.Policy.parse(r.get("policy"), r.get("max_retries"))


def restart_record(doc: Mapping[str, Any]) -> restarts.Record:
    r = doc.get("restart") or {}
    return restarts.Record(
        count=int(r.get("count") or 0),
        delay_s=float(r.get("delay_s") or 0.0),
        stopped=bool(r.get("stopped")),
    )


def epoch(iso: str | None) -> float | None:
    """A state's timestamp (utc_iso's form) as an epoch time; None if it has none."""
    if not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def restart_delay(
    doc: Mapping[str, Any], exit_code: int | None, finished: float | None, *, boot: bool = False
) -> float | None:
    """restarts.delay_before_restart for a container that ended (`finished`: when, as an
    epoch time, if known): the one question the keeper, the manager and `system start` ask."""
    started = epoch(doc.get("started_at"))
    ran_for = finished - started if finished is not None and started is not None else None
    return restarts.delay_before_restart(
        restart_policy(doc), restart_record(doc), exit_code, ran_for, boot=boot
    )
