"""The desired model: frozen value types (msgspec Structs) a loaded, validated manifest becomes.

Everything here is already normalised (short and long syntaxes folded into one form, sizes in
bytes, durations in seconds, relative paths made absolute, environment sorted), so that two
manifests meaning the same thing produce equal models -- which is what the spec hash and the
`convert` round trip rely on. Names are the manifest's keys (service `web`, network `back`);
the runtime names (`shop-web-1`, `shop_back`) come from `identity`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.runtime.base import Uncompared

Condition = Literal["service_started", "service_healthy", "service_completed_successfully"]
PullPolicy = Literal["missing", "always", "never", "build"]
UpdateOrder = Literal["stop-first", "start-first"]


class Location(msgspec.Struct, frozen=True):
    """Where something was written: 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Port(msgspec.Struct, frozen=True):
    target: int
    published: int | None = None  # None: an ephemeral host port
    host_ip: str = ""
    protocol: str = "tcp"
    # where a swarm publishes it: the routing mesh ("ingress", compose's default) or the
    # node running the task ("host"); one host's runtimes publish on the host either way
    mode: Literal["ingress", "host"] = "ingress"
    # the end of a host port range written for one container port ("8000-9000:80"): as
    # compose does, the runtimes publish it on the first free port of published..last
    published_last: int | None = None


class Mount(msgspec.Struct, frozen=True):
    """A volume (source = the stack's volume key, "" anonymous), bind (source = absolute host
    path) or tmpfs mount."""

    type: Literal["volume", "bind", "tmpfs"]
    target: str
    source: str = ""
    read_only: bool = False
    tmpfs_size: int | None = None
    tmpfs_mode: int | None = None
    # a named or anonymous volume: do not copy the image's content at the target into it
    nocopy: bool = False
    # a bind whose host path is missing: make it a directory (compose's short syntax does;
    # the long one only with bind.create_host_path: true)
    create_host_path: bool = True


class ServiceNetwork(msgspec.Struct, frozen=True):
    name: str  # the stack's network key
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None


class Dependency(msgspec.Struct, frozen=True):
    service: str
    condition: Condition = "service_started"
    required: bool = True
    restart: bool = False


class Healthcheck(msgspec.Struct, frozen=True):
    test: tuple[str, ...]  # ("CMD", ...), ("CMD-SHELL", line) or ("NONE",)
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    disable: bool = False


class Ulimit(msgspec.Struct, frozen=True):
    name: str
    soft: int
    hard: int


class FileRef(msgspec.Struct, frozen=True):
    """A service's use of a config or secret."""

    source: str  # the stack's config/secret key
    target: str  # absolute path in the container
    mode: int | None = None
    uid: str | None = None
    gid: str | None = None


class Device(msgspec.Struct, frozen=True):
    """A host device given to the container (compose `devices`)."""

    source: str  # absolute host path
    target: str  # absolute path in the container
    permissions: str = "rwm"  # cgroup access: r(ead), w(rite), m(knod)


class Hook(msgspec.Struct, frozen=True):
    """A command run in the container after it starts (`post_start`) or before it stops
    (`pre_stop`), as the compose lifecycle hooks spell it."""

    command: tuple[str, ...]
    user: str | None = None
    privileged: bool = False
    working_dir: str | None = None
    environment: tuple[tuple[str, str], ...] = ()  # sorted by key


class Resources(msgspec.Struct, frozen=True):
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None


class UpdateConfig(msgspec.Struct, frozen=True):
    order: UpdateOrder = "stop-first"
    parallelism: int = 1  # 0: all at once
    delay: float = 0.0


class BuildSpec(Uncompared, msgspec.Struct, frozen=True):
    """A service's compose `build:`: how its image is made from a Dockerfile.

    `context` is absolute (resolved against the manifest's directory); `dockerfile` is as
    written, relative to the context unless absolute; `dockerfile_inline` replaces it. `tags`
    are names the image gets besides the service's `image`. `location` and `path` are where
    the context was written, for the error when it is missing at build time."""

    __uncompared__ = frozenset({"location", "path"})
    context: str
    dockerfile: str | None = None
    dockerfile_inline: str | None = None
    args: tuple[tuple[str, str], ...] = ()  # sorted by key
    target: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    tags: tuple[str, ...] = ()
    no_cache: bool = False
    pull: bool = False
    # the service names its `image:` and sets no `pull_policy`: a missing image is pulled
    # first and built only if the pull fails (the Compose Specification's rule for a
    # service with both `build:` and `image:`)
    pull_first: bool = False
    location: Location | None = None
    path: str = ""  # the JSON path of the context's field


