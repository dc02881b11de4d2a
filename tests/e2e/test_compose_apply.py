"""A plain compose project on each real runtime (docker, native), through the real command
line.

manifests/compose-demo/ is written with compose-only syntax: an override file, a service
extended from another file, anchors and merge keys, a profile, a `container_name`, a
service in another's network namespace (`network_mode: service:`) and a published port
range. It is applied, re-applied as a no-op, followed when the namespace's owner is
removed by hand, grown by a profile, and torn down -- under a unique project name
(COMPOSE_PROJECT_NAME) and free loopback ports, leaving nothing behind. A second project
runs the other network modes (host, container:NAME), a host port range for one container
port whose first port is taken, and a container_name held by a container not of the stack.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.runtime.base import ContainerConfig, ContainerState
from tests.e2e.helpers import REPO_ROOT, TEST_IMAGE, http_get
from tests.e2e.runtimes import PYAPPLY, DockerUnderTest, RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e

DEMO = str(REPO_ROOT / "manifests" / "compose-demo")
PAGE = "pyapply test image"  # what the test image's httpd serves
# an HTTP GET of 127.0.0.1 from inside a container, with nc (the image's wget is not needed)
GET_LOCAL = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 127.0.0.1 {port}'


def owned(runtime: RuntimeUnderTest) -> dict[str, ContainerState]:
    return runtime.observe.containers(runtime.stack)


def free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports free now (bounded tries)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError(f"no {count} consecutive free loopback ports found")


@contextlib.contextmanager
def host_server(answer: bytes) -> Iterator[int]:
    """A TCP server on the host's loopback that answers every connection with `answer`,
    for as long as the block runs; yields its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        done.set()
        thread.join(timeout=5)
        srv.close()


def in_container(runtime: RuntimeUnderTest, name: str, script: str) -> str:
    code, out = runtime.exec(name, "sh", "-c", script)
    assert code == 0, f"{name}: {script!r} -> {code}: {out}"
    return out


