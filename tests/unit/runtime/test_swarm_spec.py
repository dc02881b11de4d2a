"""ServiceConfig <-> Engine ServiceSpec (runtime.swarm.spec) and the observed states and
convergence of runtime.swarm.observe, as table cases of plain data."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pyapply.runtime.base import HealthConfig, MountConfig
from pyapply.runtime.services import (
    STACK_NAMESPACE_LABEL,
    Placement,
    Resources,
    RestartPolicy,
    ServiceConfig,
    ServiceNetwork,
    ServicePort,
    SwarmObjectRef,
    UpdatePolicy,
)
from pyapply.runtime.swarm.observe import (
    convergence,
    failing_tasks,
    node_state,
    same_task_spec,
    service_state,
    task_state,
)
from pyapply.runtime.swarm.spec import service_config, service_spec

IMAGE = "127.0.0.1:5000/shop/web@sha256:" + "a" * 64
BASE = ServiceConfig(
    name="shop_web",
    image=IMAGE,
    labels={"io.pyapply.stack": "shop", STACK_NAMESPACE_LABEL: "shop"},
)

# (case, config, a path into the spec, the value expected there)
SPEC_CASES: list[tuple[str, ServiceConfig, tuple[str | int, ...], Any]] = [
    ("image by digest", BASE, ("TaskTemplate", "ContainerSpec", "Image"), IMAGE),
    ("labels", BASE, ("Labels", STACK_NAMESPACE_LABEL), "shop"),
    (
        "container labels",
        msgspec.structs.replace(BASE, container_labels={"a": "b"}),
        ("TaskTemplate", "ContainerSpec", "Labels"),
        {"a": "b"},
    ),
    (
        "command is Args",
        msgspec.structs.replace(BASE, command=("sleep", "1")),
        ("TaskTemplate", "ContainerSpec", "Args"),
        ["sleep", "1"],
    ),
    (
        "entrypoint is Command",
        msgspec.structs.replace(BASE, entrypoint=("/bin/sh", "-c")),
        ("TaskTemplate", "ContainerSpec", "Command"),
        ["/bin/sh", "-c"],
    ),
    (
        "replicated",
        msgspec.structs.replace(BASE, replicas=3),
        ("Mode",),
        {"Replicated": {"Replicas": 3}},
    ),
    ("global", msgspec.structs.replace(BASE, mode="global"), ("Mode",), {"Global": {}}),
    (
        "placement",
        msgspec.structs.replace(
            BASE,
            placement=Placement(
                constraints=("node.hostname==a", "node.labels.zone==x"),
                preferences=("node.labels.zone",),
                max_replicas_per_node=2,
            ),
        ),
        ("TaskTemplate", "Placement"),
        {
            "Constraints": ["node.hostname==a", "node.labels.zone==x"],
            "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}],
            "MaxReplicas": 2,
        },
    ),
    (
        "resources",
        msgspec.structs.replace(
            BASE,
            resources=Resources(
                limit_nano_cpus=500_000_000,
                limit_memory_bytes=64 << 20,
                reserve_memory_bytes=1 << 20,
            ),
        ),
        ("TaskTemplate", "Resources"),
        {
            "Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 64 << 20},
            "Reservations": {"MemoryBytes": 1 << 20},
        },
    ),
    (
        "restart policy in ns",
        msgspec.structs.replace(
            BASE, restart_policy=RestartPolicy("on-failure", delay_s=2, max_attempts=3, window_s=60)
        ),
        ("TaskTemplate", "RestartPolicy"),
        {"Condition": "on-failure", "Delay": 2 * 10**9, "MaxAttempts": 3, "Window": 60 * 10**9},
    ),
    (
        "update config with rollback",
        msgspec.structs.replace(
            BASE,
            update_config=UpdatePolicy(
                parallelism=2, delay_s=1.5, order="start-first", failure_action="rollback"
            ),
        ),
        ("UpdateConfig",),
        {
            "Parallelism": 2,
            "Delay": 1_500_000_000,
            "FailureAction": "rollback",
            "Monitor": 5 * 10**9,
            "MaxFailureRatio": 0.0,
            "Order": "start-first",
        },
    ),
    (
        "rollback config",
        msgspec.structs.replace(BASE, rollback_config=UpdatePolicy(parallelism=0, monitor_s=1)),
        ("RollbackConfig", "Parallelism"),
        0,
    ),
    (
        "endpoint mode",
        msgspec.structs.replace(BASE, endpoint_mode="dnsrr"),
        ("EndpointSpec", "Mode"),
        "dnsrr",
    ),
    (
        "ports ingress and host",
        msgspec.structs.replace(
            BASE,
            ports=(ServicePort(53, None, "udp", "host"), ServicePort(80, 8080)),
        ),
        ("EndpointSpec", "Ports"),
        [
            {"Protocol": "udp", "TargetPort": 53, "PublishedPort": 0, "PublishMode": "host"},
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"},
        ],
    ),
    (
        "networks with aliases",
        msgspec.structs.replace(BASE, networks=(ServiceNetwork("shop_back", ("db",)),)),
        ("TaskTemplate", "Networks"),
        [{"Target": "shop_back", "Aliases": ["db"]}],
    ),
    (
        "healthcheck",
        msgspec.structs.replace(
            BASE, health=HealthConfig(("CMD", "true"), interval_s=2, timeout_s=1, retries=5)
        ),
        ("TaskTemplate", "ContainerSpec", "Healthcheck"),
        {
            "Test": ["CMD", "true"],
            "Interval": 2 * 10**9,
            "Timeout": 10**9,
            "Retries": 5,
            "StartPeriod": 0,
        },
    ),
    (
        "healthcheck disabled",
        msgspec.structs.replace(BASE, health=HealthConfig(("NONE",))),
        ("TaskTemplate", "ContainerSpec", "Healthcheck"),
        {"Test": ["NONE"]},
    ),
    (
        "mounts",
        msgspec.structs.replace(
            BASE,
            mounts=(
                MountConfig("volume", "/data", "shop_data"),
                MountConfig("tmpfs", "/tmp", tmpfs_size=1 << 20),
            ),
        ),
        ("TaskTemplate", "ContainerSpec", "Mounts"),
        [
            {"Type": "volume", "Target": "/data", "ReadOnly": False, "Source": "shop_data"},
            {
                "Type": "tmpfs",
                "Target": "/tmp",
                "ReadOnly": False,
                "TmpfsOptions": {"SizeBytes": 1 << 20},
            },
        ],
    ),
    (
        "a named volume's labels, for the node that makes it",
        msgspec.structs.replace(
            BASE,
            mounts=(MountConfig("volume", "/data", "shop_data"),),
            volume_labels=(("shop_data", (("io.pyapply.stack", "shop"), ("tier", "db"))),),
        ),
        ("TaskTemplate", "ContainerSpec", "Mounts", 0, "VolumeOptions"),
        {"Labels": {"io.pyapply.stack": "shop", "tier": "db"}},
    ),
    (
        "config refs carry the id",
        msgspec.structs.replace(BASE, configs=(SwarmObjectRef("shop_conf-1a2b", "/etc/app.conf"),)),
        ("TaskTemplate", "ContainerSpec", "Configs"),
        [
            {
                "File": {"Name": "/etc/app.conf", "UID": "0", "GID": "0", "Mode": 0o444},
                "ConfigName": "shop_conf-1a2b",
                "ConfigID": "cid1",
            }
        ],
    ),
    (
        "secret refs carry the id",
        msgspec.structs.replace(
            BASE, secrets=(SwarmObjectRef("shop_pw-9f", "pw", "1", "2", 0o400),)
        ),
        ("TaskTemplate", "ContainerSpec", "Secrets", 0, "SecretID"),
        "sid1",
    ),
]


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@pytest.mark.parametrize(
    ("config", "path", "expected"),
    [c[1:] for c in SPEC_CASES],
    ids=[c[0] for c in SPEC_CASES],
)
def test_service_spec_writes_each_field(
    config: ServiceConfig, path: tuple[str | int, ...], expected: Any
) -> None:
    spec = service_spec(
        config, config_ids={"shop_conf-1a2b": "cid1"}, secret_ids={"shop_pw-9f": "sid1"}
    )
    assert _at(spec, path) == expected


@pytest.mark.parametrize("config", [c[1] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_a_written_spec_reads_back_as_its_config(config: ServiceConfig) -> None:
    spec = service_spec(config, config_ids={"shop_conf-1a2b": "cid1"})
    assert service_config(spec) == config


def _stored(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec as the manager stores it: network targets as ids, zero values omitted."""
    out = dict(spec)
    task = dict(out["TaskTemplate"])
    task["Networks"] = [{**n, "Target": "id-" + n["Target"]} for n in task["Networks"]]
    task["ContainerSpec"] = {
        k: v for k, v in task["ContainerSpec"].items() if v not in ([], {}, False)
    }
    task["Placement"] = {k: v for k, v in task["Placement"].items() if v}
    task["ForceUpdate"] = 0
    task["Runtime"] = "container"
    out["TaskTemplate"] = task
    out["UpdateConfig"] = {k: v for k, v in out["UpdateConfig"].items() if v}
    return out


