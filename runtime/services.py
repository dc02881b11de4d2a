"""The service-level vocabulary: what a cluster runtime (Docker Swarm) is asked to run, what it
reports, and the `ServiceRuntime` protocol a swarm driver implements.

`runtime.base` speaks of containers on one host; a swarm speaks of services, whose replicas
(tasks) the swarm places on its nodes, updates in a rolling, health-gated way and rolls back
by itself. The reconciler translates a Stack into `ServiceConfig`s, compares each with the
`ServiceState.spec` the driver reads back (the spec written in the same vocabulary, so a
field-level diff compares like with like), and converges with `create_service`,
`update_service` (a real service update, never remove-and-create) and `wait_converged`.

Conventions, as for `runtime.base`:

- every type is a frozen msgspec Struct; tuples are kept in a canonical order (see each type) so
  that two configs of the same service compare equal; mappings compare as mappings;
- the errors are those of `runtime.base` (`TransientError`, `PermanentError`, `NotFound`,
  `Conflict`);
- create calls are idempotent: an object of that name with the same ownership labels is
  success, one without them is `Conflict`; remove calls: gone is success;
- durations are seconds (float); memory is bytes; CPUs are nano-CPUs (1e9 = one CPU).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal, Protocol, runtime_checkable

import msgspec

from pyapply.runtime.base import HealthConfig, Hidden, MountConfig, VolumeState

__all__ = [
    "STACK_NAMESPACE_LABEL",
    "ConvergeOutcome",
    "ConvergeResult",
    "NodeState",
    "OverlayNetworkConfig",
    "OverlayNetworkState",
    "Placement",
    "Resources",
    "RestartPolicy",
    "ServiceConfig",
    "ServiceEvent",
    "ServiceLogLine",
    "ServiceNetwork",
    "ServicePort",
    "ServiceRuntime",
    "ServiceState",
    "SwarmObjectConfig",
    "SwarmObjectKind",
    "SwarmObjectRef",
    "SwarmObjectState",
    "TaskState",
    "UpdatePolicy",
    "UpdateStatus",
]

# The label `docker stack deploy` puts on every object of a stack (services, their containers,
# networks, configs, secrets); `docker stack ls/ps/services` find a stack by it.
STACK_NAMESPACE_LABEL = "com.docker.stack.namespace"

ServiceMode = Literal["replicated", "global"]
EndpointMode = Literal["vip", "dnsrr"]
PublishMode = Literal["ingress", "host"]
RestartCondition = Literal["none", "on-failure", "any"]
UpdateOrder = Literal["stop-first", "start-first"]
FailureAction = Literal["pause", "continue", "rollback"]
SwarmObjectKind = Literal["config", "secret"]

# ---------------------------------------------------------------------------------------------
# What to run


class Resources(msgspec.Struct, frozen=True):
    """Limits and reservations of each task (None: not set). `pids_limit` is a limit only."""

    limit_nano_cpus: int | None = None
    limit_memory_bytes: int | None = None
    limit_pids: int | None = None
    reserve_nano_cpus: int | None = None
    reserve_memory_bytes: int | None = None


class RestartPolicy(msgspec.Struct, frozen=True):
    """When the swarm replaces a task whose container ended (compose `deploy.restart_policy`).
    `max_attempts` 0 means no limit; `window_s` 0 means unbounded."""

    condition: RestartCondition = "any"
    delay_s: float = 5.0
    max_attempts: int = 0
    window_s: float = 0.0


class UpdatePolicy(msgspec.Struct, frozen=True):
    """How an update (or a rollback) rolls: `parallelism` tasks at a time (0: all at once),
    `delay_s` between batches, `order` stop-first/start-first, `monitor_s` the time a new task
    must survive to count as updated, `failure_action` what a failed task does to the update
    (pause it, continue, or roll back -- `rollback` is not valid in a rollback policy), and
    `max_failure_ratio` the failures tolerated."""

    parallelism: int = 1
    delay_s: float = 0.0
    order: UpdateOrder = "stop-first"
    failure_action: FailureAction = "pause"
    monitor_s: float = 5.0
    max_failure_ratio: float = 0.0


class Placement(msgspec.Struct, frozen=True):
    """Where tasks may go: `constraints` ("node.hostname==a", "node.labels.zone==x"), in the
    order written; `preferences` the spread descriptors ("node.labels.zone"), in order;
    `max_replicas_per_node` (None: no limit)."""

    constraints: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()
    max_replicas_per_node: int | None = None


class ServicePort(msgspec.Struct, frozen=True):
    """A published port: `published` on the routing mesh ("ingress") or on the node running a
    task ("host"); `published` None lets the swarm choose (ingress) or a free port (host).
    Sorted by (target, protocol, published, mode)."""

    target: int
    published: int | None = None
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    mode: PublishMode = "ingress"


class ServiceNetwork(msgspec.Struct, frozen=True):
    """A service's attachment to a (swarm-scoped) network, by name, with DNS aliases (sorted).
    The list of a service's networks is sorted by name."""

    network: str
    aliases: tuple[str, ...] = ()


