"""Stack -> the runtime's vocabulary: the desired containers, networks, volumes and files.

Pure: the only inputs are the model, the revision and the bytes of configs/secrets (read by
`sources.read_file_objects`). The spec hash of every object is computed here from exactly what
would be created, so anything that changes the created object changes its hash label.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Literal

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import ConfigSpec, FileRef, Hook, ServiceSpec, Stack
from pyapply.runtime.base import (
    Attachment,
    BuildConfig,
    ContainerConfig,
    DeviceMapping,
    ExecHook,
    HealthConfig,
    Hidden,
    MountConfig,
    NetworkConfig,
    PortBinding,
    Ulimit,
    VolumeConfig,
)

FileKind = Literal["config", "secret"]
# on the host, bind-mounted read-only as they are: secrets readable by root only
FILE_MODES: dict[FileKind, int] = {"config": 0o444, "secret": 0o400}
LAST_APPLIED = identity.PREFIX + "last-applied"


class DesiredContainer(msgspec.Struct, frozen=True):
    service: str
    replica: int
    config: ContainerConfig
    spec_hash: str
    applied: str  # canonical JSON of what the hash covers (kept as a label for field diffs)


class DesiredNetwork(msgspec.Struct, frozen=True):
    key: str  # the stack's network key
    config: NetworkConfig
    spec_hash: str
    external: bool = False


class DesiredVolume(msgspec.Struct, frozen=True):
    key: str
    config: VolumeConfig
    spec_hash: str
    external: bool = False


class DesiredFile(Hidden, msgspec.Struct, frozen=True):
    """A config or secret materialised on the host, bind-mounted read-only. A bind mount
    shows the host file's mode and owner, so each (mode, uid, gid) a service asks for is a
    file of its own: that is how both runtimes give a container the same view."""

    __hidden__ = frozenset({"content"})
    kind: FileKind
    key: str
    path: str
    content: bytes  # a secret's bytes: never in a repr
    mode: int
    uid: int | None = None
    gid: int | None = None


class Desired(msgspec.Struct, frozen=True):
    stack: str
    revision: str
    containers: tuple[DesiredContainer, ...]
    networks: tuple[DesiredNetwork, ...]
    volumes: tuple[DesiredVolume, ...]
    files: tuple[DesiredFile, ...]
    services: tuple[ServiceSpec, ...]

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def _owned(stack: str, revision: str, spec_hash: str, extra: Mapping[str, str]) -> dict[str, str]:
    return identity.labels(stack, revision=revision, spec_hash=spec_hash, extra=extra)


def network_runtime_name(stack: Stack, key: str) -> str:
    spec = stack.network(key)
    if spec.external_name:
        return spec.external_name
    return identity.network_name(stack.name, key)


def volume_runtime_name(stack: Stack, key: str) -> str:
    spec = stack.volume(key)
    if spec.external_name:
        return spec.external_name
    return identity.volume_name(stack.name, key)


# (kind, key, mode, uid, gid): one materialised variant of a config or secret
FileVariant = tuple[FileKind, str, int, int | None, int | None]


def _variant(kind: FileKind, ref: FileRef) -> FileVariant:
    def num(v: str | None) -> int | None:
        return int(v) if v is not None and v.isdigit() else None

    mode = ref.mode if ref.mode is not None else FILE_MODES[kind]
    return (kind, ref.source, mode, num(ref.uid), num(ref.gid))


def _file_path(files_root: str, stack: str, variant: FileVariant, content: bytes) -> str:
    kind, key, mode, uid, gid = variant
    tag = hashlib.sha256(content).hexdigest()[:12]
    name = f"{kind}-{key}-{tag}"
    if (mode, uid, gid) != (FILE_MODES[kind], None, None):
        name += f"-{mode:o}-{'' if uid is None else uid}-{'' if gid is None else gid}"
    return os.path.join(files_root, stack, name)


def container_runtime_name(stack: Stack, service: ServiceSpec, replica: int) -> str:
    """A replica's container name: the service's `container_name` (one replica only), else
    `<stack>-<service>-<n>`."""
    if service.container_name is not None:
        return service.container_name
    return identity.container_name(stack.name, service.name, replica)


def network_mode(stack: Stack, service: ServiceSpec) -> str | None:
    """The runtime's network_mode of a service: `service:X` is the namespace of X's first
    replica, or what X joins itself (the host's, another container's), followed to the end."""
    seen = {service.name}
    mode = service.network_mode
    while mode is not None and mode.startswith("service:"):
        peer = stack.service(mode.removeprefix("service:"))
        if peer.name in seen:  # the loader refuses cycles; never loop on one
            raise ValueError(f"network_mode cycle through service {peer.name}")
        seen.add(peer.name)
        if peer.network_mode in (None, "none"):  # a namespace of its own
            return "container:" + container_runtime_name(stack, peer, 1)
        mode = peer.network_mode
    return mode


def expose_ports(service: ServiceSpec) -> tuple[str, ...]:
    """`expose` as PORT[-LAST]/PROTOCOL, sorted, without repeats."""
    out = set()
    for item in service.expose:
        port, _, proto = item.partition("/")
        out.add(f"{port}/{(proto or 'tcp').lower()}")
    return tuple(sorted(out))


def _restart(policy: str) -> tuple[str, int]:
    if policy.startswith("on-failure"):
        _, _, count = policy.partition(":")
        return "on-failure", int(count) if count else 0
    return policy, 0


def _health(service: ServiceSpec) -> HealthConfig | None:
    hc = service.healthcheck
    if hc is None or (not hc.test and not hc.disable):
        return None  # no test of its own: the image's healthcheck applies
    if hc.disable:
        return HealthConfig(test=("NONE",))
    return HealthConfig(
        test=hc.test,
        interval_s=hc.interval,
        timeout_s=hc.timeout,
        retries=hc.retries,
        start_period_s=hc.start_period,
    )


def _file_mounts(
    kind: FileKind, refs: tuple[FileRef, ...], paths: Mapping[FileVariant, str]
) -> list[MountConfig]:
    return [
        MountConfig(
            type="bind", source=paths[_variant(kind, ref)], target=ref.target, read_only=True
        )
        for ref in refs
    ]


def _hooks(hooks: tuple[Hook, ...]) -> tuple[ExecHook, ...]:
    return tuple(
        ExecHook(
            command=h.command,
            user=h.user,
            privileged=h.privileged,
            working_dir=h.working_dir,
            env=tuple(f"{k}={v}" for k, v in h.environment),
        )
        for h in hooks
    )


def namespace_mode(stack: Stack, mode: str | None) -> str | None:
    """pid/ipc as the runtime takes it: "service:x" is x's first container (by the name it
    runs under: its `container_name` if it has one)."""
    if mode is None or not mode.startswith("service:"):
        return mode
    return "container:" + container_runtime_name(stack, stack.service(mode[len("service:") :]), 1)


def container_config(
    stack: Stack,
    service: ServiceSpec,
    replica: int,
    *,
    file_paths: Mapping[FileVariant, str],
) -> ContainerConfig:
    """The container for one replica, without the ownership labels."""
    mounts: list[MountConfig] = []
    for m in service.mounts:
        source = m.source
        if m.type == "volume" and source:
            source = volume_runtime_name(stack, source)
        mounts.append(
            MountConfig(
                type=m.type,
                target=m.target,
                source=source,
                read_only=m.read_only,
                tmpfs_size=m.tmpfs_size,
                tmpfs_mode=m.tmpfs_mode,
                no_copy=m.nocopy,
                create_host_path=m.type == "bind" and m.create_host_path,
            )
        )
    mounts += _file_mounts("config", service.configs, file_paths)
    mounts += _file_mounts("secret", service.secrets, file_paths)
    policy, retries = _restart(service.restart)
    cpus = service.resources.cpus
    return ContainerConfig(
        name=container_runtime_name(stack, service, replica),
        image=service.image,
        labels=dict(service.labels),
        command=service.command,
        entrypoint=service.entrypoint,
        env=tuple(f"{k}={v}" for k, v in service.environment),
        mounts=tuple(mounts),
        ports=tuple(
            sorted(
                (
                    PortBinding(
                        container_port=p.target,
                        protocol=p.protocol,
                        host_ip=p.host_ip,
                        host_port=p.published,
                        host_port_last=p.published_last,
                    )
                    for p in service.ports
                ),
                key=lambda b: (b.container_port, b.protocol, b.host_ip, b.host_port or 0),
            )
        ),
        networks=tuple(
            Attachment(
                network=network_runtime_name(stack, n.name),
                aliases=tuple(dict.fromkeys((service.name, *n.aliases))),
                ipv4_address=n.ipv4_address,
            )
            for n in service.networks
        )
        if service.network_mode is None
        else (),
        network_mode=network_mode(stack, service),
        expose=expose_ports(service),
        memory_bytes=service.resources.memory,
        nano_cpus=round(cpus * 1e9) if cpus else None,
        pids_limit=service.resources.pids,
        restart_policy=policy,
        restart_max_retries=retries,
        health=_health(service),
        user=service.user,
        working_dir=service.working_dir,
        hostname=service.hostname,
        cap_add=service.cap_add,
        cap_drop=service.cap_drop,
        read_only=service.read_only,
        stop_signal=service.stop_signal,
        stop_timeout_s=service.stop_grace_period,
        init=service.init,
        ulimits=tuple(Ulimit(u.name, u.soft, u.hard) for u in service.ulimits),
        extra_hosts=tuple(f"{host}:{ip}" for host, ip in service.extra_hosts),
        log_max_size=service.log_max_size,
        log_max_files=service.log_max_files,
        seccomp=service.seccomp,
        privileged=service.privileged,
        devices=tuple(DeviceMapping(d.source, d.target, d.permissions) for d in service.devices),
        sysctls=dict(service.sysctls),
        dns=service.dns,
        dns_search=service.dns_search,
        dns_opt=service.dns_opt,
        shm_size=service.shm_size,
        no_new_privileges=service.no_new_privileges,
        apparmor=service.apparmor,
        tty=service.tty,
        stdin_open=service.stdin_open,
        pid_mode=namespace_mode(stack, service.pid),
        ipc_mode=namespace_mode(stack, service.ipc),
        cgroup_parent=service.cgroup_parent,
        oom_score_adj=service.oom_score_adj,
        group_add=service.group_add,
        mac_address=service.mac_address,
        runtime=service.runtime,
        # the host's own platform is what a runtime picks anyway
        platform=service.platform if service.runtime is not None else None,
        post_start=_hooks(service.post_start),
        pre_stop=_hooks(service.pre_stop),
    )


def build_config(
    service: ServiceSpec, *, no_cache: bool = False, pull: bool = False
) -> BuildConfig:
    """What the runtime builds for a service with `build:`: its image, tagged with the
    service's `image` first and the build's own `tags` after (the CLI's --no-cache and
    --pull add to what the manifest asks)."""
    b = service.build
    if b is None:
        raise ValueError(f"service {service.name} has no build")
    return BuildConfig(
        context=b.context,
        dockerfile=b.dockerfile,
        dockerfile_inline=b.dockerfile_inline,
        tags=tuple(dict.fromkeys((service.image, *b.tags))),
        args=dict(b.args),
        target=b.target,
        labels=dict(b.labels),
        no_cache=b.no_cache or no_cache,
        pull=b.pull or pull,
    )


def builders(desired: Desired) -> dict[str, ServiceSpec]:
    """Image reference -> the service whose `build:` makes it (the first by name when
    several services build the same image, as they share it)."""
    out: dict[str, ServiceSpec] = {}
    for s in desired.services:
        if s.build is not None:
            out.setdefault(s.image, s)
    return out


def hash_input(config: ContainerConfig) -> ContainerConfig:
    """What the spec hash covers: the config less its name (replica-specific). A seccomp
    profile counts by its digest, so that the last-applied label stays short and a diff
    shows a changed profile as one value."""
    seccomp = config.seccomp
    if seccomp is not None and seccomp != "unconfined":
        seccomp = "profile sha256:" + hashlib.sha256(seccomp.encode()).hexdigest()
    return msgspec.structs.replace(config, name="", seccomp=seccomp)


def desired_state(
    stack: Stack,
    *,
    revision: str,
    file_contents: Mapping[tuple[FileKind, str], bytes],
    files_root: str,
) -> Desired:
    files: list[DesiredFile] = []
    paths: dict[FileVariant, str] = {}
    variants: list[FileVariant] = []
    for kind, specs in (("config", stack.configs), ("secret", stack.secrets)):
        fkind: FileKind = "config" if kind == "config" else "secret"
        variants += [(fkind, spec.name, FILE_MODES[fkind], None, None) for spec in specs]
    for service in stack.services:
        variants += [_variant("config", ref) for ref in service.configs]
        variants += [_variant("secret", ref) for ref in service.secrets]
    for variant in dict.fromkeys(variants):
        fkind, key, mode, uid, gid = variant
        if (fkind, key) not in file_contents:  # external: nothing to write
            continue
        content = file_contents[(fkind, key)]
        path = _file_path(files_root, stack.name, variant, content)
        paths[variant] = path
        files.append(DesiredFile(fkind, key, path, content, mode, uid, gid))

    containers: list[DesiredContainer] = []
    for service in stack.services:
        base = container_config(stack, service, 1, file_paths=paths)
        applied = identity.canonical_json(hash_input(base))
        spec_hash = identity.digest_text(applied)
        for replica in range(1, service.replicas + 1):
            cfg = msgspec.structs.replace(
                base,
                name=container_runtime_name(stack, service, replica),
                labels={
                    **base.labels,
                    **identity.labels(
                        stack.name,
                        revision=revision,
                        spec_hash=spec_hash,
                        service=service.name,
                        replica=replica,
                    ),
                    LAST_APPLIED: applied,
                },
            )
            containers.append(DesiredContainer(service.name, replica, cfg, spec_hash, applied))

    networks: list[DesiredNetwork] = []
    for n in stack.networks:
        name = network_runtime_name(stack, n.name)
        if n.external:
            networks.append(DesiredNetwork(n.name, NetworkConfig(name=name), "", external=True))
            continue
        raw = NetworkConfig(
            name=name,
            driver=n.driver,
            internal=n.internal,
            subnet=n.subnet,
            gateway=n.gateway,
            labels=dict(n.labels),
            enable_ipv6=n.enable_ipv6,
            subnet6=n.subnet6,
            gateway6=n.gateway6,
        )
        h = identity.digest(msgspec.structs.replace(raw, name=""))
        ncfg = msgspec.structs.replace(
            raw,
            labels={
                **raw.labels,
                **_owned(stack.name, revision, h, {identity.NETWORK: n.name}),
            },
        )
        networks.append(DesiredNetwork(n.name, ncfg, h))

    volumes: list[DesiredVolume] = []
    for v in stack.volumes:
        name = volume_runtime_name(stack, v.name)
        if v.external:
            volumes.append(DesiredVolume(v.name, VolumeConfig(name=name), "", external=True))
            continue
        rawv = VolumeConfig(
            name=name, driver=v.driver, labels=dict(v.labels), driver_opts=dict(v.driver_opts)
        )
        h = identity.digest(msgspec.structs.replace(rawv, name=""))
        cfgv = msgspec.structs.replace(
            rawv,
            labels={**rawv.labels, **_owned(stack.name, revision, h, {identity.VOLUME: v.name})},
        )
        volumes.append(DesiredVolume(v.name, cfgv, h))

    return Desired(
        stack=stack.name,
        revision=revision,
        containers=tuple(containers),
        networks=tuple(networks),
        volumes=tuple(volumes),
        files=tuple(files),
        services=stack.services,
    )


def file_sources(stack: Stack) -> list[tuple[FileKind, ConfigSpec]]:
    """The configs and secrets whose bytes `desired_state` needs."""
    out: list[tuple[FileKind, ConfigSpec]] = []
    out += [("config", c) for c in stack.configs if not c.external]
    out += [("secret", s) for s in stack.secrets if not s.external]
    return out
