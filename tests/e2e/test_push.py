"""Pushing images, both ways between the runtimes, against a real registry: a Debian
docker-registry started here on a free loopback port with its storage in a temporary
directory (killed by pid afterwards), so nothing is left in the shared one.

- native import of the test image -> `pyapply image push` -> `docker pull` and `docker run`
  on dockerd (same image id: the config is pushed as it is); a second push uploads nothing,
  a push to another repository of the registry mounts the blobs;
- a docker build (driver) of a small Dockerfile FROM the test image -> `pyapply image push
  --runtime docker` -> `pyapply -f` on native pulls it and runs it (output read inside);
- the docker build's errors: a syntax error located at `Dockerfile:LINE`, a failing RUN with
  its exit code and last lines, nothing tagged;
- an unreachable registry: one clear line, exit 1, on both runtimes;
- a push cut in the middle of a blob (a loopback proxy that drops the connection): exit 1,
  and the registry has no tag and no manifest of the image.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from pyapply.runtime.base import BuildConfig, BuildEvent, BuildFailed
from pyapply.runtime.docker.driver import DockerRuntime
from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import Cli, RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e


# ---------------------------------------------------------------------------------------------
# a private registry, and a proxy that cuts


def registry_api(addr: str, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(addr, timeout=10)
    try:
        conn.request(method, path, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry of this module on a free loopback port (plain HTTP: dockerd and
    pyapply both treat loopback as insecure)."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry is missing; run `make setup`", pytrace=False)
    d = tmp_path_factory.mktemp("pushreg")
    addr = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(d / "data")}, "delete": {"enabled": True}},
        "http": {"addr": addr},
    }
    (d / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    with open(d / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(d / "config.yml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"docker-registry exited: {(d / 'registry.log').read_text()[-2000:]}")
            try:
                if registry_api(addr, "GET", "/v2/")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry on {addr} did not answer", pytrace=False)
            time.sleep(0.1)
        yield addr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


class CuttingProxy:
    """A TCP proxy on loopback to `upstream` that drops every connection once `limit` bytes
    of requests have gone through it in all: a network failing in the middle of a push."""

    def __init__(self, upstream: str, limit: int) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.limit = limit
        self.sent = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.socks: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=10)
            with self.lock:
                self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.limit
                    if over:
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.server.close()
        with self.lock:
            for s in self.socks:
                s.close()
        self.thread.join(5)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()


@pytest.fixture
def docker_refs(docker_client: Any) -> Iterator[list[str]]:
    """Local docker references the test makes (pulls, builds, tags): removed afterwards."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


@pytest.fixture(autouse=True)
def _remove_state_roots(tmp_path: Path) -> Iterator[None]:
    """The native roots and contexts made here (unpacked layers, blobs) don't outlive the
    test (the `native` fixture's cleanup runs first: it is set up after this one)."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# native -> registry -> docker


def test_native_push_then_docker_pull_and_run(
    own_registry: str,
    busybox_archive: Path,
    tmp_path: Path,
    docker_client: Any,
    docker_refs: list[str],
) -> None:
    tag = secrets.token_hex(4)
    ref = f"{own_registry}/native/bb:{tag}"
    cli = Cli("push", tmp_path / "root", 0, "native")
    cli.ok("image", "import", str(busybox_archive), "--ref", ref)
    [local] = json.loads(cli.ok("image", "ls", "-o", "json"))

    out = cli.ok("image", "push", ref)
    assert out.splitlines()[0] == f"pushing {ref}"
    assert "uploaded" in out and out.splitlines()[-1].startswith(f"pushed {ref}@sha256:")
    digest = out.splitlines()[-1].split("@")[1]
    status, body = registry_api(own_registry, "GET", f"/v2/native/bb/manifests/{tag}")
    assert status == 200 and json.loads(body)["config"]["digest"] == local["id"]

    # again: every blob is found in the registry, the same manifest
    [again] = json.loads(cli.ok("image", "push", "-o", "json", ref))
    assert again["digest"] == digest
    assert {b["state"] for b in again["blobs"]} == {"exists"}
    # another repository of the registry: the blobs are mounted, not sent again
    other = f"{own_registry}/native/copy:{tag}"
    cli.ok("image", "import", str(busybox_archive), "--ref", other)
    [copy] = json.loads(cli.ok("image", "push", "-o", "json", other))
    assert copy["digest"] == digest
    assert {b["state"] for b in copy["blobs"]} == {"mounted"}

    # pulled into another root and pushed back: the manifest it was pulled with is pushed
    # as it is (same digest), and every blob is already there
    puller = Cli("push", tmp_path / "root2", 0, "native")
    puller.ok("image", "pull", ref)
    [back] = json.loads(puller.ok("image", "push", "-o", "json", ref))
    assert back["digest"] == digest and {b["state"] for b in back["blobs"]} == {"exists"}

    docker_refs.append(ref)
    image = docker_client.images.pull(ref)
    assert image.id == local["id"]  # the very image: its config went as it is
    # named and removed here: the SDK's remove=True removes only a container that ran, and
    # one whose start failed stayed behind once
    name = "pyapush-" + secrets.token_hex(4)
    try:
        output = docker_client.containers.run(
            ref, ["sh", "-c", "echo pushed-by-native; busybox | head -1"], name=name
        ).decode()
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)
    assert output.startswith("pushed-by-native\nBusyBox v")


# ---------------------------------------------------------------------------------------------
# docker -> registry -> native


def test_docker_build_push_then_native_runs_it(
    own_registry: str,
    native: RuntimeUnderTest,
    tmp_path: Path,
    docker_refs: list[str],
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "msg.txt").write_text("copied from the context\n")
    (ctx / "secret.txt").write_text("must not be sent\n")
    (ctx / ".dockerignore").write_text("secret.txt\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {TEST_IMAGE}\n"
        "ARG GREETING=hello\n"
        "COPY . /ctx/\n"
        'RUN echo "$GREETING from a docker build" > /greeting && echo step-output\n'
        'CMD ["sleep", "100000"]\n'
    )
    ref = f"{own_registry}/docker/built:{secrets.token_hex(4)}"
    docker_refs.append(ref)
    events: list[BuildEvent] = []
    rt = DockerRuntime()
    try:
        result = rt.build_image(
            BuildConfig(context=str(ctx), tags=(ref,), args={"GREETING": "hi"}), events.append
        )
    finally:
        rt.close()
    assert result.image_id.startswith("sha256:") and result.tags == (ref,)
    assert result.steps == 5
    assert [e.step for e in events if e.state == "running"] == [1, 2, 3, 4, 5]
    assert any(e.state == "output" and e.line == "step-output" and e.step == 4 for e in events)

    docker_cli = Cli("push", tmp_path / "droot", 0, "docker")
    out = docker_cli.ok("image", "push", ref)
    assert out.splitlines()[-1].startswith(f"pushed {ref}@sha256:"), out

    stack = tmp_path / "stack.yaml"
    stack.write_text(
        f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {native.stack}}}
spec:
  services:
    app:
      image: {ref}
      init: true
      stop_grace_period: 1s
"""
    )
    native.cli().ok("-f", str(stack))
    name = f"{native.stack}-app-1"
    assert native.exec(name, "cat", "/greeting") == (0, "hi from a docker build\n")
    assert native.exec(name, "cat", "/ctx/msg.txt") == (0, "copied from the context\n")
    code, _ = native.exec(name, "test", "-e", "/ctx/secret.txt")
    assert code == 1  # .dockerignore kept it out of the context
    native.cli().ok("down", "-f", str(stack))


