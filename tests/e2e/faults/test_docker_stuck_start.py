"""Fault (docker): a container's start keeps failing on a host port that stays taken.

After dockerd is SIGKILLed, a leaked docker-proxy may keep a container's published port,
and every start of that container fails ("address already in use"). The shared dockerd is
not killed here: the test holds the port itself, with a listening socket, while `pyapply -f`
starts the stopped container. pyapply must try a bounded number of times, then remove and
recreate the container and say why; the test lets the port go the moment it sees the old
container destroyed, so the new one starts, and the stack ends converged.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import STACK_LABEL, http_get, new_stack_name
from tests.e2e.runtimes import PYAPPLY, DockerUnderTest, free_port

pytestmark = pytest.mark.e2e

MANIFEST = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    web:
      image: pyapply-test/busybox:latest
      command: ["httpd", "-f", "-p", "80", "-h", "/"]
      init: true
      stop_grace_period: 1s
      ports: ["127.0.0.1:${WEB_PORT}:80"]
"""


@pytest.fixture
def docker_rt(docker_client: Any, tmp_path: Path) -> Iterator[DockerUnderTest]:
    rut = DockerUnderTest(new_stack_name(), tmp_path / "root", docker_client)
    try:
        yield rut
    finally:
        leftovers = rut.cleanup()
        rut.close()
    if leftovers:
        pytest.fail("could not clean up:\n" + "\n".join(leftovers), pytrace=False)


def test_start_stuck_on_a_held_port_escalates_to_recreate(
    docker_rt: DockerUnderTest, tmp_path: Path
) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(MANIFEST)
    port = free_port()
    cli = docker_rt.cli(port)
    s = cli.stack
    web = f"{s}-web-1"
    cli.ok("-f", str(manifest))
    old_id = docker_rt.observe.must(web).id
    docker_rt.by_hand.stop(web)  # as dockerd's restart leaves it: exited

    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    watcher_rt = docker_rt.open()
    events = watcher_rt.events({STACK_LABEL: s})
    released = threading.Event()

    def release_on_destroy() -> None:
        with contextlib.suppress(Exception):  # the stream ends when its runtime is closed
            for ev in events:
                if ev.kind == "container" and ev.action == "destroy" and ev.name == web:
                    holder.close()
                    released.set()
                    return

    watcher = threading.Thread(target=release_on_destroy, daemon=True)
    watcher.start()
    try:
        out = subprocess.run(
            [PYAPPLY, "-f", str(manifest)],
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        holder.close()
        with contextlib.suppress(Exception):
            watcher_rt.close()
        watcher.join(timeout=10)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert released.is_set(), f"the container was never removed:\n{text}"
    # the start was tried, failed on the held port, and was escalated -- with the reason
    assert f"port {port} is already in use on 127.0.0.1 by another program" in text, text
    result = next(line for line in text.splitlines() if line.startswith(f"container {web}: "))
    assert "Started" in result and "recreated: start failed 3 times" in result, text
    new = docker_rt.observe.must(web)
    assert new.id != old_id and new.running
    assert http_get(f"http://127.0.0.1:{port}/")[0] in (200, 403, 404)
    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr
    assert docker_rt.observe.all_container_names(f"{s}-") == [web]
    cli.ok("down", "-f", str(manifest))
