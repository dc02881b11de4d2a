"""The OCI runtime spec (a bundle's config.json) of a container, as a pure function.

`build_spec` turns a `ContainerConfig`, the image's config, the resolved mounts and a few
facts about the host (its hard rlimits, the init binary, the passwd/group text of the rootfs)
into the dict runc reads. It does no I/O: everything it needs is an argument, so it is tested
with plain data (tests/unit/runtime/test_native_oci.py). The defaults follow Docker's documented
ones: 14 capabilities, masked and read-only /proc and /sys paths, the /dev mounts and device
rules, no-new-privileges, hostname = short id, PATH when the image sets none, and the seccomp
profile of runtime/native/seccomp (Docker's default unless the config names another).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from pyapply.runtime.base import ContainerConfig, MountConfig, PermanentError
from pyapply.runtime.native import seccomp

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_TARGET = "/sbin/docker-init"  # where Docker mounts its init; we do the same
RLIM_INFINITY = 2**64 - 1  # as the OCI spec / the kernel spell "unlimited"

DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Every capability up to CAP_CHECKPOINT_RESTORE (40), in kernel order: what "ALL" means.
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# The default rlimits when the config asks for none (clamped to the host like any other).
DEFAULT_RLIMITS: Mapping[str, tuple[int, int]] = {
    "nofile": (1048576, 1048576),
    "nproc": (4194304, 4194304),
}

CPU_PERIOD = 100_000  # microseconds, Docker's --cpus period


def _dev_rule(kind: str, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


# Docker's default device cgroup rules: deny everything, then allow these.
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    _dev_rule("c", None, None, "m"),
    _dev_rule("b", None, None, "m"),
    _dev_rule("c", 1, 3, "rwm"),  # /dev/null
    _dev_rule("c", 1, 8, "rwm"),  # /dev/random
    _dev_rule("c", 1, 7, "rwm"),  # /dev/full
    _dev_rule("c", 5, 0, "rwm"),  # /dev/tty
    _dev_rule("c", 1, 5, "rwm"),  # /dev/zero
    _dev_rule("c", 1, 9, "rwm"),  # /dev/urandom
    _dev_rule("c", 5, 1, "rwm"),  # /dev/console
    _dev_rule("c", 136, None, "rwm"),  # /dev/pts/*
    _dev_rule("c", 5, 2, "rwm"),  # /dev/ptmx
    _dev_rule("c", 10, 200, "rwm"),  # /dev/net/tun
)


def default_mounts(shm_size: int = 67108864, *, writable_sys: bool = False) -> list[dict[str, Any]]:
    """/proc, /dev (tmpfs), devpts, shm, mqueue, sysfs (ro) and the cgroup tree (ro; both
    writable for a privileged container, as Docker mounts them)."""
    ro = [] if writable_sys else ["ro"]
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", *ro],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": [*ro, "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"],
        },
    ]


class ImageConfig(msgspec.Struct, frozen=True):
    """The parts of an OCI image config (its "config" object) a container uses."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def from_oci(cls, doc: Mapping[str, Any] | None) -> ImageConfig:
        """From an OCI/Docker image config document, either whole (with "config") or its
        "config" object alone; None or {} is an image with no config."""
        if not doc:
            return cls()
        cfg = doc.get("config", doc) if "config" in doc or "rootfs" in doc else doc
        cfg = cfg or {}

        def strs(key: str) -> tuple[str, ...] | None:
            v = cfg.get(key)
            return None if v is None else tuple(str(x) for x in v)

        return cls(
            env=strs("Env") or (),
            entrypoint=strs("Entrypoint"),
            cmd=strs("Cmd"),
            working_dir=str(cfg.get("WorkingDir") or ""),
            user=str(cfg.get("User") or ""),
            stop_signal=str(cfg.get("StopSignal") or ""),
            labels=dict(cfg.get("Labels") or {}),
        )


class EtcFiles(msgspec.Struct, frozen=True):
    """Host paths of the files bind-mounted at /etc/hosts, /etc/hostname, /etc/resolv.conf."""

    hosts: str
    hostname: str
    resolv_conf: str


