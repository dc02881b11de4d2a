"""The native runtime behind `runtime.base.Runtime`: the image store, the container manager
and the network manager of one state root, plus named volumes.

State root: the `root` argument, else $PYAPPLY_ROOT, else /var/lib/pyapply. Besides what
the managers keep there (images/, containers/, runc/, networks/), the driver owns:

    volumes/<name>/_data       the volume's content (bind-mounted into containers)
    volumes/<name>/meta.json   {"name", "driver", "labels", "created_at"}, written atomically

Each container gets its own network namespace, `/run/netns/pyapply-<root tag>-<name>`, made
before the container is created (so that its networks and published ports are in place
before it starts; its loopback is up even on no network) and deleted when it is removed. Its
/etc/hosts is the managed file of the NetworkManager (rewritten whenever the membership of
its networks changes). Two network modes own no namespace: `host` (the OCI spec asks for no
network namespace; the host's name, /etc/hosts and resolv.conf) and `container:NAME` (runc
joins NAME's namespace file, which outlives NAME's restarts; /etc/hosts, hostname and
resolv.conf are NAME's files); a container made so records it in its state
(`network_mode`, `joined`, `joined_id`).

Anonymous volumes are directories under the container's own directory
(`containers/<name>/volumes/<n>`), so they go with the container.

Names and keys: a container's state (its directory, netns, cgroup, network endpoints) is kept
under a *key*, which is the name it was created with. Renaming (the last step of a
start-first update) only changes `names.json`, a map of name -> key for the containers whose
name is not their key, and the name other containers resolve (the endpoint aliases). So a
rename is one atomic file write and touches nothing the running container depends on.

Events: there is no daemon to push them, so `events()` polls the state root (conmon's exit
files and pid files) a few times a second and reports starts, deaths and removals.

After a reboot (or anything else that deletes the namespace), starting a container makes a
new netns and plumbs its endpoints again with the same addresses; bridges and rules come
back with them.

The kernel is observed, not remembered: `list_containers` and `list_networks` report as
faults (`runtime.base.Fault`) what the state says should be there and is not -- a running
container's netns (gone, or no longer its own), conmon, veths and published ports' rules, the
root's keeper (health.py) while containers run; a network's bridge, address and rules. They
share one kernel view (a link and an address dump, one iptables-save) per look: a view
younger than VIEW_TTL_S that no change through this object has made stale is reused, so
one observation of a stack (containers, then networks) reads the kernel once. Only running
containers are checked: a stopped one's plumbing is made sure of when it starts.
Starting a running container repairs its faults in place (a netns file re-bound to its
process's namespace, bridges and rules remade, veths re-plumbed with the same addresses);
a container whose conmon died is reported for a restart (stop, start under a new conmon,
same container), since nothing can adopt a running process under a new conmon.

Not supported: volume drivers other than "local", driver_opts.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

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
    HealthConfig,
    ImageInfo,
    MountConfig,
    NetworkConfig,
    NetworkState,
    NotFound,
    PermanentError,
    PushProgress,
    PushResult,
    TransientError,
    VolumeConfig,
    VolumeState,
)
from pyapply.runtime.native import health as healthmod
from pyapply.runtime.native.containers import ContainerManager, SharedNetwork
from pyapply.runtime.native.images import ImageStore
from pyapply.runtime.native.netlink import (
    netns_attach,
    netns_create,
    netns_remove,
)
from pyapply.runtime.native.network import NetworkManager, translated
from pyapply.runtime.native.statefile import (
    DamagedState,
    anything,
    bad,
    checked,
    list_of,
    map_of,
    nonempty,
    read_json,
    record,
    string,
)
from pyapply.runtime.native.supervise import ExecResult, conmon_pid, read_pid
from pyapply.runtime.statefs import atomic_write, open_private, private_dir, rmtree, state_root

if TYPE_CHECKING:
    from pyapply.runtime.native.dirwatch import DirWatch

NETNS_DIR = Path("/run/netns")
EVENT_POLL_S = 0.2
VIEW_TTL_S = 1.0  # how long one look at the kernel serves observation (see the docstring)
KEEPER_DOWN = "keeper not running (no healthchecks, no log rotation)"
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def image_health(hc: Mapping[str, Any] | None) -> HealthConfig | None:
    """An image's HEALTHCHECK (Docker's config form: durations in ns, 0 = the default) as a
    HealthConfig; None when it has none or disables it."""
    test = tuple(str(t) for t in (hc or {}).get("Test") or ())
    if not hc or not test or test[0] == "NONE":
        return None
    ns = 1e9
    return HealthConfig(
        test=test,
        interval_s=float(hc.get("Interval") or 30 * ns) / ns,
        timeout_s=float(hc.get("Timeout") or 30 * ns) / ns,
        retries=int(hc.get("Retries") or 3),
        start_period_s=float(hc.get("StartPeriod") or 0) / ns,
    )


def set_mac(nspath: str, ip: str, mac: str) -> None:
    """Give the interface holding `ip` in the namespace the MAC a config asks for
    (mac_address) instead of the one made of its address."""
    import socket

    from pyapply.runtime.native.netlink import NetNS

    with NetNS(nspath, flags=0) as ns:
        for addr in ns.get_addr(family=socket.AF_INET):
            if addr.get_attr("IFA_ADDRESS") == ip:
                ns.link("set", index=addr["index"], address=mac)
                return
    raise PermanentError(f"no interface has address {ip} to give MAC {mac}")


def _labels_match(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(k in have and (v == "" or have[k] == v) for k, v in wanted.items())


class _Liveness(NamedTuple):
    name: str
    id: str
    running: bool
    exit_mtime: float
    labels: dict[str, str]


def _one_name_per_key(names: Mapping[str, str], where: str) -> None:
    seen: dict[str, str] = {}
    for name, key in names.items():
        if key in seen:
            raise bad(where, f"names {seen[key]!r} and {name!r} both point to {key!r}")
        seen[key] = name


NAMES_SHAPE = checked(map_of(nonempty), _one_name_per_key)
SPEC_MOUNTS_SHAPE = record({}, {"mounts": list_of(map_of(anything))})
VOLUME_META_SHAPE = record({"labels": map_of(string)}, {"name": string, "driver": string})


class Names:
    """`names.json`: name -> key for the containers whose name is not their key (renamed
    ones). Written atomically; writers hold the driver lock (`_lock`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """The map; DamagedState when the file is not one (renamed containers could not be
        told apart from their keys, so it is not guessed)."""
        doc: dict[str, str] | None = read_json(self.path, NAMES_SHAPE)
        return dict(doc or {})

    def save(self, names: Mapping[str, str]) -> None:
        atomic_write(self.path, json.dumps(dict(sorted(names.items())), indent=1))

    @staticmethod
    def key_of(names: Mapping[str, str], name: str) -> str | None:
        """The key a name is kept under; None when its own key belongs to another name."""
        if name in names:
            return names[name]
        return None if name in names.values() else name

    @staticmethod
    def name_of(names: Mapping[str, str], key: str) -> str:
        return next((n for n, k in names.items() if k == key), key)


def _key_offset(key: str) -> int:
    """The byte of driver.lock that stands for a container key (see _key_lock)."""
    return 1 + int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % (1 << 30)


def _flock_struct(kind: int, offset: int) -> bytes:
    """Linux's struct flock (l_type, l_whence, l_start, l_len, l_pid = 0, as OFD locks
    require) for one byte at `offset`."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, offset, 1, 0)


class NativeRuntime:
    """The daemonless runtime: runc containers, overlayfs images, bridge networks."""

    name = "native"

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(state_root(root))
        # 0700, and tightened to it if an older version made it 0755: nothing in the root
        # (layers, specs with environments, secrets, logs) is for other local users
        private_dir(self.root)
        self.root = self.root.resolve()
        self.image_store = ImageStore(str(self.root))
        self.containers = ContainerManager(self.root)
        self.networks = NetworkManager(self.root)
        self.volumes_dir = self.root / "volumes"
        self.names = Names(self.root / "names.json")
        # a container joining another's namespaces finds it by name at each start
        self.containers.key_of = lambda name: Names.key_of(self.names.load(), name)
        self._closed = threading.Event()
        # (when, network name -> faults, container key -> faults): the last kernel look
        self._view: tuple[float, dict[str, list[str]], dict[str, list[str]]] | None = None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The root's lock, for the short read-modify-writes of names.json. Taken after a
        container's lock (`_key_lock`), never before one."""
        self._view = None  # what follows changes the kernel: the next look is a new one
        fd = open_private(self.root / "driver.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _key_lock(self, *keys: str) -> Iterator[None]:
        """Serialise what changes one container -- its create, the repair or plumbing before
        a start, its removal, a rename -- between threads and processes sharing the root: a
        create that fails rolls back, and must not roll back what another made, and a
        removal must not race a restart. One lock per container, so that work on different
        containers overlaps (a converge's creates run in parallel): an open-file-description
        lock on one byte of driver.lock chosen by the key's hash (two keys that share a
        byte only wait for each other), released when the descriptor closes, a killed
        process's included. Several keys are locked in one order, so two holders never wait
        for each other."""
        self._view = None
        fd = open_private(self.root / "driver.lock")
        try:
            for offset in sorted({_key_offset(k) for k in keys}):
                fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock_struct(fcntl.F_WRLCK, offset))
            yield
        finally:
            os.close(fd)  # releases the locks

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

    @translated
    def build_image(
        self, config: BuildConfig, progress: BuildProgress | None = None
    ) -> BuildResult:
        """Build with the native builder (runtime/native/build): RUN steps in containers of
        this root, layers into its image store."""
        from pyapply.runtime.native.build import build

        return build(self.image_store, self.containers, self.root, config, progress)

    def push_image(self, ref: str, progress: PushProgress | None = None) -> PushResult:
        from pyapply.runtime.native.push import push

        try:
            return push(self.image_store, ref, progress)
        except OSError as e:  # the store's files (the registry's errors are translated)
            raise PermanentError(f"push {ref}: {e}") from e

    # -- networks ------------------------------------------------------------------------

    def create_network(self, config: NetworkConfig) -> None:
        self._view = None
        self.networks.create(config)

    def remove_network(self, name: str) -> None:
        self._view = None
        self.networks.remove(name)

    def _kernel_faults(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """(network -> faults, container key -> faults of its endpoints and ports), from
        one kernel look, reused for VIEW_TTL_S unless a change made through us came since."""
        now = time.monotonic()
        if self._view is None or now - self._view[0] > VIEW_TTL_S:
            by_network, by_container = self.networks.faults(self.networks.kernel_view())
            self._view = (now, by_network, by_container)
        return self._view[1], self._view[2]

    def _named(self, net: NetworkState, names: Mapping[str, str]) -> NetworkState:
        """A network's members by container name (the manager keeps them by key)."""
        members = tuple(sorted(Names.name_of(names, key) for key in net.containers))
        return (
            net if members == net.containers else msgspec.structs.replace(net, containers=members)
        )

    def get_network(self, name: str) -> NetworkState | None:
        net = self.networks.get(name)
        return None if net is None else self._named(net, self.names.load())

    @translated
    def list_networks(self, labels: Mapping[str, str]) -> list[NetworkState]:
        names = self.names.load()
        with self.networks.one_look():
            found = [self._named(net, names) for net in self.networks.list(labels)]
            if not found:
                return found
            by_network, _ = self._kernel_faults()
        return [
            msgspec.structs.replace(n, faults=tuple(Fault(r) for r in by_network[n.name]))
            if n.name in by_network
            else n
            for n in found
        ]

    # -- volumes -------------------------------------------------------------------------

    def _volume_dir(self, name: str) -> Path:
        if not _VOLUME_NAME.match(name):
            raise PermanentError(f"invalid volume name: {name!r}")
        return self.volumes_dir / name

    def _volume_meta(self, name: str) -> dict[str, Any] | None:
        """A volume's metadata; None when it has none or it is damaged: the volume then
        shows as missing, and the next create writes its metadata again, keeping the data
        (nothing but its labels is kept there)."""
        try:
            doc: dict[str, Any] | None = read_json(
                self._volume_dir(name) / "meta.json", VOLUME_META_SHAPE
            )
        except DamagedState:
            return None
        return doc

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
                self._volume_data_dir(vdir)
                return
            raise Conflict(f"volume name {config.name} is in use with other labels")
        self._volume_data_dir(vdir)
        doc = {
            "name": config.name,
            "driver": "local",
            "labels": dict(config.labels),
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        # meta.json last: a volume exists once its metadata does
        atomic_write(vdir / "meta.json", json.dumps(doc, indent=1, sort_keys=True))

    def _volume_data_dir(self, vdir: Path) -> None:
        # volumes/ and volumes/<name> 0700 (what containers write there, device nodes
        # included, is not for the host's users); _data 0755, the mode of the mount point
        # the container sees, as dockerd makes it
        private_dir(self.volumes_dir)
        private_dir(vdir)
        (vdir / "_data").mkdir(mode=0o755, exist_ok=True)

    def _volume_users(self, data_dir: Path) -> list[str]:
        """Containers whose OCI spec bind-mounts `data_dir`."""
        users: list[str] = []
        cdirs = self.containers.containers_dir
        if not cdirs.is_dir():
            return users
        for cdir in sorted(cdirs.iterdir()):
            try:
                spec = read_json(cdir / "config.json", SPEC_MOUNTS_SHAPE)
            except DamagedState:
                continue
            for m in (spec or {}).get("mounts") or ():
                if m.get("source") == str(data_dir):
                    users.append(Names.name_of(self.names.load(), cdir.name))
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
        rmtree(vdir)  # any depth: containers fill volumes

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

    def netns_name(self, key: str) -> str:
        return f"pyapply-{self.networks.tag}-{key}"

    def netns_path(self, key: str) -> str:
        return str(NETNS_DIR / self.netns_name(key))

    def key(self, name: str) -> str | None:
        """The key of an existing container named `name` (None: no such container)."""
        key = Names.key_of(self.names.load(), name)
        # its dir, not its state.json: a damaged container still exists (to be removed)
        if key is None or not self.containers.dir(key).is_dir():
            return None
        return key

    def _must_key(self, name: str) -> str:
        key = self.key(name)
        if key is None:
            raise NotFound(f"no such container: {name}")
        return key

    def _make_netns(self, key: str) -> str:
        name = self.netns_name(key)
        path = self.netns_path(key)
        if os.path.exists(path):  # left over by an interrupted create or remove
            netns_remove(name)
        netns_create(name)  # its loopback up
        return path

    def _drop_netns(self, key: str) -> None:
        if os.path.exists(self.netns_path(key)):
            with contextlib.suppress(FileNotFoundError):
                netns_remove(self.netns_name(key))

    def _resolve_mounts(
        self, config: ContainerConfig, key: str
    ) -> tuple[list[MountConfig], list[Path]]:
        """config.mounts with volume sources as host paths; and the anonymous volume dirs
        to make (under the container's dir, once it exists)."""
        out: list[MountConfig] = []
        anon: list[Path] = []
        cdir = self.containers.dir(key)
        for m in config.mounts:
            if m.type == "bind" and not os.path.lexists(m.source):
                if not m.create_host_path:
                    raise PermanentError(
                        f"container {config.name}: bind source {m.source} does not exist "
                        "(bind.create_host_path: true makes it)"
                    )
                os.makedirs(m.source, mode=0o755, exist_ok=True)  # as compose makes it
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
            out.append(msgspec.structs.replace(m, type="bind", source=str(src)))
        return out, anon

    def _attached_networks(self) -> dict[str, tuple[str, ...]]:
        """Container key -> the networks it has an endpoint on (sorted)."""
        by_container: dict[str, list[str]] = {}
        for net in self.networks.list():
            for c in net.containers:
                by_container.setdefault(c, []).append(net.name)
        return {c: tuple(sorted(nets)) for c, nets in by_container.items()}

    def _observed(
        self,
        state: ContainerState,
        attached: Mapping[str, tuple[str, ...]],
        names: Mapping[str, str],
    ) -> ContainerState:
        """A state as the manager sees it (under its key) as the caller sees it: by name,
        with the networks it really has an endpoint on (one disconnected by hand, or never
        attached because a create was killed, is not there)."""
        nets = attached.get(state.name, ())
        if nets != state.networks:
            state = msgspec.structs.replace(state, networks=nets)
        name = Names.name_of(names, state.name)
        return state if name == state.name else msgspec.structs.replace(state, name=name)

    def _hostname(self, config: ContainerConfig, cid: str) -> str:
        return config.hostname or cid[:12]

    # -- containers ----------------------------------------------------------------------

    @translated
    def create_container(self, config: ContainerConfig) -> str:
        """Create under the container's own lock: creates of different containers overlap."""
        for _ in range(5):
            key = Names.key_of(self.names.load(), config.name)
            fresh = key is None
            if key is None:  # the name's own key is a renamed container's: take a fresh one
                key = f"{config.name[:120]}.{secrets.token_hex(3)}"
            with self._key_lock(key):
                if Names.key_of(self.names.load(), config.name) != (None if fresh else key):
                    continue  # renamed or removed before we held its lock: look again
                return self._create_container(config, key, fresh)
        raise TransientError(f"container {config.name}: its name changed while it was made")

    def _create_container(self, config: ContainerConfig, key: str, fresh: bool) -> str:
        existing = None if fresh else self.containers.state(key)
        if existing is not None and existing.status == "dead":
            self._teardown(config.name, key)  # a create killed half-way: start over
            existing = None
            fresh = key != config.name  # the teardown forgot the name's key
        if existing is not None:
            if dict(existing.labels) == dict(config.labels):
                return existing.id
            raise Conflict(f"container name {config.name} is in use by another container")
        self.containers.check_host(config)
        shared = self._shared_network(config)
        record = self.image_store.resolve(config.image)
        if record is None:
            raise NotFound(f"image {config.image} not found; pull it first")
        if fresh:
            with self._lock():
                names = self.names.load()
                if Names.key_of(names, config.name) not in (None, key):
                    raise Conflict(f"container name {config.name} was taken meanwhile")
                names[config.name] = key
                self.names.save(names)
        layer_dirs = self.image_store.layer_dirs(record)
        mounts, anon = self._resolve_mounts(config, key)
        # no healthcheck of its own (None, as opposed to a disabled one): the image's, as
        # dockerd does
        health = config.health or image_health(record.config.healthcheck)
        joins: dict[str, str] = {}
        for kind, mode in (("pid", config.pid_mode), ("ipc", config.ipc_mode)):
            if mode is not None and mode.startswith("container:"):
                other = mode.removeprefix("container:")
                if self.key(other) is None:
                    raise PermanentError(
                        f"container {config.name}: {kind} joins container {other}, which "
                        "does not exist"
                    )
                joins[kind] = other
        nspath = self._make_netns(key) if shared is None else shared.netns_path
        try:
            cid = self.containers.create(
                msgspec.structs.replace(config, name=key, health=health),
                layer_dirs,
                record.config.to_json(),
                image_id=record.id,
                mounts=mounts,
                netns_path=nspath,
                pending=True,
                joins=joins,
                shared=shared,
            )
            for d in anon:
                d.mkdir(parents=True, exist_ok=True)
            if shared is not None or nspath is None:  # no namespace, endpoints, hosts file
                self.containers.settle(key)
                return cid
            hosts = str(self.containers.dir(key) / "hosts")
            hostname = self._hostname(config, cid)
            extra = [entry.partition(":")[::2] for entry in config.extra_hosts]
            resolver = {
                "servers": config.dns,
                "search": config.dns_search,
                "options": config.dns_opt,
            }
            if not config.networks:
                self.networks.set_hosts_file(key, hosts, hostname, extra, resolver)
            ips: list[str] = []
            if config.networks or config.ports:
                # every network and port of the container in one transaction of the network
                # state, which registers the hosts file whole (ports with no network: refused)
                attachments = [
                    Attachment(
                        att.network,
                        tuple(dict.fromkeys((*att.aliases, config.name))),
                        att.ipv4_address,
                    )
                    for att in config.networks
                ]
                ips, _ports = self.networks.connect(
                    key,
                    nspath,
                    attachments,
                    config.ports,
                    hosts_path=hosts,
                    hostname=hostname,
                    extra=extra,
                    resolver=resolver,
                    # the DNS reload and its wait overlap the start, which settles them
                    defer_dns=True,
                )
            if config.mac_address is not None and ips:
                set_mac(nspath, ips[0], config.mac_address)
                self.containers.note_mac(key, ips[0], config.mac_address)
            # complete: a create killed before this point leaves a container that shows as
            # dead, which the next pass recreates
            self.containers.settle(key)
        except BaseException:
            with contextlib.suppress(Exception):
                self._teardown(config.name, key)
            raise
        return cid

    def _shared_network(self, config: ContainerConfig) -> SharedNetwork | None:
        """Where a container with a network_mode of host or container:NAME has its network:
        the host's, or NAME's namespace (that of the container NAME itself joins, if it
        does). None: a namespace of its own, plumbed to its networks."""
        mode = config.network_mode or ""
        if mode == "host":
            if config.ports:
                raise PermanentError(
                    f"container {config.name} uses the host's network: it cannot publish ports"
                )
            return SharedNetwork()
        if not mode.startswith("container:"):
            return None
        if config.ports or config.networks:
            raise PermanentError(
                f"container {config.name} joins the network of another container: it cannot "
                "publish ports or join networks"
            )
        peer = mode.removeprefix("container:")
        key = self.key(peer)
        doc = self.containers.peek(key) if key is not None else None
        if key is None or doc is None:
            raise NotFound(f"container {peer} (whose network {config.name} joins) not found")
        if doc.get("network_mode") == "host":
            return SharedNetwork()
        if doc.get("network_mode") == "container" and doc.get("joined"):
            key = str(doc["joined"])  # the namespace it joined itself
            doc = self.containers.peek(key)
            if doc is None:
                raise NotFound(f"the container whose network {peer} joined is gone")
        path = self.netns_path(key)
        if not os.path.exists(path):
            raise PermanentError(
                f"container {peer} has no network namespace to join (start it first)"
            )
        return SharedNetwork(key, str(doc.get("id") or ""), path)

    def _check_joined(self, name: str, key: str) -> None:
        """A container that joins another's namespace (by path) needs that one to be there:
        when it went with its container, this one has to be made anew."""
        doc = self.containers.peek(key) or {}
        path = doc.get("netns_path")
        if doc.get("network_mode") == "container" and path and not os.path.exists(path):
            raise PermanentError(
                f"container {name} joins the network namespace of another container, which "
                "is gone (that container was removed, or not started again since a reboot)"
            )

    def _own_netns(self, key: str) -> bool:
        """Whether the container has a network namespace of its own (not the host's or
        another container's)."""
        doc = self.containers.peek(key)
        return doc is None or not doc.get("network_mode")

    @translated
    def start_container(self, name: str) -> None:
        """Start; a running container is success, and what is missing of it (see `faults`)
        is repaired in place, as it is for one that ran before and is started again. A start
        on purpose: the restart policy's books begin anew. It returns once the networks' DNS
        server answers with the names its create added (`NetworkManager.settle`)."""
        try:
            self._start_container(name)
        except BaseException:
            with contextlib.suppress(Exception):  # the start's own failure is what counts
                self.networks.settle()
            raise
        self.networks.settle()

    def _start_container(self, name: str) -> None:
        key = self._must_key(name)
        cdir = self.containers.dir(key)
        started = self._started(cdir)
        own = self._own_netns(key)
        if started and not (cdir / "exit").exists() and conmon_pid(cdir) is not None:
            # running (as events judge it, from files: no runc call on every start)
            if own:
                with self._key_lock(key):
                    self._repair(key, read_pid(cdir / "pidfile"))
                    self._remac(key)
            # the restart books begin anew; the root's keeper (healthchecks, log rotation,
            # restart policies) runs while containers do
            self.containers.started_on_purpose(key)
            return
        if not own:
            self._check_joined(name, key)
        elif started or not os.path.exists(self.netns_path(key)):
            with self._key_lock(key):
                self._plumb(key, started)
        self._remac(key)
        self.containers.start(key)

    def start_by_policy(self, key: str, *, boot: bool = False) -> bool:
        """Start the container kept under `key` again if its restart policy says so (the
        keeper, after its wait; `system start` with `boot`), with its spec, networks and
        addresses as a start by `pyapply -f` has them. The policy is asked under the
        container's driver lock (`_key_lock`), before any plumbing (a removal holds that
        lock: a container being removed is gone by then, and nothing of it is made again),
        and once more under the container's own lock by the manager. Whether it was
        started. A container in another's network namespace (or the host's) has nothing of
        its own to plumb; one whose namespace went with its container is not started."""
        with self._key_lock(key):
            doc = self.containers.peek(key)
            if doc is None or self.containers.policy_delay(key, doc, boot=boot) is None:
                return False
            if self._own_netns(key):
                self._plumb(key, True)
                self._remac(key)
            else:
                self._check_joined(str(doc.get("name") or key), key)
        return self.containers.start_by_policy(key, boot=boot)

    def _plumb(self, key: str, started: bool) -> None:
        """Before a start of a container that is not running (under its `_key_lock`): its
        netns and endpoints, made anew when the namespace went (a reboot, by hand) with the
        addresses it had, or made sure of when it ran before (veths, bridges or rules may
        have gone since)."""
        if not os.path.exists(self.netns_path(key)):
            self._make_netns(key)
            self.networks.restore(key, self.netns_path(key))
        elif started:
            self.networks.repair(key, self.netns_path(key))

    def _remac(self, key: str) -> None:
        """Give the MAC a config asked for again to an interface remade since."""
        doc = self.containers.peek(key) or {}
        mac = doc.get("mac")
        if mac and os.path.exists(self.netns_path(key)):
            set_mac(self.netns_path(key), mac[0], mac[1])

    @staticmethod
    def _started(cdir: Path) -> bool:
        """Whether the container was ever started (a new one has nothing to repair)."""
        try:
            doc = json.loads((cdir / "state.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and bool(doc.get("started_at"))

    def _repair(self, key: str, pid: int | None) -> None:
        """Remake what is missing of a running container: its netns file (bound again to
        its process's namespace, where its interfaces still are), then its networking."""
        if pid is not None and self._netns_fault(key, pid):
            if os.path.lexists(self.netns_path(key)):
                with contextlib.suppress(FileNotFoundError):
                    netns_remove(self.netns_name(key))
            netns_attach(self.netns_name(key), pid)
        self.networks.repair(key, self.netns_path(key))

    @translated
    def stop_container(self, name: str, timeout_s: float | None = None) -> None:
        """Stop; a running container leaves its networks' name resolution first
        (`NetworkManager.withdraw`), so that no client is sent to it while it stops; its
        next start puts it back (`_plumb`, `_repair`)."""
        key = self._must_key(name)
        self._withdraw(key)
        self.containers.stop(key, timeout_s)

    def _withdraw(self, key: str) -> None:
        cdir = self.containers.dir(key)
        if not (cdir / "exit").exists() and conmon_pid(cdir) is not None:
            self.networks.withdraw(key)

    @translated
    def remove_container(self, name: str) -> None:
        for _ in range(5):
            key = Names.key_of(self.names.load(), name)
            if key is None:  # its own key is another container's: nothing to do
                return
            with self._key_lock(key):
                if Names.key_of(self.names.load(), name) != key:
                    continue  # renamed meanwhile: look again
                self._teardown(name, key)
                return
        raise TransientError(f"container {name}: its name changed while it was removed")

    def _unfinished(self, key: str) -> bool:
        """A container dir with no state (a create or removal killed part-way; not one
        under way, whose lock is held)."""
        found = self.containers.state(key)
        return found is not None and found.status == "dead" and not found.id

    def _teardown(self, name: str, key: str) -> None:
        """Take it out of name resolution, stop, unpublish, detach, forget the hosts file,
        remove, delete the netns, forget the name; each step is a no-op when already done,
        so an interrupted teardown can be run again."""
        self._withdraw(key)
        self.containers.stop(key, None)
        self.networks.unpublish(key)
        for net in self.networks.list():
            if key in net.containers:
                self.networks.detach(net.name, key)
        self.networks.set_hosts_file(key, None)
        # the netns before the container's dir: a teardown killed part-way leaves the
        # container listed (its state file goes last), so the next pass finishes it
        self._drop_netns(key)
        self.containers.remove(key)
        with self._lock():
            names = self.names.load()
            if names.get(name) == key:
                del names[name]
                self.names.save(names)

    @translated
    def rename_container(self, name: str, new_name: str) -> None:
        """Give a container another name: one write of names.json, plus the name other
        containers resolve it by."""
        key = self._must_key(name)
        if new_name == name:
            return
        taken = Names.key_of(self.names.load(), new_name)
        if taken not in (None, key) and self._unfinished(taken):
            # the name is held by a create or a removal killed before its state was written
            # or after it went: finish that, rather than leave a dir no name leads to
            self.remove_container(new_name)
        # the container's lock, and the one a create of `new_name` under its own name takes
        with self._key_lock(key, new_name), self._lock():
            names = self.names.load()
            if Names.key_of(names, name) != key:
                raise TransientError(f"container {name} was renamed or removed meanwhile")
            taken = Names.key_of(names, new_name)
            if taken is not None and (self.containers.dir(taken) / "state.json").exists():
                raise Conflict(f"cannot rename {name} to {new_name}: the name is in use")
            # the alias first: a rename killed in between leaves the old name, which the
            # next pass renames again (an alias already renamed is left as it is)
            self.networks.rename_alias(key, name, new_name)
            names.pop(name, None)
            names.pop(new_name, None)
            if new_name != key:
                names[new_name] = key
            self.names.save(names)

    @translated
    def connect_network(self, container: str, attachment: Attachment) -> None:
        key = self._must_key(container)
        hostname = None
        with contextlib.suppress(OSError, ValueError):
            hostname = (self.containers.dir(key) / "hostname").read_text().strip()
        self.networks.attach(
            attachment.network,
            key,
            self.netns_path(key),
            tuple(dict.fromkeys((*attachment.aliases, container))),
            attachment.ipv4_address,
            hosts_path=str(self.containers.dir(key) / "hosts"),
            hostname=hostname or None,
        )

    @translated
    def get_container(self, name: str) -> ContainerState | None:
        names = self.names.load()
        key = Names.key_of(names, name)
        state = self.containers.state(key) if key is not None else None
        if state is None:
            return None
        return self._observed(state, self._attached_networks(), names)

    @translated
    def list_containers(self, labels: Mapping[str, str]) -> list[ContainerState]:
        """The containers carrying `labels`; the running ones with their faults."""
        with self.containers.one_look(), self.networks.one_look():
            found = self.containers.list(labels)
            if not found:
                return found
            if any(s.status == "running" for s in found):
                found = self._with_faults(found)
            attached = self._attached_networks()
        names = self.names.load()
        return sorted((self._observed(s, attached, names) for s in found), key=lambda s: s.name)

    def _with_faults(self, states: list[ContainerState]) -> list[ContainerState]:
        """States (under their keys) with what is missing of the running ones."""
        _, by_container = self._kernel_faults()
        keeper_down = healthmod.checker_pid(self.root) is None
        out = []
        for st in states:
            faults: list[Fault] = []
            if st.status == "running":
                cdir = self.containers.dir(st.name)
                if conmon_pid(cdir) is None:
                    # its process runs unsupervised: nobody records its exit or keeps its log
                    faults.append(Fault("conmon not running", "restart"))
                if not st.started_at:
                    # a start killed after runc started it and before it was noted: its
                    # healthcheck is not probed until a start notes it (done in place)
                    faults.append(Fault("start not recorded"))
                problem = None
                if self._own_netns(st.name):
                    problem = self._netns_fault(st.name, read_pid(cdir / "pidfile"))
                if problem:
                    faults.append(Fault(problem))
                faults += [Fault(r) for r in by_container.get(st.name, ())]
                if keeper_down:
                    faults.append(Fault(KEEPER_DOWN))
            out.append(msgspec.structs.replace(st, faults=tuple(faults)) if faults else st)
        return out

    def _netns_fault(self, key: str, pid: int | None) -> str | None:
        """Whether a running container's netns file is there and still its namespace."""
        name = self.netns_name(key)
        try:
            have = os.stat(self.netns_path(key))
        except FileNotFoundError:
            return f"netns {name} missing"
        if pid is None:
            return None
        try:
            own = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            return None  # the process is gone: its status says so by the next look
        if (have.st_dev, have.st_ino) != (own.st_dev, own.st_ino):
            return f"netns {name} is not the container's namespace"
        return None

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        return self.containers.logs(self._must_key(name), follow=follow, tail=tail)

    @translated
    def exec(self, name: str, argv: Sequence[str], *, timeout: float | None = None) -> ExecResult:
        """Run a command in a running container (runc exec)."""
        return self.containers.exec(self._must_key(name), argv, timeout=timeout)

    @translated
    def exec_attached(
        self, name: str, argv: Sequence[str], *, stdin: bool = False, tty: bool = False
    ) -> int:
        """Run a command in a running container on this terminal (runc exec; a TTY through
        runc's console socket)."""
        return self.containers.exec_attached(self._must_key(name), argv, stdin=stdin, tty=tty)

    @translated
    def top(self, name: str) -> tuple[list[str], list[list[str]]]:
        return self.containers.top(self._must_key(name))

    def container_pid(self, name: str) -> int | None:
        """The host pid of the container's first process, if it runs."""
        return self.containers.container_pid(self._must_key(name))

    # -- events --------------------------------------------------------------------------

    def _liveness(self) -> dict[str, _Liveness]:
        """Container key -> what events are made of, from files only: running = started,
        no exit recorded, conmon alive."""
        out: dict[str, _Liveness] = {}
        cdirs = self.containers.containers_dir
        if not cdirs.is_dir():
            return out
        names: dict[str, str] = {}
        with contextlib.suppress(DamagedState):  # events are hints: the pass reports it
            names = self.names.load()
        for cdir in cdirs.iterdir():
            doc = self.containers.peek(cdir.name) if cdir.is_dir() else None
            if doc is None:
                continue
            try:
                exit_mtime = (cdir / "exit").stat().st_mtime
            except OSError:
                exit_mtime = 0.0
            running = (
                bool(doc.get("started_at")) and not exit_mtime and conmon_pid(cdir) is not None
            )
            out[cdir.name] = _Liveness(
                Names.name_of(names, cdir.name),
                str(doc.get("id", "")),
                running,
                exit_mtime,
                doc.get("labels") or {},
            )
        return out

    def events(self, labels: Mapping[str, str]) -> Iterator[Event]:
        """start / die / destroy events of containers carrying `labels`, found by looking at
        the state root every EVENT_POLL_S seconds and whenever a container's directory is
        made or removed, until close(). A container renamed and
        removed between two looks is reported under the name it had at the first."""
        self._closed.clear()
        # the first look now, not at the first next(): what happens after the call counts
        return self._poll_events(dict(labels), self._liveness())

    def _poll_events(self, labels: dict[str, str], before: dict[str, _Liveness]) -> Iterator[Event]:
        from pyapply.runtime.native.dirwatch import DirWatch

        # a container made, removed or renamed is looked at once; a start or an exit (files
        # inside its directory) at the next tick
        watch = DirWatch(self.containers.containers_dir, self._closed)
        try:
            yield from self._looks(labels, before, watch)
        finally:
            watch.close()

    def _looks(
        self, labels: dict[str, str], before: dict[str, _Liveness], watch: DirWatch
    ) -> Iterator[Event]:
        while True:
            watch.wait(EVENT_POLL_S)
            if self._closed.is_set():
                return
            now = self._liveness()
            for key in sorted(set(before) | set(now)):
                old, new = before.get(key), now.get(key)
                last = new or old
                assert last is not None
                if not _labels_match(last.labels, labels):
                    continue
                if old is not None and (new is None or new.id != old.id):
                    # gone, or removed and made again under the same name between two looks
                    yield Event("container", "destroy", old.name, old.labels)
                    old = None
                if new is None:
                    continue
                was_running = old is not None and old.running
                if new.running and not was_running:
                    yield Event("container", "start", new.name, new.labels)
                elif was_running and not new.running:
                    yield Event("container", "die", new.name, new.labels)
                elif old is not None and new.exit_mtime and new.exit_mtime != old.exit_mtime:
                    yield Event("container", "die", new.name, new.labels)  # ran and died between
            before = now

    def close(self) -> None:
        self._closed.set()