def test_a_stored_spec_reads_back_with_network_names() -> None:
    config = msgspec.structs.replace(
        BASE,
        networks=(ServiceNetwork("shop_a", ("x",)), ServiceNetwork("shop_b")),
        env=("A=1", "B=2"),
        replicas=2,
    )
    names = {"id-shop_a": "shop_a", "id-shop_b": "shop_b"}
    assert service_config(_stored(service_spec(config)), network_names=names) == config


# (case, what someone changed in the stored spec, the field that differs, its new value)
OUT_OF_BAND: list[tuple[str, Any, str, Any]] = [
    (
        "env-add",
        lambda s: s["TaskTemplate"]["ContainerSpec"]["Env"].append("X=1"),
        "env",
        ("A=1", "X=1"),
    ),
    ("replicas", lambda s: s["Mode"]["Replicated"].update(Replicas=5), "replicas", 5),
    (
        "limit",
        lambda s: s["TaskTemplate"]["Resources"]["Limits"].update(MemoryBytes=1 << 30),
        "resources",
        Resources(limit_memory_bytes=1 << 30),
    ),
    (
        "constraint",
        lambda s: s["TaskTemplate"]["Placement"]["Constraints"].append("node.role==manager"),
        "placement",
        Placement(constraints=("node.role==manager",)),
    ),
    (
        "image",
        lambda s: s["TaskTemplate"]["ContainerSpec"].update(Image="busybox:latest"),
        "image",
        "busybox:latest",
    ),
    (
        "published port",
        lambda s: s["EndpointSpec"]["Ports"].append(
            {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8081}
        ),
        "ports",
        (ServicePort(80, 8081),),
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "value"), [c[1:] for c in OUT_OF_BAND], ids=[c[0] for c in OUT_OF_BAND]
)
def test_an_out_of_band_change_is_a_field_difference(change: Any, field: str, value: Any) -> None:
    desired = msgspec.structs.replace(BASE, env=("A=1",))
    spec = service_spec(desired)
    change(spec)
    observed = service_config(spec)
    differ = [
        name
        for name in ServiceConfig.__struct_fields__
        if getattr(observed, name) != getattr(desired, name)
    ]
    assert differ == [field]
    assert getattr(observed, field) == value