class SwarmObjectRef(msgspec.Struct, frozen=True):
    """A config or secret made available to a service's tasks as a file.

    `name` is the swarm object's name (pyapply names them by content hash, so a new content is
    a new object); `target` is the file's path (configs: absolute, default "/<name>";
    secrets: a name under /run/secrets or an absolute path). Sorted by (target, name)."""

    name: str
    target: str
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


class ServiceConfig(msgspec.Struct, frozen=True):
    """Everything needed to create or update one swarm service.

    `image` is a registry reference, pinned by digest ("reg/x:tag@sha256:...") whenever the
    caller can, so that every node runs the same image. `entrypoint` replaces the image's
    entrypoint (Engine `ContainerSpec.Command`) and `command` its command (`Args`), as in
    compose. `labels` are the service's (ours, io.pyapply.*, plus `STACK_NAMESPACE_LABEL`),
    `container_labels` those of each task's container. `replicas` counts for the replicated
    mode only (leave it at 1 for global: a global service reads back with 1). `env` is sorted ("KEY=value"); `mounts` sorted by target; `networks`, `ports`,
    `configs`, `secrets` as their types say.
    """

    name: str
    image: str
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    container_labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    init: bool | None = None
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace_period_s: float | None = None
    mode: ServiceMode = "replicated"
    replicas: int = 1
    placement: Placement = Placement()
    resources: Resources = Resources()
    restart_policy: RestartPolicy = RestartPolicy()
    update_config: UpdatePolicy = UpdatePolicy()
    rollback_config: UpdatePolicy = UpdatePolicy()
    endpoint_mode: EndpointMode = "vip"
    health: HealthConfig | None = None
    ports: tuple[ServicePort, ...] = ()
    networks: tuple[ServiceNetwork, ...] = ()
    mounts: tuple[MountConfig, ...] = ()
    configs: tuple[SwarmObjectRef, ...] = ()
    secrets: tuple[SwarmObjectRef, ...] = ()
    # the labels of each named volume a task mounts, by volume name (sorted, labels sorted):
    # a node creates a volume it lacks when a task mounts it, labelled so (as docker stack
    # does), so that the volumes of a stack are found on every node
    volume_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()


class SwarmObjectConfig(Hidden, msgspec.Struct, frozen=True):
    """A swarm config or secret to create. Swarm objects are immutable: a new content is a new
    object (name it by the content's hash), switched to by a service update. `data` never
    appears in a repr."""

    __hidden__ = frozenset({"data"})
    name: str
    data: bytes
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)


class OverlayNetworkConfig(msgspec.Struct, frozen=True):
    """A swarm-scoped network. `attachable` lets plain containers (not only services) join it;
    `internal` cuts it off from the outside."""

    name: str
    driver: str = "overlay"
    attachable: bool = False
    internal: bool = False
    subnet: str | None = None
    gateway: str | None = None
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# What is there

