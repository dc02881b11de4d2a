"""Engine payloads (services, tasks, nodes, configs, secrets, networks) -> observed states, and
the one decision of when a service has converged. Pure functions of the decoded JSON.

"Converged" is decided here only (`convergence`): the swarm's own `UpdateStatus` says whether
an update is running, paused or rolled back, but it is reset when an update is accepted and
set again only when the updater starts, so in between an old task would pass for an updated
one. A task counts as updated only when its spec is the service's current task template.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyapply.runtime.services import (
    ConvergeOutcome,
    NodeState,
    OverlayNetworkState,
    ServiceState,
    SwarmObjectKind,
    SwarmObjectState,
    TaskState,
    UpdateStatus,
)
from pyapply.runtime.swarm.spec import service_config

__all__ = [
    "convergence",
    "failing_tasks",
    "node_state",
    "object_state",
    "overlay_network_state",
    "same_task_spec",
    "service_state",
    "task_state",
]

JSON = Mapping[str, Any]
_UPDATE_STATES = frozenset(
    ("updating", "paused", "completed", "rollback_started", "rollback_paused", "rollback_completed")
)
_FAILED = frozenset(("failed", "rejected"))


def _time(value: object) -> str | None:
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    return value


def _version(info: JSON) -> int:
    return int((info.get("Version") or {}).get("Index") or 0)


def update_status(info: JSON) -> UpdateStatus | None:
    status: JSON | None = info.get("UpdateStatus")
    if not status or status.get("State") not in _UPDATE_STATES:
        return None
    return UpdateStatus(
        state=status["State"],
        message=str(status.get("Message") or ""),
        started_at=_time(status.get("StartedAt")),
        completed_at=_time(status.get("CompletedAt")),
    )


def task_state(info: JSON, template: JSON | None, hostnames: Mapping[str, str]) -> TaskState:
    """A task; `template` is its service's current `TaskTemplate` (None: unknown, the task
    counts as current); `hostnames` maps node ids to hostnames."""
    status: JSON = info.get("Status") or {}
    node_id = str(info.get("NodeID") or "")
    slot = info.get("Slot")
    return TaskState(
        id=str(info.get("ID") or ""),
        service=str(info.get("ServiceID") or ""),
        node=hostnames.get(node_id, ""),
        node_id=node_id,
        slot=int(slot) if slot else None,
        state=status.get("State") or "new",
        desired_state=info.get("DesiredState") or "new",
        error=str(status.get("Err") or ""),
        message=str(status.get("Message") or ""),
        container_id=str((status.get("ContainerStatus") or {}).get("ContainerID") or ""),
        timestamp=_time(status.get("Timestamp")),
        current=template is None or same_task_spec(info.get("Spec") or {}, template),
    )


# Fields that a service's task template shows and its tasks' specs lack: "Runtime" (always,
# on Engine 20.10), and the defaults an inspect with insertDefaults=true adds (what
# `docker service inspect` shows). None of them is ours to set.
_INTERPOLATED = frozenset(("StopGracePeriod", "DNSConfig", "Isolation", "Runtime"))


def _essential(value: Any) -> Any:
    """`value` without empty fields and the manager's interpolated defaults."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k in _INTERPOLATED:
                continue
            v = _essential(v)
            if v not in (None, {}, [], "", 0, False):
                out[k] = v
        return out
    if isinstance(value, list):
        return [_essential(v) for v in value]
    return value


def same_task_spec(task_spec: JSON, template: JSON) -> bool:
    """Whether a task was made from the service's task template `template`."""
    return bool(_essential(task_spec) == _essential(template))


def _slot_key(t: TaskState) -> str:
    return f"slot:{t.slot}" if t.slot is not None else f"node:{t.node_id}"


def failing_tasks(tasks: Iterable[TaskState]) -> tuple[TaskState, ...]:
    """Per replica (slot, or node in global mode) with no running task: its latest failed or
    rejected task, newest first. A replica that runs again is not failing, whatever its
    history."""
    running: set[str] = set()
    latest: dict[str, TaskState] = {}
    for t in tasks:
        key = _slot_key(t)
        if t.running:
            running.add(key)
        elif t.state in _FAILED or (t.error and t.desired_state == "running"):
            have = latest.get(key)
            if have is None or (t.timestamp or "") > (have.timestamp or ""):
                latest[key] = t
    out = [t for key, t in latest.items() if key not in running]
    return tuple(sorted(out, key=lambda t: t.timestamp or "", reverse=True))


