"""The Docker Engine translation of the isolation fields (runtime/docker/driver.py): what
`create_container` is given for privileged, devices, sysctls, dns*, shm_size,
security_opt, tty, stdin_open, pid/ipc, cgroup_parent, oom_score_adj, group_add,
mac_address, runtime and the hooks' label, built by the SDK's own HostConfig (no daemon)."""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from pyapply.runtime.base import ContainerConfig, DeviceMapping, ExecHook, PermanentError
from pyapply.runtime.docker.driver import HOOKS_LABEL, DockerRuntime

API = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")


class NoApparmor(DockerRuntime):
    def _call(self, action: str, fn: Any) -> Any:
        return {"SecurityOptions": ["name=seccomp,profile=default"]}


def args(config: ContainerConfig, rt: DockerRuntime | None = None) -> dict[str, Any]:
    return (rt or DockerRuntime(fast_reads=False))._create_args(API, config)


def test_every_field_reaches_the_engine() -> None:
    config = ContainerConfig(
        name="s-web-1",
        image="busybox",
        privileged=True,
        devices=(DeviceMapping("/dev/null", "/dev/xnull", "rw"),),
        sysctls={"net.core.somaxconn": "1024"},
        dns=("192.0.2.1",),
        dns_search=("example.test",),
        dns_opt=("ndots:2",),
        shm_size=1048576,
        no_new_privileges=True,
        seccomp="unconfined",
        tty=True,
        stdin_open=True,
        pid_mode="container:s-db-1",
        ipc_mode="shareable",
        cgroup_parent="/mine",
        oom_score_adj=300,
        group_add=("audio", "1234"),
        mac_address="02:42:ac:11:00:02",
        runtime="runc",
        post_start=(ExecHook(("touch", "/x"), user="1000", env=("A=1",)),),
    )
    got = args(config)
    host = got["host_config"]
    assert host["Privileged"] is True
    assert host["Devices"] == [
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/xnull", "CgroupPermissions": "rw"}
    ]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert (host["Dns"], host["DnsSearch"], host["DnsOptions"]) == (
        ["192.0.2.1"],
        ["example.test"],
        ["ndots:2"],
    )
    assert host["ShmSize"] == 1048576
    assert host["SecurityOpt"] == ["seccomp=unconfined", "no-new-privileges"]
    assert (host["PidMode"], host["IpcMode"], host["CgroupParent"]) == (
        "container:s-db-1",
        "shareable",
        "/mine",
    )
    assert host["OomScoreAdj"] == 300 and host["GroupAdd"] == ["audio", "1234"]
    assert host["Runtime"] == "runc"
    assert got["tty"] is True and got["stdin_open"] is True
    assert got["mac_address"] == "02:42:ac:11:00:02"
    hooks = json.loads(got["labels"][HOOKS_LABEL])
    assert hooks == {
        "post_start": [
            {
                "command": ["touch", "/x"],
                "user": "1000",
                "privileged": False,
                "working_dir": None,
                "env": ["A=1"],
            }
        ]
    }


def test_defaults_add_nothing() -> None:
    got = args(ContainerConfig(name="s-web-1", image="busybox"))
    host = got["host_config"]
    for key in ("Devices", "Sysctls", "Dns", "ShmSize", "SecurityOpt", "PidMode", "GroupAdd"):
        assert key not in host, key
    assert not host.get("Privileged") and HOOKS_LABEL not in got["labels"]


def test_apparmor_where_dockerd_has_none_is_refused() -> None:
    config = ContainerConfig(name="s-web-1", image="busybox", apparmor="my-profile")
    with pytest.raises(PermanentError, match="does not enforce AppArmor"):
        args(config, NoApparmor(fast_reads=False))


def test_apparmor_unconfined_needs_no_apparmor() -> None:
    config = ContainerConfig(name="s-web-1", image="busybox", apparmor="unconfined")
    got = args(config, NoApparmor(fast_reads=False))
    assert got["host_config"]["SecurityOpt"] == ["apparmor=unconfined"]