class RollPolicy(msgspec.Struct, frozen=True):
    """deploy.update_config / rollback_config as a swarm rolls them (the fields one host's
    runtimes use are in `UpdateConfig`); None: the swarm's default."""

    parallelism: int | None = None
    delay: float | None = None
    order: UpdateOrder | None = None
    failure_action: Literal["pause", "continue", "rollback"] | None = None
    monitor: float | None = None
    max_failure_ratio: float | None = None


class Deploy(msgspec.Struct, frozen=True):
    """The `deploy:` fields only a swarm acts on (the swarm runtime reads them; the others
    warn that they are ignored). None / empty: not written."""

    mode: Literal["replicated", "global"] = "replicated"
    constraints: tuple[str, ...] = ()  # placement, in the order written
    preferences: tuple[str, ...] = ()  # placement spread descriptors, in order
    max_replicas_per_node: int | None = None
    endpoint_mode: Literal["vip", "dnsrr"] | None = None
    reserve_cpus: float | None = None
    reserve_memory: int | None = None  # bytes
    restart_condition: Literal["none", "on-failure", "any"] | None = None
    restart_delay: float | None = None
    restart_max_attempts: int | None = None
    restart_window: float | None = None
    update: RollPolicy = RollPolicy()
    rollback: RollPolicy = RollPolicy()
    labels: tuple[tuple[str, str], ...] = ()  # deploy.labels: the service's, sorted


class ServiceSpec(Uncompared, msgspec.Struct, frozen=True):
    __uncompared__ = frozenset({"seccomp_file", "location"})
    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()  # sorted by key
    ports: tuple[Port, ...] = ()
    mounts: tuple[Mount, ...] = ()  # volumes and tmpfs, in manifest order
    networks: tuple[ServiceNetwork, ...] = ()  # sorted by name
    depends_on: tuple[Dependency, ...] = ()  # sorted by service
    healthcheck: Healthcheck | None = None
    restart: str = "no"  # no | always | on-failure[:N] | unless-stopped
    replicas: int = 1
    resources: Resources = Resources()
    update: UpdateConfig = UpdateConfig()
    labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    user: str | None = None
    working_dir: str | None = None
    hostname: str | None = None
    cap_add: tuple[str, ...] = ()  # sorted
    cap_drop: tuple[str, ...] = ()  # sorted
    read_only: bool = False
    stop_signal: str | None = None
    stop_grace_period: float | None = None  # seconds
    init: bool | None = None
    ulimits: tuple[Ulimit, ...] = ()  # sorted by name
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (host, ip), sorted: more /etc/hosts lines
    log_max_size: int | None = None  # bytes: the log is rotated at this size (logging)
    log_max_files: int | None = None  # files kept, the live one included
    # security_opt seccomp=: None (the runtime's default profile), "unconfined", or the JSON
    # text (compact) of the profile file, whose absolute path is kept to render it back.
    seccomp: str | None = None
    seccomp_file: str | None = None
    configs: tuple[FileRef, ...] = ()
    secrets: tuple[FileRef, ...] = ()
    pull_policy: PullPolicy = "missing"
    build: BuildSpec | None = None  # the image is built from this (compose `build:`)
    deploy: Deploy = Deploy()
    # what the container may do to the host, and how its process runs (reconciler.manifest
    # .isolation reads them); a field at its default is left out of the spec hash
    privileged: bool = False
    devices: tuple[Device, ...] = ()  # in manifest order
    sysctls: tuple[tuple[str, str], ...] = ()  # sorted by key; namespaced ones only
    dns: tuple[str, ...] = ()  # nameservers, in order
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    shm_size: int | None = None  # bytes of /dev/shm
    no_new_privileges: bool = False  # security_opt no-new-privileges
    apparmor: str | None = None  # security_opt apparmor=PROFILE
    tty: bool = False
    stdin_open: bool = False
    pid: str | None = None  # "host" or "service:<name>"
    ipc: str | None = None  # "host", "private", "shareable" or "service:<name>"
    cgroup_parent: str | None = None
    oom_score_adj: int | None = None
    group_add: tuple[str, ...] = ()  # group names or ids, in order
    mac_address: str | None = None
    platform: str | None = None  # checked against the host's at load time
    runtime: str | None = None  # the OCI runtime by name (docker: as dockerd knows it)
    post_start: tuple[Hook, ...] = ()
    pre_stop: tuple[Hook, ...] = ()
    # compose's network_mode: None (the service's `networks`), "none", "host",
    # "service:NAME" (the namespace of a replica of that service of the stack) or
    # "container:NAME" (of an existing container, by its runtime name)
    network_mode: str | None = None
    expose: tuple[str, ...] = ()  # container ports, as written ("3000", "8000-8010/udp")
    container_name: str | None = None  # the container's name, for a one-replica service
    location: Location | None = None

    def network_peer(self) -> str | None:
        """The service whose network namespace this one joins (network_mode service:X)."""
        mode = self.network_mode or ""
        return mode.removeprefix("service:") if mode.startswith("service:") else None


