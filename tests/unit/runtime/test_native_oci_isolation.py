"""The native OCI spec of the isolation fields (runtime/native/oci.py): privileged, devices,
sysctls, shm_size, no-new-privileges, apparmor, tty, pid/ipc namespaces, cgroup_parent,
oom_score_adj and group_add, from plain data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import ContainerConfig, PermanentError
from pyapply.runtime.native import oci

ETC = oci.EtcFiles(hosts="/c/hosts", hostname="/c/hostname", resolv_conf="/c/resolv.conf")
GROUP = "root:x:0:\naudio:x:29:\nnogroup:x:65534:\n"
NULL = oci.HostDevice(path="/dev/xnull", kind="c", major=1, minor=3, access="rw")
LOOP = oci.HostDevice(path="/dev/loop0", kind="b", major=7, minor=0, mode=0o660, gid=6)


def spec(**kw: Any) -> dict[str, Any]:
    inputs = kw.pop("inputs", {})
    config = ContainerConfig(name="s-web-1", image="busybox", command=("sh",), **kw)
    return oci.build_spec(
        config,
        oci.SpecInputs(
            container_id="c" * 64,
            rootfs="/c/rootfs",
            etc_files=ETC,
            group=GROUP,
            cgroup_parent="/pyapply/tag",
            machine="x86_64",
            kernel="6.1.0",
            **inputs,
        ),
    )


def shm(doc: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in doc["mounts"] if m["destination"] == "/dev/shm")


def namespaces(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ns["type"]: ns for ns in doc["linux"]["namespaces"]}


def test_defaults_are_unchanged() -> None:
    doc = spec()
    assert doc["process"]["noNewPrivileges"] is True and doc["process"]["terminal"] is False
    assert "size=67108864" in shm(doc)["options"]
    assert doc["linux"]["cgroupsPath"] == "/pyapply/tag/s-web-1"
    assert set(namespaces(doc)) == {"pid", "ipc", "uts", "mount", "network"}
    assert "seccomp" in doc["linux"] and doc["linux"]["maskedPaths"]
    assert "devices" not in doc["linux"] and "sysctl" not in doc["linux"]
    assert "oomScoreAdj" not in doc["process"] and "apparmorProfile" not in doc["process"]


def test_privileged_has_the_hosts_capabilities_devices_and_no_filter() -> None:
    host = ("CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN")
    doc = spec(privileged=True, inputs={"host_devices": (LOOP,), "host_capabilities": host})
    caps = doc["process"]["capabilities"]["bounding"]
    assert caps == [c for c in oci.ALL_CAPABILITIES if c in host]
    assert "seccomp" not in doc["linux"]
    assert doc["linux"]["maskedPaths"] == [] and doc["linux"]["readonlyPaths"] == []
    assert doc["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert doc["linux"]["devices"] == [
        {"path": "/dev/loop0", "type": "b", "major": 7, "minor": 0, "fileMode": 0o660,
         "uid": 0, "gid": 6}
    ]  # fmt: skip
    sysfs = next(m for m in doc["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"]
    # as Docker: no-new-privileges only when asked for
    assert doc["process"]["noNewPrivileges"] is False
    assert spec(privileged=True, no_new_privileges=True)["process"]["noNewPrivileges"] is True
    # a profile of its own still applies, as dockerd applies it
    profile = '{"defaultAction": "SCMP_ACT_ALLOW"}'
    assert "seccomp" in spec(privileged=True, seccomp=profile)["linux"]
    # no bounding set known: every capability
    assert spec(privileged=True)["process"]["capabilities"]["bounding"] == list(
        oci.ALL_CAPABILITIES
    )


def test_bounding_set_from_status() -> None:
    status = "Name:\tx\nCapBnd:\t000001fffeffffff\n"
    got = oci.bounding_set(status)
    assert "CAP_SYS_RESOURCE" not in got and "CAP_SYS_ADMIN" in got and len(got) == 40
    assert oci.bounding_set("Name: x\n") == ()


def test_devices_make_nodes_and_cgroup_rules() -> None:
    doc = spec(inputs={"devices": (NULL,)})
    assert doc["linux"]["devices"] == [
        {"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o666,
         "uid": 0, "gid": 0}
    ]  # fmt: skip
    rules = doc["linux"]["resources"]["devices"]
    assert rules[0] == {"allow": False, "access": "rwm"}  # the default deny stays first
    assert rules[-1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}


def test_sysctls_shm_oom_tty_apparmor() -> None:
    doc = spec(
        sysctls={"net.core.somaxconn": "1024"},
        shm_size=1048576,
        oom_score_adj=-100,
        tty=True,
        no_new_privileges=True,
        apparmor="my-profile",
        inputs={"apparmor": True},
    )
    assert doc["linux"]["sysctl"] == {"net.core.somaxconn": "1024"}
    assert "size=1048576" in shm(doc)["options"]
    assert doc["process"]["oomScoreAdj"] == -100 and doc["process"]["terminal"] is True
    assert doc["process"]["apparmorProfile"] == "my-profile"


def test_apparmor_without_the_kernels_is_refused() -> None:
    with pytest.raises(PermanentError, match="does not enforce AppArmor"):
        spec(apparmor="my-profile")
    # unconfined asks for nothing the kernel must have
    assert "apparmorProfile" not in spec(apparmor="unconfined")["process"]


def test_namespaces_host_and_joined() -> None:
    doc = spec(pid_mode="host", ipc_mode="host", inputs={"shm_source": "/dev/shm"})
    assert set(namespaces(doc)) == {"uts", "mount", "network"}
    assert shm(doc)["type"] == "bind" and shm(doc)["source"] == "/dev/shm"
    joined = spec(
        pid_mode="container:s-db-1",
        ipc_mode="container:s-db-1",
        inputs={
            "pid_ns_path": "/proc/42/ns/pid",
            "ipc_ns_path": "/proc/42/ns/ipc",
            "shm_source": "/root/c/s-db/shm",
        },
    )
    assert namespaces(joined)["pid"] == {"type": "pid", "path": "/proc/42/ns/pid"}
    assert namespaces(joined)["ipc"] == {"type": "ipc", "path": "/proc/42/ns/ipc"}
    assert shm(joined)["source"] == "/root/c/s-db/shm"
    with pytest.raises(PermanentError, match="pid namespace of container:s-db-1 is not running"):
        spec(pid_mode="container:s-db-1")


def test_cgroup_parent_and_group_add() -> None:
    doc = spec(cgroup_parent="mine/sub", group_add=("audio", "1234"))
    assert doc["linux"]["cgroupsPath"] == "/mine/sub/s-web-1"
    assert doc["process"]["user"]["additionalGids"] == [29, 1234]
    with pytest.raises(PermanentError, match="unable to find group video"):
        spec(group_add=("video",))


def test_native_runs_runc_only(tmp_path: Path) -> None:
    from pyapply.runtime.native.containers import ContainerManager

    manager = ContainerManager(tmp_path)
    config = ContainerConfig(name="s-web-1", image="busybox", runtime="kata")
    with pytest.raises(PermanentError, match="runtime 'kata' is not available: the native"):
        manager.check_host(config)
    manager.check_host(ContainerConfig(name="s-web-1", image="busybox", runtime="runc"))


def test_hook_users_are_looked_up_in_the_image() -> None:
    from pyapply.runtime.native.containers import _hook_user

    passwd = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
    assert _hook_user(None, passwd, GROUP) is None  # the container's own user
    assert _hook_user("nobody", passwd, GROUP) == "65534:65534"
    assert _hook_user("1000:29", passwd, GROUP) == "1000:29"
    assert _hook_user("0:audio", passwd, GROUP) == "0:29"
    with pytest.raises(PermanentError, match="unable to find user ghost"):
        _hook_user("ghost", passwd, GROUP)
