"""The native runtime behind `runtime.base.Runtime`: the image store, the container manager
and the network manager of one state root, plus named volumes.

State root: the `root` argument, else $PYAPPLY_ROOT, else /var/lib/pyapply. Besides what
the managers keep there (images/, containers/, runc/, networks/), the driver owns:

    volumes/<name>/_data       the volume's content (bind-mounted into containers)
    volumes/<name>/meta.json   {"name", "driver", "labels", "created_at"}, written atomically

Each container gets its own network namespace, `/run/netns/pyapply-<root tag>-<name>`, made
before the container is created (so that its networks and published ports are in place
before it starts) and deleted when it is removed. Its /etc/hosts is the managed file of the
NetworkManager (rewritten whenever the membership of its networks changes).

Anonymous volumes are directories under the container's own directory
(`containers/<name>/volumes/<n>`), so they go with the container.

Not supported yet:
- rename_container: container state, runc state and network endpoints are all keyed by the
  name, so a rename raises PermanentError ("not supported"); start-first updates fail;
- events(): yields nothing (there is no daemon to report events; the watch agent falls back
  on polling);
- volume drivers other than "local", driver_opts.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyroute2 import netns  # type: ignore[import-untyped]

from runtime.base import (
    Attachment,
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
    VolumeConfig,
    VolumeState,
)
from runtime.native.containers import ContainerManager, atomic_write
from runtime.native.images import ImageStore
from runtime.native.network import NetworkManager, translated

DEFAULT_ROOT = "/var/lib/pyapply"
NETNS_DIR = Path("/run/netns")
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def default_root() -> Path:
    return Path(os.environ.get("PYAPPLY_ROOT") or DEFAULT_ROOT)


def _labels_match(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(k in have and (v == "" or have[k] == v) for k, v in wanted.items())


class NativeRuntime:
    """The daemonless runtime: runc containers, overlayfs images, bridge networks."""

    name = "native"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.image_store = ImageStore(str(self.root))
        self.containers = ContainerManager(self.root)
        self.networks = NetworkManager(self.root)
        self.volumes_dir = self.root / "volumes"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise container create/remove between processes sharing the root (a create
        that fails rolls back, and must not roll back what another process made)."""
        fd = os.open(self.root / "driver.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- images --------------------------------------------------------------------------

    @translated
    def images(self, refs: Iterable[str]) -> dict[str, ImageInfo | None]:
        out: dict[str, ImageInfo | None] = {}
        for ref in refs:
            rec = self.image_store.resolve(ref)
            out[ref] = rec.info() if rec is not None else None
        return out

    @translated
    def pull_image(self, ref: str) -> ImageInfo:
        return self.image_store.pull(ref).info()

    # -- networks ------------------------------------------------------------------------

    def create_network(self, config: NetworkConfig) -> None:
        self.networks.create(config)

    def remove_network(self, name: str) -> None:
        self.networks.remove(name)

    def get_network(self, name: str) -> NetworkState | None:
        return self.networks.get(name)

    def list_networks(self, labels: Mapping[str, str]) -> list[NetworkState]:
        return self.networks.list(labels)

    # -- volumes -------------------------------------------------------------------------

    def _volume_dir(self, name: str) -> Path:
        if not _VOLUME_NAME.match(name):
            raise PermanentError(f"invalid volume name: {name!r}")
        return self.volumes_dir / name

    def _volume_meta(self, name: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self._volume_dir(name) / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _volume_state(self, name: str, meta: Mapping[str, Any]) -> VolumeState:
        return VolumeState(
            name=name,
            driver=str(meta.get("driver") or "local"),
            labels=dict(meta.get("labels") or {}),
            mountpoint=str(self._volume_dir(name) / "_data"),
        )

    @translated
    def create_volume(self, config: VolumeConfig) -> None:
        if config.driver not in ("local", ""):
            raise PermanentError(f"volume driver {config.driver!r} is not supported (local only)")
        if config.driver_opts:
            raise PermanentError("volume driver_opts are not supported by the native runtime")
        vdir = self._volume_dir(config.name)
        meta = self._volume_meta(config.name)
        if meta is not None:
            if dict(meta.get("labels") or {}) == dict(config.labels):
                (vdir / "_data").mkdir(parents=True, exist_ok=True)
                return
            raise Conflict(f"volume name {config.name} is in use with other labels")
        (vdir / "_data").mkdir(parents=True, exist_ok=True)
        doc = {
            "name": config.name,
            "driver": "local",
            "labels": dict(config.labels),
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        # meta.json last: a volume exists once its metadata does
        atomic_write(vdir / "meta.json", json.dumps(doc, indent=1, sort_keys=True))

    def _volume_users(self, data_dir: Path) -> list[str]:
        """Containers whose OCI spec bind-mounts `data_dir`."""
        users: list[str] = []
        cdirs = self.containers.containers_dir
        if not cdirs.is_dir():
            return users
        for cdir in sorted(cdirs.iterdir()):
            try:
                spec = json.loads((cdir / "config.json").read_text())
            except (OSError, ValueError):
                continue
            for m in spec.get("mounts") or ():
                if m.get("source") == str(data_dir):
                    users.append(cdir.name)
                    break
        return users

    @translated
    def remove_volume(self, name: str) -> None:
        vdir = self._volume_dir(name)
        if not vdir.exists():
            return
        users = self._volume_users(vdir / "_data")
        if users:
            raise Conflict(f"volume {name} is in use by container(s): {', '.join(users)}")
        # metadata first: a half-deleted volume is gone, not a volume with lost content
        with contextlib.suppress(FileNotFoundError):
            (vdir / "meta.json").unlink()
        shutil.rmtree(vdir, ignore_errors=False)

    @translated
    def get_volume(self, name: str) -> VolumeState | None:
        meta = self._volume_meta(name)
        return None if meta is None else self._volume_state(name, meta)

    @translated
    def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeState]:
        if not self.volumes_dir.is_dir():
            return []
        out = []
        for vdir in sorted(self.volumes_dir.iterdir()):
            if not _VOLUME_NAME.match(vdir.name):
                continue
            meta = self._volume_meta(vdir.name)
            if meta is not None and _labels_match(meta.get("labels") or {}, labels):
                out.append(self._volume_state(vdir.name, meta))
        return out

    # -- containers: helpers -------------------------------------------------------------

    def netns_name(self, container: str) -> str:
        return f"pyapply-{self.networks.tag}-{container}"

    def netns_path(self, container: str) -> str:
        return str(NETNS_DIR / self.netns_name(container))

    def _make_netns(self, container: str) -> str:
        name = self.netns_name(container)
        path = self.netns_path(container)
        if os.path.exists(path):  # left over by an interrupted create or remove
            netns.remove(name)
        netns.create(name)
        return path

    def _drop_netns(self, container: str) -> None:
        if os.path.exists(self.netns_path(container)):
            with contextlib.suppress(FileNotFoundError):
                netns.remove(self.netns_name(container))

    def _resolve_mounts(self, config: ContainerConfig) -> tuple[list[MountConfig], list[Path]]:
        """config.mounts with volume sources as host paths; and the anonymous volume dirs
        to make (under the container's dir, once it exists)."""
        out: list[MountConfig] = []
        anon: list[Path] = []
        cdir = self.containers.dir(config.name)
        for m in config.mounts:
            if m.type != "volume":
                out.append(m)
                continue
            if m.source:
                if self._volume_meta(m.source) is None:
                    raise NotFound(f"volume {m.source} not found")
                src = self._volume_dir(m.source) / "_data"
            else:
                src = cdir / "volumes" / str(len(anon))
                anon.append(src)
            out.append(replace(m, type="bind", source=str(src)))
        return out, anon

    def _attached_networks(self) -> dict[str, tuple[str, ...]]:
        """Container name -> the networks it has an endpoint on (sorted)."""
        by_container: dict[str, list[str]] = {}
        for net in self.networks.list():
            for c in net.containers:
                by_container.setdefault(c, []).append(net.name)
        return {c: tuple(sorted(nets)) for c, nets in by_container.items()}

    def _with_networks(
        self, state: ContainerState, attached: Mapping[str, tuple[str, ...]]
    ) -> ContainerState:
        nets = attached.get(state.name)
        if nets is None or nets == state.networks:
            return state
        return replace(state, networks=tuple(sorted(set(state.networks) | set(nets))))

    def _hostname(self, config: ContainerConfig, cid: str) -> str:
        return config.hostname or cid[:12]

    # -- containers ----------------------------------------------------------------------

    @translated
    def create_container(self, config: ContainerConfig) -> str:
        with self._lock():
            return self._create_container(config)

    def _create_container(self, config: ContainerConfig) -> str:
        existing = self.containers.state(config.name)
        if existing is not None:
            if dict(existing.labels) == dict(config.labels):
                return existing.id
            raise Conflict(f"container name {config.name} is in use by another container")
        record = self.image_store.resolve(config.image)
        if record is None:
            raise NotFound(f"image {config.image} not found; pull it first")
        layer_dirs = self.image_store.layer_dirs(record)
        mounts, anon = self._resolve_mounts(config)
        nspath = self._make_netns(config.name)
        try:
            cid = self.containers.create(
                config,
                layer_dirs,
                record.config.to_json(),
                image_id=record.id,
                mounts=mounts,
                netns_path=nspath,
            )
            for d in anon:
                d.mkdir(parents=True, exist_ok=True)
            hosts = str(self.containers.dir(config.name) / "hosts")
            hostname = self._hostname(config, cid)
            self.networks.set_hosts_file(config.name, hosts, hostname)
            ips: list[str] = []
            for att in config.networks:
                aliases = tuple(dict.fromkeys((*att.aliases, config.name)))
                ips.append(
                    self.networks.attach(
                        att.network,
                        config.name,
                        nspath,
                        aliases,
                        att.ipv4_address,
                        hosts_path=hosts,
                        hostname=hostname,
                    )
                )
            if config.ports:
                if not ips:
                    raise PermanentError(
                        f"container {config.name} publishes ports but is on no network"
                    )
                for binding in config.ports:
                    self.networks.publish(config.name, ips[0], binding)
        except BaseException:
            with contextlib.suppress(Exception):
                self._teardown(config.name)
            raise
        return cid

    @translated
    def start_container(self, name: str) -> None:
        if self.containers.state(name) is None:
            raise NotFound(f"no such container: {name}")
        if not os.path.exists(self.netns_path(name)):
            raise PermanentError(
                f"the network namespace of {name} is gone (host rebooted?); recreate it"
            )
        self.containers.start(name)

    @translated
    def stop_container(self, name: str, timeout_s: float | None = None) -> None:
        if self.containers.state(name) is None:
            raise NotFound(f"no such container: {name}")
        self.containers.stop(name, timeout_s)

    @translated
    def remove_container(self, name: str) -> None:
        with self._lock():
            self._teardown(name)

    def _teardown(self, name: str) -> None:
        """Stop, unpublish, detach, forget the hosts file, remove, delete the netns; each
        step is a no-op when already done, so an interrupted teardown can be run again."""
        self.containers.stop(name, None)
        self.networks.unpublish(name)
        for net in self.networks.list():
            if name in net.containers:
                self.networks.detach(net.name, name)
        self.networks.set_hosts_file(name, None)
        self.containers.remove(name)
        self._drop_netns(name)

    def rename_container(self, name: str, new_name: str) -> None:
        raise PermanentError(
            f"cannot rename {name} to {new_name}: renaming is not supported by the native "
            "runtime (use stop-first updates)"
        )

    @translated
    def connect_network(self, container: str, attachment: Attachment) -> None:
        state = self.containers.state(container)
        if state is None:
            raise NotFound(f"no such container: {container}")
        nspath = self.netns_path(container)
        hostname = None
        with contextlib.suppress(OSError, ValueError):
            hostname = (self.containers.dir(container) / "hostname").read_text().strip()
        self.networks.attach(
            attachment.network,
            container,
            nspath,
            tuple(dict.fromkeys((*attachment.aliases, container))),
            attachment.ipv4_address,
            hosts_path=str(self.containers.dir(container) / "hosts"),
            hostname=hostname or None,
        )

    @translated
    def get_container(self, name: str) -> ContainerState | None:
        state = self.containers.state(name)
        if state is None:
            return None
        return self._with_networks(state, self._attached_networks())

    @translated
    def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        found = self.containers.list(labels)
        if not found:
            return found
        attached = self._attached_networks()
        return [self._with_networks(s, attached) for s in found]

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        return self.containers.logs(name, follow=follow, tail=tail)

    def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
        """Nothing yet: there is no daemon to report events (callers poll instead)."""
        return iter(())

    def close(self) -> None:
        pass
