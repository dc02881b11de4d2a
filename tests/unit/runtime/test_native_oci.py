"""The OCI spec builder of the native runtime (runtime/native/oci.py), data-driven: each case
is a container config (plus image config / host facts) and the spec fragments it must yield,
addressed by dotted paths ("process.user.uid", "linux.resources.pids.limit").

At the end, the pure parts of the healthcheck state machine (runtime/native/health.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pyapply.runtime.base import ContainerConfig, HealthConfig, MountConfig, PermanentError, Ulimit
from pyapply.runtime.native import health, oci, seccomp

CID = "0123456789abcdef" * 4
PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
daemon:x:1:
staff:x:50:app
audio:x:29:app,daemon
app:x:1000:
nogroup:x:65534:
"""
HOST = {"nofile": (1024, 20000), "nproc": (96365, 96365), "core": (0, -1)}
ETC = oci.EtcFiles(hosts="/c/hosts", hostname="/c/hostname", resolv_conf="/c/resolv.conf")
RLIM_INF = oci.RLIM_INFINITY


def inputs(**kw: Any) -> oci.SpecInputs:
    base: dict[str, Any] = {
        "container_id": CID,
        "rootfs": "/c/rootfs",
        "etc_files": ETC,
        "image": oci.ImageConfig(cmd=("sh",)),
        "host_rlimits": HOST,
        "passwd": PASSWD,
        "group": GROUP,
    }
    base.update(kw)
    return oci.SpecInputs(**base)


def cfg(**kw: Any) -> ContainerConfig:
    return ContainerConfig(name=kw.pop("name", "shop-web-1"), image="busybox", **kw)


def get(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def mount_at(spec: dict[str, Any], target: str) -> dict[str, Any]:
    found = [m for m in spec["mounts"] if m["destination"] == target]
    assert len(found) == 1, target
    m: dict[str, Any] = found[0]
    return m


class Case(msgspec.Struct):
    id: str
    config: ContainerConfig
    expect: dict[str, Any]
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)