def test_docker_build_errors(tmp_path: Path, docker_client: Any) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ref = f"pyapply-test/never-tagged:{secrets.token_hex(4)}"
    rt = DockerRuntime()
    try:
        (ctx / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nRUN true\nNOPE x\n")
        with pytest.raises(BuildFailed) as info:
            rt.build_image(BuildConfig(context=str(ctx), tags=(ref,)))
        assert info.value.where == "Dockerfile:3"
        assert info.value.message.startswith("Dockerfile:3: unknown instruction: NOPE")

        # a failing RUN right after FROM: dockerd keeps no intermediate image of it
        (ctx / "Dockerfile").write_text(
            f"FROM {TEST_IMAGE}\nRUN echo first; echo second >&2; exit 7\n"
        )
        with pytest.raises(BuildFailed) as info:
            rt.build_image(BuildConfig(context=str(ctx), tags=(ref,)))
        e = info.value
        assert e.exit_code == 7 and e.step == "RUN echo first; echo second >&2; exit 7"
        assert sorted(e.tail) == ["first", "second"]
        assert e.message.startswith("step 2/2 `RUN echo first;")
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(ref)

        with pytest.raises(BuildFailed, match="is not a directory"):
            rt.build_image(BuildConfig(context=str(tmp_path / "missing")))
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("runtime_name", ["native", "docker"])
def test_unreachable_registry_is_one_clear_line(
    runtime_name: str,
    busybox_archive: Path,
    tmp_path: Path,
    docker_client: Any,
    docker_refs: list[str],
) -> None:
    registry = f"127.0.0.1:{closed_port()}"
    ref = f"{registry}/nowhere/bb:1"
    cli = Cli("push", tmp_path / "root", 0, runtime_name)
    if runtime_name == "native":
        cli.ok("image", "import", str(busybox_archive), "--ref", ref)
    else:
        docker_refs.append(ref)
        docker_client.images.get(TEST_IMAGE).tag(ref)
    started = time.monotonic()
    out = cli.run("image", "push", ref)
    assert out.returncode == 1, out
    assert time.monotonic() - started < 30
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in out.stderr
    assert f"cannot push {ref}: registry {registry} unreachable" in line, line


def test_push_cut_before_the_manifest_leaves_no_tag(
    own_registry: str, busybox_archive: Path, tmp_path: Path
) -> None:
    proxy = CuttingProxy(own_registry, limit=200_000)  # the layer blob is ~1 MB
    try:
        repo = f"cut/bb{secrets.token_hex(3)}"
        ref = f"{proxy.addr}/{repo}:1"
        cli = Cli("push", tmp_path / "root", 0, "native")
        cli.ok("image", "import", str(busybox_archive), "--ref", ref)
        out = cli.run("image", "push", ref)
        assert out.returncode == 1, out
        assert f"error: cannot push {ref}: " in out.stderr
        assert "manifest" not in out.stdout
        assert proxy.sent > proxy.limit
    finally:
        proxy.close()
    # straight to the registry: no tag, no manifest under it
    status, body = registry_api(own_registry, "GET", f"/v2/{repo}/manifests/1")
    assert status == 404, body
    status, body = registry_api(own_registry, "GET", f"/v2/{repo}/tags/list")
    assert status == 404 or not (json.loads(body).get("tags") or []), body
