"""Restart policies and boot on the native runtime, with no pyapply process running: the
root's keeper restarts what its policy says (runtime/native/restarter.py), and `pyapply
system start` brings a stack back after a reboot without `pyapply -f`
(runtime/native/boot.py). Real runc and conmon, through the real CLI, on a private root
(the `native` fixture checks that nothing of it is left in the kernel afterwards).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pyapply.runtime.base import ContainerState
from pyapply.runtime.native import health
from tests.e2e.helpers import TEST_IMAGE, http_get
from tests.e2e.reboot import reboot
from tests.e2e.runtimes import Cli, NativeUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

T = TypeVar("T")

POLICIES = f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${{STACK}}
spec:
  services:
    web:
      image: {TEST_IMAGE}
      command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
      init: true
      stop_grace_period: 1s
      restart: always
      ports: ["127.0.0.1:${{WEB_PORT}}:80"]
      networks: [back]
    keep:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      restart: unless-stopped
      networks: [back]
    flaky:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "echo run; sleep 0.3; exit 3"]
      restart: "on-failure:2"
      networks: [back]
    crash:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "exit 1"]
      restart: always
      networks: [back]
  networks:
    back: {{}}
"""

BOOTED = f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${{STACK}}
spec:
  services:
    web:
      image: {TEST_IMAGE}
      command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
      init: true
      stop_grace_period: 1s
      restart: always
      ports: ["127.0.0.1:${{WEB_PORT}}:80"]
      networks: [back]
    worker:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
      restart: unless-stopped
      networks: [back]
    once:
      image: {TEST_IMAGE}
      command: ["true"]
      restart: "no"
      networks: [back]
  networks:
    # a subnet of its own, away from the ones handed out in turn: while the "reboot" has
    # taken its bridge, another root on this host must not take its subnet
    back: {{ipam: {{config: [{{subnet: "${{SUBNET}}"}}]}}}}
