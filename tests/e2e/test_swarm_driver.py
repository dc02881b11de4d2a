"""The swarm driver (runtime.swarm) against a real swarm: the main dockerd as a single-node
swarm, then with a second dockerd in its own network namespace joined as a worker.

Every object is named with a random prefix and removed at the end; the main dockerd leaves
the swarm only if these tests made it a manager (tests/e2e/swarm.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pyapply.runtime.base import Conflict
from pyapply.runtime.services import (
    STACK_NAMESPACE_LABEL,
    OverlayNetworkConfig,
    Placement,
    RestartPolicy,
    ServiceConfig,
    ServiceNetwork,
    ServicePort,
    SwarmObjectConfig,
    SwarmObjectRef,
    UpdatePolicy,
)
from pyapply.runtime.swarm.driver import SwarmRuntime
from tests.e2e.runtimes import PYAPPLY
from tests.e2e.swarm import (
    HOST_ADDR,
    TEST_REF,
    HostLink,
    NetnsForwarder,
    SecondDaemon,
    SwarmHost,
    docker,
    new_prefix,
    pinned_test_image,
    remove_prefixed,
    run,
    wait_for,
)

pytestmark = pytest.mark.e2e

# A web server answering with its container's hostname (the first 12 digits of its id).
HTTPD = ("sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www")


class SwarmEnv(msgspec.Struct):
    prefix: str
    link: HostLink
    swarm: SwarmHost
    runtime: SwarmRuntime
    image: str

    @property
    def labels(self) -> dict[str, str]:
        return {"io.pyapply.stack": self.prefix, STACK_NAMESPACE_LABEL: self.prefix}

    def service(self, name: str, **fields: object) -> ServiceConfig:
        """A quick service: the test image pinned by digest, sleeping; init so that a stop
        is quick (sleep as pid 1 ignores SIGTERM), updates one at a time, 1 s monitor."""
        base = ServiceConfig(
            name=f"{self.prefix}_{name}",
            image=self.image,
            labels=self.labels,
            container_labels={STACK_NAMESPACE_LABEL: self.prefix},
            command=("sleep", "600"),
            init=True,
            stop_grace_period_s=2,
            restart_policy=RestartPolicy(delay_s=0.5),
            update_config=UpdatePolicy(parallelism=1, monitor_s=1),
            rollback_config=UpdatePolicy(parallelism=0, monitor_s=1),
        )
        return msgspec.structs.replace(base, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def swarm_env() -> Iterator[SwarmEnv]:
    prefix = new_prefix()
    link = HostLink(prefix)
    swarm = SwarmHost(HOST_ADDR)
    runtime = SwarmRuntime()
    try:
        link.create()
        swarm.start()
        # the path to a swarm: the image in a registry, pinned to its digest there
        in_registry = pinned_test_image()
        image = runtime.pin_image(TEST_REF)
        assert image == f"{TEST_REF}@{in_registry.partition('@')[2]}"
        assert runtime.pin_image(image) == image
        yield SwarmEnv(prefix, link, swarm, runtime, image)
    finally:
        remove_prefixed(prefix)
        runtime.close()
        swarm.stop()
        link.remove()


def _differences(a: ServiceConfig, b: ServiceConfig) -> dict[str, tuple[object, object]]:
    return {
        name: (getattr(a, name), getattr(b, name))
        for name in ServiceConfig.__struct_fields__
        if getattr(a, name) != getattr(b, name)
    }


def _exec(container: str, *argv: str, host: str | None = None) -> str:
    return docker("exec", container, *argv, host=host)


def test_service_lifecycle_on_a_single_node_swarm(swarm_env: SwarmEnv) -> None:
    env, rt = swarm_env, swarm_env.runtime
    net = f"{env.prefix}_back"
    assert rt.create_overlay_network(
        OverlayNetworkConfig(net, attachable=True, internal=True, labels=env.labels)
    )
    [network] = wait_for(
        lambda: [n for n in rt.list_overlay_networks({"io.pyapply.stack": env.prefix}) if n.driver],
        10,
        f"network {net} to be allocated",
    )
    assert (network.name, network.driver, network.scope) == (net, "overlay", "swarm")
    assert network.attachable and network.internal

    conf, secret = f"{env.prefix}_conf-1", f"{env.prefix}_pw-1"
    rt.create_object("config", SwarmObjectConfig(conf, b"level=debug\n", env.labels))
    rt.create_object("secret", SwarmObjectConfig(secret, b"s3cret", env.labels))
    assert [o.name for o in rt.list_objects("config", env.labels)] == [conf]
    [observed_secret] = rt.list_objects("secret", env.labels)
    assert observed_secret.name == secret and observed_secret.data is None
    # idempotent: the same object again is success
    rt.create_object("config", SwarmObjectConfig(conf, b"level=debug\n", env.labels))

    desired = env.service(
        "web",
        replicas=3,
        env=("LEVEL=1",),
        networks=(ServiceNetwork(net, ("web",)),),
        configs=(SwarmObjectRef(conf, "/etc/app.conf"),),
        secrets=(SwarmObjectRef(secret, "pw", mode=0o400),),
    )
    service_id = rt.create_service(desired)
    assert rt.create_service(desired) == service_id  # idempotent
    with pytest.raises(Conflict):
        rt.create_service(msgspec.structs.replace(desired, labels={"io.pyapply.stack": "other"}))
    result = rt.wait_converged(desired.name, 60)
    assert result.outcome == "converged", result
    assert (result.running, result.desired) == (3, 3)

    [state] = rt.list_services({"io.pyapply.stack": env.prefix})
    assert state.id == service_id and (state.running_tasks, state.desired_tasks) == (3, 3)
    assert _differences(state.spec, desired) == {}
    tasks = [t for t in rt.service_tasks(desired.name) if t.running]
    assert len(tasks) == 3 and all(t.container_id and t.current for t in tasks)
    # docker's own stack tools see the stack by its namespace label
    assert docker("stack", "services", "--format", "{{.Name}}", env.prefix) == desired.name
    assert docker("stack", "ps", "-q", env.prefix).split() != []
    container = tasks[0].container_id
    assert _exec(container, "cat", "/etc/app.conf") == "level=debug"
    assert _exec(container, "cat", "/run/secrets/pw") == "s3cret"
    assert _exec(container, "stat", "-c", "%a", "/run/secrets/pw") == "400"
    assert "LEVEL=1" in _exec(container, "env").split()

    # an env change is a rolling update, waited for
    updated = msgspec.structs.replace(desired, env=("LEVEL=2",))
    start = time.monotonic()
    rt.update_service(desired.name, updated, state.version)
    result = rt.wait_converged(desired.name, 60)
    rolling_s = time.monotonic() - start
    assert result.outcome == "converged", result
    state2 = rt.get_service(desired.name)
    assert state2 is not None and state2.id == service_id  # updated in place, not recreated
    assert state2.update is not None and state2.update.state == "completed"
    assert _differences(state2.spec, updated) == {}
    new_tasks = [t for t in rt.service_tasks(desired.name) if t.running]
    assert len(new_tasks) == 3 and {t.id for t in new_tasks}.isdisjoint({t.id for t in tasks})
    assert "LEVEL=2" in _exec(new_tasks[0].container_id, "env").split()
    print(f"rolling update of 3 replicas: {rolling_s:.1f}s")

    # a stale version is a Conflict (observe again), not a silent overwrite
    with pytest.raises(Conflict, match="changed since it was read"):
        rt.update_service(desired.name, updated, state.version)

    # an update whose tasks fail is rolled back by the swarm
    failing = msgspec.structs.replace(
        updated,
        env=("LEVEL=3",),
        command=("sh", "-c", "exit 3"),
        update_config=UpdatePolicy(parallelism=1, monitor_s=2, failure_action="rollback"),
    )
    rt.update_service(desired.name, failing, state2.version)
    result = rt.wait_converged(desired.name, 60)
    assert result.outcome == "rolled_back", result
    assert result.running == 3
    state3 = rt.get_service(desired.name)
    assert state3 is not None and state3.spec.env == ("LEVEL=2",)
    assert state3.update is not None and state3.update.state == "rollback_completed"

    # out of band: `docker service update --env-add --replicas` shows as field differences
    docker("service", "update", "--detach", "--env-add", "X=1", "--replicas", "4", desired.name)
    state4 = rt.get_service(desired.name)
    assert state4 is not None
    drift = _differences(state4.spec, updated)
    assert drift["env"] == (("LEVEL=2", "X=1"), ("LEVEL=2",))
    assert drift["replicas"] == (4, 3)
    print(f"out-of-band fields: {sorted(drift)}")

    # a config in use cannot go; once the service is gone everything can
    with pytest.raises(Conflict):
        rt.remove_object("config", conf)
    rt.remove_service(desired.name)
    rt.remove_service(desired.name)  # gone is success
    assert rt.get_service(desired.name) is None
    assert rt.wait_converged(desired.name, 1).outcome == "missing"
    wait_for(lambda: _try_remove(rt, conf), 20, f"config {conf} to be removable")
    rt.remove_object("secret", secret)
    wait_for(lambda: _try_remove_network(rt, net), 20, f"network {net} to be removable")
    # the manager drops a removed network from its store a moment later
    wait_for(
        lambda: rt.list_overlay_networks({"io.pyapply.stack": env.prefix}) == [],
        20,
        f"network {net} to be gone",
    )
    assert rt.list_objects("config", env.labels) == rt.list_objects("secret", env.labels) == []


def _try_remove(rt: SwarmRuntime, name: str) -> bool:
    try:
        rt.remove_object("config", name)
    except Conflict:
        return False
    return True


def _try_remove_network(rt: SwarmRuntime, name: str) -> bool:
    from pyapply.runtime.base import TransientError

    try:
        rt.remove_overlay_network(name)
    except TransientError:
        return False
    return True


def test_global_service_with_a_host_mode_port(swarm_env: SwarmEnv) -> None:
    """A host-mode port is published on the node that runs the task. (The ingress routing
    mesh and virtual IPs need IPVS, which this kernel is built without: CONFIG_IP_VS is not
    set and modules cannot be loaded; a published ingress port refuses connections.)"""
    env, rt = swarm_env, swarm_env.runtime
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = env.service(
        "edge",
        mode="global",
        command=HTTPD,
        ports=(ServicePort(8080, port, mode="host"),),
    )
    rt.create_service(config)
    try:
        result = rt.wait_converged(config.name, 60)
        assert result.outcome == "converged", result
        nodes = [n for n in rt.list_nodes() if n.state == "ready" and n.availability == "active"]
        assert result.desired == len(nodes)
        [task] = [t for t in rt.service_tasks(config.name) if t.running]
        assert task.slot is None  # global: one task per node, no slots
        page = wait_for(lambda: _http(f"http://127.0.0.1:{port}/"), 10, "the host-mode port")
        assert page == task.container_id[:12]
        [state] = [s for s in rt.list_services(env.labels) if s.name == config.name]
        assert _differences(state.spec, config) == {}
    finally:
        rt.remove_service(config.name)


def _http(url: str) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return str(answer.read().decode().strip())
    except OSError:
        return ""


SPREAD_STACK = """\
name: {stack}
services:
  web:
    image: {image}
    command: ["sh", "-c", "sleep 3; touch /tmp/ready; exec sleep 600"]
    init: true
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "test", "-e", "/tmp/ready"]
      interval: 1s
      start_period: 20s
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      placement: {{preferences: [{{spread: node.hostname}}]}}
      update_config: {{parallelism: 0, monitor: 1s}}
