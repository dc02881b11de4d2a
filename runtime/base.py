"""The Runtime protocol: the one interface the reconciler knows about runtimes.

It speaks its own plain vocabulary -- container, network and volume configs (what to create)
and their observed states (what is there) -- so that a driver never sees a manifest and the
reconciler never sees a raw API payload. Drivers translate their errors at the boundary into
the small taxonomy below, which the executor acts on: `TransientError` is retried with
back-off, everything else fails fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import msgspec

# ---------------------------------------------------------------------------------------------
# Value types
#
# Every value type is a msgspec.Struct: its class is made in C, where a dataclass compiles
# four to six methods at import (85 ms of a 0.25 s no-op apply went to that). Two mixins say
# what `field(compare=False)` and `field(repr=False)` said.


class Uncompared:
    """The fields named in `__uncompared__` are not part of the value: ==, hash() and spec
    hashes (`reconciler.core.identity`) leave them out (where a value was written, a test
    seam). A mixin before msgspec.Struct: `class X(Uncompared, msgspec.Struct, frozen=True)`."""

    __slots__ = ()
    __struct_fields__: ClassVar[tuple[str, ...]]
    __uncompared__: ClassVar[frozenset[str]] = frozenset()

    def _compared(self) -> tuple[Any, ...]:
        skip = self.__uncompared__
        return tuple(getattr(self, n) for n in self.__struct_fields__ if n not in skip)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Uncompared)
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())


class Hidden:
    """The fields named in `__hidden__` never show in repr(): secrets and what holds them.
    A mixin before msgspec.Struct, as `Uncompared` is."""

    __slots__ = ()
    __struct_fields__: ClassVar[tuple[str, ...]]
    __hidden__: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        skip = self.__hidden__
        shown = (f"{n}={getattr(self, n)!r}" for n in self.__struct_fields__ if n not in skip)
        return f"{type(self).__name__}({', '.join(shown)})"


# ---------------------------------------------------------------------------------------------
# Errors


class RuntimeFailure(Exception):
    """Base of every error a runtime raises; `message` is meant for a person."""

    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TransientError(RuntimeFailure):
    """Worth retrying: daemon busy or restarting, connection reset, timeout, 5xx."""

    retryable = True


class Unavailable(TransientError):
    """The runtime cannot be reached at all (daemon down, socket missing)."""


class PermanentError(RuntimeFailure):
    """Retries are useless: bad image name, port already taken, invalid config."""


class Stuck(PermanentError):
    """Retrying the same call is useless, because the runtime holds state of this object
    that will not clear by itself (a task or a port a killed daemon left behind); removing
    the object and making it again may help. Raised by a container's start."""


class NotFound(PermanentError):
    """The object (or image) does not exist."""


class Conflict(PermanentError):
    """The object exists but is not ours or not what was asked for (e.g. a name in use)."""


class BuildFailed(PermanentError):
    """An image build stopped: a Dockerfile error (`where` is "Dockerfile:LINE"), or a step
    that failed (`step` is its text, `exit_code` its status, `tail` the last lines of its
    output). Nothing of the failed build is tagged."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        step: str | None = None,
        exit_code: int | None = None,
        tail: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.where = where
        self.step = step
        self.exit_code = exit_code
        self.tail = tail


# ---------------------------------------------------------------------------------------------
# Ownership: which existing object a create may take as its own

STACK_LABEL = "io.pyapply.stack"
HASH_LABEL = "io.pyapply.spec-hash"
OWNER_LABELS = (STACK_LABEL, HASH_LABEL)


def same_owner(want: Mapping[str, str], have: Mapping[str, str] | None) -> bool:
    """An existing object counts as "ours, with this spec" when it carries the same stack and
    spec-hash labels as asked (the revision label may differ: a network made by an earlier
    revision with the same spec is the same network); a config without either label has to
    match all its labels. Every driver judges an existing object by this one rule."""
    have = have or {}
    if any(k in want for k in OWNER_LABELS):
        return all(want.get(k) == have.get(k) for k in OWNER_LABELS)
    return all(have.get(k) == v for k, v in want.items())


# ---------------------------------------------------------------------------------------------
# What to create

MountType = Literal["volume", "bind", "tmpfs"]
ContainerStatus = Literal[
    "created", "running", "paused", "restarting", "exited", "dead", "removing"
]
Health = Literal["healthy", "unhealthy", "starting"]


class PortBinding(msgspec.Struct, frozen=True):
    """A published port: host_ip:host_port -> container_port/protocol.

    host_port None means "any free port"; host_ip "" means all addresses.
    """

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int | None = None
    # a host port range (host_port..host_port_last): published on the first free port of it
    host_port_last: int | None = None


class MountConfig(Uncompared, msgspec.Struct, frozen=True):
    """A mount: a named volume (source = runtime volume name, "" for anonymous), a bind
    (source = absolute host path) or a tmpfs (source unused)."""

    __uncompared__ = frozenset({"create_host_path"})
    type: MountType
    target: str
    source: str = ""
    read_only: bool = False
    tmpfs_size: int | None = None
    tmpfs_mode: int | None = None
    no_copy: bool = False  # a volume: the image's content at the target is not copied in
    # a bind whose host path is missing is made a directory (else the create fails); it
    # says how the container is made, not what it is, so a change does not recreate it
    create_host_path: bool = False


class Attachment(msgspec.Struct, frozen=True):
    """A container's attachment to a network (runtime network name)."""

    network: str
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None