class HostDevice(msgspec.Struct, frozen=True):
    """A host device node as the container gets it: at `path` in the container, of `kind`
    "c" or "b", with its numbers, mode bits and owner; `access` is its cgroup permission."""

    path: str
    kind: str
    major: int
    minor: int
    mode: int = 0o666
    uid: int = 0
    gid: int = 0
    access: str = "rwm"


class SpecInputs(msgspec.Struct, frozen=True):
    """Everything besides the container config that the spec depends on."""

    container_id: str
    rootfs: str  # absolute path of the mounted rootfs (or relative to the bundle)
    etc_files: EtcFiles
    image: ImageConfig = ImageConfig()
    mounts: tuple[MountConfig, ...] | None = None  # resolved (volume source = host path)
    netns_path: str | None = None  # None: a new, empty network namespace
    host_network: bool = False  # no network namespace of its own: the host's
    host_rlimits: Mapping[str, tuple[int, int]] = msgspec.field(
        default_factory=dict
    )  # name -> soft, hard (-1 = unlimited)
    passwd: str = ""  # text of the rootfs's /etc/passwd ("" if absent)
    group: str = ""  # text of the rootfs's /etc/group
    init_path: str | None = None  # host path of tini/docker-init, when init is asked for
    cgroup_parent: str = "/pyapply"
    # the config's devices, resolved on the host (a directory gives every device below it)
    devices: tuple[HostDevice, ...] = ()
    # a privileged container's: every device of the host
    host_devices: tuple[HostDevice, ...] = ()
    # the namespaces joined for pid_mode/ipc_mode "container:<name>" (/proc/PID/ns/...)
    pid_ns_path: str | None = None
    ipc_ns_path: str | None = None
    # /dev/shm shared with the host ("ipc: host") or the container whose IPC it joins
    shm_source: str | None = None
    apparmor: bool = False  # the kernel enforces AppArmor profiles
    # the capabilities this host lets a process hold (its bounding set); a privileged
    # container gets them all ("": every capability runc knows)
    host_capabilities: tuple[str, ...] = ()
    machine: str = msgspec.field(default_factory=lambda: os.uname().machine)  # for seccomp's arches
    kernel: str = msgspec.field(default_factory=lambda: os.uname().release)  # seccomp's minKernel


# ---------------------------------------------------------------------------------------------
# Pieces, each pure and tested on its own


def merge_env(image_env: Sequence[str], config_env: Sequence[str]) -> list[str]:
    """Image env, then config env; a key set by both takes the config's value (in the image's
    position). A bare "KEY" in the config without "=" keeps no value (Docker drops it)."""
    order: list[str] = []
    values: dict[str, str] = {}
    for item in (*image_env, *config_env):
        key, sep, value = item.partition("=")
        if not sep:
            continue
        if key not in values:
            order.append(key)
        values[key] = value
    return [f"{k}={values[k]}" for k in order]


def resolve_args(config: ContainerConfig, image: ImageConfig) -> list[str]:
    """Docker's rules: the config's entrypoint/command override the image's, and setting an
    entrypoint drops the image's cmd."""
    entrypoint = config.entrypoint if config.entrypoint is not None else image.entrypoint
    if config.command is not None:
        cmd: tuple[str, ...] = config.command
    elif config.entrypoint is not None:
        cmd = ()
    else:
        cmd = image.cmd or ()
    args = [*(entrypoint or ()), *cmd]
    if not args:
        raise PermanentError(f"container {config.name}: no command (the image sets none either)")
    return args


