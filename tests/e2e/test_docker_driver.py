"""The Docker driver against the real dockerd: creation, observation, idempotency, errors.

Every object a test creates is named `pyatest-<random>...` and labelled
io.pyapply.stack=<that prefix>; the `stack` fixture removes all of them afterwards, pass or
fail. A missing dockerd fails the tests (in the `raw` fixture); it never skips them.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from pyapply.runtime.base import (
    Attachment,
    Conflict,
    ContainerConfig,
    ContainerState,
    Event,
    HealthConfig,
    MountConfig,
    NetworkConfig,
    NotFound,
    PermanentError,
    PortBinding,
    Runtime,
    TransientError,
    Ulimit,
    Unavailable,
    VolumeConfig,
)
from pyapply.runtime.docker.driver import DockerRuntime
from pyapply.runtime.docker.normalise import split_image_ref

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

IMAGE = "pyapply-test/busybox:latest"
STACK = "io.pyapply.stack"
HASH = "io.pyapply.spec-hash"


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def raw() -> Iterator[Any]:
    """A plain SDK client, for set-up checks and clean-up independent of the driver."""
    try:
        client = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=60)
        client.ping()
        client.inspect_image(IMAGE)
    except (docker.errors.DockerException, OSError) as e:
        raise RuntimeError(f"dockerd with image {IMAGE} is required for these tests: {e}") from e
    yield client
    client.close()


@pytest.fixture
def stack(raw: Any) -> Iterator[str]:
    """A unique prefix; everything labelled with it or named after it is removed afterwards."""
    prefix = f"pyatest-{secrets.token_hex(4)}"
    yield prefix
    problems: list[str] = []
    for _ in range(3):
        problems = []
        by_label = {"label": [f"{STACK}={prefix}"]}
        containers = raw.containers(all=True, filters=by_label) + raw.containers(
            all=True, filters={"name": prefix}
        )
        for c in {c["Id"]: c for c in containers}.values():
            try:
                raw.remove_container(c["Id"], force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"container {c['Names']}: {e}")
        networks = raw.networks(filters=by_label) + raw.networks(filters={"name": prefix})
        for n in {n["Id"]: n for n in networks}.values():
            try:
                raw.remove_network(n["Id"])
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"network {n['Name']}: {e}")
        volumes = (raw.volumes(filters=by_label).get("Volumes") or []) + (
            raw.volumes(filters={"name": prefix}).get("Volumes") or []
        )
        for v in {v["Name"]: v for v in volumes}.values():
            try:
                raw.remove_volume(v["Name"], force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"volume {v['Name']}: {e}")
        if not problems:
            break
        time.sleep(0.5)
    assert not problems, f"clean-up of {prefix} failed: {problems}"


@pytest.fixture
def rt(raw: Any) -> Iterator[DockerRuntime]:
    runtime = DockerRuntime(timeout=30)
    yield runtime
    runtime.close()


def labels(prefix: str, spec_hash: str = "h1", service: str = "web") -> dict[str, str]:
    return {STACK: prefix, HASH: spec_hash, "io.pyapply.service": service}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def random_subnet() -> tuple[str, str, str]:
    """A /24 unlikely to collide with other tests: (subnet, gateway, a free host address)."""
    net = f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(250) + 1}"
    return f"{net}.0/24", f"{net}.1", f"{net}.42"


def sleeper(prefix: str, name: str = "web-1", **kw: Any) -> ContainerConfig:
    args: dict[str, Any] = {
        "name": f"{prefix}-{name}",
        "image": IMAGE,
        "labels": labels(prefix),
        "command": ("sleep", "300"),
        "init": True,
        "stop_timeout_s": 1,
    }
    args.update(kw)
    return ContainerConfig(**args)


def wait_for(
    rt: DockerRuntime, name: str, ok: Callable[[ContainerState], bool], timeout: float = 30
) -> ContainerState:
    deadline = time.monotonic() + timeout
    state = rt.get_container(name)
    while time.monotonic() < deadline:
        state = rt.get_container(name)
        if state is not None and ok(state):
            return state
        time.sleep(0.25)
    raise AssertionError(f"{name} did not reach the expected state; last seen: {state}")


# ---------------------------------------------------------------------------------------------
# Tests


def test_is_a_runtime(rt: DockerRuntime) -> None:
    assert isinstance(rt, Runtime)
    assert rt.name == "docker"


def test_create_everything_and_observe_it(
    rt: DockerRuntime, raw: Any, stack: str, tmp_path: Path
) -> None:
    subnet, gateway, _ = random_subnet()
    net = f"{stack}_front"
    vol = f"{stack}_data"
    rt.create_network(NetworkConfig(name=net, subnet=subnet, gateway=gateway, labels=labels(stack)))
    rt.create_volume(VolumeConfig(name=vol, labels=labels(stack)))
    (tmp_path / "conf.txt").write_text("from-the-host\n")
    port = free_port()
    cfg = ContainerConfig(
        name=f"{stack}-web-1",
        image=IMAGE,
        labels=labels(stack),
        command=(
            "sh",
            "-c",
            "echo ok > /www/index.html && exec httpd -f -p 80 -h /www",
        ),
        env=("GREETING=hello world", "LOG_LEVEL=debug"),
        mounts=(
            MountConfig(type="volume", source=vol, target="/data"),
            MountConfig(type="bind", source=str(tmp_path), target="/conf", read_only=True),
            MountConfig(type="tmpfs", target="/www", tmpfs_size=4 * 1024 * 1024, tmpfs_mode=0o1777),
        ),
        ports=(PortBinding(container_port=80, host_ip="127.0.0.1", host_port=port),),
        networks=(Attachment(network=net, aliases=("web",)),),
        memory_bytes=64 * 1024 * 1024,
        nano_cpus=500_000_000,
        pids_limit=64,
        restart_policy="on-failure",
        restart_max_retries=2,
        health=HealthConfig(
            test=("CMD", "wget", "-q", "-O-", "http://127.0.0.1/index.html"),
            interval_s=1,
            timeout_s=2,
            retries=3,
            start_period_s=0.5,
        ),
        hostname="webhost",
        working_dir="/www",
        cap_drop=("NET_RAW",),
        read_only=True,
        stop_signal="SIGTERM",
        stop_timeout_s=2,
        init=True,
        ulimits=(Ulimit(name="nofile", soft=1024, hard=2048),),
    )
    cid = rt.create_container(cfg)
    assert rt.get_container(cfg.name) is not None
    rt.start_container(cfg.name)

    # What dockerd was actually asked for.
    info = raw.inspect_container(cid)
    host = info["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert host["CapDrop"] == ["NET_RAW"]
    assert host["ReadonlyRootfs"] is True
    assert host["Init"] is True
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    mounts = {m["Target"]: m for m in host["Mounts"]}
    assert mounts["/data"]["Source"] == vol and mounts["/data"]["Type"] == "volume"
    assert mounts["/conf"]["ReadOnly"] is True and mounts["/conf"]["Type"] == "bind"
    assert mounts["/www"]["TmpfsOptions"] == {"SizeBytes": 4 * 1024 * 1024, "Mode": 0o1777}
    assert info["Config"]["Healthcheck"] == {
        "Test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/index.html"],
        "Interval": 1_000_000_000,
        "Timeout": 2_000_000_000,
        "Retries": 3,
        "StartPeriod": 500_000_000,
    }
    assert info["Config"]["StopTimeout"] == 2
    assert info["Config"]["StopSignal"] == "SIGTERM"
    assert info["Config"]["Hostname"] == "webhost"
    assert info["Config"]["WorkingDir"] == "/www"
    assert "web" in info["NetworkSettings"]["Networks"][net]["Aliases"]

    # What the driver observes: normalised, and equal to what was asked.
    [state] = rt.list_containers({STACK: stack})
    assert state.id == cid and state.name == cfg.name
    assert state.image == IMAGE and state.image_id.startswith("sha256:")
    assert state.labels == labels(stack)
    assert {"GREETING=hello world", "LOG_LEVEL=debug"} <= set(state.env)
    assert list(state.env) == sorted(state.env)
    assert state.networks == (net,)
    assert state.ports == cfg.ports
    assert state.memory_bytes == 64 * 1024 * 1024
    assert state.status == "running" and state.running and state.exit_code is None
    assert state.started_at is not None
    assert rt.list_containers({STACK: stack, HASH: "other"}) == []
    assert cfg.name in [c.name for c in rt.list_containers({STACK: ""})]  # "has the key"

    [nstate] = rt.list_networks({STACK: stack})
    assert (nstate.name, nstate.driver, nstate.internal) == (net, "bridge", False)
    assert nstate.subnet == subnet and nstate.containers == (cfg.name,)
    assert nstate.labels == labels(stack)
    assert rt.get_network(net) == nstate
    [vstate] = rt.list_volumes({STACK: stack})
    assert (vstate.name, vstate.driver) == (vol, "local") and vstate.mountpoint
    assert rt.get_volume(vol) == vstate

    # The healthcheck passes, and the published port serves from the host.
    healthy = wait_for(rt, cfg.name, lambda s: s.health == "healthy")
    assert healthy.running
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/index.html", timeout=5) as resp:
        assert resp.read() == b"ok\n"


def test_unhealthy_and_no_healthcheck(rt: DockerRuntime, stack: str) -> None:
    bad = sleeper(
        stack, "bad-1", health=HealthConfig(test=("CMD", "false"), interval_s=0.5, retries=1)
    )
    plain = sleeper(stack, "plain-1", health=HealthConfig(test=("NONE",)))
    rt.create_container(bad)
    rt.create_container(plain)
    rt.start_container(bad.name)
    rt.start_container(plain.name)
    assert wait_for(rt, bad.name, lambda s: s.health == "unhealthy").running
    plain_state = rt.get_container(plain.name)
    assert plain_state is not None and plain_state.health is None


def test_create_is_idempotent_and_conflicts_are_clear(rt: DockerRuntime, stack: str) -> None:
    net = NetworkConfig(name=f"{stack}_back", internal=True, labels=labels(stack))
    rt.create_network(net)
    rt.create_network(net)  # same labels: success
    with pytest.raises(Conflict, match=f"network name {stack}_back is in use"):
        rt.create_network(NetworkConfig(name=net.name, labels=labels(stack, "h2")))
    state = rt.get_network(net.name)
    assert state is not None and state.internal is True

    vol = VolumeConfig(name=f"{stack}_data", labels=labels(stack))
    rt.create_volume(vol)
    rt.create_volume(vol)
    with pytest.raises(Conflict, match=f"volume name {stack}_data is in use"):
        rt.create_volume(VolumeConfig(name=vol.name, labels=labels(stack, "h2")))

    cfg = sleeper(stack, networks=(Attachment(network=net.name),))
    cid = rt.create_container(cfg)
    assert rt.create_container(cfg) == cid
    with pytest.raises(Conflict) as info:
        rt.create_container(sleeper(stack, labels=labels(stack, "h2")))
    assert isinstance(info.value, PermanentError) and not info.value.retryable
    assert f"container name {cfg.name} is in use by a container pyapply did not create" in str(
        info.value
    )
    assert [c.id for c in rt.list_containers({STACK: stack})] == [cid]


def test_remove_is_idempotent_and_in_use_is_a_conflict(rt: DockerRuntime, stack: str) -> None:
    rt.remove_container(f"{stack}-missing-1")
    rt.remove_network(f"{stack}_missing")
    rt.remove_volume(f"{stack}_missing")
    assert rt.get_container(f"{stack}-missing-1") is None
    assert rt.get_network(f"{stack}_missing") is None
    assert rt.get_volume(f"{stack}_missing") is None
    with pytest.raises(NotFound, match="missing"):
        rt.stop_container(f"{stack}-missing-1")
    with pytest.raises(NotFound):
        rt.start_container(f"{stack}-missing-1")

    net = f"{stack}_front"
    vol = f"{stack}_data"
    rt.create_network(NetworkConfig(name=net, labels=labels(stack)))
    rt.create_volume(VolumeConfig(name=vol, labels=labels(stack)))
    cfg = sleeper(
        stack,
        networks=(Attachment(network=net),),
        mounts=(MountConfig(type="volume", source=vol, target="/data"),),
    )
    rt.create_container(cfg)
    rt.start_container(cfg.name)
    with pytest.raises(Conflict, match="containers are still attached"):
        rt.remove_network(net)
    with pytest.raises(Conflict, match="in use"):
        rt.remove_volume(vol)

    rt.remove_container(cfg.name)  # running: stopped and removed
    assert rt.get_container(cfg.name) is None
    rt.remove_container(cfg.name)
    assert rt.get_volume(vol) is not None  # a named volume survives its container
    rt.remove_network(net)
    rt.remove_volume(vol)
    assert rt.get_network(net) is None and rt.get_volume(vol) is None


def test_start_stop_status_and_exit_code(rt: DockerRuntime, stack: str) -> None:
    cfg = sleeper(stack)
    rt.create_container(cfg)
    created = rt.get_container(cfg.name)
    assert created is not None and created.status == "created" and created.started_at is None
    rt.start_container(cfg.name)
    rt.start_container(cfg.name)  # already running: success
    running = rt.get_container(cfg.name)
    assert running is not None and running.status == "running"
    rt.stop_container(cfg.name, timeout_s=1)
    rt.stop_container(cfg.name, timeout_s=1)  # already stopped: success
    stopped = rt.get_container(cfg.name)
    assert stopped is not None and stopped.status == "exited" and not stopped.running
    assert stopped.finished_at is not None

    job = sleeper(stack, "job-1", command=("sh", "-c", "echo one; sleep 0.3; echo two >&2; exit 3"))
    rt.create_container(job)
    rt.start_container(job.name)
    done = wait_for(rt, job.name, lambda s: s.status == "exited")
    assert done.exit_code == 3
    # stdout and stderr are separate pipes whose relative order dockerd keeps only by arrival
    # time, hence the pause between the two lines
    assert list(rt.logs(job.name)) == [b"one\n", b"two\n"]
    assert list(rt.logs(job.name, tail=1)) == [b"two\n"]

    rt.rename_container(job.name, f"{stack}-job-old")
    rt.rename_container(job.name, f"{stack}-job-old")  # already renamed: success
    assert rt.get_container(job.name) is None
    assert rt.get_container(f"{stack}-job-old") is not None


def test_entrypoint_override_to_empty(rt: DockerRuntime, raw: Any, stack: str) -> None:
    cfg = sleeper(stack, entrypoint=(), command=("sleep", "1"))
    cid = rt.create_container(cfg)
    assert raw.inspect_container(cid)["Config"]["Entrypoint"] in ([], None)


def test_two_networks_attached_at_create(rt: DockerRuntime, raw: Any, stack: str) -> None:
    subnet, gateway, address = random_subnet()
    front, back = f"{stack}_front", f"{stack}_back"
    rt.create_network(NetworkConfig(name=front, labels=labels(stack)))
    rt.create_network(
        NetworkConfig(name=back, subnet=subnet, gateway=gateway, labels=labels(stack))
    )
    cfg = sleeper(
        stack,
        networks=(
            Attachment(network=front, aliases=("web", "www")),
            Attachment(network=back, aliases=("api",), ipv4_address=address),
        ),
    )
    cid = rt.create_container(cfg)
    # Attached before create_container returned, not only once started.
    nets = raw.inspect_container(cid)["NetworkSettings"]["Networks"]
    assert set(nets) == {front, back}
    assert {"web", "www"} <= set(nets[front]["Aliases"])
    assert "api" in nets[back]["Aliases"]
    assert nets[back]["IPAMConfig"]["IPv4Address"] == address

    rt.connect_network(cfg.name, Attachment(network=back))  # already connected (created)
    rt.start_container(cfg.name)
    rt.connect_network(cfg.name, Attachment(network=back))  # already connected (running)
    state = rt.get_container(cfg.name)
    assert state is not None and state.networks == tuple(sorted((front, back)))
    assert raw.inspect_container(cid)["NetworkSettings"]["Networks"][back]["IPAddress"] == address
    back_state = rt.get_network(back)
    assert back_state is not None and back_state.containers == (cfg.name,)

    # Re-creating with the same spec re-attaches a network that went missing.
    raw.disconnect_container_from_network(cid, front)
    assert rt.create_container(cfg) == cid
    state = rt.get_container(cfg.name)
    assert state is not None and front in state.networks


def test_bad_image_is_permanent_not_found(rt: DockerRuntime, stack: str) -> None:
    missing = "pyapply-test/does-not-exist:1"
    with pytest.raises(NotFound) as info:
        rt.create_container(sleeper(stack, image=missing))
    assert not info.value.retryable
    assert f"cannot create container {stack}-web-1" in info.value.message
    assert "No such image" in info.value.message and missing in info.value.message

    with pytest.raises(PermanentError, match="invalid reference format"):
        rt.create_container(sleeper(stack, image="Bad::Ref"))

    assert rt.images([IMAGE, missing]) == {
        IMAGE: rt.images([IMAGE])[IMAGE],
        missing: None,
    }
    image = rt.images([IMAGE])[IMAGE]
    assert (
        image is not None
        and image.id.startswith("sha256:")
        and any(e.startswith("PATH=") for e in image.env)
    )


def test_port_conflict_is_permanent_and_names_the_port(rt: DockerRuntime, stack: str) -> None:
    port = free_port()
    ports = (PortBinding(container_port=80, host_ip="127.0.0.1", host_port=port),)
    first = sleeper(stack, "a-1", ports=ports)
    second = sleeper(stack, "b-1", ports=ports)
    rt.create_container(first)
    rt.start_container(first.name)
    rt.create_container(second)  # ports are bound at start, not at create
    with pytest.raises(PermanentError) as info:
        rt.start_container(second.name)
    assert not isinstance(info.value, TransientError)
    assert not info.value.retryable
    message = info.value.message
    assert message.startswith(f"docker: cannot start container {second.name}: ")
    assert f"port {port} is already allocated" in message


def test_pull_from_a_registry_nobody_serves_is_transient(rt: DockerRuntime) -> None:
    """dockerd answers 500 "connection refused" for a loopback registry with nothing
    listening. That is a TransientError (the registry may be starting), but not Unavailable:
    the daemon itself answered."""
    ref = f"127.0.0.1:{free_port()}/pyatest/nothing:1"
    with pytest.raises(TransientError) as info:
        rt.pull_image(ref)
    assert not isinstance(info.value, Unavailable)
    assert info.value.message.startswith(f"docker: cannot pull image {ref}: ")
    assert "connection refused" in info.value.message


@pytest.fixture
def registry(tmp_path: Path, raw: Any) -> Iterator[str]:
    """A real OCI registry (Debian's docker-registry) on a free loopback port; yields
    "127.0.0.1:<port>". Images pulled from it are removed from dockerd afterwards."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.1)
        yield host
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for image in raw.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith(host + "/"):
                    with contextlib.suppress(docker.errors.NotFound):
                        raw.remove_image(tag, force=True)


def test_pull_from_a_loopback_registry(rt: DockerRuntime, raw: Any, registry: str) -> None:
    repo = f"{registry}/pyatest/busybox"
    raw.tag(IMAGE, repo, tag="1.0")
    for line in raw.push(repo, tag="1.0", stream=True, decode=True):
        assert "error" not in line, line
    raw.remove_image(f"{repo}:1.0")
    assert rt.images([f"{repo}:1.0"]) == {f"{repo}:1.0": None}

    pulled = rt.pull_image(f"{repo}:1.0")  # host:port/path:tag split correctly
    assert pulled == rt.images([f"{repo}:1.0"])[f"{repo}:1.0"]
    assert pulled.id == raw.inspect_image(IMAGE)["Id"]
    digest = next(d for d in raw.inspect_image(f"{repo}:1.0")["RepoDigests"] if d.startswith(repo))
    assert rt.pull_image(digest).id == pulled.id  # by digest

    with pytest.raises(NotFound) as info:
        rt.pull_image(f"{repo}:no-such-tag")
    assert f"cannot pull image {repo}:no-such-tag" in info.value.message
    with pytest.raises(NotFound):
        rt.pull_image(f"{registry}/pyatest/no-such-repo:1")


def test_sdk_reads_and_fast_reads_agree(rt: DockerRuntime, stack: str, tmp_path: Path) -> None:
    """The SDK read path (used for tcp/ssh/TLS daemons) and EngineHTTP (UNIX socket) see the
    same states, and fail the same way."""
    sdk = DockerRuntime(base_url="unix:///var/run/docker.sock", timeout=30, fast_reads=False)
    try:
        subnet, gateway, _ = random_subnet()
        net = f"{stack}_front"
        vol = f"{stack}_data"
        rt.create_network(
            NetworkConfig(name=net, subnet=subnet, gateway=gateway, labels=labels(stack))
        )
        rt.create_volume(VolumeConfig(name=vol, labels=labels(stack)))
        web = sleeper(
            stack,
            env=("B=2", "A=1"),
            mounts=(MountConfig(type="volume", source=vol, target="/data"),),
            ports=(PortBinding(container_port=80, host_ip="127.0.0.1", host_port=free_port()),),
            networks=(Attachment(network=net, aliases=("web",)),),
            memory_bytes=32 * 1024 * 1024,
            health=HealthConfig(test=("CMD", "true"), interval_s=0.5),
        )
        job = sleeper(stack, "job-1", command=("sh", "-c", "exit 3"))
        created = sleeper(stack, "idle-1")
        for cfg in (web, job, created):
            rt.create_container(cfg)
        rt.start_container(web.name)
        rt.start_container(job.name)
        wait_for(rt, job.name, lambda s: s.status == "exited")
        wait_for(rt, web.name, lambda s: s.health == "healthy")

        by_stack = {STACK: stack}
        fast_containers = rt.list_containers(by_stack)
        assert [c.name for c in fast_containers] == sorted((web.name, job.name, created.name))
        assert sdk.list_containers(by_stack) == fast_containers
        assert sdk.list_containers({STACK: "", HASH: "h1"}) == rt.list_containers(
            {STACK: "", HASH: "h1"}
        ) and fast_containers[0] in rt.list_containers({STACK: "", HASH: "h1"})
        assert sdk.list_networks(by_stack) == rt.list_networks(by_stack) != []
        assert sdk.list_volumes(by_stack) == rt.list_volumes(by_stack) != []
        for name in (web.name, job.name, created.name, f"{stack}-missing-1"):
            assert sdk.get_container(name) == rt.get_container(name)
        assert sdk.get_network(net) == rt.get_network(net) is not None
        assert sdk.get_volume(vol) == rt.get_volume(vol) is not None
        assert sdk.get_network(f"{stack}_nope") is None and rt.get_network(f"{stack}_nope") is None
        refs = [IMAGE, "pyapply-test/does-not-exist:1"]
        assert sdk.images(refs) == rt.images(refs)

        # The same daemon error comes out the same on both paths.
        failures: list[tuple[type[Exception], str]] = []
        for runtime in (sdk, rt):
            with pytest.raises(NotFound) as info:
                runtime._get("inspect image Bad::Ref", "/images/{0}/json", "Bad::Ref")
            failures.append((type(info.value), info.value.message))
        assert failures[0] == failures[1]
    finally:
        sdk.close()


def test_fast_reads_survive_a_dropped_connection(rt: DockerRuntime, stack: str) -> None:
    """A kept-alive connection that went away (daemon restart, idle close) is reopened."""
    rt.create_volume(VolumeConfig(name=f"{stack}_data", labels=labels(stack)))
    assert rt.get_volume(f"{stack}_data") is not None
    engine = rt._fast()
    assert engine is not None
    conn = engine._local.conn
    assert conn.sock is not None
    conn.sock.shutdown(socket.SHUT_RDWR)  # as if the daemon had closed it
    assert rt.get_volume(f"{stack}_data") is not None
    assert engine._local.conn is conn and conn.sock is not None


def test_unreachable_daemon_is_unavailable(tmp_path: Path) -> None:
    runtime = DockerRuntime(base_url=f"unix://{tmp_path}/no-docker.sock", timeout=5)
    try:
        with pytest.raises(Unavailable, match="cannot reach the Docker daemon"):
            runtime.list_containers({})
    finally:
        runtime.close()


def test_events_yield_start_for_our_objects(rt: DockerRuntime, stack: str) -> None:
    seen: queue.Queue[Event | BaseException] = queue.Queue()
    stream = rt.events({STACK: stack})
    cfg = sleeper(stack)

    def consume() -> None:
        try:
            for event in stream:
                seen.put(event)
                if event.kind == "container" and event.action in ("start", "destroy"):
                    return
        except BaseException as e:  # surfaced to the test below
            seen.put(e)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    # Someone else's container in the same moment is not reported.
    other = ContainerConfig(
        name=f"{stack}-other-1", image=IMAGE, command=("true",), labels={"unrelated": "1"}
    )
    rt.create_container(other)
    rt.create_network(NetworkConfig(name=f"{stack}_events", labels=labels(stack)))
    rt.create_container(cfg)
    rt.start_container(cfg.name)
    reader.join(timeout=30)
    assert not reader.is_alive(), "no start event within 30s"
    events: list[Event] = []
    while not seen.empty():
        item = seen.get()
        if isinstance(item, BaseException):
            raise item
        events.append(item)
    stream.close()  # type: ignore[attr-defined]
    assert Event("network", "create", f"{stack}_events", labels(stack)) in events
    assert ("container", "create", cfg.name) in [(e.kind, e.action, e.name) for e in events]
    start = events[-1]
    assert (start.kind, start.action, start.name) == ("container", "start", cfg.name)
    assert start.labels == labels(stack)
    assert all(e.name != other.name for e in events)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry.local:5000/shop/web", ("registry.local:5000/shop/web", "latest")),
        ("registry.local:5000/shop/web:1.4", ("registry.local:5000/shop/web", "1.4")),
        ("127.0.0.1:5000/x@sha256:abc", ("127.0.0.1:5000/x", "sha256:abc")),
        ("x:1@sha256:abc", ("x", "sha256:abc")),
    ],
)
def test_split_image_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_image_ref(ref) == expected
