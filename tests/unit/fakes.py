"""An in-memory Runtime for unit tests of the pure logic and the executor.

It keeps what a real runtime would report back (labels, env merged with the image's, the
networks attached, the ports configured), and honours the protocol's idempotence rules, so
the property "apply a plan, plan again, the plan is empty" can be tested without a daemon.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import msgspec

from pyapply.runtime.base import (
    Attachment,
    BuildConfig,
    BuildProgress,
    BuildResult,
    Conflict,
    ContainerConfig,
    ContainerState,
    Event,
    Fault,
    ImageInfo,
    NetworkConfig,
    NetworkState,
    NotFound,
    PermanentError,
    PushProgress,
    PushResult,
    Stuck,
    TransientError,
    VolumeConfig,
    VolumeState,
)


def _match(labels: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all((k in labels) if v == "" else labels.get(k) == v for k, v in want.items())


class FakeRuntime(msgspec.Struct, dict=True):  # tests set methods on an instance
    name: str = "fake"
    images_: dict[str, ImageInfo] = msgspec.field(default_factory=dict)
    containers: dict[str, ContainerState] = msgspec.field(default_factory=dict)
    networks: dict[str, NetworkState] = msgspec.field(default_factory=dict)
    volumes: dict[str, VolumeState] = msgspec.field(default_factory=dict)
    calls: list[str] = msgspec.field(default_factory=list)
    fail_next: dict[str, int] = msgspec.field(default_factory=dict)  # op -> transient failures left
    healthy_after_start: bool = True
    # starts that fail on stale runtime state (Stuck): of these container ids (the state is
    # the object's: a new container does not have it), or of these names (whatever object
    # has it: a port another program holds)
    stuck_ids: set[str] = msgspec.field(default_factory=set)
    stuck_names: set[str] = msgspec.field(default_factory=set)
    events_: list[Event] = msgspec.field(default_factory=list)
    exec_code: int = 0
    _ids: Iterator[int] = msgspec.field(default_factory=lambda: itertools.count(1))

    def _call(self, op: str) -> None:
        self.calls.append(op)
        left = self.fail_next.get(op.split(" ")[0], 0)
        if left:
            self.fail_next[op.split(" ")[0]] = left - 1
            raise TransientError(f"{op}: daemon busy")

    def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        return [c for c in self.containers.values() if _match(c.labels, labels)]

    def list_networks(self, labels: Mapping[str, str]) -> list[NetworkState]:
        return [n for n in self.networks.values() if _match(n.labels, labels)]

    def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        return [v for v in self.volumes.values() if _match(v.labels, labels)]

    def get_container(self, name: str) -> ContainerState | None:
        return self.containers.get(name)

    def get_network(self, name: str) -> NetworkState | None:
        return self.networks.get(name)

    def get_volume(self, name: str) -> VolumeState | None:
        return self.volumes.get(name)

    def images(self, refs: Iterable[str]) -> dict[str, ImageInfo | None]:
        return {r: self.images_.get(r) for r in refs}

    def pull_image(self, ref: str) -> ImageInfo:
        self._call(f"pull {ref}")
        info = self.images_.setdefault(ref, ImageInfo(f"sha256:{ref}", ("PATH=/bin",)))
        return info

    def build_image(
        self, config: BuildConfig, progress: BuildProgress | None = None
    ) -> BuildResult:
        raise PermanentError("the fake runtime does not build images")

    def push_image(self, ref: str, progress: PushProgress | None = None) -> PushResult:
        raise PermanentError("the fake runtime does not push images")

    def create_network(self, config: NetworkConfig) -> None:
        self._call(f"create_network {config.name}")
        have = self.networks.get(config.name)
        if have is not None:
            if dict(have.labels) != dict(config.labels):
                raise Conflict(f"network {config.name} exists")
            # an existing network is made sure of: what was missing of it is back
            self.networks[config.name] = msgspec.structs.replace(have, faults=())
            return
        self.networks[config.name] = NetworkState(
            id=f"n{next(self._ids)}",
            name=config.name,
            driver=config.driver,
            internal=config.internal,
            labels=dict(config.labels),
            subnet=config.subnet,
            ipv6=config.enable_ipv6,
            subnet6=config.subnet6,
            gateway6=config.gateway6,
        )

    def remove_network(self, name: str) -> None:
        self._call(f"remove_network {name}")
        if any(name in c.networks for c in self.containers.values()):
            raise Conflict(f"network {name} has active endpoints")
        self.networks.pop(name, None)

    def create_volume(self, config: VolumeConfig) -> None:
        self._call(f"create_volume {config.name}")
        self.volumes.setdefault(
            config.name, VolumeState(config.name, config.driver, dict(config.labels))
        )

    def remove_volume(self, name: str) -> None:
        self._call(f"remove_volume {name}")
        self.volumes.pop(name, None)

    def create_container(self, config: ContainerConfig) -> str:
        self._call(f"create {config.name}")
        have = self.containers.get(config.name)
        if have is not None:
            if have.labels.get("io.pyapply.spec-hash") != config.labels.get("io.pyapply.spec-hash"):
                raise Conflict(f"container name {config.name} is in use")
            return have.id
        image = self.images_.get(config.image)
        if image is None:
            raise NotFound(f"no such image {config.image}")
        for a in config.networks:
            if a.network not in self.networks:
                raise NotFound(f"network {a.network} not found")
        env = {e.split("=", 1)[0]: e for e in image.env}
        env.update({e.split("=", 1)[0]: e for e in config.env})
        state = ContainerState(
            id=f"c{next(self._ids)}",
            name=config.name,
            image=config.image,
            image_id=image.id,
            labels=dict(config.labels),
            status="created",
            env=tuple(sorted(env.values())),
            networks=tuple(sorted(a.network for a in config.networks)),
            ports=tuple(sorted(config.ports, key=repr)),
            memory_bytes=config.memory_bytes,
            health="starting" if config.health else None,
            joined=self._joined(config),
        )
        self.containers[config.name] = state
        return state.id

    def _joined(self, config: ContainerConfig) -> str | None:
        """The id of the container whose network namespace `config` joins (as Docker
        records it); joining one that does not exist fails, as it does there."""
        mode = config.network_mode or ""
        if not mode.startswith("container:"):
            return None
        peer = self.containers.get(mode.removeprefix("container:"))
        if peer is None:
            raise NotFound(f"no such container {mode.removeprefix('container:')}")
        return peer.id

    def start_container(self, name: str) -> None:
        self._call(f"start {name}")
        c = self.containers.get(name)
        if c is None:
            raise NotFound(f"no such container {name}")
        if c.id in self.stuck_ids or name in self.stuck_names:
            raise Stuck(f"cannot start container {name}: port 8080 is already allocated")
        if c.status == "running":  # a running container's faults are repaired in place
            self.containers[name] = msgspec.structs.replace(c, faults=())
            return
        health = c.health
        if health is not None and self.healthy_after_start:
            health = "healthy"
        self.containers[name] = msgspec.structs.replace(
            c, status="running", exit_code=None, health=health, faults=()
        )

    def stop_container(self, name: str, timeout_s: float | None = None) -> None:
        self._call(f"stop {name}")
        c = self.containers.get(name)
        if c is None:
            raise NotFound(f"no such container {name}")
        self.containers[name] = msgspec.structs.replace(c, status="exited", exit_code=137)

    def remove_container(self, name: str) -> None:
        self._call(f"remove {name}")
        self.containers.pop(name, None)

    def rename_container(self, name: str, new_name: str) -> None:
        self._call(f"rename {name} {new_name}")
        c = self.containers.pop(name)
        self.containers[new_name] = msgspec.structs.replace(c, name=new_name)

    def connect_network(self, container: str, attachment: Attachment) -> None:
        c = self.containers[container]
        nets = tuple(sorted({*c.networks, attachment.network}))
        self.containers[container] = msgspec.structs.replace(c, networks=nets)

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        return iter(())

    def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
        return iter(self.events_)

    def exec_attached(
        self, name: str, argv: Sequence[str], *, stdin: bool = False, tty: bool = False
    ) -> int:
        self._call(f"exec {name} {' '.join(argv)}{' -i' if stdin else ''}{' -t' if tty else ''}")
        return self.exec_code

    def top(self, name: str) -> tuple[list[str], list[list[str]]]:
        self._call(f"top {name}")
        return ["PID", "CMD"], [["1", f"sleep {name}"]]

    def close(self) -> None:
        pass

    # test helpers: what people do by hand
    def reset_network(self, name: str) -> None:
        """Remove a network by hand, with every container (they would block it)."""
        self.containers.clear()
        self.networks.pop(name, None)

    def break_network(self, name: str, reason: str) -> None:
        """Take away part of a network's kernel side (as `ip link del` of its bridge)."""
        self.networks[name] = msgspec.structs.replace(self.networks[name], faults=(Fault(reason),))

    def mutate(self, name: str, **changes: object) -> None:
        self.containers[name] = msgspec.structs.replace(self.containers[name], **changes)  # type: ignore[arg-type]
