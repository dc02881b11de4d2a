"""Native containers: an overlay rootfs, an OCI bundle, runc under conmon, a health loop.

State lives under `<root>/containers/<name>/`:

    config.json   the OCI spec (oci.build_spec)          state.json  ours, written atomically
    rootfs/       the overlay mount                      upper/ work/  the overlay's rw part
    hosts hostname resolv.conf   bind-mounted into /etc  ctr.log     stdout/stderr (k8s-file),
                                                         ctr.log.N   rotated by the keeper
    exit          exit code, written by conmon (mtime = finish time)
    health.json   health status, written by the root's health checker (health.py)

The observed state is rebuilt from those files, runc's state and the kernel every time, so a
container whose process died while nobody watched shows as exited with its code. runc's own
state is kept in `<root>/runc`. A stopped container is started again by `runc delete` and a
fresh create+start on the same bundle and overlay, so its rootfs changes survive.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import resource
import secrets
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec

from pyapply.runtime import restarts
from pyapply.runtime.base import (
    Conflict,
    ContainerConfig,
    ContainerState,
    ContainerStatus,
    DeviceMapping,
    ExecHook,
    Health,
    MountConfig,
    NotFound,
    PermanentError,
    PortBinding,
)
from pyapply.runtime.native import health as healthmod
from pyapply.runtime.native import oci, root_tag, rootfs
from pyapply.runtime.native.container_state import (
    LABELS_ANNOTATION,
    REMOVED_PREFIX,
    SPEC_SHAPE,
    STATE_SHAPE,
    epoch,
    restart_delay,
    restart_policy,
    restart_record,
)
from pyapply.runtime.native.hostbins import INIT
from pyapply.runtime.native.statefile import DamagedState, read_json
from pyapply.runtime.native.supervise import (
    DEFAULT_CONMON,
    DEFAULT_LOG_FILES,
    DEFAULT_LOG_SIZE_MAX,
    DEFAULT_RUNC,
    LOG_FILE,
    ExecResult,
    Supervisor,
    conmon_pid,
    pid_alive,
    read_exit,
    read_log,
    utc_iso,
    wait_exit,
)
from pyapply.runtime.statefs import (
    atomic_write,
    dirs_bottom_up,
    private_dir,
    rmtree,
    state_root,
)

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
CGROUP_PARENT = "/pyapply"
CGROUP_FS = Path("/sys/fs/cgroup")
DEFAULT_STOP_TIMEOUT = 10.0
HOOK_TIMEOUT = 60.0  # seconds a post_start hook may take (pre_stop: the stop timeout, or this)
UNKNOWN_EXIT = 255  # the process died with no supervisor to record its code

_RLIMIT_NAMES = {
    n.removeprefix("RLIMIT_").lower(): getattr(resource, n)
    for n in dir(resource)
    if n.startswith("RLIMIT_")
}


def host_rlimits() -> dict[str, tuple[int, int]]:
    """This process's rlimits (what runc, our child, may grant), by lower-case short name."""
    return {name: resource.getrlimit(num) for name, num in _RLIMIT_NAMES.items()}


def hosts_text(hostname: str, entries: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in entries]
    if not any(hostname in names for _, names in entries):
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def host_nameservers() -> list[str]:
    """The host's resolv.conf nameservers minus loopback ones (unreachable from a netns),
    else Google's, as Docker does."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                ip = parts[1]
                if not ip.startswith("127.") and ip != "::1":
                    found.append(ip)
    return found or ["8.8.8.8", "8.8.4.4"]


def resolv_text(
    nameservers: Sequence[str], search: Sequence[str] = (), options: Sequence[str] = ()
) -> str:
    lines = [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


class SharedNetwork(msgspec.Struct, frozen=True):
    """A container without a network namespace of its own: the host's (`key` None), or the
    one of the container kept under `key` (whose id is `id`), whose /etc/hosts, hostname
    and resolv.conf it shares, as Docker's `container:NAME` does."""

    key: str | None = None
    id: str | None = None
    netns_path: str | None = None