"""


def pyapply(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYAPPLY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYAPPLY_RUNTIME": "swarm"},
    )


def get_doc(stack: str) -> dict[str, Any]:
    r = pyapply("get", "--stack", stack, "-o", "json")
    assert r.returncode == 0, r.stderr
    [doc] = json.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc


def test_two_node_swarm(swarm_env: SwarmEnv, tmp_path: Path) -> None:
    env, rt = swarm_env, swarm_env.runtime
    stack = f"{env.prefix}p"
    manager_addr = env.swarm.node_addr
    assert manager_addr and not manager_addr.startswith("127."), (
        f"the swarm's manager advertises {manager_addr}, which a node in another network "
        "namespace cannot reach"
    )
    worker_name = f"{env.prefix}-w"
    second = SecondDaemon(env.link, worker_name)
    forwarder = NetnsForwarder(env.link.netns, ("127.0.0.1", 5000), ("127.0.0.1", 5000))
    manager = next(n for n in rt.list_nodes() if n.role == "manager" and n.leader)
    zone = f"{env.prefix}zone"
    try:
        start_s = second.start()
        join_s = second.join(env.swarm.worker_token(), manager_addr)
        joined = time.monotonic()
        worker = wait_for(
            lambda: next(
                (n for n in rt.list_nodes() if n.id == second.node_id and n.state == "ready"), None
            ),
            30,
            "the worker to be ready",
        )
        print(
            f"second dockerd up in {start_s:.1f}s, joined in {join_s:.1f}s, "
            f"ready {time.monotonic() - joined:.1f}s later"
        )
        assert (worker.hostname, worker.role, worker.availability) == (
            worker_name,
            "worker",
            "active",
        )
        docker("node", "update", "--label-add", f"{zone}=a", manager.id)

        net = f"{env.prefix}_mesh"
        rt.create_overlay_network(OverlayNetworkConfig(net, attachable=True, labels=env.labels))
        on_manager = env.service(
            "a",
            networks=(ServiceNetwork(net),),
            placement=Placement(constraints=(f"node.labels.{zone}==a",)),
        )
        on_worker = env.service(
            "b",
            command=HTTPD,
            networks=(ServiceNetwork(net, ("bee",)),),
            placement=Placement(constraints=(f"node.hostname=={worker_name}",)),
            # DNS round robin: a virtual IP needs IPVS, which this kernel lacks (dockerd logs
            # "Could not get ipvs family information from the kernel"; no /proc/sys/net/ipv4/vs)
            endpoint_mode="dnsrr",
        )
        spread = env.service(
            "spread", replicas=2, placement=Placement(preferences=("node.hostname",))
        )
        for config in (on_manager, on_worker, spread):
            rt.create_service(config)
        for config in (on_manager, on_worker, spread):
            result = rt.wait_converged(config.name, 60)
            assert result.outcome == "converged", (result, second.log_tail())

        def nodes_of(name: str) -> list[str]:
            return sorted(t.node for t in rt.service_tasks(name) if t.running)

        assert nodes_of(on_manager.name) == [manager.hostname]
        assert nodes_of(on_worker.name) == [worker_name]
        assert nodes_of(spread.name) == sorted([manager.hostname, worker_name])

        # a stack of pyapply's, spread on both nodes; its tasks are ready 3 s after they
        # start (a healthcheck), so that moving them takes a moment pyapply can see
        compose = tmp_path / "compose.yaml"
        compose.write_text(SPREAD_STACK.format(stack=stack, image=TEST_REF))
        r = pyapply("-f", str(compose), "--wait-timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = get_doc(stack)
        assert doc["health"] == "Healthy", doc
        assert {n["hostname"]: n["tasks"] for n in doc["nodes"]} == {
            manager.hostname: 1,
            worker_name: 1,
        }

        # the overlay carries traffic from a task on the manager to one on the worker
        [a_task] = [t for t in rt.service_tasks(on_manager.name) if t.running]
        [b_task] = [t for t in rt.service_tasks(on_worker.name) if t.running]
        page = wait_for(
            lambda: run(
                # busybox 1.35's `wget -T` segfaults: timeout(1) bounds it instead
                "docker", "exec", a_task.container_id,
                "timeout", "5", "wget", "-q", "-O-", "http://bee:8080/",
                check=False,
            ).stdout.strip(),
            20,
            "an answer over the overlay",
        )  # fmt: skip
        assert page == b_task.container_id[:12]

        # draining the worker moves its tasks to the manager; pyapply says the stack is
        # Progressing while its task is placed again, then Healthy
        docker("node", "update", "--availability", "drain", second.node_id)
        seen: list[str] = []

        def healthy_again() -> dict[str, Any] | None:
            doc = get_doc(stack)
            seen.append(doc["health"])
            return doc if doc["health"] == "Healthy" and "Progressing" in seen else None

        doc = wait_for(healthy_again, 60, "Progressing, then Healthy after the drain")
        assert {n["hostname"]: (n["availability"], n["tasks"]) for n in doc["nodes"]} == {
            manager.hostname: ("active", 2),
            worker_name: ("drain", 0),
        }, doc
        assert "Degraded" not in seen, seen
        wait_for(
            lambda: nodes_of(spread.name) == [manager.hostname] * 2,
            40,
            "the spread service's tasks to leave the drained worker",
        )
        assert rt.wait_converged(spread.name, 30).outcome == "converged"
        drained = next(n for n in rt.list_nodes() if n.id == second.node_id)
        assert drained.availability == "drain"

        # a worker whose daemon stops is reported down
        second.stop_daemon()
        stopped = time.monotonic()
        down = wait_for(
            lambda: next(
                (n for n in rt.list_nodes() if n.id == second.node_id and n.state == "down"), None
            ),
            40,
            "the stopped worker to be reported down",
        )
        assert down.hostname == worker_name
        print(f"stopped worker reported down after {time.monotonic() - stopped:.1f}s")
        # ... and by pyapply get
        r = pyapply("get", "--stack", stack)
        assert r.returncode == 0, r.stderr
        assert f"  ! node {worker_name} is down" in r.stdout, r.stdout
        assert {n["hostname"]: n["state"] for n in get_doc(stack)["nodes"]} == {
            manager.hostname: "ready",
            worker_name: "down",
        }
        r = pyapply("down", "--stack", stack)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        pyapply("down", "--stack", stack)
        forwarder.close()
        for name in ("a", "b", "spread"):
            rt.remove_service(f"{env.prefix}_{name}")
        second.remove()
        docker("node", "update", "--label-rm", zone, manager.id, check=False)
    assert second.node_id not in {n.id for n in rt.list_nodes()}
    assert json.loads(docker("node", "inspect", manager.id))[0]["Spec"].get("Labels", {}) == {
        k: v for k, v in manager.labels.items()
    }