class HealthConfig(msgspec.Struct, frozen=True):
    """A healthcheck. `test` is ("CMD", arg, ...), ("CMD-SHELL", line) or ("NONE",)."""

    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


class Ulimit(msgspec.Struct, frozen=True):
    name: str
    soft: int
    hard: int


class DeviceMapping(msgspec.Struct, frozen=True):
    """A host device (path) made in the container at `target`, with cgroup `permissions`."""

    source: str
    target: str
    permissions: str = "rwm"


class ExecHook(msgspec.Struct, frozen=True):
    """A command run in the container after it starts (post_start) or before it stops
    (pre_stop). `env` is "KEY=value" items added to the container's environment."""

    command: tuple[str, ...]
    user: str | None = None
    privileged: bool = False
    working_dir: str | None = None
    env: tuple[str, ...] = ()


class ContainerConfig(msgspec.Struct, frozen=True):
    """Everything needed to create one container. Lists are kept in a canonical order by the
    caller so that two configs of the same container compare equal."""

    name: str
    image: str
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()  # "KEY=value"
    mounts: tuple[MountConfig, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    networks: tuple[Attachment, ...] = ()
    memory_bytes: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    restart_policy: str = "no"  # no | always | unless-stopped | on-failure
    restart_max_retries: int = 0
    health: HealthConfig | None = None
    user: str | None = None
    working_dir: str | None = None
    hostname: str | None = None
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    read_only: bool = False
    stop_signal: str | None = None
    stop_timeout_s: float | None = None
    init: bool | None = None
    ulimits: tuple[Ulimit, ...] = ()
    extra_hosts: tuple[str, ...] = ()  # "host:ip" lines for /etc/hosts (ip may be host-gateway)
    log_max_size: int | None = None  # bytes: rotate the output log at this size
    log_max_files: int | None = None  # log files kept, the live one included
    # None: the runtime's default seccomp profile; "unconfined": none; else a profile's JSON
    # text in Docker's format (compact), as Docker's API takes it in SecurityOpt.
    seccomp: str | None = None
    privileged: bool = False
    devices: tuple[DeviceMapping, ...] = ()
    sysctls: Mapping[str, str] = msgspec.field(default_factory=dict)
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    shm_size: int | None = None  # bytes
    no_new_privileges: bool = False
    apparmor: str | None = None  # a profile name, or "unconfined"
    tty: bool = False
    stdin_open: bool = False
    # None: a namespace of its own; "host"; "container:<name>": that container's
    pid_mode: str | None = None
    # None: the runtime's default; "host", "private", "shareable", "container:<name>"
    ipc_mode: str | None = None
    cgroup_parent: str | None = None
    oom_score_adj: int | None = None
    group_add: tuple[str, ...] = ()
    mac_address: str | None = None
    runtime: str | None = None  # the OCI runtime's name (None: the default)
    platform: str | None = None  # another platform's image, for that runtime (wasi/wasm)
    post_start: tuple[ExecHook, ...] = ()
    pre_stop: tuple[ExecHook, ...] = ()
    # None: its own network namespace with the `networks` listed (none: only loopback);
    # "host": the host's namespace; "none"; "container:NAME": the namespace of the
    # existing container NAME (its interfaces, addresses, /etc/hosts and hostname)
    network_mode: str | None = None
    # ports it says it listens on, "PORT/PROTOCOL" (metadata: nothing is opened for them)
    expose: tuple[str, ...] = ()


class NetworkConfig(msgspec.Struct, frozen=True):
    name: str
    driver: str = "bridge"
    internal: bool = False
    subnet: str | None = None
    gateway: str | None = None
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    # dual stack: an IPv6 subnet and gateway besides the IPv4 ones (None: the runtime picks)
    enable_ipv6: bool = False
    subnet6: str | None = None
    gateway6: str | None = None


class VolumeConfig(msgspec.Struct, frozen=True):
    name: str
    driver: str = "local"
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    driver_opts: Mapping[str, str] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# What is there

FaultFix = Literal["repair", "restart"]


class Fault(msgspec.Struct, frozen=True):
    """Something of a live object that its runtime made and found broken or gone (a bridge, a
    firewall rule, a supervisor...), with the reason a person reads ("bridge pa-1234abcd
    missing") and how it is fixed: "repair" in place (the runtime remakes what is missing
    when the object is started again; a running container keeps running), or "restart" (the
    container's process must be started anew)."""

    reason: str
    fix: FaultFix = "repair"


class ContainerState(msgspec.Struct, frozen=True):
    id: str
    name: str
    image: str  # the reference it was created from
    image_id: str
    labels: Mapping[str, str]
    status: ContainerStatus
    exit_code: int | None = None
    health: Health | None = None
    env: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # runtime network names, sorted
    ports: tuple[PortBinding, ...] = ()  # as configured (not as bound), sorted
    memory_bytes: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # network_mode container:NAME: the id of the container whose namespace it joined
    joined: str | None = None
    # what of the container's kernel side is missing, found by list_containers (a runtime
    # that keeps no kernel objects of its own, or a get_container, reports none)
    faults: tuple[Fault, ...] = ()
    # restarts its restart policy made since it was last started on purpose; whether the
    # policy gave up (on-failure:N after N restarts; runtime/restarts.py)
    restart_count: int = 0
    restart_gave_up: bool = False

    @property
    def running(self) -> bool:
        return self.status in ("running", "restarting")


class NetworkState(msgspec.Struct, frozen=True):
    id: str
    name: str
    driver: str
    internal: bool
    labels: Mapping[str, str]
    subnet: str | None = None
    containers: tuple[str, ...] = ()  # names of attached containers
    ipv6: bool = False  # dual stack
    subnet6: str | None = None
    gateway6: str | None = None
    # what of the network's kernel side is missing (bridge, address, rules), found by
    # list_networks; fixed by create_network, which makes sure of an existing network
    faults: tuple[Fault, ...] = ()


class VolumeState(msgspec.Struct, frozen=True):
    name: str
    driver: str
    labels: Mapping[str, str]
    mountpoint: str = ""


class ImageInfo(msgspec.Struct, frozen=True):
    id: str
    env: tuple[str, ...] = ()


class BuildConfig(Hidden, msgspec.Struct, frozen=True):
    """What to build: a Dockerfile in a context directory (the compose `build:` fields).

    `dockerfile` is relative to `context` (default "Dockerfile"); `dockerfile_inline` replaces
    it. `tags` are the references the result gets; `args` are build args (--build-arg);
    `target` is the stage to stop at; `no_cache` ignores the layer cache; `pull` refreshes
    the base images first. `secrets` (--secret id=...) are the contents a `RUN
    --mount=type=secret` sees, by id: never in a layer, a cache key or a repr."""

    __hidden__ = frozenset({"secrets"})
    context: str
    dockerfile: str | None = None
    dockerfile_inline: str | None = None
    tags: tuple[str, ...] = ()
    args: Mapping[str, str] = msgspec.field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    no_cache: bool = False
    pull: bool = False
    secrets: Mapping[str, bytes] = msgspec.field(default_factory=dict)


class BuildEvent(msgspec.Struct, frozen=True):
    """Progress of a build, one per step as it starts and ends (and output lines of a
    running step). `step` counts from 1 over the whole build (all stages)."""

    step: int
    total: int
    instruction: str  # as written, e.g. "RUN make -j2" (secrets never appear here)
    state: Literal["running", "cached", "done", "failed", "output"]
    line: str = ""  # for state "output": one line the step printed
    seconds: float = 0.0  # for "done"/"cached"/"failed"


class BuildResult(msgspec.Struct, frozen=True):
    image_id: str  # "sha256:..." (the config digest)
    tags: tuple[str, ...]
    steps: int
    cached: int  # steps answered from the cache


class PushEvent(msgspec.Struct, frozen=True):
    """Progress of a push: one per blob (`kind` layer/config) or for the manifest."""

    ref: str
    kind: Literal["layer", "config", "manifest"]
    digest: str
    size: int
    state: Literal["exists", "mounted", "uploading", "uploaded", "pushed"]


class PushResult(msgspec.Struct, frozen=True):
    ref: str
    digest: str  # the manifest's digest in the registry


BuildProgress = Callable[[BuildEvent], None]
PushProgress = Callable[[PushEvent], None]


class Event(msgspec.Struct, frozen=True):
    """A runtime event about one of our objects (used by the watch agent)."""

    kind: Literal["container", "network", "volume"]
    action: str  # die, start, destroy, health_status, ...
    name: str
    labels: Mapping[str, str]


# ---------------------------------------------------------------------------------------------
# The protocol


@runtime_checkable
class Runtime(Protocol):
    """A container runtime. Every mutating call is idempotent:

    - create_*: an object of that name that already carries the same labels is success;
      one that does not is `Conflict`;
    - remove_*: an object that is already gone is success.

    Listing calls take label filters ({key: value}, value "" meaning "has the key") and make
    one call per object kind.
    """

    name: str

    def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]: ...
    def list_networks(self, labels: Mapping[str, str]) -> list[NetworkState]: ...
    def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]: ...
    def get_container(self, name: str) -> ContainerState | None: ...
    def get_network(self, name: str) -> NetworkState | None: ...
    def get_volume(self, name: str) -> VolumeState | None: ...

    def images(self, refs: Iterable[str]) -> dict[str, ImageInfo | None]:
        """Resolve image references to local images (None: not present locally)."""
        ...

    def pull_image(self, ref: str) -> ImageInfo: ...

    def build_image(
        self, config: BuildConfig, progress: BuildProgress | None = None
    ) -> BuildResult:
        """Build an image from a Dockerfile and tag it; raises BuildFailed. Nothing is
        tagged when the build fails."""
        ...

    def push_image(self, ref: str, progress: PushProgress | None = None) -> PushResult:
        """Push a local image to its registry: every blob first, the manifest last."""
        ...

    def create_network(self, config: NetworkConfig) -> None: ...
    def remove_network(self, name: str) -> None: ...
    def create_volume(self, config: VolumeConfig) -> None: ...
    def remove_volume(self, name: str) -> None: ...

    def create_container(self, config: ContainerConfig) -> str:
        """Create (not start) a container; return its id."""
        ...

    def start_container(self, name: str) -> None:
        """Start a container; a running one is success, and its faults (if its runtime
        reports any) are repaired in place."""
        ...

    def stop_container(self, name: str, timeout_s: float | None = None) -> None: ...
    def remove_container(self, name: str) -> None:
        """Stop (if running) and remove the container; gone is success."""
        ...

    def rename_container(self, name: str, new_name: str) -> None: ...
    def connect_network(self, container: str, attachment: Attachment) -> None: ...

    def logs(
        self, name: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[bytes]: ...

    def events(self, labels: Mapping[str, str]) -> Iterator[Event]: ...

    def exec_attached(
        self, name: str, argv: Sequence[str], *, stdin: bool = False, tty: bool = False
    ) -> int:
        """Run argv in the running container `name` on this process's terminal (stdout and
        stderr; stdin too with `stdin`; a pseudo-terminal with `tty`, raw mode and window
        size relayed) and return its exit code."""
        ...

    def top(self, name: str) -> tuple[list[str], list[list[str]]]:
        """The processes of the running container `name`: column titles and rows."""
        ...

    def close(self) -> None: ...