def _parse_db(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rows.append(line.split(":"))
    return rows


class ResolvedUser(msgspec.Struct, frozen=True):
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def resolve_user(user: str, passwd: str, group: str) -> ResolvedUser:
    """`user` is "", "name", "uid", "name:group", "uid:gid" (any mix), resolved against the
    passwd/group text. Names that are not found are an error; numbers need not exist."""
    users = [r for r in _parse_db(passwd) if len(r) >= 4]
    groups = [r for r in _parse_db(group) if len(r) >= 3]
    u, _, g = (user or "0").partition(":")
    entry: list[str] | None = None
    if u.isdigit():
        uid = int(u)
        entry = next((r for r in users if r[2] == u), None)
    else:
        entry = next((r for r in users if r[0] == u), None)
        if entry is None:
            raise PermanentError(f"unable to find user {u}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            grp = next((r for r in groups if r[0] == g), None)
            if grp is None:
                raise PermanentError(f"unable to find group {g}: no matching entries in group file")
            gid = int(grp[2])
    extra: list[int] = []
    name = entry[0] if entry is not None else None
    if name is not None and not g:
        for r in groups:
            members = r[3].split(",") if len(r) > 3 and r[3] else []
            if name in members and r[2].isdigit() and int(r[2]) != gid and int(r[2]) not in extra:
                extra.append(int(r[2]))
    home = entry[5] if entry is not None and len(entry) > 5 and entry[5] else "/"
    return ResolvedUser(uid=uid, gid=gid, additional_gids=tuple(extra), home=home)


def bounding_set(status: str) -> tuple[str, ...]:
    """The capabilities named by the CapBnd line of a /proc/PID/status text."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            return tuple(c for i, c in enumerate(ALL_CAPABILITIES) if mask >> i & 1)
    return ()


def group_ids(names: Sequence[str], group: str) -> list[int]:
    """group_add: ids as they are, names looked up in the image's /etc/group."""
    groups = [r for r in _parse_db(group) if len(r) >= 3]
    out: list[int] = []
    for name in names:
        if name.isdigit():
            out.append(int(name))
            continue
        row = next((r for r in groups if r[0] == name), None)
        if row is None or not row[2].isdigit():
            raise PermanentError(f"unable to find group {name}: no matching entries in group file")
        out.append(int(row[2]))
    return out


def device_nodes(
    devices: Sequence[HostDevice],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The nodes runc makes in /dev and the cgroup rules that let them be used."""
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for d in devices:
        nodes.append(
            {
                "path": d.path,
                "type": d.kind,
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.mode,
                "uid": d.uid,
                "gid": d.gid,
            }
        )
        rules.append(_dev_rule(d.kind, d.major, d.minor, d.access))
    return nodes, rules


def _cap_name(name: str) -> str:
    n = name.strip().upper()
    return n if n.startswith("CAP_") or n == "ALL" else "CAP_" + n


def capabilities(cap_add: Sequence[str], cap_drop: Sequence[str]) -> list[str]:
    """Docker's semantics: defaults + add - drop; "ALL" in add starts from every capability,
    "ALL" in drop starts from none (then add)."""
    add = [_cap_name(c) for c in cap_add]
    drop = [_cap_name(c) for c in cap_drop]
    for c in (*add, *drop):
        if c != "ALL" and c not in ALL_CAPABILITIES:
            raise PermanentError(f"unknown capability: {c}")
    if "ALL" in drop:
        base: list[str] = []
        drop = []
    elif "ALL" in add:
        base = list(ALL_CAPABILITIES)
    else:
        base = list(DEFAULT_CAPABILITIES)
    result = [c for c in base if c not in drop]
    for c in add:
        if c != "ALL" and c not in result and c not in drop:
            result.append(c)
    return result


def _clamp(value: int, host_hard: int) -> int:
    """Both in getrlimit's convention (-1 = unlimited); returns the OCI form."""
    if host_hard < 0:
        return RLIM_INFINITY if value < 0 else value
    if value < 0:
        return host_hard
    return min(value, host_hard)


def rlimits(
    ulimits: Sequence[tuple[str, int, int]], host: Mapping[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Defaults (nofile, nproc) overridden by the config's ulimits, each clamped to the host's
    hard limit (a limit the host does not report is taken as unlimited)."""
    wanted: dict[str, tuple[int, int]] = dict(DEFAULT_RLIMITS)
    for name, soft, hard in ulimits:
        wanted[name.lower().removeprefix("rlimit_")] = (soft, hard)
    out = []
    for name in sorted(wanted):
        soft, hard = wanted[name]
        host_hard = host.get(name, (-1, -1))[1]
        h = _clamp(hard, host_hard)
        s = _clamp(soft, host_hard)
        s = min(s, h)
        out.append({"type": "RLIMIT_" + name.upper(), "soft": s, "hard": h})
    return out


def signal_number(name: str | None, default: int = signal.SIGTERM) -> int:
    """ "SIGTERM", "TERM", "15" -> 15."""
    if not name:
        return int(default)
    n = name.strip().upper()
    if n.isdigit():
        return int(n)
    if not n.startswith("SIG"):
        n = "SIG" + n
    try:
        return int(signal.Signals[n])
    except KeyError as e:
        raise PermanentError(f"unknown signal: {name}") from e


def user_mounts(mounts: Sequence[MountConfig]) -> list[dict[str, Any]]:
    """Binds and (resolved) volumes as rbind mounts, tmpfs as tmpfs."""
    out: list[dict[str, Any]] = []
    for m in mounts:
        if m.type == "tmpfs":
            opts = ["nosuid", "nodev"]
            if m.tmpfs_size:
                opts.append(f"size={m.tmpfs_size}")
            opts.append(f"mode={m.tmpfs_mode:o}" if m.tmpfs_mode is not None else "mode=1777")
            if m.read_only:
                opts.append("ro")
            out.append(
                {"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts}
            )
        else:
            if not m.source.startswith("/"):
                raise PermanentError(
                    f"mount {m.target}: {m.type} source {m.source!r} is not a resolved host path"
                )
            opts = ["rbind", "rprivate", "ro" if m.read_only else "rw"]
            out.append(
                {"destination": m.target, "type": "bind", "source": m.source, "options": opts}
            )
    return out


# ---------------------------------------------------------------------------------------------
# The whole spec


def build_spec(config: ContainerConfig, inputs: SpecInputs) -> dict[str, Any]:
    """config.json for runc. Raises PermanentError for what cannot be honoured."""
    image = inputs.image
    user = resolve_user(config.user or image.user, inputs.passwd, inputs.group)
    hostname = config.hostname or inputs.container_id[:12]
    env = merge_env(image.env, config.env)
    keys = {e.partition("=")[0] for e in env}
    if "PATH" not in keys:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if "HOSTNAME" not in keys:
        env.append(f"HOSTNAME={hostname}")
    if "HOME" not in keys:
        env.append(f"HOME={user.home}")
    args = resolve_args(config, image)
    mounts = default_mounts(config.shm_size or 67108864, writable_sys=config.privileged)
    if inputs.shm_source is not None:  # the IPC namespace's /dev/shm, with its contents
        shm = next(m for m in mounts if m["destination"] == "/dev/shm")
        shm.update(type="bind", source=inputs.shm_source, options=["rbind", "rprivate"])
    if config.init:
        if not inputs.init_path:
            raise PermanentError(
                f"container {config.name}: init asked for, but no init binary found"
            )
        mounts.append(
            {
                "destination": INIT_TARGET,
                "type": "bind",
                "source": inputs.init_path,
                "options": ["bind", "ro"],
            }
        )
        args = [INIT_TARGET, "--", *args]
    etc = inputs.etc_files
    for target, source in (
        ("/etc/resolv.conf", etc.resolv_conf),
        ("/etc/hostname", etc.hostname),
        ("/etc/hosts", etc.hosts),
    ):
        mounts.append(
            {
                "destination": target,
                "type": "bind",
                "source": source,
                "options": ["rbind", "rprivate"],
            }
        )
    mounts.extend(user_mounts(inputs.mounts if inputs.mounts is not None else config.mounts))

    if config.privileged:
        have = set(inputs.host_capabilities or ALL_CAPABILITIES)
        caps = [c for c in ALL_CAPABILITIES if c in have]
    else:
        caps = capabilities(config.cap_add, config.cap_drop)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": env,
        "cwd": config.working_dir or image.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits([(u.name, u.soft, u.hard) for u in config.ulimits], inputs.host_rlimits),
        # always on, unless a privileged container leaves it to be asked for (as Docker does)
        "noNewPrivileges": config.no_new_privileges or not config.privileged,
    }
    gids = [*user.additional_gids, *group_ids(config.group_add, inputs.group)]
    if gids:
        process["user"]["additionalGids"] = list(dict.fromkeys(gids))
    if config.oom_score_adj is not None:
        process["oomScoreAdj"] = config.oom_score_adj
    if config.apparmor is not None and config.apparmor != "unconfined" and not config.privileged:
        if not inputs.apparmor:
            raise PermanentError(
                f"container {config.name}: apparmor profile {config.apparmor!r} asked for, but "
                "this host's kernel does not enforce AppArmor"
            )
        process["apparmorProfile"] = config.apparmor

    if config.privileged:
        rules: list[dict[str, Any]] = [{"allow": True, "access": "rwm"}]
        nodes, _ = device_nodes(inputs.host_devices)
    else:
        rules = [dict(r) for r in DEFAULT_DEVICE_RULES]
        nodes = []
    more_nodes, more_rules = device_nodes(inputs.devices)
    nodes = [n for n in nodes if n["path"] not in {m["path"] for m in more_nodes}] + more_nodes
    if not config.privileged:
        rules += more_rules
    resources: dict[str, Any] = {"devices": rules}
    if config.memory_bytes:
        resources["memory"] = {"limit": config.memory_bytes}
    if config.nano_cpus:
        resources["cpu"] = {
            "quota": max(1000, config.nano_cpus * CPU_PERIOD // 1_000_000_000),
            "period": CPU_PERIOD,
        }
    if config.pids_limit:
        resources["pids"] = {"limit": config.pids_limit}

    net: dict[str, Any] = {"type": "network"}
    if inputs.netns_path:
        net["path"] = inputs.netns_path
    namespaces: list[dict[str, Any]] = []
    for kind, mode, joined in (
        ("pid", config.pid_mode, inputs.pid_ns_path),
        ("ipc", config.ipc_mode, inputs.ipc_ns_path),
    ):
        if mode == "host":
            continue  # no namespace of its own: the host's
        ns: dict[str, Any] = {"type": kind}
        if mode is not None and mode.startswith("container:"):
            if not joined:
                raise PermanentError(
                    f"container {config.name}: {kind} namespace of {mode} is not running"
                )
            ns["path"] = joined
        namespaces.append(ns)
    namespaces += [{"type": "uts"}, {"type": "mount"}]
    if not inputs.host_network:
        namespaces.append(net)

    parent = config.cgroup_parent or inputs.cgroup_parent
    linux: dict[str, Any] = {
        "cgroupsPath": f"/{parent.strip('/')}/{config.name}",
        "resources": resources,
        "namespaces": namespaces,
        "maskedPaths": [] if config.privileged else list(MASKED_PATHS),
        "readonlyPaths": [] if config.privileged else list(READONLY_PATHS),
    }
    if nodes:
        linux["devices"] = nodes
    if config.sysctls:
        linux["sysctl"] = dict(config.sysctls)
    # privileged: no filter, unless a profile of its own is asked for (as dockerd does)
    seccomp_mode = config.seccomp
    if config.privileged and seccomp_mode is None:
        seccomp_mode = "unconfined"
    profile = seccomp.section_for(seccomp_mode, caps, inputs.machine, inputs.kernel)
    if profile is not None:
        linux["seccomp"] = profile
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": inputs.rootfs, "readonly": bool(config.read_only)},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {
            "io.pyapply.name": config.name,
            "io.pyapply.image": config.image,
            # the labels again, for a container whose state.json is lost: still owned
            "io.pyapply.labels": json.dumps(dict(config.labels), sort_keys=True),
        },
        "linux": linux,
    }