class NetworkSpec(Uncompared, msgspec.Struct, frozen=True):
    __uncompared__ = frozenset({"location"})
    name: str  # the stack's key
    driver: str = "bridge"
    internal: bool = False
    subnet: str | None = None
    gateway: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    external: bool = False
    external_name: str | None = None  # `name:` of an external (or explicitly named) network
    # dual stack: `enable_ipv6`, and the IPv6 entry of `ipam.config` (None: the runtime picks)
    enable_ipv6: bool = False
    subnet6: str | None = None
    gateway6: str | None = None
    # compose's `attachable`: plain containers may join a swarm's overlay network too (a
    # one-host bridge takes any container anyway: only the swarm runtime reads it)
    attachable: bool = False
    location: Location | None = None


class VolumeSpec(Uncompared, msgspec.Struct, frozen=True):
    __uncompared__ = frozenset({"location"})
    name: str
    driver: str = "local"
    driver_opts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    external: bool = False
    external_name: str | None = None
    location: Location | None = None


class ConfigSpec(Uncompared, msgspec.Struct, frozen=True):
    """A config or secret: exactly one of file (absolute path), content, environment (a
    variable name whose value is the content), or external."""

    __uncompared__ = frozenset({"location"})
    name: str
    file: str | None = None
    content: str | None = None
    environment: str | None = None
    external: bool = False
    external_name: str | None = None  # `name:` of an external one: what it is found by
    location: Location | None = None


class SecretSpec(ConfigSpec, frozen=True):
    pass


class Stack(Uncompared, msgspec.Struct, frozen=True):
    __uncompared__ = frozenset({"sources", "location"})
    name: str
    services: tuple[ServiceSpec, ...] = ()  # sorted by name
    networks: tuple[NetworkSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    configs: tuple[ConfigSpec, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    sources: tuple[str, ...] = ()  # files it was read from
    location: Location | None = None

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def network(self, name: str) -> NetworkSpec:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(name)

    def volume(self, name: str) -> VolumeSpec:
        for v in self.volumes:
            if v.name == name:
                return v
        raise KeyError(name)


class Problem(msgspec.Struct, frozen=True):
    """A user's mistake (or a warning) found while loading, with where it was written."""

    message: str
    location: Location | None = None
    path: str = ""  # JSON path of the field, e.g. spec.services.web.ports[0]
    severity: Literal["error", "warning"] = "error"
    # a warning about what the runtimes of one host do with the field (ignore it, lack the
    # driver): not said when the stack goes to a swarm, which has the concept
    one_host: bool = False

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field_ = f"{self.path}: " if self.path else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}{prefix}{field_}{self.message}"


class ManifestError(PyapplyError):
    """Loading failed; `problems` lists every error found (never raised for warnings)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