def test_compose_project_applies_reapplies_and_comes_down(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    port = free_port()
    first = free_ports(3)
    env = {
        **runtime.env,
        "COMPOSE_PROJECT_NAME": runtime.stack,
        "WEB_PORT": str(port),
        "RANGE_FIRST": str(first),
        "RANGE_LAST": str(first + 2),
    }
    env.pop("COMPOSE_PROFILES", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )

    def ok(*args: str) -> str:
        out = run(*args)
        assert out.returncode == 0, (
            f"pyapply {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out.stdout

    s = runtime.stack
    try:
        ok("validate", "-f", DEMO)
        ok("-f", DEMO)
        names = owned(runtime)
        web_name = f"{s}-frontdoor"  # container_name
        demo = [web_name, f"{s}-ranges-1", f"{s}-sidecar-1", f"{s}-worker-1"]
        assert sorted(names) == demo  # debug is in a profile
        web = names[web_name]
        assert web.labels["io.pyapply.service"] == "web"
        assert runtime.observe.container(web_name) is not None  # found by its name
        if isinstance(runtime, DockerUnderTest):
            attrs = runtime.attrs(web_name)  # docker inspect NAME
            assert attrs["Name"] == "/" + web_name
            assert attrs["Config"]["ExposedPorts"] == {"80/tcp": {}}  # expose
        else:  # native records expose, with nothing to open
            state = json.loads((runtime.root / "containers" / web_name / "state.json").read_text())
            assert state["expose"] == ["80/tcp"]
        assert web_name in ok("get", "-f", DEMO)
        assert ok("exec", "-f", DEMO, "web", "cat", "/www/index.html").strip() == PAGE
        ok("logs", "--file", DEMO, "web")  # found by its labels, whatever its name
        # service:web -- web's httpd is the sidecar's localhost, one network stack for both
        sidecar = f"{s}-sidecar-1"
        assert PAGE in in_container(runtime, sidecar, GET_LOCAL.format(port=80))
        assert in_container(runtime, sidecar, "ip -o addr") == in_container(
            runtime, web_name, "ip -o addr"
        )
        # every port of the range answers, each from its own server in the container
        for host_port in range(first, first + 3):
            try:
                got = http_get(f"http://127.0.0.1:{host_port}/")
            except OSError as e:
                ranges = runtime.observe.container(f"{s}-ranges-1")
                raise AssertionError(f"{host_port}: {e}; {ranges}") from e
            assert got == (200, PAGE + "\n")
        # the override file's environment merged with compose.yaml's list form
        assert {"ROLE=web", "LOG_LEVEL=info"} <= set(web.env)
        assert web.networks == tuple(sorted((f"{s}_front", f"{s}_back")))
        worker = names[f"{s}-worker-1"]
        # extended from common.yaml: its command and TIER, with this file's ROLE, and init
        assert {"ROLE=worker", "TIER=background"} <= set(worker.env)
        if isinstance(runtime, DockerUnderTest):
            attrs = runtime.attrs(worker.name)
            assert attrs["Config"]["Cmd"] == ["sleep", "100000"]
            assert attrs["HostConfig"]["Init"] is True
        # seen from inside: an init process is PID 1 and runs the command
        code, cmdline = runtime.exec(worker.name, "cat", "/proc/1/cmdline")
        assert code == 0, cmdline
        argv = cmdline.rstrip("\0").split("\0")
        assert argv[-2:] == ["sleep", "100000"] and argv[0] != "sleep", argv
        code, ps = runtime.exec(worker.name, "ps", "-o", "pid,args")
        assert code == 0 and any(
            line.split()[1:] == ["sleep", "100000"] for line in ps.splitlines()[1:]
        ), ps
        status, body = http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and body

        ids = {n: c.id for n, c in owned(runtime).items()}
        assert "no changes" in ok("-f", DEMO)
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
        assert {n: c.id for n, c in owned(runtime).items()} == ids

        # web removed by hand: made anew, and the sidecar follows it into its new namespace
        runtime.by_hand.remove(web_name)
        drift = run("diff", "-f", DEMO, "--exit-code")
        assert drift.returncode == 2, drift.stdout + drift.stderr
        assert (
            f"{sidecar}: recreate (the container whose network namespace it joins" in drift.stdout
        )
        ok("-f", DEMO)
        assert owned(runtime)[sidecar].id != ids[sidecar]
        assert PAGE in in_container(runtime, sidecar, GET_LOCAL.format(port=80))
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0

        # web stopped and started by hand: one pass later the sidecar shares its network
        # again (dockerd gave web a new namespace: the sidecar is restarted into it; native
        # keeps a container's namespace across its restarts: nothing to do)
        runtime.by_hand.stop(web_name, timeout=1)
        runtime.rt.start_container(web_name)
        drift = run("diff", "-f", DEMO)
        if isinstance(runtime, DockerUnderTest):
            assert f"{sidecar}: restart (the container whose network namespace it joins" in (
                drift.stdout
            ), drift.stdout
        ok("-f", DEMO)
        assert PAGE in in_container(runtime, sidecar, GET_LOCAL.format(port=80))
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
        ids = {n: c.id for n, c in owned(runtime).items()}

        # the converted pyapply/v1 Stack is the same stack: no drift against what runs
        converted = tmp_path / "stack.yaml"
        converted.write_text(ok("convert", "-f", DEMO))
        same = run("diff", "-f", str(converted), "--exit-code")
        assert same.returncode == 0, same.stdout + same.stderr

        # a profile adds its service and leaves the others alone
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 2
        ok("-f", DEMO, "--profile", "debug")
        after = {n: c.id for n, c in owned(runtime).items()}
        assert sorted(after) == sorted([f"{s}-debug-1", *demo])
        assert {n: after[n] for n in ids} == ids
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 0
        env["COMPOSE_PROFILES"] = "debug"
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
    finally:
        down = run("down", "-f", DEMO, "--volumes")
    assert down.returncode == 0, down.stderr
    assert owned(runtime) == {}
    assert runtime.observe.networks(s) == {}


NETMODES = """
services:
  hostnet:
    image: {image}
    command: ["sleep", "100000"]
    init: true
    stop_grace_period: 1s
    network_mode: host
  joiner:
    image: {image}
    command: ["sleep", "100000"]
    init: true
    stop_grace_period: 1s
    network_mode: container:${{PEER}}
  anyof:
    image: {image}
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    init: true
    stop_grace_period: 1s
    ports: ["127.0.0.1:${{FIRST}}-${{LAST}}:80"]
"""
CLASH = """
  clash:
    image: {image}
    command: ["sleep", "100000"]
    container_name: ${{PEER}}
"""


def test_network_modes_a_taken_range_port_and_a_name_in_use(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    s = runtime.stack
    project = tmp_path / "netmodes"
    project.mkdir()
    peer = f"{s}-peer"  # a container of no stack, whose namespace `joiner` joins
    first = free_ports(3)
    env = {
        **runtime.env,
        "COMPOSE_PROJECT_NAME": s,
        "PEER": peer,
        "FIRST": str(first),
        "LAST": str(first + 2),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args, "-f", str(project)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    rt = runtime.open()
    try:
        rt.create_container(
            ContainerConfig(
                name=peer,
                image=TEST_IMAGE,
                command=("httpd", "-f", "-p", "8080", "-h", "/www"),
                network_mode="none",
            )
        )
        rt.start_container(peer)

        # a container_name held by a container that is not the stack's: refused, nothing made
        (project / "compose.yaml").write_text(
            NETMODES.format(image=TEST_IMAGE) + CLASH.format(image=TEST_IMAGE)
        )
        refused = run("apply")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert (
            f'container name {peer} (container_name of service "clash") is in use by a '
            "container pyapply did not make" in refused.stderr + refused.stdout
        )
        assert owned(runtime) == {}
        assert runtime.observe.networks(s) == {}

        (project / "compose.yaml").write_text(NETMODES.format(image=TEST_IMAGE))
        with (
            socket.socket() as taken,
            host_server(b"hello from the host\n") as host_port,
        ):
            taken.bind(("127.0.0.1", first))  # the range's first port is someone else's
            taken.listen(1)
            out = run("apply")
            assert out.returncode == 0, out.stdout + out.stderr
            names = owned(runtime)
            assert sorted(names) == [f"{s}-anyof-1", f"{s}-hostnet-1", f"{s}-joiner-1"]
            # host: the host's loopback (a server of this test) and the host's name
            hostnet = f"{s}-hostnet-1"
            got = in_container(runtime, hostnet, f"nc -w 3 127.0.0.1 {host_port} </dev/null")
            assert got == "hello from the host\n"
            assert in_container(runtime, hostnet, "hostname").strip() == socket.gethostname()
            # container:NAME: the peer's httpd on the joiner's localhost
            got = in_container(runtime, f"{s}-joiner-1", GET_LOCAL.format(port=8080))
            assert PAGE in got
            # the first free port of the range, the taken one left alone
            assert http_get(f"http://127.0.0.1:{first + 1}/") == (200, PAGE + "\n")
            again = run("diff", "--exit-code")
            assert again.returncode == 0, again.stdout + again.stderr
        down = run("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert owned(runtime) == {}
        assert rt.get_container(peer) is not None  # not the stack's: left alone
    finally:
        with contextlib.suppress(Exception):
            rt.remove_container(peer)
        rt.close()