def host_etc(extra: Sequence[str]) -> tuple[str, str]:
    """/etc/hosts (with `extra` "host:ip" lines, host-gateway being the host itself) and
    /etc/resolv.conf of a container in the host's network namespace: the host's own."""
    texts = []
    for path in ("/etc/hosts", "/etc/resolv.conf"):
        try:
            texts.append(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            texts.append("")
    hosts, resolv = texts
    if not hosts.strip():
        hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if not hosts.endswith("\n"):
        hosts += "\n"
    for entry in extra:
        name, _, ip = entry.partition(":")
        hosts += f"{'127.0.0.1' if ip == 'host-gateway' else ip}\t{name}\n"
    if not resolv.strip():
        resolv = resolv_text(host_nameservers())
    return hosts, resolv


def _read_in_rootfs(root: Path, rel: str) -> str:
    """A file of the container's rootfs, refusing symlinks (which would resolve on the host)."""
    path = root
    for part in rel.strip("/").split("/"):
        path = path / part
        if path.is_symlink():
            return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def live_memory_limit(cgroup: str) -> int | None:
    """The memory limit the kernel enforces on a container (its cgroup path) now (None:
    unlimited), so a limit changed behind our back shows up; v1 memory controller, else v2."""
    rel = cgroup.strip("/")
    for path in (
        CGROUP_FS / "memory" / rel / "memory.limit_in_bytes",
        CGROUP_FS / rel / "memory.max",
        CGROUP_FS / "unified" / rel / "memory.max",
    ):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if not text.isdigit() or int(text) >= 2**62:  # "max" or v1's "unlimited"
            return None
        return int(text)
    return None


# What of the host's /dev a privileged container does not get as device nodes: its own
# devpts, shm and mqueue are mounted there instead.
_NOT_DEVICES = ("pts", "shm", "mqueue")
_APPARMOR = Path("/sys/module/apparmor/parameters/enabled")


def _device(path: str, target: str, access: str) -> oci.HostDevice | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return oci.HostDevice(
        path=target,
        kind=kind,
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        access=access,
    )


def host_devices(devices: Sequence[DeviceMapping]) -> tuple[oci.HostDevice, ...]:
    """The config's devices as nodes: a directory (/dev/snd) gives every device below it,
    at the same place below the target; a path that is no device is an error."""
    out: list[oci.HostDevice] = []
    for d in devices:
        if os.path.isdir(d.source):
            for top, _, files in os.walk(d.source):
                for f in sorted(files):
                    path = os.path.join(top, f)
                    rel = os.path.relpath(path, d.source)
                    node = _device(path, os.path.join(d.target, rel), d.permissions)
                    if node is not None:
                        out.append(node)
            continue
        node = _device(d.source, d.target, d.permissions)
        if node is None:
            raise PermanentError(f"device {d.source} is not a device on this host")
        out.append(node)
    return tuple(out)


def all_host_devices() -> tuple[oci.HostDevice, ...]:
    """Every device node of the host's /dev, for a privileged container (as Docker gives)."""
    out: list[oci.HostDevice] = []
    for top, dirs, files in os.walk("/dev"):
        if top == "/dev":
            dirs[:] = [d for d in dirs if d not in _NOT_DEVICES]
        for f in sorted(files):
            node = _device(os.path.join(top, f), os.path.join(top, f), "rwm")
            if node is not None:
                out.append(node)
    return tuple(out)


def apparmor_enabled() -> bool:
    try:
        return _APPARMOR.read_text().strip() == "Y"
    except OSError:
        return False


def _hook_user(user: str | None, passwd: str, group: str) -> str | None:
    """A hook's user as runc exec takes it ("uid:gid"), looked up in the image."""
    if user is None:
        return None
    got = oci.resolve_user(user, passwd, group)
    return f"{got.uid}:{got.gid}"


def _labels_match(have: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    """{key: value} all present (value "" = has the key)."""
    return all(k in have and (not v or have[k] == v) for k, v in (wanted or {}).items())


def _proc_row(pid: int) -> list[str] | None:
    """UID, PID, PPID and command line of a host process, None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = fields.get("Uid", "?").split()[0] if fields.get("Uid") else "?"
    ppid = fields.get("PPid", "?").strip()
    cmd = " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    if not cmd:  # a kernel thread or a zombie: its name in brackets, as ps shows it
        cmd = f"[{fields.get('Name', '?').strip()}]"
    return [uid, str(pid), ppid, cmd]


def kill_cgroup(dirs: Sequence[Path]) -> None:
    """SIGKILL every process in these cgroups (and their sub-cgroups), then wait (bounded)
    until they are gone."""
    pids: set[int] = set()
    for d in dirs:
        for sub in [str(d), *dirs_bottom_up(d)]:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in Path(sub, "cgroup.procs").read_text().split())
    pids.discard(os.getpid())
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _health_dict(config: ContainerConfig) -> dict[str, Any] | None:
    if config.health is None or healthmod.probe_argv(config.health.test) is None:
        return None
    return msgspec.structs.asdict(config.health)


def _keep_record(doc: dict[str, Any], record: restarts.Record) -> bool:
    """Put `record` into the state; whether that changed it (a container with no policy
    keeps no books, so a stop of one costs no write)."""
    policy = restart_policy(doc)
    if policy.name == "no" or record == restart_record(doc):
        return False
    doc["restart"] = {
        "policy": policy.name,
        "max_retries": policy.max_retries,
        "count": record.count,
        "delay_s": record.delay_s,
        "stopped": record.stopped,
    }
    return True


class ContainerManager:
    """Create/start/stop/remove/observe containers under one state root."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        runc: str = DEFAULT_RUNC,
        conmon: str = DEFAULT_CONMON,
        log_size_max: int = DEFAULT_LOG_SIZE_MAX,
        log_files: int = DEFAULT_LOG_FILES,
        init_path: str | None = None,
    ) -> None:
        self.root = Path(state_root(root))
        self.containers_dir = self.root / "containers"
        self.runc_root = self.root / "runc"
        self.supervisor = Supervisor(self.runc_root, runc=runc, conmon=conmon)
        # the log is rotated at log_size_max, keeping log_files files (by the root's keeper)
        self.log_size_max = log_size_max
        self.log_files = log_files
        self.init_path = init_path or INIT.find()
        # a container's runtime name -> its key here (the driver's names; by default the same)
        self.key_of: Callable[[str], str | None] = lambda name: name
        # /pyapply/<root tag>/<container>: two roots may hold containers of the same name
        self.cgroup_parent = f"{CGROUP_PARENT}/{root_tag(self.root.resolve())}"
        self._looking = threading.local()  # `one_look`'s states, for its thread only

    @contextlib.contextmanager
    def one_look(self) -> Iterator[None]:
        """Within the block, this thread reads each container's state file once: a listing
        and the checks that follow it (cgroup, network mode) see one state, not the file
        parsed and validated again by each. Other threads, and code after the block, read
        the file afresh."""
        if getattr(self._looking, "docs", None) is not None:
            yield  # nested: the outer look holds
            return
        self._looking.docs = {}
        try:
            yield
        finally:
            self._looking.docs = None

    def check_host(self, config: ContainerConfig) -> None:
        """Raise a permanent error naming the missing program and its package when this
        host cannot run `config`; called before anything of the container is made."""
        self.supervisor.check_installed()
        if config.runtime not in (None, "runc"):
            raise PermanentError(
                f"container {config.name}: runtime {config.runtime!r} is not available: the "
                "native runtime runs runc only"
            )
        if config.init and self.init_path is None:
            raise PermanentError(f"container {config.name}: {INIT.missing()}")

    # -- paths and records ---------------------------------------------------------------

    def dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise PermanentError(f"invalid container name: {name!r}")
        return self.containers_dir / name

    def _load(self, name: str) -> dict[str, Any] | None:
        """The container's state; None when there is no such container; DamagedState when
        its directory exists but its state.json is missing or not what we wrote (then its
        processes may still run: see _kill_leftovers)."""
        docs: dict[str, dict[str, Any] | None] | None = getattr(self._looking, "docs", None)
        if docs is not None and name in docs:
            return docs[name]
        cdir = self.dir(name)
        path = cdir / "state.json"
        doc: dict[str, Any] | None = read_json(path, STATE_SHAPE)
        if doc is None and cdir.is_dir() and not self._creating(cdir):
            raise DamagedState(path, "missing")
        if docs is not None:
            docs[name] = doc
        return doc

    def peek(self, name: str) -> dict[str, Any] | None:
        """The container's state, or None when there is none or it is damaged (for the
        readers that only look: events, the keeper)."""
        if not _NAME.match(name):
            return None
        try:
            return self._load(name)
        except DamagedState:
            return None

    def _creating(self, cdir: Path) -> bool:
        """Whether `cdir` (with no state.json) may be a container being made, not a damaged
        one: a create holds the containers dir's lock while it claims the name, then the
        container dir's own until its state.json is written (see `create`)."""
        return _lock_held(self.containers_dir) or _lock_held(cdir)

    def _must_load(self, name: str) -> dict[str, Any]:
        doc = self._load(name)
        if doc is None:
            raise NotFound(f"no such container: {name}")
        return doc

    def _save(self, name: str, doc: Mapping[str, Any], *, sync_dir: bool = True) -> None:
        atomic_write(
            self.dir(name) / "state.json",
            json.dumps(doc, indent=1, sort_keys=True),
            sync_dir=sync_dir,
        )

    # -- create --------------------------------------------------------------------------

    def create(
        self,
        config: ContainerConfig,
        layer_dirs: Sequence[str | Path],
        image_config: oci.ImageConfig | Mapping[str, Any] | None = None,
        *,
        image_id: str = "",
        mounts: Sequence[MountConfig] | None = None,
        netns_path: str | None = None,
        pending: bool = False,
        joins: Mapping[str, str] | None = None,
        shared: SharedNetwork | None = None,
    ) -> str:
        """Make the bundle (not started); returns the id. `layer_dirs` are the image's
        unpacked layers, base first. `mounts` are config.mounts with volume sources resolved
        to host paths (default: config.mounts, which then may hold binds and tmpfs only).
        `netns_path` joins an existing network namespace; None gives a new, empty one;
        `shared` says the namespace is not the container's own (the host's, another's).
        `pending`: the caller has more to do (networks, ports) and calls settle() when done;
        until then the container shows as dead. `joins`: "pid"/"ipc" -> the container (by
        its runtime name, found by `key_of` at each start) whose namespace this one joins
        (config.pid_mode "container:...")."""
        # The containers dir's lock is held only while the name is claimed (its dir looked
        # at, a leftover of it destroyed, the dir made and locked); the rest, the overlay
        # mount and the files, runs under the container dir's lock alone, so that the
        # parallel creates of a converge overlap. The dir's lock is the one start, stop and
        # removal take (`_lock`): none of them acts on a container half made.
        private_dir(self.containers_dir)
        fd = os.open(self.containers_dir, os.O_RDONLY | os.O_DIRECTORY)
        held: int | None = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            claimed = self._claim(config)
            if isinstance(claimed, str):
                return claimed
            held = claimed
            fcntl.flock(fd, fcntl.LOCK_UN)
            return self._create(
                config,
                layer_dirs,
                image_config,
                image_id,
                mounts,
                netns_path,
                pending,
                joins,
                shared,
            )
        finally:
            os.close(fd)
            if held is not None:
                os.close(held)

    def _claim(self, config: ContainerConfig) -> str | int:
        """Under the containers dir's lock: the id of the container of that name if it is
        this one (same labels; Conflict if not), else its new dir, made (0700) and locked:
        the descriptor holding the lock."""
        cdir = self.dir(config.name)
        try:
            prior = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            prior = None
        try:
            if prior is not None:
                # a create of this name under way (or its start, stop, removal) ends first:
                # its dir is then a container, or a leftover to destroy, or gone
                fcntl.flock(prior, fcntl.LOCK_EX)
            try:
                existing = self._load(config.name)
            except DamagedState:
                existing = None  # what is left of it (processes included) goes below
            if existing is not None:
                if dict(existing.get("labels") or {}) == dict(config.labels):
                    return str(existing["id"])
                raise Conflict(f"container name {config.name} is in use by another container")
            if cdir.exists():  # an interrupted create or a damaged state: start over
                self._destroy_dir(cdir)
            else:  # its directory deleted by hand: what ran of it may still be in its cgroup
                kill_cgroup(self.cgroup_dirs(config.name))
        finally:
            if prior is not None:
                os.close(prior)
        # 0700: config.json and state.json hold the environment, the rootfs and upper dir
        # whatever the image and the container put there (setuid binaries, device nodes)
        cdir.mkdir(mode=0o700)
        held = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(held, fcntl.LOCK_EX)
        return held

    def _create(
        self,
        config: ContainerConfig,
        layer_dirs: Sequence[str | Path],
        image_config: oci.ImageConfig | Mapping[str, Any] | None,
        image_id: str,
        mounts: Sequence[MountConfig] | None,
        netns_path: str | None,
        pending: bool,
        joins: Mapping[str, str] | None = None,
        shared: SharedNetwork | None = None,
    ) -> str:
        """The rest of `create`, in the claimed dir (see `_claim`)."""
        cdir = self.dir(config.name)
        image = (
            image_config
            if isinstance(image_config, oci.ImageConfig)
            else oci.ImageConfig.from_oci(image_config)
        )
        cid = secrets.token_hex(32)
        hostname = config.hostname or cid[:12]
        etc_dir = cdir
        if shared is not None and shared.key is None:
            hostname = config.hostname or socket.gethostname()  # the host's, as Docker's
        elif shared is not None and shared.key is not None:
            # the other container's files, rewritten in place as its networks change
            etc_dir = self.dir(shared.key)
            with contextlib.suppress(OSError):
                hostname = (etc_dir / "hostname").read_text().strip() or hostname
        try:
            self._write_etc(
                cdir,
                hostname,
                (),
                list(config.dns) or host_nameservers(),
                config.dns_search,
                config.dns_opt,
                # Kept as written only in a new namespace that runc makes (netns_path None).
                # In a namespace of its own (the driver's) the network layer takes the two
                # files over: it rewrites them (in place, not fsynced) now, whenever its
                # networks change, and when it plumbs the namespace anew after a reboot. With
                # the host's network they are replaced below; with another container's, its
                # files are used. So only the first case fsyncs them.
                durable=netns_path is None and shared is None,
            )
            if shared is not None and shared.key is None:
                hosts, resolv = host_etc(config.extra_hosts)
                atomic_write(cdir / "hosts", hosts, 0o644, sync_dir=False)
                atomic_write(cdir / "resolv.conf", resolv, 0o644, sync_dir=False)
            rootfs.mount_overlay(layer_dirs, cdir / "upper", cdir / "work", cdir / "rootfs")
            shm: str | None = None
            if config.ipc_mode == "shareable":
                shm = str(cdir / "shm")
                rootfs.mount_shm(shm, config.shm_size or 67108864)
            pid_ns, ipc_ns, shm_source = self._joined(dict(joins or {}), config.ipc_mode)
            spec = oci.build_spec(
                msgspec.structs.replace(config, hostname=hostname),
                oci.SpecInputs(
                    container_id=cid,
                    rootfs=str(cdir / "rootfs"),
                    etc_files=oci.EtcFiles(
                        hosts=str(etc_dir / "hosts"),
                        hostname=str(etc_dir / "hostname"),
                        resolv_conf=str(etc_dir / "resolv.conf"),
                    ),
                    image=image,
                    mounts=tuple(mounts) if mounts is not None else None,
                    netns_path=netns_path,
                    host_network=shared is not None and shared.key is None,
                    host_rlimits=host_rlimits(),
                    passwd=_read_in_rootfs(cdir / "rootfs", "etc/passwd"),
                    group=_read_in_rootfs(cdir / "rootfs", "etc/group"),
                    init_path=self.init_path if config.init else None,
                    cgroup_parent=self.cgroup_parent,
                    devices=host_devices(config.devices),
                    host_devices=all_host_devices() if config.privileged else (),
                    pid_ns_path=pid_ns,
                    ipc_ns_path=ipc_ns,
                    shm_source=shm or shm_source,
                    apparmor=apparmor_enabled(),
                    host_capabilities=(
                        oci.bounding_set(Path("/proc/self/status").read_text())
                        if config.privileged
                        else ()
                    ),
                ),
            )
            # runc reads it, no one else: compact JSON (the C encoder; indent takes the
            # pure-Python one). Its name is made durable by state.json's write below.
            atomic_write(cdir / "config.json", json.dumps(spec), sync_dir=False)
            env = oci.merge_env(image.env, config.env)
            policy = restarts.Policy.parse(config.restart_policy, config.restart_max_retries)
            if not any(e.startswith("PATH=") for e in env):
                env.insert(0, f"PATH={oci.DEFAULT_PATH}")
            doc: dict[str, Any] = {
                "id": cid,
                "name": config.name,
                "image": config.image,
                "image_id": image_id,
                "labels": dict(config.labels),
                "env": env,
                "hostname": hostname,
                "created_at": utc_iso(),
                "started_at": None,
                "finished_at": None,
                "exit_code": None,
                "stop_signal": config.stop_signal or image.stop_signal or "SIGTERM",
                "stop_timeout_s": config.stop_timeout_s,
                "health": _health_dict(config),
                "memory_bytes": config.memory_bytes,
                "ports": [msgspec.structs.asdict(p) for p in config.ports],
                "networks": sorted(a.network for a in config.networks),
                "layer_dirs": [str(Path(d).resolve()) for d in layer_dirs],
                "netns_path": netns_path,
                "network_mode": (
                    None if shared is None else "host" if shared.key is None else "container"
                ),
                "joined": shared.key if shared is not None else None,
                "joined_id": shared.id if shared is not None else None,
                "expose": list(config.expose),
                "runc_root": str(self.runc_root),
                "runc": self.supervisor.runc,
                "pending": pending,
                "log": {
                    "max_size": config.log_max_size or self.log_size_max,
                    "files": config.log_max_files or self.log_files,
                },
                "cgroup_parent": config.cgroup_parent,
                "tty": config.tty,
                "stdin_open": config.stdin_open,
                "joins": dict(joins or {}),
                "shm": shm,
                "shm_size": config.shm_size,
                "post_start": [msgspec.structs.asdict(h) for h in config.post_start],
                "pre_stop": [msgspec.structs.asdict(h) for h in config.pre_stop],
                "restart": {"policy": policy.name, "max_retries": policy.max_retries},
            }
            self._save(config.name, doc)
        except BaseException:
            self._destroy_dir(cdir)
            raise
        return cid

    def _joined(
        self, joins: Mapping[str, str], ipc_mode: str | None
    ) -> tuple[str | None, str | None, str | None]:
        """(pid namespace, ipc namespace, /dev/shm source) of the containers this one
        joins, as they run now (a joined container started again has new namespaces)."""
        paths: dict[str, str] = {}
        keys: dict[str, str] = {}
        for kind, other in joins.items():
            # a name's key changes when a start-first update renames its new container
            keys[kind] = self.key_of(other) or other
            found = self.peek(keys[kind]) is not None
            pid = self.container_pid(keys[kind]) if found else None
            if pid is None:
                raise PermanentError(
                    f"cannot join the {kind} namespace of container {other}: it is not running"
                )
            paths[kind] = f"/proc/{pid}/ns/{kind}"
        shm = "/dev/shm" if ipc_mode == "host" else None
        if "ipc" in joins:
            doc = self.peek(keys["ipc"]) or {}
            shm = doc.get("shm")
            if not shm:
                raise PermanentError(
                    f"cannot join the IPC namespace of container {joins['ipc']}: it is not "
                    'shareable (give it "ipc: shareable")'
                )
        return paths.get("pid"), paths.get("ipc"), shm

    def _rejoin(self, cdir: Path, doc: Mapping[str, Any]) -> None:
        """Point the bundle's spec at the namespaces (and /dev/shm) of the containers it
        joins as they are now, before it runs again."""
        joins = dict(doc.get("joins") or {})
        if doc.get("shm"):
            # gone with a reboot: made again, of its size
            rootfs.mount_shm(str(doc["shm"]), int(doc.get("shm_size") or 67108864))
        if not joins:
            return
        spec = json.loads((cdir / "config.json").read_text())
        shm_mount = next(
            (m for m in spec.get("mounts", []) if m.get("destination") == "/dev/shm"), None
        )
        ipc_host = shm_mount is not None and shm_mount.get("source") == "/dev/shm"
        pid_ns, ipc_ns, shm = self._joined(joins, "host" if ipc_host else None)
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == "pid" and pid_ns:
                ns["path"] = pid_ns
            elif ns["type"] == "ipc" and ipc_ns:
                ns["path"] = ipc_ns
        if shm_mount is not None and shm:
            shm_mount["source"] = shm
        atomic_write(cdir / "config.json", json.dumps(spec))

    def _hooks(self, name: str, doc: Mapping[str, Any], which: str, timeout: float) -> None:
        """Run the post_start or pre_stop hooks in the running container, in order; a hook
        that fails is an error that names it."""
        hooks = [ExecHook(**{**h, "command": tuple(h["command"])}) for h in doc.get(which) or ()]
        if not hooks:
            return
        root = self.dir(name) / "rootfs"
        passwd = _read_in_rootfs(root, "etc/passwd")
        group = _read_in_rootfs(root, "etc/group")
        for h in hooks:
            result = self.supervisor.exec(
                str(doc["id"]),
                h.command,
                timeout=timeout,
                user=_hook_user(h.user, passwd, group),
                env=h.env,
                cwd=h.working_dir,
                # every capability the host has, as a privileged container gets
                caps=(
                    oci.bounding_set(Path("/proc/self/status").read_text()) or oci.ALL_CAPABILITIES
                )
                if h.privileged
                else (),
            )
            if result.exit_code != 0:
                what = "timed out" if result.timed_out else f"exited with {result.exit_code}"
                tail = result.output.decode(errors="replace").strip()[-300:]
                raise PermanentError(
                    f"container {name}: {which} hook {list(h.command)} {what}"
                    + (f": {tail}" if tail else "")
                )

    def note_mac(self, name: str, ip: str, mac: str) -> None:
        """Record the MAC a config gave the interface holding `ip`, to give it again when
        the container's networking is remade (after a reboot, or a repair)."""
        with self._lock(name):
            doc = self._must_load(name)
            doc["mac"] = [ip, mac]
            self._save(name, doc)

    def settle(self, name: str) -> None:
        """The caller finished what a pending create left to do. The new state's content is
        fsynced, its rename not (the directory's fsync): after a crash the name holds the
        new state or the old, pending one, which shows as dead and is made again, as a
        create cut short is. A start fsyncs both."""
        with self._lock(name):
            doc = self._must_load(name)
            if doc.get("pending"):
                doc["pending"] = False
                self._save(name, doc, sync_dir=False)

    def write_etc_files(
        self,
        name: str,
        *,
        hosts: Sequence[tuple[str, Sequence[str]]] = (),
        nameservers: Sequence[str] | None = None,
        search: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        """(Re)write the container's /etc/hosts and /etc/resolv.conf (for the network layer).
        The files are rewritten in place, since a rename would not reach the bind mount."""
        doc = self._must_load(name)
        cdir = self.dir(name)
        hostname = str(doc["hostname"])
        ns = list(nameservers) if nameservers is not None else host_nameservers()
        for fname, text in (
            ("hosts", hosts_text(hostname, hosts)),
            ("resolv.conf", resolv_text(ns, search, options)),
        ):
            with open(cdir / fname, "w", encoding="utf-8") as f:
                f.write(text)

    @staticmethod
    def _write_etc(
        cdir: Path,
        hostname: str,
        hosts: Sequence[tuple[str, Sequence[str]]],
        nameservers: Sequence[str],
        search: Sequence[str],
        options: Sequence[str],
        *,
        durable: bool,
    ) -> None:
        """The files bind-mounted at the container's /etc/hostname, hosts and resolv.conf;
        any user in the container reads them, the container's 0700 directory keeps the
        host's users out. Their names become durable with state.json's, written last into
        the same directory (one fsync of it for all). The hostname file is not fsynced: a
        start writes it again from the state when a crash left it empty (`_etc_hostname`);
        the other two are when `durable`."""
        atomic_write(cdir / "hostname", hostname + "\n", 0o644, durable=False)
        for name, text in (
            ("hosts", hosts_text(hostname, hosts)),
            ("resolv.conf", resolv_text(nameservers, search, options)),
        ):
            atomic_write(cdir / name, text, 0o644, durable=durable, sync_dir=False)

    @staticmethod
    def _etc_hostname(cdir: Path, doc: Mapping[str, Any]) -> None:
        """Write the hostname file again from the state when it is missing or empty (it is
        not fsynced when made, so a crash may leave it so)."""
        path = cdir / "hostname"
        with contextlib.suppress(OSError):
            if path.stat().st_size > 0:
                return
        atomic_write(path, f"{doc['hostname']}\n", 0o644)

    # -- start / stop --------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """An exclusive flock on the container's dir (between processes: CLI, agent, health
        loop); the holder re-checks that the container still exists."""
        cdir = self.dir(name)
        try:
            fd = os.open(cdir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def start(self, name: str) -> None:
        """Start on purpose (or again after an exit); running is success. The restart
        policy's books begin anew: no longer stopped on purpose, no restarts counted."""
        with self._lock(name):
            self._start(name, restarts.Record())

    def started_on_purpose(self, name: str) -> None:
        """A start on purpose of a running container (which keeps running): its restart
        books begin anew, and the root's keeper is made sure of."""
        with self._lock(name), contextlib.suppress(DamagedState):
            doc = self._load(name)
            if doc is not None and _keep_record(doc, restarts.Record()):
                self._save(name, doc)
        healthmod.ensure_checker(self.root, self.supervisor.runc)

    def policy_delay(
        self, name: str, doc: Mapping[str, Any], *, boot: bool = False
    ) -> float | None:
        """The wait before the restart policy starts the container again (None: it does
        not, or the container has not ended): runc and conmon's records, then the policy."""
        if doc.get("pending") or not doc.get("started_at"):
            return None
        cid = str(doc["id"])
        info = self.supervisor.runc_state(cid) if (self.runc_root / cid).exists() else None
        status, code, finished = self._status(self.dir(name), doc, info)
        if status != "exited":
            return None  # started meanwhile, or never ended
        return restart_delay(doc, code, epoch(finished), boot=boot)

    def start_by_policy(self, name: str, *, boot: bool = False) -> bool:
        """Start the container again if its restart policy says so now (the keeper, once
        the wait is over; `system start` with `boot`). Asked again here, under the
        container's lock, so that a stop or a start on purpose that came first wins.
        Whether it was started."""
        with self._lock(name):
            try:
                doc = self._load(name)
            except DamagedState:
                return False  # the next pass replaces it
            delay = None if doc is None else self.policy_delay(name, doc, boot=boot)
            if doc is None or delay is None:
                return False
            self._start(name, restarts.after_restart(restart_record(doc), delay, boot=boot))
            return True

    def _start(self, name: str, record: restarts.Record) -> None:
        doc = self._must_load(name)
        cdir = self.dir(name)
        cid = str(doc["id"])
        # runc keeps a dir per container in its root: no dir, nothing to ask runc about
        info = self.supervisor.runc_state(cid) if (self.runc_root / cid).exists() else None
        if info is not None:
            if info.get("status") in ("running", "paused") and read_exit(cdir) is None:
                changed = _keep_record(doc, record)
                if not doc.get("started_at"):  # a start killed before it noted itself
                    doc.update(started_at=utc_iso(), finished_at=None, exit_code=None)
                    changed = True
                if changed:
                    self._save(name, doc)
                healthmod.ensure_checker(self.root, self.supervisor.runc)
                return
            self.supervisor.delete(cid)  # a stopped run: runc starts anew from create
        rootfs.mount_overlay(doc["layer_dirs"], cdir / "upper", cdir / "work", cdir / "rootfs")
        self._etc_hostname(cdir, doc)
        self._rejoin(cdir, doc)
        if doc.get("health"):
            healthmod.reset(cdir)
        self.supervisor.launch(
            cid,
            name,
            cdir,
            terminal=bool(doc.get("tty")),
            stdin=bool(doc.get("stdin_open")),
        )
        doc.update(started_at=utc_iso(), finished_at=None, exit_code=None)
        _keep_record(doc, record)
        self._save(name, doc)
        # the root's keeper probes healthchecks, rotates logs and applies restart policies
        # while containers run
        healthmod.ensure_checker(self.root, self.supervisor.runc)
        self._hooks(name, doc, "post_start", HOOK_TIMEOUT)

    def stop(self, name: str, timeout: float | None = None) -> None:
        """Stop on purpose: stop_signal, then SIGKILL after the timeout (default: the
        config's, else 10 s); not running is success. No restart policy starts it again
        until it is started: that is noted (durably) before the signal, so the keeper,
        which sees the exit, also sees why."""
        with self._lock(name):
            with contextlib.suppress(DamagedState):
                doc = self._load(name)
                if doc is not None and _keep_record(
                    doc, msgspec.structs.replace(restart_record(doc), stopped=True)
                ):
                    self._save(name, doc)
            self._stop(name, timeout)

    def _stop(self, name: str, timeout: float | None) -> None:
        try:
            doc = self._load(name)
        except DamagedState:
            # no record of how to stop it gracefully: what still runs of it is killed
            self._kill_leftovers(self.dir(name), None)
            return
        if doc is None:
            return
        cdir = self.dir(name)
        cid = str(doc["id"])
        grace = timeout if timeout is not None else doc.get("stop_timeout_s")
        grace = DEFAULT_STOP_TIMEOUT if grace is None else float(grace)
        info = self.supervisor.runc_state(cid)
        status = info.get("status") if info else None
        if status in ("running", "paused", "created") and read_exit(cdir) is None:
            if status == "paused":
                self.supervisor.resume(cid)
            if status != "created" and timeout != 0:
                # a pre_stop hook that fails still lets the container stop (removal at
                # once, timeout 0, runs none)
                with contextlib.suppress(PermanentError):
                    self._hooks(name, doc, "pre_stop", max(grace, HOOK_TIMEOUT))
            sig = oci.signal_number(doc.get("stop_signal"))
            done = self.supervisor.kill(cid, sig) and self._wait_stopped(cdir, cid, grace)
            if not done:
                sig = int(signal.SIGKILL)
                self.supervisor.kill(cid, sig)
                self._wait_stopped(cdir, cid, 10)
            if read_exit(cdir) is None:
                # no supervisor was left to record it (conmon killed): record it ourselves
                atomic_write(cdir / "exit", str(128 + sig))
        self.supervisor.delete(cid)

    def _wait_stopped(self, cdir: Path, cid: str, timeout: float) -> bool:
        """Until conmon records the exit or, with no conmon, runc sees the process gone."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            if read_exit(cdir) is not None:
                return True
            if n % 10 == 0 and conmon_pid(cdir) is None:
                info = self.supervisor.runc_state(cid)
                if info is None or info.get("status") == "stopped":
                    return True
            if time.monotonic() >= deadline:
                return False
            n += 1
            time.sleep(0.02)

    # -- remove --------------------------------------------------------------------------

    def remove(self, name: str) -> None:
        """Stop if running, delete from runc, unmount, delete the dir and the cgroups; gone is
        success."""
        cdir = self.dir(name)
        with self._lock(name):
            if cdir.exists():
                self._stop(name, 0)  # a damaged or missing state: what runs of it is killed
                # state.json goes last, after the cgroups: a removal killed part-way leaves
                # a container that is still listed, so the next pass removes it again; never
                # an unlisted directory still naming a volume, or a cgroup nobody owns
                self._destroy_dir(cdir, keep="state.json")
                self._remove_cgroups(name)
                # then the dir leaves in one rename, state.json in it: killed before, it is
                # still listed; after, it is rubbish no one lists (swept below, here or by
                # the next removal). Deleted in place, a kill before its last file went
                # would leave a container with neither state nor labels, which no pass sees
                gone = self.containers_dir / f"{REMOVED_PREFIX}{name}.{secrets.token_hex(4)}"
                os.rename(cdir, gone)
                # the keeper may still land a health result it checked for before the
                # rename (never after: it writes only for a listed, running container)
                _delete_settled(gone)
        self._remove_cgroups(name)
        self._sweep_removed()
        with contextlib.suppress(OSError):
            if not any(self.containers_dir.iterdir()):  # the root's last container
                self.remove_cgroup_parent()

    def _sweep_removed(self) -> None:
        """Delete what removals killed after their rename left (no one holds its lock)."""
        with contextlib.suppress(OSError):
            for entry in self.containers_dir.iterdir():
                if entry.name.startswith(REMOVED_PREFIX) and not _lock_held(entry):
                    _delete_settled(entry)

    def _destroy_dir(self, cdir: Path, keep: str | None = None) -> None:
        """Delete a container's dir: its runc container, conmon, rootfs mount and files
        (all but the file named `keep`, which the caller deletes), and whatever still runs
        of it that a damaged state no longer names."""
        cid: str | None = None
        with contextlib.suppress(DamagedState):
            doc = read_json(cdir / "state.json", STATE_SHAPE)
            cid = str(doc["id"]) if doc is not None else None
        if cid is not None:
            self.supervisor.delete(cid)
        self._kill_leftovers(cdir, cid)
        cpid = conmon_pid(cdir)
        if cpid is not None:
            # after the exit conmon still runs its exit command (runc delete): let it finish
            deadline = time.monotonic() + 2
            while pid_alive(cpid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if pid_alive(cpid):
                with contextlib.suppress(OSError):
                    os.kill(cpid, signal.SIGKILL)
        rootfs.unmount(cdir / "rootfs")
        if rootfs.is_mounted(cdir / "rootfs"):
            raise PermanentError(f"cannot unmount {cdir / 'rootfs'}")
        rootfs.unmount(cdir / "shm")
        _delete_settled(cdir, keep)

    def _kill_leftovers(self, cdir: Path, cid: str | None) -> None:
        """Stop whatever still runs of the container in `cdir` that its state may no longer
        name (a damaged or deleted state.json), so that a replacement never runs beside it:
        runc's containers whose bundle is this dir (runc delete --force), its conmon (by the
        pid file), and anything left in its cgroup (SIGKILL)."""
        if cid is None:
            for other, info in self.supervisor.runc_list().items():
                if info.get("bundle") == str(cdir):
                    self.supervisor.delete(other)
        cpid = conmon_pid(cdir)
        if cpid is not None and cid is None:
            with contextlib.suppress(OSError):
                os.kill(cpid, signal.SIGKILL)
        kill_cgroup(self.cgroup_dirs(cdir.name))

    def cgroup_path(self, name: str) -> str:
        """The container's cgroup, below its cgroup_parent (the root's unless it asked for
        another)."""
        doc = self.peek(name) or {}
        return f"{doc.get('cgroup_parent') or self.cgroup_parent}/{name}"

    def cgroup_dirs(self, name: str) -> list[Path]:
        """The container's cgroup directories, in every hierarchy, that exist now."""
        rel = self.cgroup_path(name).strip("/")
        out = []
        with contextlib.suppress(OSError):
            for h in CGROUP_FS.iterdir():
                p = h / rel
                if p.is_dir():
                    out.append(p)
        return out

    def remove_cgroup_parent(self) -> None:
        """rmdir this root's cgroup parent, then the shared /pyapply, in every hierarchy
        where they are empty (for a system reset; never while containers are being made)."""
        with contextlib.suppress(OSError):
            for h in CGROUP_FS.iterdir():
                for rel in (self.cgroup_parent, CGROUP_PARENT):
                    with contextlib.suppress(OSError):
                        (h / rel.strip("/")).rmdir()

    def _remove_cgroups(self, name: str) -> None:
        for p in self.cgroup_dirs(name):
            # nested dirs first (runc creates none, but a container may make them)
            for sub in dirs_bottom_up(p):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)
            with contextlib.suppress(OSError):
                p.rmdir()

    # -- observe -------------------------------------------------------------------------

    def _status(
        self, cdir: Path, doc: Mapping[str, Any], runc_info: Mapping[str, Any] | None
    ) -> tuple[ContainerStatus, int | None, str | None]:
        """(status, exit code, finished_at) from the exit file, runc and the kernel."""
        if doc.get("pending"):
            return "dead", None, None  # a create that did not finish
        rec = read_exit(cdir)
        if rec is not None:
            return "exited", rec.code, rec.finished_at
        rs = str(runc_info.get("status")) if runc_info else None
        if rs == "running":
            return "running", None, None
        if rs == "paused":
            return "paused", None, None
        if rs == "created":
            return "created", None, None
        if rs == "stopped" and conmon_pid(cdir) is not None:
            rec = wait_exit(cdir, 1.0)  # conmon is about to write it
            if rec is not None:
                return "exited", rec.code, rec.finished_at
        if doc.get("started_at"):
            code = doc.get("exit_code")
            return "exited", UNKNOWN_EXIT if code is None else int(code), doc.get("finished_at")
        return "created", None, None

    def _state(
        self, name: str, doc: Mapping[str, Any], runc_info: Mapping[str, Any] | None
    ) -> ContainerState:
        cdir = self.dir(name)
        status, code, finished = self._status(cdir, doc, runc_info)
        policy, record = restart_policy(doc), restart_record(doc)
        if (
            status == "exited"
            and restarts.wants_restart(policy, record, code)
            and healthmod.checker_pid(self.root) is not None
        ):
            # the keeper restarts it once its wait is over: it owns the restart, so a pass
            # leaves it alone (as it leaves a container dockerd is restarting)
            status = "restarting"
        health: Health | None = None
        if doc.get("health") and (doc.get("started_at") or status == "running"):
            # running with a healthcheck and no result yet is "starting", never "none"
            health = healthmod.read_status(cdir) or ("starting" if status == "running" else None)
        return ContainerState(
            id=str(doc["id"]),
            name=name,
            image=str(doc.get("image", "")),
            image_id=str(doc.get("image_id", "")),
            labels=dict(doc.get("labels") or {}),
            status=status,
            exit_code=code,
            health=health,
            env=tuple(sorted(doc.get("env") or ())),
            networks=tuple(doc.get("networks") or ()),
            ports=tuple(PortBinding(**p) for p in doc.get("ports") or ()),
            memory_bytes=(
                live_memory_limit(self.cgroup_path(name))
                if status == "running"
                else doc.get("memory_bytes")
            ),
            started_at=doc.get("started_at"),
            finished_at=finished,
            joined=doc.get("joined_id"),
            restart_count=record.count,
            restart_gave_up=status == "exited" and restarts.gave_up(policy, record, code),
        )

    def _damaged_state(self, name: str) -> ContainerState:
        """A container whose state.json is damaged: dead (so a pass replaces it, after
        _kill_leftovers), with the labels and image its OCI spec still names."""
        spec: dict[str, Any] | None = None
        with contextlib.suppress(DamagedState):
            spec = read_json(self.dir(name) / "config.json", SPEC_SHAPE)
        notes = (spec or {}).get("annotations") or {}
        labels: dict[str, str] = {}
        with contextlib.suppress(ValueError, TypeError):
            found = json.loads(str(notes.get(LABELS_ANNOTATION) or "{}"))
            if isinstance(found, dict):
                labels = {str(k): str(v) for k, v in found.items()}
        return ContainerState(
            id="",
            name=name,
            image=str(notes.get("io.pyapply.image") or ""),
            image_id="",
            labels=labels,
            status="dead",
        )

    def state(self, name: str) -> ContainerState | None:
        try:
            doc = self._load(name)
        except DamagedState:
            return self._damaged_state(name)
        if doc is None:
            return None
        return self._state(name, doc, self.supervisor.runc_state(str(doc["id"])))

    def list(self, labels: Mapping[str, str] | None = None) -> list[ContainerState]:
        """Containers whose labels match ({key: value}, value "" = has the key), by name;
        one look at runc for all of them (at their ids only, not at the whole root's)."""
        if not self.containers_dir.is_dir():
            return []
        out: builtins.list[ContainerState | tuple[str, dict[str, Any]]] = []
        for cdir in sorted(self.containers_dir.iterdir()):
            if not _NAME.match(cdir.name) or not cdir.is_dir():
                continue
            try:
                doc = self._load(cdir.name)
            except DamagedState:
                state = self._damaged_state(cdir.name)
                if _labels_match(state.labels, labels):
                    out.append(state)
                continue
            if doc is None or not _labels_match(doc.get("labels") or {}, labels):
                continue
            out.append((cdir.name, doc))
        runc = self.supervisor.runc_list(
            [str(item[1]["id"]) for item in out if isinstance(item, tuple)]
        )
        return [
            self._state(item[0], item[1], runc.get(str(item[1]["id"])))
            if isinstance(item, tuple)
            else item
            for item in out
        ]

    def layer_dirs_in_use(self) -> set[str]:
        """The image layer directories the containers of this root are made of (a damaged
        container's are unknown: DamagedState, rather than prune layers it may use)."""
        used: set[str] = set()
        if self.containers_dir.is_dir():
            for cdir in self.containers_dir.iterdir():
                doc = self._load(cdir.name) if _NAME.match(cdir.name) else None
                used.update(str(d) for d in (doc or {}).get("layer_dirs") or ())
        return used

    def logs(self, name: str, *, follow: bool = False, tail: int | None = None) -> Iterator[bytes]:
        """stdout+stderr lines; with `follow`, until the container stops."""
        doc = self._must_load(name)
        cdir = self.dir(name)
        cid = str(doc["id"])

        def done() -> bool:
            # conmon writes the exit file only after draining the output into the log
            if read_exit(cdir) is not None or not cdir.exists():
                return True
            if conmon_pid(cdir) is not None:
                return False
            info = self.supervisor.runc_state(cid)
            return info is None or info.get("status") == "stopped"

        return read_log(cdir / LOG_FILE, tail=tail, follow=follow, done=done)

    def exec(self, name: str, argv: Sequence[str], *, timeout: float | None = None) -> ExecResult:
        doc = self._must_load(name)
        st = self.state(name)
        if st is None or st.status != "running":
            raise Conflict(f"container {name} is not running")
        return self.supervisor.exec(str(doc["id"]), argv, timeout=timeout)

    def exec_attached(self, name: str, argv: Sequence[str], *, stdin: bool, tty: bool) -> int:
        doc = self._must_load(name)
        st = self.state(name)
        if st is None or st.status != "running":
            raise Conflict(f"container {name} is not running")
        self.supervisor.check_installed()
        from pyapply.runtime.native import console  # a no-op apply never pays for it

        return console.exec_attached(
            self.supervisor.runc, self.runc_root, str(doc["id"]), argv, stdin=stdin, tty=tty
        )

    def top(self, name: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        """The processes in the container's cgroups (and below), read from /proc."""
        st = self.state(name)
        if st is None or st.status != "running":
            raise Conflict(f"container {name} is not running")
        pids: builtins.set[int] = builtins.set()
        for d in self.cgroup_dirs(name):
            for sub, _, _ in os.walk(d):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in Path(sub, "cgroup.procs").read_text().split())
        rows = [row for pid in builtins.sorted(pids) if (row := _proc_row(pid)) is not None]
        return ["UID", "PID", "PPID", "CMD"], rows

    def supervisor_pid(self, name: str) -> int | None:
        """The conmon process supervising the container, if any."""
        return conmon_pid(self.dir(name))

    def container_pid(self, name: str) -> int | None:
        doc = self._must_load(name)
        info = self.supervisor.runc_state(str(doc["id"]))
        if info and info.get("status") in ("running", "paused", "created"):
            return cast(int, info.get("pid"))
        return None


def _lock_held(path: Path) -> bool:
    """Whether someone holds an exclusive flock on the directory `path` (False if it is
    gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _delete_settled(cdir: Path, keep: str | None = None) -> None:
    """Delete `cdir` (any depth: the upper dir holds what the container made), or all in it
    but the entry `keep`; again, a bounded number of times, when a health result the keeper
    was writing lands meanwhile."""
    for attempt in range(5):
        try:
            if keep is None:
                rmtree(cdir)
                return
            for entry in list(cdir.iterdir()):
                if entry.name != keep:
                    rmtree(entry)
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == 4:
                raise
            time.sleep(0.05)
