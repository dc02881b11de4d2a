"""The isolation, resolver, terminal, platform and hook fields of a service
(reconciler/manifest/isolation.py): each syntax form -> the model, `config` and back, the
runtime's config (translate), located errors for what cannot run, and the spec hash that
makes a change recreate the container with the field named."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from manifest_support import errors, load_text, only_stack, warnings

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import field_diffs
from pyapply.reconciler.core.model import Dependency, Device, Hook
from pyapply.reconciler.core.translate import container_config, desired_state, hash_input
from pyapply.reconciler.manifest import dump
from pyapply.reconciler.manifest.isolation import host_platform_name
from pyapply.runtime.base import DeviceMapping, ExecHook

DOC = """\
name: t
services:
  svc:
    image: img
{body}
  other:
    image: img
"""

HOST = host_platform_name()

CASES: list[tuple[str, str, str, Any]] = [
    ("privileged", "privileged: true", "privileged", True),
    ("privileged-string", 'privileged: "yes"', "privileged", True),
    ("privileged-false", "privileged: false", "privileged", False),
    ("tty", "tty: true", "tty", True),
    ("stdin_open", "stdin_open: true", "stdin_open", True),
    ("device-short", "devices: [/dev/null]", "devices", (Device("/dev/null", "/dev/null"),)),
    (
        "device-target",
        "devices: ['/dev/null:/dev/xnull:rw']",
        "devices",
        (Device("/dev/null", "/dev/xnull", "rw"),),
    ),
    (
        "device-permissions-only",
        "devices: ['/dev/null:r']",
        "devices",
        (Device("/dev/null", "/dev/null", "r"),),
    ),
    (
        "device-long",
        "devices: [{source: /dev/zero, target: /dev/z, permissions: rwm}]",
        "devices",
        (Device("/dev/zero", "/dev/z"),),
    ),
    (
        "sysctls-map",
        "sysctls: {net.core.somaxconn: 1024, net/ipv4/ip_forward: '1'}",
        "sysctls",
        (("net.core.somaxconn", "1024"), ("net.ipv4.ip_forward", "1")),
    ),
    (
        "sysctls-list",
        "sysctls: [kernel.shmmax=1000, fs.mqueue.msg_max=20]",
        "sysctls",
        (("fs.mqueue.msg_max", "20"), ("kernel.shmmax", "1000")),
    ),
    ("dns-string", "dns: 1.1.1.1", "dns", ("1.1.1.1",)),
    ("dns-list", "dns: [1.1.1.1, '::1']", "dns", ("1.1.1.1", "::1")),
    ("dns_search", "dns_search: [a.example, b.example]", "dns_search", ("a.example", "b.example")),
    ("dns_opt", "dns_opt: [ndots:2, rotate]", "dns_opt", ("ndots:2", "rotate")),
    ("shm_size", "shm_size: 64m", "shm_size", 64 * 1024 * 1024),
    ("shm_size-bytes", "shm_size: 1000", "shm_size", 1000),
    ("nnp", "security_opt: [no-new-privileges]", "no_new_privileges", True),
    ("nnp-colon", "security_opt: ['no-new-privileges:true']", "no_new_privileges", True),
    ("nnp-false", "security_opt: [no-new-privileges=false]", "no_new_privileges", False),
    ("apparmor", "security_opt: [apparmor=docker-default]", "apparmor", "docker-default"),
    ("pid-host", "pid: host", "pid", "host"),
    ("pid-service", "pid: service:other", "pid", "service:other"),
    ("ipc-shareable", "ipc: shareable", "ipc", "shareable"),
    ("ipc-service", "ipc: service:other", "ipc", "service:other"),
    ("ipc-container", "ipc: container:monitor", "ipc", "container:monitor"),
    ("cgroup_parent", "cgroup_parent: my/group", "cgroup_parent", "my/group"),
    ("oom", "oom_score_adj: -500", "oom_score_adj", -500),
    ("oom-string", "oom_score_adj: '200'", "oom_score_adj", 200),
    ("group_add", "group_add: [audio, 1234, audio]", "group_add", ("audio", "1234")),
    ("mac", "mac_address: 02:42:AC:11:00:02", "mac_address", "02:42:ac:11:00:02"),
    ("platform", f"platform: {HOST}", "platform", HOST),
    ("runtime", "runtime: runc", "runtime", "runc"),
    (
        "post_start",
        "post_start: [{command: echo hi, user: '1000', privileged: true, working_dir: /tmp, "
        "environment: [B=2, A=1]}]",
        "post_start",
        (Hook(("echo", "hi"), "1000", True, "/tmp", (("A", "1"), ("B", "2"))),),
    ),
    (
        "pre_stop",
        "pre_stop: [{command: [sh, -c, 'kill 1']}, {command: sync}]",
        "pre_stop",
        (Hook(("sh", "-c", "kill 1")), Hook(("sync",))),
    ),
]


def load_service(here: Path, body: str) -> Any:
    text = DOC.format(body=textwrap.indent(body, "    "))
    return only_stack(load_text(here, text)).service("svc")


@pytest.mark.parametrize(
    ("body", "attr", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_fields_load_into_the_model_and_round_trip(
    here: Path, body: str, attr: str, want: Any
) -> None:
    svc = load_service(here, body)
    assert getattr(svc, attr) == want
    # what `config` prints loads into the same model (the round trip)
    stack = only_stack(load_text(here, DOC.format(body=textwrap.indent(body, "    "))))
    printed = dump.dump_yaml([dump.compose_document(stack)])
    assert only_stack(load_text(here, printed, name="again.yaml")) == stack


def test_these_fields_no_longer_warn(here: Path) -> None:
    body = "\n".join(c[1] for c in CASES if c[0] in ("privileged", "tty", "dns-list", "shm_size"))
    assert warnings(here, DOC.format(body=textwrap.indent(body, "    "))) == []


def test_a_service_namespace_orders_after_it(here: Path) -> None:
    svc = load_service(here, "pid: service:other\nipc: service:other")
    assert svc.depends_on == (Dependency("other"),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sysctls: {kernel.hostname: x}",
            'stack.yaml:5:15: services.svc.sysctls["kernel.hostname"]: sysctl kernel.hostname is not '
            "namespaced: a container cannot have its own value, and setting it would change the "
            "whole host (namespaced: net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*)",
        ),
        ("sysctls: [vm.swappiness=1]", "services.svc.sysctls[0]: sysctl vm.swappiness is not"),
        (
            "ipc: host\nsysctls: {kernel.shmmax: 1}",
            'sysctl kernel.shmmax would change the host\'s, since "ipc: host" shares',
        ),
        ("sysctls: [net.core.somaxconn]", "is not of the form NAME=value"),
        ("devices: ['/dev/null:/dev/x:rwx']", 'device permissions "rwx" must be letters of'),
        ("devices: [dev/null]", "both paths must be absolute"),
        (
            "devices: [/dev/no-such-device]",
            'services.svc.devices[0]: device "/dev/no-such-device" does not exist on this host',
        ),
        ("devices: [/etc/hostname]", 'services.svc.devices[0]: "/etc/hostname" is not a device'),
        ("dns: [not-an-ip]", 'services.svc.dns[0]: "not-an-ip" is not an IP address'),
        ("shm_size: 0", "services.svc.shm_size: must be more than 0 bytes"),
        ("shm_size: lots", 'services.svc.shm_size: must be a size such as "128m"'),
        (
            "pid: private",
            'services.svc.pid: must be "host", "service:<name>" or "container:<name>", got '
            '"private"',
        ),
        ("pid: service:svc", '"pid: service:svc" names the service itself'),
        ("ipc: service:nope", 'services.svc.ipc: depends on unknown service "nope"'),
        ("ipc: 'container:'", 'must be "host", "private", "shareable", "service:<name>" or'),
        ("oom_score_adj: 2000", "must be between -1000 and 1000, got 2000"),
        ("group_add: ['a b']", 'services.svc.group_add[0]: "a b" is not a group name or id'),
        ("mac_address: nope", "must be a MAC address such as 02:42:ac:11:00:02"),
        ("mac_address: 02:42:ac:11:00:02\nscale: 2", "one MAC address cannot be given to more"),
        ("cgroup_parent: ../up", 'services.svc.cgroup_parent: "../up" is not a cgroup path'),
        ("runtime: 'a b'", 'services.svc.runtime: "a b" is not an OCI runtime'),
        ("platform: linux/s390x-not", "cannot run on this host, which is " + HOST),
        (
            "post_start: [{user: root}]",
            'services.svc.post_start[0]: missing required field "command"',
        ),
        ("pre_stop: [{command: []}]", "services.svc.pre_stop[0].command: the hook's command is"),
        ("pre_stop: [{command: x, working_dir: tmp}]", '"tmp" must be an absolute path'),
        ("security_opt: [no-new-privileges=maybe]", "no-new-privileges takes true or false"),
        ("security_opt: [apparmor=]", "apparmor needs a profile name"),
    ],
)
def test_what_cannot_run_is_a_located_error(here: Path, body: str, message: str) -> None:
    got = errors(here, DOC.format(body=textwrap.indent(body, "    ")))
    assert any(message in e and e.startswith("stack.yaml:") for e in got), got


def test_another_platform_needs_a_runtime_made_for_it(here: Path) -> None:
    body = "platform: wasi/wasm\nruntime: io.containerd.wasmedge.v1"
    got = warnings(here, DOC.format(body=textwrap.indent(body, "    ")))
    assert got == [
        f'stack.yaml:5:15: warning: services.svc.platform: platform "wasi/wasm" is not this '
        f'host\'s ({HOST}): only the runtime "io.containerd.wasmedge.v1" can run it (on docker, '
        "if dockerd knows it)"
    ]


def test_config_renders_a_missing_device_with_a_warning(here: Path) -> None:
    text = DOC.format(body="    devices: [/dev/no-such-device]")
    (here / "stack.yaml").write_text(text)
    from pyapply.reconciler.manifest.loader import load

    loaded = load(["stack.yaml"], environ={}, strict=False)
    assert [str(w) for w in loaded.warnings] == [
        'stack.yaml:5:15: warning: services.svc.devices[0]: device "/dev/no-such-device" does '
        "not exist on this host"
    ]


FULL = """\
privileged: true
devices: ['/dev/null:/dev/xnull:rw']
sysctls: {net.core.somaxconn: 1024}
dns: [192.0.2.1]
dns_search: [example.test]
dns_opt: [ndots:2]
shm_size: 1m
security_opt: [no-new-privileges, apparmor=unconfined]
tty: true
stdin_open: true
pid: service:other
ipc: service:other
cgroup_parent: /mine
oom_score_adj: 10
group_add: [audio]
mac_address: 02:42:ac:11:00:02
runtime: runc
post_start: [{command: [touch, /x], environment: {A: '1'}}]
pre_stop: [{command: [rm, /x], user: nobody, privileged: true, working_dir: /}]
"""


def test_translate_gives_the_runtime_every_field(here: Path) -> None:
    stack = only_stack(load_text(here, DOC.format(body=textwrap.indent(FULL, "    "))))
    cfg = container_config(stack, stack.service("svc"), 1, file_paths={})
    assert cfg.privileged and cfg.tty and cfg.stdin_open and cfg.no_new_privileges
    assert cfg.devices == (DeviceMapping("/dev/null", "/dev/xnull", "rw"),)
    assert dict(cfg.sysctls) == {"net.core.somaxconn": "1024"}
    assert (cfg.dns, cfg.dns_search, cfg.dns_opt) == (
        ("192.0.2.1",),
        ("example.test",),
        ("ndots:2",),
    )
    assert cfg.shm_size == 1024 * 1024 and cfg.apparmor == "unconfined"
    # a service's namespace is its first container's, by the runtime's name
    assert cfg.pid_mode == cfg.ipc_mode == "container:t-other-1"
    assert (cfg.cgroup_parent, cfg.oom_score_adj, cfg.group_add) == ("/mine", 10, ("audio",))
    assert (cfg.mac_address, cfg.runtime, cfg.platform) == ("02:42:ac:11:00:02", "runc", None)
    assert cfg.post_start == (ExecHook(("touch", "/x"), env=("A=1",)),)
    assert cfg.pre_stop == (ExecHook(("rm", "/x"), "nobody", True, "/", ()),)


def test_a_changed_field_changes_the_hash_and_is_named(here: Path) -> None:
    def desired(body: str) -> Any:
        stack = only_stack(load_text(here, DOC.format(body=textwrap.indent(body, "    "))))
        return desired_state(stack, revision="r", file_contents={}, files_root="/f")

    plain = desired("command: [sleep, '1']")
    # a field at its default leaves the hash of a container made before it existed alone
    bare = container_config(
        only_stack(load_text(here, DOC.format(body="    command: [sleep, '1']"))),
        plain.services[1],
        1,
        file_paths={},
    )
    assert "privileged" not in identity.canonical_json(hash_input(bare))
    for body, name in [
        ("privileged: true", "privileged"),
        ("dns: [192.0.2.9]", "dns"),
        ("sysctls: {net.core.somaxconn: 8}", "sysctls.net.core.somaxconn"),
        ("tty: true", "tty"),
        ("pre_stop: [{command: sync}]", "pre_stop"),
        ("security_opt: [no-new-privileges]", "no_new_privileges"),
    ]:
        changed = desired(f"command: [sleep, '1']\n{body}")
        old = plain.containers[1]
        new = changed.containers[1]
        assert old.spec_hash != new.spec_hash, body
        assert name in [d.field for d in field_diffs(old.applied, new.applied)], body


def test_the_swarm_runtime_refuses_what_it_does_not_run(here: Path) -> None:
    from pyapply.reconciler.manifest.swarm_check import check_swarm

    body = "privileged: true\npost_start: [{command: x}]\nsysctls: {net.core.somaxconn: 1}"
    loaded = load_text(here, DOC.format(body=textwrap.indent(body, "    ")))
    got = [str(p) for p in check_swarm(loaded) if p.severity == "error"]
    assert got == [
        "stack.yaml:5:5: services.svc.privileged: the swarm runtime does not run privileged "
        "tasks (runtime swarm)",
        "stack.yaml:7:5: services.svc.sysctls: the swarm runtime does not set sysctls "
        "(runtime swarm)",
        "stack.yaml:6:5: services.svc.post_start: the swarm runtime does not run lifecycle "
        "hooks (runtime swarm)",
    ]


def test_a_pyapply_v1_stack_holds_the_same_fields(here: Path) -> None:
    compose = only_stack(load_text(here, DOC.format(body=textwrap.indent(FULL, "    "))))
    stack = dump.dump_yaml([dump.stack_document(compose)])
    assert "apiVersion: pyapply/v1" in stack
    v1 = only_stack(load_text(here, stack, name="v1.yaml"))
    assert v1.service("svc") == compose.service("svc")
    assert v1.service("svc").pre_stop[0].privileged is True