def service_state(
    info: JSON,
    tasks: Sequence[JSON],
    *,
    network_names: Mapping[str, str],
    hostnames: Mapping[str, str],
) -> ServiceState:
    """A service (`GET /services?status=true` entry or an inspect) with its tasks."""
    spec: JSON = info.get("Spec") or {}
    template: JSON | None = spec.get("TaskTemplate")
    states = [task_state(t, template, hostnames) for t in tasks]
    counts: JSON = info.get("ServiceStatus") or {}
    desired, running = _counts(spec, states)
    return ServiceState(
        id=str(info.get("ID") or ""),
        name=str(spec.get("Name") or ""),
        version=_version(info),
        spec=service_config(spec, network_names=network_names),
        labels=dict(spec.get("Labels") or {}),
        desired_tasks=int(counts.get("DesiredTasks", desired)),
        running_tasks=int(counts.get("RunningTasks", running)),
        update=update_status(info),
        failing=failing_tasks(states),
        created_at=_time(info.get("CreatedAt")),
        updated_at=_time(info.get("UpdatedAt")),
    )


def _counts(spec: JSON, tasks: Sequence[TaskState]) -> tuple[int, int]:
    """(desired, running) counted from the tasks: replicated: the replicas asked for; global:
    the tasks the swarm wants running (one per eligible node)."""
    mode: JSON = spec.get("Mode") or {}
    if "Global" in mode:
        desired = sum(1 for t in tasks if t.desired_state == "running")
    else:
        desired = int((mode.get("Replicated") or {}).get("Replicas", 1))
    return desired, sum(1 for t in tasks if t.running)


def convergence(info: JSON, tasks: Sequence[JSON]) -> tuple[ConvergeOutcome | None, str, int, int]:
    """Where a service's update stands: (outcome or None while on its way, message, tasks
    running the current spec, tasks desired).

    Rolled back and paused come from the swarm's update status. Otherwise the service has
    converged when as many tasks as desired run its current spec and every task the swarm
    wants running is one of them (no old task left running, none still starting).
    """
    spec: JSON = info.get("Spec") or {}
    template: JSON | None = spec.get("TaskTemplate")
    states = [task_state(t, template, {}) for t in tasks]
    desired, _ = _counts(spec, states)
    running = sum(1 for t in states if t.running and t.current)
    update = update_status(info)
    failing = failing_tasks(states)
    last_error = failing[0].error or failing[0].message if failing else ""
    if update is not None:
        message = update.message or last_error
        if update.state == "rollback_completed":
            if running >= desired:
                return "rolled_back", message, running, desired
            return None, message, running, desired
        if update.state in ("paused", "rollback_paused"):
            return "paused", message, running, desired
        if update.in_progress:
            return None, message, running, desired
    wanted = [t for t in states if t.desired_state == "running"]
    if "Global" in (spec.get("Mode") or {}) and not wanted:
        # The orchestrator has not made a global service's tasks yet (or no node is eligible:
        # `wait_converged` tells the two apart by waiting a little).
        return None, "no task yet", 0, 0
    if running >= desired and all(t.running and t.current for t in wanted):
        return "converged", update.message if update else "", running, desired
    where = f"{running}/{desired} tasks running the current spec"
    return None, f"{where}; last error: {last_error}" if last_error else where, running, desired


def node_state(info: JSON) -> NodeState:
    spec: JSON = info.get("Spec") or {}
    status: JSON = info.get("Status") or {}
    manager: JSON = info.get("ManagerStatus") or {}
    return NodeState(
        id=str(info.get("ID") or ""),
        hostname=str((info.get("Description") or {}).get("Hostname") or ""),
        role="manager" if spec.get("Role") == "manager" else "worker",
        availability=spec.get("Availability") or "active",
        state=status.get("State") or "unknown",
        addr=str(status.get("Addr") or ""),
        labels=dict(spec.get("Labels") or {}),
        leader=bool(manager.get("Leader")),
    )


def object_state(kind: SwarmObjectKind, info: JSON) -> SwarmObjectState:
    spec: JSON = info.get("Spec") or {}
    data = spec.get("Data")
    return SwarmObjectState(
        kind=kind,
        id=str(info.get("ID") or ""),
        name=str(spec.get("Name") or ""),
        labels=dict(spec.get("Labels") or {}),
        version=_version(info),
        data=base64.b64decode(data) if isinstance(data, str) else None,
        created_at=_time(info.get("CreatedAt")),
    )


def overlay_network_state(info: JSON) -> OverlayNetworkState:
    configs = (info.get("IPAM") or {}).get("Config") or []
    subnet = configs[0].get("Subnet") if configs else None
    return OverlayNetworkState(
        id=str(info.get("Id") or ""),
        name=str(info.get("Name") or ""),
        driver=str(info.get("Driver") or ""),
        scope=str(info.get("Scope") or ""),
        attachable=bool(info.get("Attachable")),
        internal=bool(info.get("Internal")),
        labels=dict(info.get("Labels") or {}),
        subnet=subnet or None,
    )