def test_absent_fields_read_as_the_swarm_defaults() -> None:
    # a service made by `docker service create busybox` with nothing else
    spec = {
        "Name": "x",
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
        "Mode": {"Replicated": {"Replicas": 1}},
    }
    config = service_config(spec)
    assert config == ServiceConfig(name="x", image="busybox")
    assert config.update_config == UpdatePolicy(parallelism=1, failure_action="pause", monitor_s=5)
    assert config.restart_policy == RestartPolicy("any", 5.0, 0, 0.0)


# ---------------------------------------------------------------------------------------------
# Observed states and convergence

TEMPLATE = {"ContainerSpec": {"Image": IMAGE, "Env": ["A=2"]}, "ForceUpdate": 0}
OLD = {"ContainerSpec": {"Image": IMAGE, "Env": ["A=1"]}, "ForceUpdate": 0}


def _service(replicas: int = 2, update: str | None = None, message: str = "") -> dict[str, Any]:
    info: dict[str, Any] = {
        "ID": "s1",
        "Version": {"Index": 42},
        "Spec": {
            "Name": "shop_web",
            "Labels": {"io.pyapply.stack": "shop"},
            "TaskTemplate": {
                **TEMPLATE,
                "ContainerSpec": {
                    **TEMPLATE["ContainerSpec"],
                    "StopGracePeriod": 10**10,
                    "Isolation": "default",
                },
                "Runtime": "container",
            },
            "Mode": {"Replicated": {"Replicas": replicas}},
        },
    }
    if update:
        info["UpdateStatus"] = {"State": update, "Message": message}
    return info


def _task(
    slot: int,
    state: str,
    desired: str = "running",
    spec: Any = None,
    err: str = "",
    ts: str = "2026-01-01T00:00:01Z",
) -> dict[str, Any]:
    return {
        "ID": f"t{slot}{state}{ts[-3:-1]}",
        "ServiceID": "s1",
        "NodeID": "n1",
        "Slot": slot,
        "Spec": spec if spec is not None else TEMPLATE,
        "DesiredState": desired,
        "Status": {
            "State": state,
            "Err": err,
            "Timestamp": ts,
            "ContainerStatus": {"ContainerID": "c" * 64},
        },
    }