"""


def free_subnet() -> str:
    """A /24 of 10.89.0.0/16 from its upper half, not routed on the host now."""
    routed = subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    for n in random.sample(range(128, 255), 127):
        if f"10.89.{n}." not in routed:
            return f"10.89.{n}.0/24"
    raise AssertionError("no free subnet in 10.89.128.0/17")


def poll(what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.05) -> T:
    """probe() until it returns something (bounded by `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(step)


def native_of(rut: RuntimeUnderTest) -> NativeUnderTest:
    assert isinstance(rut, NativeUnderTest)
    return rut


def get_json(cli: Cli, manifest: Path) -> dict[str, dict[str, Any]]:
    """`pyapply get -o json`: the stack's containers by service."""
    docs = json.loads(cli.ok("get", "-f", str(manifest), "-o", "json"))
    return {c["service"]: c for c in docs[0]["containers"]}


def test_the_keeper_enforces_restart_policies_with_no_pyapply_running(
    native: RuntimeUnderTest, tmp_path: Path
) -> None:
    rut = native_of(native)
    cli = rut.cli()
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(POLICIES)
    cli.ok("-f", str(manifest))
    s = rut.stack
    web, keep, flaky, crash = (f"{s}-{n}-1" for n in ("web", "keep", "flaky", "crash"))
    assert http_get(f"http://127.0.0.1:{cli.port}/hostname", attempts=40)[0] == 200

    # a crash of web's process: back within 2 s, under a new pid, with nobody but the keeper
    old_pid = rut.pid(web)
    os.kill(old_pid, signal.SIGKILL)
    t0 = time.monotonic()

    def new_pid() -> int | None:
        pid = rut.native.container_pid(web)
        return pid if pid not in (None, old_pid) and rut.observe.running(web) else None

    pid = poll("web restarted by its policy", new_pid, timeout=2.0, step=0.02)
    took = time.monotonic() - t0
    assert pid != old_pid and took < 2.0, took
    assert http_get(f"http://127.0.0.1:{cli.port}/hostname", attempts=40)[0] == 200

    # on-failure:2: three runs (the first and two restarts), then it gives up and says so
    def gave_up() -> dict[str, Any] | None:
        doc = get_json(cli, manifest)["flaky"]
        return doc if doc["gave_up"] else None

    flaky_doc = poll("flaky gave up", gave_up, timeout=20.0, step=0.2)
    assert (flaky_doc["status"], flaky_doc["exit_code"], flaky_doc["restarts"]) == (
        "exited",
        3,
        2,
    ), flaky_doc
    finished = rut.observe.must(flaky).finished_at
    time.sleep(1.0)  # past the next wait the policy would have had
    assert rut.observe.must(flaky).finished_at == finished, "restarted after giving up"
    assert rut.observe.logs(flaky).splitlines() == ["run"] * 3
    table = cli.ok("get", "-f", str(manifest))
    assert "exited (3), gave up after 2 restarts" in table, table
    assert get_json(cli, manifest)["web"]["restarts"] == 1

    # unless-stopped, stopped on purpose: stays stopped until started again
    cli.ok("stop", "-f", str(manifest), "keep")
    stopped = rut.observe.must(keep)
    assert stopped.status == "exited", stopped
    time.sleep(1.5)  # many times the first wait and the keeper's scan
    still = rut.observe.must(keep)
    assert (still.status, still.started_at) == ("exited", stopped.started_at), still
    cli.ok("start", "-f", str(manifest), "keep")
    assert rut.observe.running(keep)

    # one owner: a crash loop is the keeper's; `pyapply -f` and diff leave it alone (a start
    # by the pass would have counted from 0 again)
    def looping() -> ContainerState | None:
        state = rut.observe.must(crash)
        return state if state.restart_count >= 4 else None

    looped = poll("crash restarted 4 times", looping, timeout=15.0, step=0.1)
    cli.ok("-f", str(manifest))
    assert rut.observe.must(crash).restart_count >= looped.restart_count
    diff = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_system_start_brings_the_stack_back_after_a_reboot(
    native: RuntimeUnderTest, tmp_path: Path
) -> None:
    rut = native_of(native)
    cli = rut.cli()
    cli.env["SUBNET"] = free_subnet()
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(BOOTED)
    cli.ok("-f", str(manifest))
    s = rut.stack
    web, worker, once = (f"{s}-{n}-1" for n in ("web", "worker", "once"))
    assert http_get(f"http://127.0.0.1:{cli.port}/hostname", attempts=40)[0] == 200
    poll("once completed", lambda: True if not rut.observe.must(once).running else None, 10)
    before = {c.name: c for c in rut.observe.containers(s).values()}

    reboot(rut.root)
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{cli.port}/hostname", timeout=1, attempts=1)
    assert health.checker_pid(rut.root) is None

    out = cli.ok("system", "start")
    assert f"started container {web}" in out and f"started container {worker}" in out, out
    assert f"left container {once} stopped (restart: no)" in out, out
    status, body = http_get(f"http://127.0.0.1:{cli.port}/hostname", attempts=40)
    assert status == 200 and body.strip(), (status, body)
    after = {c.name: c for c in rut.observe.containers(s).values()}
    assert {n: c.id for n, c in after.items()} == {n: c.id for n, c in before.items()}
    assert after[web].running and after[worker].running and not after[once].running
    code, out = rut.exec(
        worker, "timeout", "-s", "KILL", "5", "wget", "-q", "-O-", "http://web/hostname"
    )
    assert code == 0, out
    assert health.checker_pid(rut.root) is not None, "no keeper after system start"

    # nothing left for `pyapply -f`: no drift, and the apply touches nothing
    diff = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    cli.ok("-f", str(manifest))
    again = {c.name: (c.id, c.started_at) for c in rut.observe.containers(s).values()}
    assert again == {n: (c.id, c.started_at) for n, c in after.items()}

    # started again, it runs as before: its keeper restarts it after a crash
    old_pid = rut.pid(web)
    os.kill(old_pid, signal.SIGKILL)
    poll(
        "web restarted after the boot",
        lambda: (
            True
            if rut.native.container_pid(web) not in (None, old_pid) and rut.observe.running(web)
            else None
        ),
        timeout=2.0,
    )
    # a second start changes nothing
    out = cli.ok("system", "start")
    assert "0 started" in out, out


def test_parallel_starts_start_one_keeper(tmp_path: Path) -> None:
    """The parallel starts of a converge each make sure the root's keeper runs: they start
    one, not one each (each a Python start; the extra ones used to wait on the keeper's
    lock for nothing, ~0.2 s of CPU apiece in a 20-service converge)."""
    import threading

    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    errors: list[BaseException] = []

    def keepers() -> list[str]:
        argv = ["pgrep", "-f", f"{health._MARKER} --root {root} "]
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()

    def ensure() -> None:
        try:
            health.ensure_checker(root, "/usr/sbin/runc")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ensure) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        pid = health.checker_pid(root)
        assert pid is not None
        assert keepers() == [str(pid)], keepers()
        assert (root / health.SPAWN_LOCK_FILE).stat().st_mode & 0o777 == 0o600
    finally:
        health.stop_checker(root)
        for left in keepers():
            os.kill(int(left), signal.SIGKILL)
