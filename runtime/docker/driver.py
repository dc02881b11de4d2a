"""The Docker Engine driver: `runtime.base.Runtime` over dockerd's REST API.

Reads (list, inspect) go through `_get`: over a UNIX socket that is `EngineHTTP`, a bare
keep-alive HTTP/1.1 client (`runtime.docker.engine`), so that observing a stack -- all a
no-op apply does -- neither imports the Docker SDK nor pays its per-request overhead; any
other daemon address (tcp, ssh, TLS) falls back to the SDK's low-level client. Mutations,
pulls, logs and events use the SDK's low-level APIClient, imported on first use.

Every call goes through `_get` / `_get_each` / `_call` / `_iterate`, the boundary where SDK,
HTTP and socket failures are translated (see `runtime.docker.errors`), the same way for both
read paths. Everything above it speaks only the runtime taxonomy, which is what the
idempotency rules below are written in.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from functools import partial
from typing import Any, Literal, TypeVar

import msgspec

from pyapply.runtime.base import (
    HASH_LABEL,
    Attachment,
    BuildConfig,
    BuildFailed,
    BuildProgress,
    BuildResult,
    Conflict,
    ContainerConfig,
    ContainerState,
    Event,
    ImageInfo,
    MountConfig,
    NetworkConfig,
    NetworkState,
    NotFound,
    PermanentError,
    PushProgress,
    PushResult,
    RuntimeFailure,
    TransientError,
    VolumeConfig,
    VolumeState,
    same_owner,
)
from pyapply.runtime.docker.engine import EngineError, EngineHTTP
from pyapply.runtime.docker.errors import (
    classify_api_error,
    explanation_of,
    translatable_errors,
    translate,
)
from pyapply.runtime.docker.normalise import (
    JSON,
    container_state,
    exposed_ports,
    label_filters,
    labels_match,
    network_state,
    port_bindings,
    split_image_ref,
    stale_namespaces,
    volume_state,
)

T = TypeVar("T")

_DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Path arguments are quoted as the SDK's APIClient._url quotes them.
_quote = partial(urllib.parse.quote, safe="/:")
_MAX_INSPECT_WORKERS = 8
_NS = 1_000_000_000
_HEX = re.compile(r"[0-9a-f]{1,63}")
# Container event attributes that are not labels.
_EVENT_ATTRS = frozenset(("name", "image", "exitCode", "signal", "execID", "container"))
# Container events that say nothing about the container's state (healthcheck execs, ...).
_QUIET_ACTIONS = frozenset(
    (
        "exec_create",
        "exec_start",
        "exec_detach",
        "exec_die",
        "attach",
        "detach",
        "resize",
        "top",
        "archive-path",
        "extract-to-dir",
        "export",
        "copy",
        "commit",
    )
)


class DockerRuntime:
    """A `Runtime` driving dockerd through its REST API.

    `base_url` defaults to $DOCKER_HOST (with $DOCKER_TLS_VERIFY / $DOCKER_CERT_PATH, as
    `docker.from_env` reads them), else the local UNIX socket. The connection is made on
    first use, so constructing the driver never fails; an unreachable daemon surfaces as
    `Unavailable` from the first call. `fast_reads=False` sends reads through the SDK even
    over a UNIX socket (the path used for tcp/ssh/TLS daemons).
    """

    name = "docker"

    def __init__(
        self, base_url: str | None = None, timeout: float = 60, *, fast_reads: bool = True
    ) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._daemon = base_url or os.environ.get("DOCKER_HOST") or _DEFAULT_SOCKET
        self._socket_path = unix_socket_path(self._daemon) if fast_reads else None
        self._client: Any = None
        self._engine: EngineHTTP | None = None
        self._lock = threading.Lock()

    # -----------------------------------------------------------------------------------------
    # The boundary

    def _api(self) -> Any:
        """The SDK's low-level client (the SDK is imported on first use)."""
        with self._lock:
            if self._client is None:
                self._client = sdk_client(self._base_url, self._timeout)
            return self._client.api

    def _fast(self) -> EngineHTTP | None:
        """The read client for a daemon on a UNIX socket (None: reads go through the SDK)."""
        if self._socket_path is None:
            return None
        with self._lock:
            if self._engine is None:
                self._engine = EngineHTTP(self._socket_path, timeout=self._timeout)
            return self._engine

    def _get(
        self,
        action: str,
        path: str,
        *args: str,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """GET `path` ("/containers/{0}/json", `args` filling it in, quoted) and return the
        decoded JSON, with errors translated; `action` reads "inspect container shop-web-1"."""
        with self._boundary(action):
            engine = self._fast()
            if engine is not None:
                return engine.get(path.format(*map(_quote, args)), params)
            api = self._api()
            return api._result(api._get(api._url(path, *args), params=params), json=True)

    @contextmanager
    def _boundary(self, action: str) -> Iterator[None]:
        try:
            yield
        except RuntimeFailure:
            raise
        except Exception as e:
            if not isinstance(e, translatable_errors()):
                raise
            raise translate(e, action, self._daemon) from e

    def _call(self, action: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(api)` with errors translated; `action` reads "create container shop-web-1"."""
        with self._boundary(action):
            return fn(self._api())

    def _iterate(self, action: str, stream: Any) -> Generator[Any, None, None]:
        """Iterate an SDK stream with errors translated, closing it however iteration ends."""
        try:
            with self._boundary(action):
                yield from stream
        finally:
            close = getattr(stream, "close", None)
            if callable(close):
                with suppress(*translatable_errors()):
                    close()

    def _get_each(self, what: str, path: str, refs: list[tuple[str, str]]) -> list[Any]:
        """GET `path` ("/containers/{0}/json") for each (ref, shown) of `refs`, in order;
        None where the object does not exist (NotFound). Errors are translated per object
        ("inspect <what> <shown>"); the first other failure is raised.

        Over a UNIX socket the requests are pipelined on EngineHTTP's kept-alive connection
        (a thread pool there is no faster than one connection in turn, pipelining is twice
        as fast); through the SDK they run in a small thread pool.
        """
        engine = self._fast()
        if engine is None:

            def one(ref: tuple[str, str]) -> Any:
                try:
                    return self._get(f"inspect {what} {ref[1]}", path, ref[0])
                except NotFound:
                    return None

            if len(refs) <= 1:
                return [one(r) for r in refs]
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(_MAX_INSPECT_WORKERS, len(refs))) as pool:
                return list(pool.map(one, refs))
        answers = engine.get_all([path.format(_quote(ref)) for ref, _ in refs])
        out: list[Any] = []
        for (_, shown), answer in zip(refs, answers, strict=False):  # answers end at a failure
            if isinstance(answer, EngineError):
                failure = translate(answer, f"inspect {what} {shown}", self._daemon)
                if not isinstance(failure, NotFound):
                    raise failure from answer
                answer = None
            out.append(answer)
        return out

    # -----------------------------------------------------------------------------------------
    # Raw lookups (inspect by exact name; None when absent)

    def _resolve(self, kind: Literal["container", "network"], name: str) -> str:
        """The reference to pass to the API for `name`.

        dockerd resolves a container/network reference as full id, then exact name, then id
        prefix. A name that could be an id prefix is resolved to the exact object first, so
        an operation never lands on another object whose id merely starts with that name.
        """
        if not _HEX.fullmatch(name):
            return name
        info = self._inspect_container(name) if kind == "container" else self._inspect_network(name)
        if info is None:
            raise NotFound(f"docker: no {kind} named {name}")
        return str(info["Id"])

    @staticmethod
    def _is_named(info: JSON, name: str) -> bool:
        return str(info.get("Name", "")).lstrip("/") == name or info.get("Id") == name

    def _inspect_container(self, name: str) -> JSON | None:
        try:
            info: JSON = self._get(f"inspect container {name}", "/containers/{0}/json", name)
        except NotFound:
            return None
        return info if self._is_named(info, name) else None

    def _inspect_network(self, name: str) -> JSON | None:
        try:
            info: JSON = self._get(f"inspect network {name}", "/networks/{0}", name)
        except NotFound:
            return None
        return info if self._is_named(info, name) else None

    def _inspect_volume(self, name: str) -> JSON | None:
        try:
            info: JSON = self._get(f"inspect volume {name}", "/volumes/{0}", name)
        except NotFound:
            return None
        return info

    def _inspect_image(self, ref: str) -> ImageInfo | None:
        [info] = self._get_each("image", "/images/{0}/json", [(ref, ref)])
        return _image_info(info) if info is not None else None

    # -----------------------------------------------------------------------------------------
    # Observation

    def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        summaries: list[JSON] = self._get(
            "list containers", "/containers/json", params={"all": 1, **_filters(labels)}
        )

        refs = [
            (str(s["Id"]), (s.get("Names") or [str(s["Id"])[:12]])[0].lstrip("/"))
            for s in summaries
        ]
        # None: removed between the list and the inspect
        infos = self._get_each("container", "/containers/{0}/json", refs)
        states = [container_state(i) for i in infos if i is not None]
        return sorted(stale_namespaces(states), key=lambda c: c.name)

    def list_networks(self, labels: Mapping[str, str]) -> list[NetworkState]:
        summaries: list[JSON] = self._get("list networks", "/networks", params=_filters(labels))

        refs = [(str(s["Id"]), str(s.get("Name", s["Id"]))) for s in summaries]
        infos = self._get_each("network", "/networks/{0}", refs)
        return sorted((network_state(i) for i in infos if i is not None), key=lambda n: n.name)

    def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        result: JSON = self._get("list volumes", "/volumes", params=_filters(labels))
        return sorted(
            (volume_state(v) for v in (result.get("Volumes") or [])), key=lambda v: v.name
        )

    def get_container(self, name: str) -> ContainerState | None:
        info = self._inspect_container(name)
        return container_state(info) if info is not None else None

    def get_network(self, name: str) -> NetworkState | None:
        info = self._inspect_network(name)
        return network_state(info) if info is not None else None

    def get_volume(self, name: str) -> VolumeState | None:
        info = self._inspect_volume(name)
        return volume_state(info) if info is not None else None

    # -----------------------------------------------------------------------------------------
    # Images

    def images(self, refs: Iterable[str]) -> dict[str, ImageInfo | None]:
        unique = list(dict.fromkeys(refs))
        infos = self._get_each("image", "/images/{0}/json", [(r, r) for r in unique])
        return {
            ref: _image_info(info) if info is not None else None
            for ref, info in zip(unique, infos, strict=True)
        }

    def pull_image(self, ref: str) -> ImageInfo:
        repository, tag = split_image_ref(ref)
        action = f"pull image {ref}"
        stream = self._call(
            action, lambda api: api.pull(repository, tag=tag, stream=True, decode=True)
        )
        for line in self._iterate(action, stream):
            # Failures after the pull started arrive in-band, with HTTP 200.
            if isinstance(line, dict) and line.get("error"):
                detail = line.get("errorDetail") or {}
                raise classify_api_error(detail.get("code"), str(line["error"]), action)
        info = self._inspect_image(ref)
        if info is None:
            raise NotFound(f"docker: cannot {action}: the pull finished but no image {ref} exists")
        return info

    # -----------------------------------------------------------------------------------------
    # Networks and volumes

    def build_image(
        self, config: BuildConfig, progress: BuildProgress | None = None
    ) -> BuildResult:
        """Build with dockerd's classic builder (runtime.docker.build); the tags are set
        only after the build succeeded."""
        from pyapply.runtime.docker import build

        if config.secrets:
            raise BuildFailed(
                "--secret (for RUN --mount=type=secret) needs BuildKit, and the docker "
                "runtime builds with dockerd's classic builder; the native runtime builds it"
            )
        ctx = build.plan_context(config)
        shown = config.dockerfile or "Dockerfile"
        action = f"build {config.context}"
        stream = build.BuildStream(progress)
        with build.context_tar(ctx) as tar:
            messages = self._call(
                action,
                lambda api: api.build(
                    fileobj=tar,
                    custom_context=True,
                    dockerfile=ctx.name,
                    decode=True,
                    **build.build_params(config),
                ),
            )
            try:
                for message in self._iterate(action, messages):
                    if isinstance(message, dict):
                        stream.feed(message)
            except BuildFailed:
                raise
            except PermanentError as e:
                if stream.step:
                    raise
                # refused before any step (HTTP 400): the Dockerfile, where dockerd says
                explanation = e.message.partition(f"cannot {action}: ")[2] or e.message
                raise build.parse_error(explanation, shown) from e
        stream.finish()
        image_id = stream.image_id
        if image_id is None:
            raise BuildFailed(f"docker: {action}: dockerd reported no image id")
        for tag in config.tags:
            repository, name = split_image_ref(tag)
            self._call(
                f"tag image {tag}",
                partial(_tag, image_id=image_id, repository=repository, tag=name),
            )
        return BuildResult(
            image_id=image_id, tags=tuple(config.tags), steps=stream.total, cached=stream.cached
        )

    def push_image(self, ref: str, progress: PushProgress | None = None) -> PushResult:
        """Push through dockerd (its credentials and insecure-registry settings)."""
        from pyapply.runtime.docker import build

        repository, tag = split_image_ref(ref)
        if tag.startswith("sha256:"):
            raise PermanentError(f"cannot push to {ref}: give a tag, not a digest")
        action = f"push image {ref}"
        stream = build.PushStream(f"{repository}:{tag}", progress)
        messages = self._call(
            action, lambda api: api.push(repository, tag=tag, stream=True, decode=True)
        )
        for message in self._iterate(action, messages):
            if isinstance(message, dict):
                stream.feed(message)
        if stream.digest is None:
            raise PermanentError(f"docker: cannot {action}: dockerd reported no digest")
        return PushResult(ref=f"{repository}:{tag}", digest=stream.digest)

    def create_network(self, config: NetworkConfig) -> None:
        action = f"create network {config.name}"
        existing = self._inspect_network(config.name)
        if existing is None:
            ipam = None
            pairs = [(config.subnet, config.gateway)]
            if config.enable_ipv6:
                from pyapply.runtime.docker.ipv6 import ula_subnet

                subnet6 = config.subnet6 or str(ula_subnet(config.name))
                pairs.append((subnet6, config.gateway6))
            pools = [(subnet, gateway) for subnet, gateway in pairs if subnet or gateway]
            if pools:
                from docker.types import IPAMConfig, IPAMPool

                ipam = IPAMConfig(
                    pool_configs=[IPAMPool(subnet=sub, gateway=gw) for sub, gw in pools]
                )
            try:
                self._call(
                    action,
                    lambda api: api.create_network(
                        config.name,
                        driver=config.driver,
                        internal=config.internal,
                        enable_ipv6=config.enable_ipv6,
                        ipam=ipam,
                        labels=dict(config.labels),
                        attachable=True,
                        check_duplicate=True,
                    ),
                )
                return
            except Conflict:  # created concurrently: judge the winner like any existing one
                existing = self._inspect_network(config.name)
                if existing is None:
                    raise
        if not same_owner(config.labels, existing.get("Labels")):
            raise Conflict(
                f"docker: cannot {action}: network name {config.name} is in use by a network "
                "pyapply did not create with this spec"
            )

    def remove_network(self, name: str) -> None:
        action = f"remove network {name}"
        try:
            ref = self._resolve("network", name)
            try:
                self._call(action, lambda api: api.remove_network(ref))
            except Conflict:
                # "has active endpoints": dockerd 20.10 can keep the endpoint of a container
                # that is gone (after a killed client or daemon), and then refuses the removal
                # for ever. Such stale endpoints are force-disconnected and the removal tried
                # once more; an endpoint of a container that exists is never touched.
                attached = self._drop_stale_endpoints(ref)
                if attached is None:
                    # no endpoint is listed at all, yet dockerd says there are: its network
                    # store holds an endpoint nothing can name, which only a restart clears
                    raise Conflict(
                        f"docker: cannot {action}: dockerd says endpoints are attached, but it "
                        "lists none (a stale endpoint in its network store, a known defect of "
                        "dockerd 20.10 after an interrupted client); restart dockerd to free it"
                    ) from None
                if not attached:
                    raise
                self._call(action, lambda api: api.remove_network(ref))
        except NotFound:
            return

    def _drop_stale_endpoints(self, ref: str) -> bool | None:
        """Force-disconnect the endpoints of network `ref` whose container no longer exists;
        True when there was at least one, None when the network lists no endpoint at all."""
        info = self._inspect_network(ref) or {}
        listed = info.get("Containers") or {}
        if not listed:
            return None
        dropped = False
        for key, endpoint in listed.items():
            try:
                self._get(f"inspect container {key}", "/containers/{0}/json", key)
                continue  # a container that exists keeps its endpoint
            except NotFound:
                pass
            # a stale endpoint is listed under "ep-<id>"; dockerd finds it by its name
            target = str((endpoint or {}).get("Name") or key) if key.startswith("ep-") else key
            with suppress(NotFound):
                self._call(
                    f"disconnect stale endpoint {target} from network {ref}",
                    partial(_force_disconnect, target, ref),
                )
            dropped = True
        return dropped

    def create_volume(self, config: VolumeConfig) -> None:
        action = f"create volume {config.name}"
        existing = self._inspect_volume(config.name)
        if existing is None:
            # dockerd answers "create" of an existing volume with that volume, whatever its
            # labels, so the result is checked like a volume that was already there.
            existing = self._call(
                action,
                lambda api: api.create_volume(
                    config.name,
                    driver=config.driver,
                    driver_opts=dict(config.driver_opts) or None,
                    labels=dict(config.labels),
                ),
            )
        if not same_owner(config.labels, existing.get("Labels")):
            raise Conflict(
                f"docker: cannot {action}: volume name {config.name} is in use by a volume "
                "pyapply did not create with this spec"
            )

    def remove_volume(self, name: str) -> None:
        try:
            self._call(f"remove volume {name}", lambda api: api.remove_volume(name))
        except NotFound:
            return

    # -----------------------------------------------------------------------------------------
    # Containers

    def create_container(self, config: ContainerConfig) -> str:
        action = f"create container {config.name}"
        existing = self._inspect_container(config.name)
        if existing is None:
            self._make_bind_sources(config)
            try:
                created: JSON = self._call(
                    action, lambda api: api.create_container(**self._create_args(api, config))
                )
            except Conflict:  # name taken concurrently
                existing = self._inspect_container(config.name)
                if existing is None:
                    raise
            else:
                cid = str(created["Id"])
                # API 1.41 takes one endpoint at create; the others are connected now, before
                # returning, so a created container always has all its networks.
                for attachment in config.networks[1:]:
                    self._connect(cid, config.name, attachment)
                return cid
        if not same_owner(config.labels, (existing.get("Config") or {}).get("Labels")):
            have = ((existing.get("Config") or {}).get("Labels") or {}).get(HASH_LABEL)
            want = config.labels.get(HASH_LABEL)
            raise Conflict(
                f"docker: cannot {action}: container name {config.name} is in use by a "
                f"container pyapply did not create with this spec "
                f"(its {HASH_LABEL} is {have!r}, wanted {want!r})"
            )
        cid = str(existing["Id"])
        connected = set((existing.get("NetworkSettings") or {}).get("Networks") or {})
        for attachment in config.networks:
            if attachment.network not in connected:
                self._connect(cid, config.name, attachment)
        return cid

    @staticmethod
    def _mount(m: MountConfig) -> Any:
        from docker.types import Mount

        if m.type == "tmpfs":
            return Mount(
                target=m.target,
                source=None,
                type="tmpfs",
                read_only=m.read_only,
                tmpfs_size=m.tmpfs_size,
                tmpfs_mode=m.tmpfs_mode,
            )
        return Mount(
            target=m.target,
            source=m.source or None,  # "" -> an anonymous volume
            type=m.type,
            read_only=m.read_only,
            no_copy=m.no_copy,
        )

    def _make_bind_sources(self, config: ContainerConfig) -> None:
        """Make the missing host directories of binds that ask for it (compose's
        create_host_path), as dockerd's Mounts API does not, and refuse the others plainly;
        only for a daemon on this host's UNIX socket, whose host paths are ours."""
        if unix_socket_path(self._daemon) is None:
            return
        for m in config.mounts:
            if m.type == "bind" and not os.path.lexists(m.source):
                if not m.create_host_path:
                    raise PermanentError(
                        f"container {config.name}: bind source {m.source} does not exist "
                        "(bind.create_host_path: true makes it)"
                    )
                os.makedirs(m.source, mode=0o755, exist_ok=True)

    def _create_args(self, api: Any, config: ContainerConfig) -> dict[str, Any]:
        """ContainerConfig -> keyword arguments of APIClient.create_container."""
        from docker.types import LogConfig
        from docker.types import Ulimit as DockerUlimit

        first = config.networks[0] if config.networks else None
        log_config = None
        if config.log_max_size is not None or config.log_max_files is not None:
            opts = {"max-size": config.log_max_size, "max-file": config.log_max_files}
            log_config = LogConfig(
                type="json-file", config={k: str(v) for k, v in opts.items() if v is not None}
            )
        restart: dict[str, Any] = {"Name": config.restart_policy or "no"}
        if config.restart_policy == "on-failure":
            restart["MaximumRetryCount"] = config.restart_max_retries
        host_config = api.create_host_config(
            mounts=[self._mount(m) for m in config.mounts] or None,
            port_bindings=port_bindings(config.ports) or None,
            mem_limit=config.memory_bytes,
            nano_cpus=config.nano_cpus,
            pids_limit=config.pids_limit,
            restart_policy=restart,
            cap_add=list(config.cap_add) or None,
            cap_drop=list(config.cap_drop) or None,
            read_only=config.read_only or None,
            init=config.init,
            ulimits=[DockerUlimit(name=u.name, soft=u.soft, hard=u.hard) for u in config.ulimits]
            or None,
            network_mode=config.network_mode or (first.network if first else None),
            log_config=log_config,
            extra_hosts=list(config.extra_hosts) or None,
            security_opt=self._security_opt(config) or None,
            privileged=config.privileged,
            devices=[f"{d.source}:{d.target}:{d.permissions}" for d in config.devices] or None,
            sysctls=dict(config.sysctls) or None,
            dns=list(config.dns) or None,
            dns_search=list(config.dns_search) or None,
            dns_opt=list(config.dns_opt) or None,
            shm_size=config.shm_size,
            pid_mode=config.pid_mode,
            ipc_mode=config.ipc_mode,
            cgroup_parent=config.cgroup_parent,
            oom_score_adj=config.oom_score_adj,
            group_add=list(config.group_add) or None,
            runtime=config.runtime,
        )
        networking_config = None
        if first is not None and config.network_mode is None:
            networking_config = api.create_networking_config(
                {
                    first.network: api.create_endpoint_config(
                        aliases=list(first.aliases) or None,
                        ipv4_address=first.ipv4_address,
                    )
                }
            )
        healthcheck: dict[str, Any] | None = None
        if config.health is not None:
            h = config.health
            if tuple(h.test[:1]) == ("NONE",):
                healthcheck = {"test": ["NONE"]}
            else:
                healthcheck = {
                    "test": list(h.test),
                    "interval": int(h.interval_s * _NS),
                    "timeout": int(h.timeout_s * _NS),
                    "retries": h.retries,
                    "start_period": int(h.start_period_s * _NS),
                }
        exposed = list(
            dict.fromkeys(
                [(p.container_port, p.protocol) for p in config.ports]
                + exposed_ports(config.expose)
            )
        )
        return {
            "image": config.image,
            "name": config.name,
            "command": list(config.command) if config.command is not None else None,
            # An empty entrypoint is sent as [] which dockerd reads as "override to empty".
            "entrypoint": list(config.entrypoint) if config.entrypoint is not None else None,
            "environment": list(config.env),
            "labels": {**config.labels, **_hooks_label(config)},
            "user": config.user,
            "working_dir": config.working_dir,
            "hostname": config.hostname,
            "stop_signal": config.stop_signal,
            "stop_timeout": (
                math.ceil(config.stop_timeout_s) if config.stop_timeout_s is not None else None
            ),
            "ports": exposed or None,
            "healthcheck": healthcheck,
            "host_config": host_config,
            "networking_config": networking_config,
            "detach": True,
            "tty": config.tty,
            "stdin_open": config.stdin_open,
            "mac_address": config.mac_address,
            "platform": config.platform,
        }

    def _security_opt(self, config: ContainerConfig) -> list[str]:
        out: list[str] = []
        if config.seccomp is not None:
            # Docker takes a profile's JSON content inline, as its CLI sends it.
            out.append(f"seccomp={config.seccomp}")
        if config.no_new_privileges:
            out.append("no-new-privileges")
        if config.apparmor == "unconfined":
            out.append("apparmor=unconfined")  # nothing the kernel must have
        elif config.apparmor is not None:
            # dockerd drops a profile silently where the kernel has no AppArmor: say so
            options = (
                self._call("read docker info", lambda api: api.info()).get("SecurityOptions") or []
            )
            if not any("name=apparmor" in str(o) for o in options):
                raise PermanentError(
                    f"container {config.name}: apparmor profile {config.apparmor!r} asked "
                    "for, but dockerd's host does not enforce AppArmor"
                )
            out.append(f"apparmor={config.apparmor}")
        return out

    def _connect(self, ref: str, shown: str, attachment: Attachment) -> None:
        action = f"connect container {shown} to network {attachment.network}"
        try:
            self._call(
                action,
                lambda api: api.connect_container_to_network(
                    ref,
                    attachment.network,
                    aliases=list(attachment.aliases) or None,
                    ipv4_address=attachment.ipv4_address,
                ),
            )
        except PermanentError as e:
            if "already exists in network" not in explanation_of(e).lower():
                raise

    def start_container(self, name: str) -> None:
        info = self._inspect_container(name)
        if info is None:
            raise NotFound(f"docker: no container named {name}")
        ref = str(info["Id"])
        running = bool((info.get("State") or {}).get("Running"))
        try:
            self._call(f"start container {name}", lambda api: api.start(ref))  # running: 304
        except RuntimeFailure as e:
            privileged = bool((info.get("HostConfig") or {}).get("Privileged"))
            if privileged and "unable to apply caps" in e.message:
                # dockerd grants a privileged container every capability it knows, which
                # fails where the host's own bounding set lacks some
                raise PermanentError(
                    f"{e.message} (a privileged container gets every capability, and "
                    "dockerd's host does not have them all: see CapBnd in /proc/self/status)"
                ) from e
            raise
        if not running:  # the hooks run once per start, not on a start that finds it running
            self._run_hooks(name, ref, info, "post_start", strict=True)

    def stop_container(self, name: str, timeout_s: float | None = None) -> None:
        info = self._inspect_container(name)
        if info is None:
            raise NotFound(f"docker: no container named {name}")
        ref = str(info["Id"])
        if (info.get("State") or {}).get("Running") and timeout_s != 0:
            self._run_hooks(name, ref, info, "pre_stop", strict=False)
        t = math.ceil(timeout_s) if timeout_s is not None else None
        self._call(f"stop container {name}", lambda api: api.stop(ref, timeout=t))

    def _run_hooks(self, name: str, ref: str, info: JSON, which: str, *, strict: bool) -> None:
        """The post_start / pre_stop hooks the container was created with (kept in its
        HOOKS_LABEL), run with docker exec in order. A post_start hook that fails is an
        error naming it; a pre_stop one that fails does not keep the container running."""
        labels = (info.get("Config") or {}).get("Labels") or {}
        try:
            hooks = json.loads(labels.get(HOOKS_LABEL) or "{}").get(which) or []
        except ValueError:
            hooks = []
        for h in hooks:
            command = [str(c) for c in h.get("command") or []]
            action = f"run {which} hook of container {name}"

            def run(api: Any, h: JSON = h, command: list[str] = command) -> tuple[int, bytes]:
                exec_id = api.exec_create(
                    ref,
                    command,
                    user=h.get("user") or "",
                    privileged=bool(h.get("privileged")),
                    environment=list(h.get("env") or []) or None,
                    workdir=h.get("working_dir"),
                )
                output = api.exec_start(exec_id)
                code = api.exec_inspect(exec_id).get("ExitCode")
                return (-1 if code is None else int(code)), bytes(output or b"")

            try:
                code, output = self._call(action, run)
            except RuntimeFailure:
                if strict:
                    raise
                continue
            if code != 0 and strict:
                tail = output.decode(errors="replace").strip()[-300:]
                raise PermanentError(
                    f"container {name}: {which} hook {command} exited with {code}"
                    + (f": {tail}" if tail else "")
                )

    def remove_container(self, name: str) -> None:
        action = f"remove container {name}"
        try:
            ref = self._resolve("container", name)
            self._call(action, lambda api: api.remove_container(ref, v=False, force=True))
        except NotFound:
            return
        except TransientError as e:
            if "already in progress" not in explanation_of(e).lower():
                raise
            # Someone else is removing it: wait for that to finish.
            deadline = time.monotonic() + max(10.0, self._timeout / 2)
            while time.monotonic() < deadline:
                if self._inspect_container(name) is None:
                    return
                time.sleep(0.2)
            raise TransientError(
                f"docker: cannot {action}: removal already in progress and not finished"
            ) from e

    def rename_container(self, name: str, new_name: str) -> None:
        if name == new_name:
            return
        try:
            ref = self._resolve("container", name)
            self._call(
                f"rename container {name} to {new_name}", lambda api: api.rename(ref, new_name)
            )
        except NotFound:
            # An interrupted pass may have renamed it already.
            if self._inspect_container(new_name) is not None:
                return
            raise

    def connect_network(self, container: str, attachment: Attachment) -> None:
        self._connect(self._resolve("container", container), container, attachment)

    # -----------------------------------------------------------------------------------------
    # Streams

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        """Raw log lines (stdout and stderr interleaved), each ending in b"\\n" except a final
        partial line. A missing container raises NotFound here, not on first iteration."""
        action = f"read logs of container {name}"
        ref = self._resolve("container", name)
        stream = self._call(
            action,
            lambda api: api.logs(
                ref,
                stdout=True,
                stderr=True,
                stream=True,
                follow=follow,
                tail=tail if tail is not None else "all",
            ),
        )
        return _lines(self._iterate(action, stream))

    def exec_attached(
        self, name: str, argv: Sequence[str], *, stdin: bool = False, tty: bool = False
    ) -> int:
        """Run argv in the container through the Engine's exec API, relaying this process's
        stdio over the hijacked socket (stdout/stderr frames demultiplexed without a TTY;
        the window size sent with one); the exec's exit code."""
        if not argv:
            raise RuntimeFailure("exec needs a command")
        action = f"exec in container {name}"
        ref = self._resolve("container", name)
        exec_id = self._call(
            action,
            lambda api: api.exec_create(
                ref, list(argv), stdin=stdin, tty=tty, stdout=True, stderr=True
            )["Id"],
        )
        raw = self._call(action, lambda api: api.exec_start(exec_id, tty=tty, socket=True))
        sock = getattr(raw, "_sock", raw)  # the SDK hands a SocketIO over a UNIX socket
        try:
            with self._boundary(action):
                self._relay_exec(sock, exec_id, stdin=stdin, tty=tty)
        finally:
            with suppress(OSError):
                sock.close()
            with suppress(OSError, *translatable_errors()):
                raw.close()
        return self._exec_code(action, exec_id)

    def _relay_exec(self, sock: Any, exec_id: str, *, stdin: bool, tty: bool) -> None:
        # imported here: a no-op apply never pays for the terminal's modules
        import socket
        import sys

        from pyapply.runtime import terminal

        local_in = sys.stdin.fileno()
        frames = ExecFrames()

        def receive(data: bytes) -> None:
            if tty:
                terminal.write_out(data)
                return
            for stream, payload in frames.feed(data):
                terminal.write_out(payload, 2 if stream == 2 else 1)

        def resize(size: tuple[int, int]) -> None:
            with suppress(*translatable_errors()):
                self._api().exec_resize(exec_id, height=size[0], width=size[1])

        def close_send() -> None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        sized = local_in if os.isatty(local_in) else sys.stdout.fileno()
        with (
            terminal.raw_terminal(local_in) if (stdin and tty) else nullcontext(),
            terminal.on_resize(resize, sized) if tty else nullcontext(),
        ):
            terminal.relay(
                sock.fileno(),
                send=sock.sendall,
                close_send=close_send,
                receive=receive,
                stdin=stdin,
            )

    def _exec_code(self, action: str, exec_id: str) -> int:
        """The exit code, once the Engine records it (shortly after the stream ends)."""
        deadline = time.monotonic() + 10
        while True:
            info = self._call(action, lambda api: api.exec_inspect(exec_id))
            code = info.get("ExitCode")
            if code is not None and not info.get("Running"):
                return int(code)
            if time.monotonic() > deadline:
                raise TransientError(f"docker: {action}: no exit code after the stream ended")
            time.sleep(0.05)

    def top(self, name: str) -> tuple[list[str], list[list[str]]]:
        ref = self._resolve("container", name)
        doc = self._call(f"list processes of container {name}", lambda api: api.top(ref))
        titles = [str(t) for t in doc.get("Titles") or []]
        return titles, [[str(c) for c in row] for row in doc.get("Processes") or []]

    def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
        """Container, network and volume events about objects carrying `labels`.

        dockerd puts labels only on container events, so the label filter is applied here:
        networks and volumes are matched against the ones carrying the labels when the stream
        opened, plus those created since (inspected on their `create` event).
        """
        action = "watch docker events"
        stream = self._call(
            action,
            lambda api: api.events(
                decode=True, filters={"type": ["container", "network", "volume"]}
            ),
        )
        try:  # listed after subscribing, so nothing created in between is missed
            networks = {n.id: n for n in self.list_networks(labels)}
            volumes = {v.name: v for v in self.list_volumes(labels)}
        except BaseException:
            stream.close()
            raise
        return self._events(self._iterate(action, stream), labels, networks, volumes)

    def _events(
        self,
        raw_events: Generator[Any, None, None],
        labels: Mapping[str, str],
        networks: dict[str, NetworkState],
        volumes: dict[str, VolumeState],
    ) -> Iterator[Event]:
        try:
            yield from self._match_events(raw_events, labels, networks, volumes)
        finally:
            raw_events.close()

    def _match_events(
        self,
        raw_events: Iterator[Any],
        labels: Mapping[str, str],
        networks: dict[str, NetworkState],
        volumes: dict[str, VolumeState],
    ) -> Iterator[Event]:
        for raw in raw_events:
            if not isinstance(raw, dict):
                continue
            kind = raw.get("Type")
            action = str(raw.get("Action") or raw.get("status") or "").split(":", 1)[0].strip()
            actor = raw.get("Actor") or {}
            attrs: dict[str, str] = dict(actor.get("Attributes") or {})
            oid = str(actor.get("ID") or "")
            if kind == "container":
                if action in _QUIET_ACTIONS:
                    continue
                own = {k: v for k, v in attrs.items() if k not in _EVENT_ATTRS}
                if labels_match(own, labels):
                    yield Event("container", action, attrs.get("name", oid), own)
            elif kind == "network":
                net = networks.get(oid)
                if net is None and action == "create":
                    info = self._inspect_network(oid)
                    if info is not None and labels_match(info.get("Labels"), labels):
                        net = networks[oid] = network_state(info)
                if net is not None:
                    yield Event("network", action, net.name, net.labels)
                    if action == "destroy":
                        networks.pop(oid, None)
            elif kind == "volume":
                vol = volumes.get(oid)
                if vol is None and action == "create":
                    vinfo = self._inspect_volume(oid)
                    if vinfo is not None and labels_match(vinfo.get("Labels"), labels):
                        vol = volumes[oid] = volume_state(vinfo)
                if vol is not None:
                    yield Event("volume", action, vol.name, vol.labels)
                    if action == "destroy":
                        volumes.pop(oid, None)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        if client is not None:
            with suppress(*translatable_errors()):
                client.close()


def _tag(api: Any, *, image_id: str, repository: str, tag: str) -> Any:
    return api.tag(image_id, repository, tag, force=True)


# The post_start / pre_stop hooks of a container, JSON, for the starts and stops after its
# create (dockerd has no field for them).
HOOKS_LABEL = "io.pyapply.hooks"


def _hooks_label(config: ContainerConfig) -> dict[str, str]:
    hooks = {
        which: [msgspec.structs.asdict(h) for h in getattr(config, which)]
        for which in ("post_start", "pre_stop")
        if getattr(config, which)
    }
    return {HOOKS_LABEL: json.dumps(hooks, sort_keys=True)} if hooks else {}


def _image_info(info: JSON) -> ImageInfo:
    return ImageInfo(id=str(info["Id"]), env=tuple((info.get("Config") or {}).get("Env") or ()))


def unix_socket_path(daemon: str) -> str | None:
    """The socket path of a `unix://` daemon address, as the SDK reads it (None: another
    scheme)."""
    for scheme in ("unix://", "http+unix://"):
        if daemon.startswith(scheme):
            path = daemon[len(scheme) :]
            if not path:
                return "/var/run/docker.sock"
            return path if path.startswith("/") else "/" + path
    return None


def _filters(labels: Mapping[str, str]) -> dict[str, str]:
    """The `filters` query parameter for a label filter ({} when there is none)."""
    filters = label_filters(labels)
    return {"filters": json.dumps(filters)} if filters else {}


class ExecFrames:
    """The Engine's multiplexed stream without a TTY: frames of an 8-byte header (stream
    1 stdout / 2 stderr, three zero bytes, a big-endian 32-bit length) and the payload;
    `feed` takes bytes as they come and yields whole frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self.buf += data
        while len(self.buf) >= 8:
            size = int.from_bytes(self.buf[4:8], "big")
            if len(self.buf) < 8 + size:
                return
            stream = self.buf[0]
            payload = bytes(self.buf[8 : 8 + size])
            del self.buf[: 8 + size]
            yield stream, payload


def _lines(chunks: Generator[bytes, None, None]) -> Iterator[bytes]:
    """Re-cut a byte stream into lines; closing this closes the stream underneath."""
    buffer = b""
    try:
        for chunk in chunks:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if buffer:
            yield buffer
    finally:
        chunks.close()


def _force_disconnect(target: str, network: str, api: Any) -> None:
    api.disconnect_container_from_network(target, network, force=True)


def sdk_client(base_url: str | None, timeout: float) -> Any:
    """The Docker SDK's client for `base_url`, else for DOCKER_HOST and its TLS settings,
    else for the default socket (the SDK is imported here, on first use)."""
    import docker
    from docker.utils import kwargs_from_env

    params: dict[str, Any] = {"base_url": base_url} if base_url else kwargs_from_env()
    params.setdefault("base_url", _DEFAULT_SOCKET)
    return docker.DockerClient(version="auto", timeout=timeout, **params)