CASES = [
    Case(
        "defaults",
        cfg(),
        {
            "ociVersion": oci.OCI_VERSION,
            "process.args": ["sh"],
            "process.cwd": "/",
            "process.terminal": False,
            "process.user": {"uid": 0, "gid": 0},
            "process.noNewPrivileges": True,
            "process.env": [f"PATH={oci.DEFAULT_PATH}", f"HOSTNAME={CID[:12]}", "HOME=/root"],
            "process.capabilities.bounding": list(oci.DEFAULT_CAPABILITIES),
            "process.capabilities.effective": list(oci.DEFAULT_CAPABILITIES),
            "process.capabilities.permitted": list(oci.DEFAULT_CAPABILITIES),
            "process.rlimits": [
                {"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000},
                {"type": "RLIMIT_NPROC", "soft": 96365, "hard": 96365},
            ],
            "root": {"path": "/c/rootfs", "readonly": False},
            "hostname": CID[:12],
            "linux.cgroupsPath": "/pyapply/shop-web-1",
            "linux.namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network"},
            ],
            "linux.maskedPaths": list(oci.MASKED_PATHS),
            "linux.readonlyPaths": list(oci.READONLY_PATHS),
            "linux.resources.devices.0": {"allow": False, "access": "rwm"},
            "linux.resources.devices.3": {
                "allow": True,
                "type": "c",
                "major": 1,
                "minor": 3,
                "access": "rwm",
            },
        },
    ),
    Case("capability count", cfg(), {"process.capabilities.bounding.13": "CAP_AUDIT_WRITE"}),
    # -- command / entrypoint (Docker's rules)
    Case(
        "image entrypoint + cmd",
        cfg(),
        {"process.args": ["/ep", "-x", "run"]},
        {"image": oci.ImageConfig(entrypoint=("/ep", "-x"), cmd=("run",))},
    ),
    Case(
        "config command replaces image cmd only",
        cfg(command=("serve", "--port", "80")),
        {"process.args": ["/ep", "serve", "--port", "80"]},
        {"image": oci.ImageConfig(entrypoint=("/ep",), cmd=("run",))},
    ),
    Case(
        "config entrypoint drops image cmd",
        cfg(entrypoint=("/other",)),
        {"process.args": ["/other"]},
        {"image": oci.ImageConfig(entrypoint=("/ep",), cmd=("run",))},
    ),
    Case(
        "config entrypoint and command",
        cfg(entrypoint=("/other",), command=("a",)),
        {"process.args": ["/other", "a"]},
        {"image": oci.ImageConfig(entrypoint=("/ep",), cmd=("run",))},
    ),
    Case(
        "empty entrypoint resets the image's",
        cfg(entrypoint=(), command=("sleep", "1")),
        {"process.args": ["sleep", "1"]},
        {"image": oci.ImageConfig(entrypoint=("/ep",), cmd=("run",))},
    ),
    Case(
        "init prepends docker-init and mounts it",
        cfg(command=("sleep", "1"), init=True),
        {"process.args": [oci.INIT_TARGET, "--", "sleep", "1"]},
        {"init_path": "/usr/bin/tini-static"},
    ),
    # -- env, cwd, hostname, user
    Case(
        "env merged, config wins, image order kept",
        cfg(env=("B=config", "C=3", "NOVALUE")),
        {
            "process.env": [
                "PATH=/opt/bin",
                "A=1",
                "B=config",
                "C=3",
                f"HOSTNAME={CID[:12]}",
                "HOME=/root",
            ]
        },
        {"image": oci.ImageConfig(cmd=("sh",), env=("PATH=/opt/bin", "A=1", "B=image"))},
    ),
    Case(
        "config working dir wins over the image's",
        cfg(working_dir="/srv"),
        {"process.cwd": "/srv"},
        {"image": oci.ImageConfig(cmd=("sh",), working_dir="/app")},
    ),
    Case(
        "image working dir",
        cfg(),
        {"process.cwd": "/app"},
        {"image": oci.ImageConfig(cmd=("sh",), working_dir="/app")},
    ),
    Case(
        "hostname",
        cfg(hostname="web1"),
        {"hostname": "web1", "process.env.1": "HOSTNAME=web1"},
    ),
    Case(
        "user by name",
        cfg(user="nobody"),
        {"process.user": {"uid": 65534, "gid": 65534}, "process.env.2": "HOME=/nonexistent"},
    ),
    Case(
        "user by name gets supplementary groups",
        cfg(user="app"),
        {"process.user": {"uid": 1000, "gid": 1000, "additionalGids": [50, 29]}},
    ),
    Case("unknown uid", cfg(user="4242"), {"process.user": {"uid": 4242, "gid": 0}}),
    Case("uid:gid", cfg(user="1000:50"), {"process.user": {"uid": 1000, "gid": 50}}),
    Case("name:group", cfg(user="daemon:staff"), {"process.user": {"uid": 1, "gid": 50}}),
    Case(
        "image user when the config has none",
        cfg(),
        {"process.user": {"uid": 1, "gid": 1, "additionalGids": [29]}},
        {"image": oci.ImageConfig(cmd=("sh",), user="daemon")},
    ),
    # -- capabilities
    Case(
        "cap_add and cap_drop, any spelling",
        cfg(cap_add=("net_admin", "CAP_SYS_TIME"), cap_drop=("MKNOD", "cap_net_raw")),
        {
            "process.capabilities.bounding": [
                c for c in oci.DEFAULT_CAPABILITIES if c not in ("CAP_MKNOD", "CAP_NET_RAW")
            ]
            + ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
        },
    ),
    Case(
        "drop ALL then add",
        cfg(cap_drop=("ALL",), cap_add=("CHOWN",)),
        {"process.capabilities.effective": ["CAP_CHOWN"]},
    ),
    Case("drop ALL", cfg(cap_drop=("all",)), {"process.capabilities.permitted": []}),
    Case(
        "add ALL minus drops",
        cfg(cap_add=("ALL",), cap_drop=("SYS_ADMIN",)),
        {
            "process.capabilities.bounding": [
                c for c in oci.ALL_CAPABILITIES if c != "CAP_SYS_ADMIN"
            ]
        },
    ),
    # -- rlimits, clamped to the host's hard limits
    Case(
        "ulimit nofile clamped",
        cfg(ulimits=(Ulimit("nofile", 100000, 200000),)),
        {"process.rlimits.0": {"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000}},
    ),
    Case(
        "ulimit under the host limit kept",
        cfg(ulimits=(Ulimit("nofile", 512, 4096),)),
        {"process.rlimits.0": {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 4096}},
    ),
    Case(
        "unlimited ulimit on an unlimited host",
        cfg(ulimits=(Ulimit("core", -1, -1),)),
        {"process.rlimits.0": {"type": "RLIMIT_CORE", "soft": RLIM_INF, "hard": RLIM_INF}},
    ),
    Case(
        "unlimited ulimit on a limited host",
        cfg(ulimits=(Ulimit("nofile", -1, -1),)),
        {"process.rlimits.0": {"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000}},
    ),
    Case(
        "host that reports nothing is unlimited",
        cfg(),
        {"process.rlimits.0": {"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576}},
        {"host_rlimits": {}},
    ),
    # -- cgroup resources
    Case(
        "memory, cpus, pids",
        cfg(memory_bytes=128 * 2**20, nano_cpus=1_500_000_000, pids_limit=100),
        {
            "linux.resources.memory": {"limit": 128 * 2**20},
            "linux.resources.cpu": {"quota": 150000, "period": 100000},
            "linux.resources.pids": {"limit": 100},
        },
    ),
    Case(
        "half a cpu",
        cfg(nano_cpus=500_000_000),
        {"linux.resources.cpu": {"quota": 50000, "period": 100000}},
    ),
    # -- rootfs, namespaces
    Case("read-only rootfs", cfg(read_only=True), {"root.readonly": True}),
    Case(
        "joins a given network namespace",
        cfg(),
        {"linux.namespaces.4": {"type": "network", "path": "/run/netns/x"}},
        {"netns_path": "/run/netns/x"},
    ),
    Case(
        "cgroup parent",
        cfg(name="a-b-1"),
        {"linux.cgroupsPath": "/other/a-b-1"},
        {"cgroup_parent": "/other/"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_spec_fragments(case: Case) -> None:
    spec = oci.build_spec(case.config, inputs(**case.inputs))
    for path, want in case.expect.items():
        assert get(spec, path) == want, path


MOUNT_CASES = [
    (
        "tmpfs with size and mode",
        MountConfig(type="tmpfs", target="/run", tmpfs_size=65536, tmpfs_mode=0o700),
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=65536", "mode=700"],
        },
    ),
    (
        "tmpfs default",
        MountConfig(type="tmpfs", target="/scratch"),
        {
            "destination": "/scratch",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ),
    (
        "bind read-only",
        MountConfig(type="bind", target="/cfg", source="/srv/cfg", read_only=True),
        {
            "destination": "/cfg",
            "type": "bind",
            "source": "/srv/cfg",
            "options": ["rbind", "rprivate", "ro"],
        },
    ),
    (
        "resolved volume",
        MountConfig(type="volume", target="/data", source="/var/lib/pyapply/volumes/v/_data"),
        {
            "destination": "/data",
            "type": "bind",
            "source": "/var/lib/pyapply/volumes/v/_data",
            "options": ["rbind", "rprivate", "rw"],
        },
    ),
]


@pytest.mark.parametrize(
    ("mount", "want"), [c[1:] for c in MOUNT_CASES], ids=[c[0] for c in MOUNT_CASES]
)
def test_user_mounts(mount: MountConfig, want: dict[str, Any]) -> None:
    config = cfg(mounts=(MountConfig(type="tmpfs", target="/ignored"),))
    spec = oci.build_spec(config, inputs(mounts=(mount,)))
    assert spec["mounts"][-1] == want
    assert not any(m["destination"] == "/ignored" for m in spec["mounts"])


def test_default_mounts_and_etc_files() -> None:
    spec = oci.build_spec(cfg(), inputs())
    targets = [m["destination"] for m in spec["mounts"]]
    assert targets == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/sys/fs/cgroup",
        "/dev/mqueue",
        "/dev/shm",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/etc/hosts",
    ]
    assert "ro" in mount_at(spec, "/sys")["options"]
    assert mount_at(spec, "/etc/hosts")["source"] == "/c/hosts"
    assert mount_at(spec, "/etc/resolv.conf")["type"] == "bind"
    assert mount_at(spec, "/dev/shm")["options"][-1] == "size=67108864"


def test_init_mount() -> None:
    spec = oci.build_spec(cfg(init=True), inputs(init_path="/usr/bin/tini-static"))
    m = mount_at(spec, oci.INIT_TARGET)
    assert (m["source"], m["options"]) == ("/usr/bin/tini-static", ["bind", "ro"])


ERROR_CASES = [
    ("no command anywhere", cfg(), {"image": oci.ImageConfig()}, "no command"),
    ("unknown user", cfg(user="ghost"), {}, "unable to find user ghost"),
    ("unknown group", cfg(user="app:ghosts"), {}, "unable to find group ghosts"),
    ("user name without passwd", cfg(user="app"), {"passwd": ""}, "unable to find user"),
    ("unknown capability", cfg(cap_add=("FLY",)), {}, "unknown capability: CAP_FLY"),
    ("init without binary", cfg(init=True), {}, "no init binary"),
    (
        "unresolved volume",
        cfg(mounts=(MountConfig(type="volume", target="/d", source="named"),)),
        {},
        "not a resolved host path",
    ),
]


@pytest.mark.parametrize(
    ("config", "extra", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_errors(config: ContainerConfig, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        oci.build_spec(config, inputs(**extra))


def test_pure_same_input_same_output() -> None:
    config = cfg(env=("A=1",), memory_bytes=2**20, user="app")
    assert oci.build_spec(config, inputs()) == oci.build_spec(
        msgspec.structs.replace(config), inputs()
    )


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        (None, oci.ImageConfig()),
        ({}, oci.ImageConfig()),
        (
            {"config": {"Env": ["A=1"], "Cmd": ["sh"], "User": "app", "WorkingDir": "/w"}},
            oci.ImageConfig(env=("A=1",), cmd=("sh",), user="app", working_dir="/w"),
        ),
        (
            {"Entrypoint": ["/ep"], "Cmd": None, "StopSignal": "SIGQUIT"},
            oci.ImageConfig(entrypoint=("/ep",), stop_signal="SIGQUIT"),
        ),
        ({"architecture": "amd64", "rootfs": {}, "config": None}, oci.ImageConfig()),
    ],
)
def test_image_config_from_oci(doc: dict[str, Any] | None, want: oci.ImageConfig) -> None:
    assert oci.ImageConfig.from_oci(doc) == want


@pytest.mark.parametrize(
    ("name", "num"), [(None, 15), ("SIGTERM", 15), ("term", 15), ("9", 9), ("SIGQUIT", 3)]
)
def test_signal_number(name: str | None, num: int) -> None:
    assert oci.signal_number(name) == num


def test_signal_number_unknown() -> None:
    with pytest.raises(PermanentError):
        oci.signal_number("SIGNOPE")


# ---------------------------------------------------------------------------------------------
# health.py's pure parts


@pytest.mark.parametrize(
    ("test", "argv"),
    [
        (("CMD", "wget", "-q", "x"), ["wget", "-q", "x"]),
        (("CMD-SHELL", "test -f /ok"), ["/bin/sh", "-c", "test -f /ok"]),
        (("NONE",), None),
        ((), None),
    ],
)
def test_probe_argv(test: tuple[str, ...], argv: list[str] | None) -> None:
    assert health.probe_argv(test) == argv


def _run_probes(codes: list[int], cfg: HealthConfig, spacing: float = 1.0) -> list[str]:
    doc = health.initial_status()
    out = []
    for i, code in enumerate(codes):
        t = 100.0 + spacing * (i + 1)
        doc = health.apply_probe(doc, health.Probe(t, t + 0.1, code, ""), cfg, started_at=100.0)
        out.append(doc["status"])
    return out


@pytest.mark.parametrize(
    ("codes", "config", "statuses"),
    [
        ([0], HealthConfig(("CMD", "x")), ["healthy"]),
        ([1, 1, 1], HealthConfig(("CMD", "x"), retries=3), ["starting", "starting", "unhealthy"]),
        (
            [0, 1, 1, 0],
            HealthConfig(("CMD", "x"), retries=2),
            ["healthy", "healthy", "unhealthy", "healthy"],
        ),
        # failures inside the start period do not count ...
        (
            [1, 1, 1, 1, 1],
            HealthConfig(("CMD", "x"), retries=2, start_period_s=3.5),
            ["starting", "starting", "starting", "starting", "unhealthy"],
        ),
        # ... unless the container was healthy once
        (
            [0, 1, 1],
            HealthConfig(("CMD", "x"), retries=2, start_period_s=60),
            ["healthy", "healthy", "unhealthy"],
        ),
    ],
)
def test_health_state_machine(codes: list[int], config: HealthConfig, statuses: list[str]) -> None:
    assert _run_probes(codes, config) == statuses


def test_health_log_is_bounded() -> None:
    doc = health.initial_status()
    for i in range(20):
        doc = health.apply_probe(doc, health.Probe(i, i, 0, str(i)), HealthConfig(("CMD", "x")), 0)
    assert [e["output"] for e in doc["log"]] == ["15", "16", "17", "18", "19"]


# ---------------------------------------------------------------------------------------------
# Other pure helpers: overlay mount data, /etc/hosts and /etc/resolv.conf text


def test_overlay_options_top_layer_first() -> None:
    from pyapply.runtime.native.rootfs import overlay_options

    data = overlay_options(["/l/base", "/l/mid", "/l/top"], "/c/upper", "/c/work")
    assert data == "lowerdir=/l/top:/l/mid:/l/base,upperdir=/c/upper,workdir=/c/work"


@pytest.mark.parametrize(
    "layers", [[], ["/l/a:b"], ["/l/a,b"], [f"/l/{i:0100d}" for i in range(50)]]
)
def test_overlay_options_refused(layers: list[str]) -> None:
    from pyapply.runtime.native.rootfs import overlay_options

    with pytest.raises(PermanentError):
        overlay_options(layers, "/c/upper", "/c/work")


def test_hosts_and_resolv_text() -> None:
    from pyapply.runtime.native.containers import hosts_text, resolv_text

    text = hosts_text("web1", [("10.89.0.2", ["db", "db-1"])])
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert "10.89.0.2\tdb db-1\n" in text and "127.0.1.1\tweb1\n" in text
    assert "127.0.1.1" not in hosts_text("web1", [("10.89.0.3", ["web1"])])
    assert resolv_text(["10.89.0.1"], ["svc.local"], ["ndots:0"]) == (
        "nameserver 10.89.0.1\nsearch svc.local\noptions ndots:0\n"
    )


def test_seccomp_section_follows_the_config() -> None:
    """The default profile for the container's capabilities; none when unconfined; a given
    profile compiled (tests/unit/test_seccomp_profile.py tests the profiles themselves)."""
    spec = oci.build_spec(cfg(cap_add=("SYS_PTRACE",)), inputs(machine="x86_64", kernel="6.1.0"))
    caps = spec["process"]["capabilities"]["bounding"]
    assert spec["linux"]["seccomp"] == seccomp.compile_profile(
        seccomp.default_profile(), caps, "x86_64", "6.1.0"
    )
    allowed = {n for r in spec["linux"]["seccomp"]["syscalls"] for n in r["names"]}
    assert "kcmp" in allowed and "mount" not in allowed
    assert "seccomp" not in oci.build_spec(cfg(seccomp="unconfined"), inputs())["linux"]
    own = '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}'
    spec = oci.build_spec(cfg(seccomp=own), inputs(machine="x86_64"))
    assert spec["linux"]["seccomp"]["syscalls"] == [
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}
    ]
    with pytest.raises(PermanentError, match="seccomp profile"):
        oci.build_spec(cfg(seccomp='{"defaultAction": 1}'), inputs())