UpdateState = Literal[
    "updating", "paused", "completed", "rollback_started", "rollback_paused", "rollback_completed"
]
TaskStatus = Literal[
    "new",
    "allocated",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
]


class UpdateStatus(msgspec.Struct, frozen=True):
    """The last (or current) update of a service, as the swarm reports it."""

    state: UpdateState
    message: str = ""
    started_at: str | None = None
    completed_at: str | None = None

    @property
    def in_progress(self) -> bool:
        return self.state in ("updating", "rollback_started")


class TaskState(msgspec.Struct, frozen=True):
    """One task (a replica's attempt) of a service. `node` is the node's hostname ("" when not
    yet assigned), `slot` the replica's number (None in global mode), `error` the swarm's
    reason when the task failed or was rejected."""

    id: str
    service: str
    node: str
    node_id: str
    slot: int | None
    state: TaskStatus
    desired_state: TaskStatus
    error: str = ""
    message: str = ""
    container_id: str = ""
    timestamp: str | None = None
    # whether the task runs the service's current spec (False: an old task of an update, or
    # the new spec's task of an update that rolled back)
    current: bool = True

    @property
    def running(self) -> bool:
        return self.state == "running" and self.desired_state == "running"


class ServiceState(msgspec.Struct, frozen=True):
    """A service as observed. `spec` is its spec in our vocabulary (what we would have written
    to get it: compare it with the desired `ServiceConfig` field by field); `version` is what
    `update_service` needs; `desired_tasks`/`running_tasks` are the swarm's own counts (running
    tasks of any spec; see `wait_converged` for "updated"); `failing` holds the recent failed
    or rejected tasks, newest first, at most one per slot/node."""

    id: str
    name: str
    version: int
    spec: ServiceConfig
    labels: Mapping[str, str]
    desired_tasks: int
    running_tasks: int
    update: UpdateStatus | None = None
    failing: tuple[TaskState, ...] = ()
    created_at: str | None = None
    updated_at: str | None = None


class NodeState(msgspec.Struct, frozen=True):
    """A swarm node. `state`: ready / down / disconnected / unknown; `availability`: active /
    pause / drain; `role`: manager / worker."""

    id: str
    hostname: str
    role: Literal["manager", "worker"]
    availability: Literal["active", "pause", "drain"]
    state: Literal["unknown", "down", "ready", "disconnected"]
    addr: str = ""
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    leader: bool = False


class SwarmObjectState(Hidden, msgspec.Struct, frozen=True):
    """An observed config or secret (a secret's data is never readable; a config's is)."""

    __hidden__ = frozenset({"data"})
    kind: SwarmObjectKind
    id: str
    name: str
    labels: Mapping[str, str]
    version: int
    data: bytes | None = None
    created_at: str | None = None


class OverlayNetworkState(msgspec.Struct, frozen=True):
    """An observed swarm-scoped network. `driver` and `subnet` are empty for the moment
    between its creation and the manager's allocating it (a listing right after a create
    shows it so)."""

    id: str
    name: str
    driver: str
    scope: str
    attachable: bool
    internal: bool
    labels: Mapping[str, str]
    subnet: str | None = None


ConvergeOutcome = Literal["converged", "rolled_back", "paused", "timed_out", "missing"]


class ConvergeResult(msgspec.Struct, frozen=True):
    """How waiting for a service ended: `converged` (every desired task runs the current spec,
    no update in progress), `rolled_back` (the swarm rolled the update back: the service runs
    its previous spec), `paused` (an update or rollback paused on failures), `timed_out`
    (still on its way; `message` says where), `missing` (the service is gone).
    `message` is the swarm's update message or the latest task error."""

    service: str
    outcome: ConvergeOutcome
    message: str
    seconds: float
    running: int = 0
    desired: int = 0


class ServiceLogLine(msgspec.Struct, frozen=True):
    """One line of a service's output: the task that wrote it (its id; "" when the swarm
    did not say) and the line's bytes, ending in b"\\n" except a final partial line."""

    task_id: str
    line: bytes