# (case, service, tasks, outcome, running)
CONVERGENCE: list[tuple[str, dict[str, Any], list[dict[str, Any]], str | None, int]] = [
    (
        "all running the current spec",
        _service(),
        [_task(1, "running"), _task(2, "running")],
        "converged",
        2,
    ),
    ("one still starting", _service(), [_task(1, "running"), _task(2, "starting")], None, 1),
    (
        "accepted but not started: old tasks still run",
        _service(),
        [_task(1, "running", spec=OLD), _task(2, "running", spec=OLD)],
        None,
        0,
    ),
    ("updating", _service(update="updating"), [_task(1, "running"), _task(2, "running")], None, 2),
    (
        "completed, old task stopped",
        _service(update="completed"),
        [_task(1, "running"), _task(2, "running"), _task(2, "shutdown", "shutdown", OLD)],
        "converged",
        2,
    ),
    (
        "rolled back",
        _service(update="rollback_completed", message="rollback completed"),
        [_task(1, "running"), _task(2, "running")],
        "rolled_back",
        2,
    ),
    (
        "paused",
        _service(update="paused", message="update paused due to failure"),
        [_task(1, "running")],
        "paused",
        1,
    ),
    ("rollback paused", _service(update="rollback_paused"), [], "paused", 0),
    (
        "crash loop",
        _service(replicas=1),
        [
            _task(1, "failed", "shutdown", err="task: non-zero exit (3)"),
            _task(1, "starting", ts="2026-01-01T00:00:02Z"),
        ],
        None,
        0,
    ),
]


@pytest.mark.parametrize(
    ("service", "tasks", "outcome", "running"),
    [c[1:] for c in CONVERGENCE],
    ids=[c[0] for c in CONVERGENCE],
)
def test_convergence(
    service: dict[str, Any], tasks: list[dict[str, Any]], outcome: str | None, running: int
) -> None:
    got, message, got_running, desired = convergence(service, tasks)
    assert (got, got_running) == (outcome, running)
    assert desired == service["Spec"]["Mode"]["Replicated"]["Replicas"]
    if outcome in ("rolled_back", "paused") and service["UpdateStatus"]["Message"]:
        assert message == service["UpdateStatus"]["Message"]


def test_a_global_service_without_tasks_is_not_yet_converged() -> None:
    info = _service()
    info["Spec"]["Mode"] = {"Global": {}}
    assert convergence(info, [])[0] is None
    assert convergence(info, [_task(0, "running")])[0] == "converged"
    assert convergence(info, [_task(0, "running"), _task(0, "preparing")])[0] is None


def test_a_crash_loop_is_reported_with_its_error() -> None:
    _, message, _, _ = convergence(
        _service(replicas=1),
        [
            _task(1, "failed", "shutdown", err="task: non-zero exit (3)"),
            _task(1, "starting", ts="2026-01-01T00:00:02Z"),
        ],
    )
    assert message == "0/1 tasks running the current spec; last error: task: non-zero exit (3)"


def test_failing_tasks_are_the_latest_failure_of_slots_that_do_not_run() -> None:
    states = [
        task_state(t, TEMPLATE, {"n1": "host-a"})
        for t in (
            _task(1, "failed", "shutdown", err="old", ts="2026-01-01T00:00:01Z"),
            _task(1, "rejected", "shutdown", err="new", ts="2026-01-01T00:00:05Z"),
            _task(2, "failed", "shutdown", err="recovered"),
            _task(2, "running"),
        )
    ]
    failing = failing_tasks(states)
    assert [(t.slot, t.error, t.node) for t in failing] == [(1, "new", "host-a")]


def test_task_specs_compare_without_the_managers_defaults() -> None:
    assert same_task_spec(TEMPLATE, _service()["Spec"]["TaskTemplate"])
    assert not same_task_spec(OLD, _service()["Spec"]["TaskTemplate"])


def test_service_state() -> None:
    state = service_state(
        {**_service(update="completed"), "ServiceStatus": {"RunningTasks": 2, "DesiredTasks": 2}},
        [_task(1, "running"), _task(2, "running")],
        network_names={},
        hostnames={"n1": "host-a"},
    )
    assert (state.id, state.name, state.version) == ("s1", "shop_web", 42)
    assert (state.desired_tasks, state.running_tasks) == (2, 2)
    assert state.update is not None and state.update.state == "completed"
    assert state.spec.env == ("A=2",) and state.spec.replicas == 2
    assert state.failing == ()


def test_node_state() -> None:
    node = node_state(
        {
            "ID": "n2",
            "Description": {"Hostname": "worker"},
            "Spec": {"Role": "worker", "Availability": "drain", "Labels": {"zone": "b"}},
            "Status": {"State": "down", "Addr": "10.254.14.2"},
        }
    )
    assert (node.hostname, node.role, node.availability, node.state, node.addr, node.leader) == (
        "worker",
        "worker",
        "drain",
        "down",
        "10.254.14.2",
        False,
    )
    assert node.labels == {"zone": "b"}
