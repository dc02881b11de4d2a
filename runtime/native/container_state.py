"""The shape of a native container's `state.json` (and what of its OCI spec tells which
container it was), checked whenever it is read: by the container manager, the driver's
event poll and the keeper (statefile.read_json)."""

from __future__ import annotations

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
        "shm": optional(string),
        "mac": list_of(
            string
        ),  # [ip, mac]: the interface of ip gets mac (mac_address)  # a host tmpfs mounted at its /dev/shm (ipc: shareable)
        "post_start": list_of(_HOOK),
        "pre_stop": list_of(_HOOK),
    },
)
# the OCI spec's annotations: what is left to say which container a damaged state was
SPEC_SHAPE = record({}, {"annotations": map_of(anything)})
LABELS_ANNOTATION = "io.pyapply.labels"