class ServiceEvent(msgspec.Struct, frozen=True):
    """An Engine event about one of a stack's swarm objects: `kind` service, container (a
    task's), network, config or secret; `action` as the Engine says it (create, update,
    remove, start, die, ...); `labels` the object's (for a container, its task's labels)."""

    kind: Literal["service", "container", "network", "config", "secret"]
    action: str
    name: str
    labels: Mapping[str, str]
    detail: str = ""  # e.g. an update's state change ("updating -> completed")


# ---------------------------------------------------------------------------------------------
# The protocol


@runtime_checkable
class ServiceRuntime(Protocol):
    """A cluster runtime that runs services (Docker Swarm). Listing calls take label filters
    as `runtime.base.Runtime` does ({key: value}, "" meaning "has the key")."""

    name: str

    def list_services(self, labels: Mapping[str, str]) -> list[ServiceState]: ...
    def get_service(self, name: str) -> ServiceState | None: ...

    def create_service(self, config: ServiceConfig) -> str:
        """Create a service; return its id. A service of that name with the same ownership
        labels is success (its id); one without them is `Conflict`."""
        ...

    def update_service(self, name: str, config: ServiceConfig, version: int) -> None:
        """Update a service in place to `config` (a rolling, health-gated update, rolled
        back by the swarm when `update_config.failure_action` says so). `version` is the
        `ServiceState.version` the change was planned on; a service changed since is
        `Conflict` (observe again). Returns once the swarm accepted the update."""
        ...

    def remove_service(self, name: str) -> None: ...

    def pin_image(self, ref: str) -> str:
        """`ref` pinned to the digest its registry holds now ("repo:tag@sha256:..."), as the
        manager resolves it, so that every node runs the same image. A ref already pinned
        is returned as it is; one the registry lacks is `NotFound`."""
        ...

    def service_tasks(self, name: str) -> list[TaskState]: ...

    def service_logs(
        self, name: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[ServiceLogLine]:
        """The output of the service's tasks (stdout and stderr interleaved), as the swarm
        collects it from every node; `tail` lines per task. A missing service is
        `NotFound`, raised before the first line."""
        ...

    def redeploy_service(self, name: str) -> None:
        """Replace every task of the service with a new one of the same spec (`docker
        service update --force`), rolling as its update policy says. Returns once the swarm
        accepted the update."""
        ...

    def rollback_service(self, name: str) -> None:
        """Put the service back to its previous spec (`docker service rollback`), rolling
        as its rollback policy says. A service with no previous spec is `PermanentError`."""
        ...

    def events(self, labels: Mapping[str, str]) -> Iterator[ServiceEvent]:
        """Events about the services, task containers, networks, configs and secrets that
        carry `labels`, until the stream is closed."""
        ...

    def wait_converged(self, name: str, timeout_s: float) -> ConvergeResult:
        """Wait until the service's update ends or `timeout_s` passes (never raises on a
        failed update: the outcome says it)."""
        ...

    def list_nodes(self) -> list[NodeState]: ...

    def create_object(self, kind: SwarmObjectKind, config: SwarmObjectConfig) -> str:
        """Create a config or secret; return its id. One of that name with the same
        ownership labels is success."""
        ...

    def list_objects(
        self, kind: SwarmObjectKind, labels: Mapping[str, str]
    ) -> list[SwarmObjectState]: ...
    def remove_object(self, kind: SwarmObjectKind, name: str) -> None:
        """Remove a config or secret; gone is success, one still used by a service is
        `Conflict`."""
        ...

    def list_node_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        """The named volumes of the node this runtime talks to (a volume lives on each node
        whose task mounted it; the swarm has no view of them all)."""
        ...

    def remove_node_volume(self, name: str) -> None:
        """Remove a named volume of that node; gone is success, one still mounted by a
        container that is going away is `TransientError`."""
        ...

    def create_overlay_network(self, config: OverlayNetworkConfig) -> str: ...
    def list_overlay_networks(self, labels: Mapping[str, str]) -> list[OverlayNetworkState]: ...
    def remove_overlay_network(self, name: str) -> None: ...

    def close(self) -> None: ...
