"""The everyday commands on a real single-node swarm (the main dockerd), through the CLI:
`logs` (a prefix per task, `--tail`, `--follow` across a restart), `restart` (every task
replaced, rolling as update_config says), `events` (the service's update and its tasks'
containers), and `rollback` without an agent (Swarm's own rollback to the previous spec;
a service never updated has none; a REVISION without an agent is refused with the reason).

The swarm is made once for the module (conftest.py `swarm_prefix`, tests/e2e/swarm.py) and
left as it was; every object carries the test's prefix and is removed at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.runtimes import Cli
from tests.e2e.swarm import TEST_REF, docker, remove_prefixed, wait_for

pytestmark = pytest.mark.e2e

COMPOSE = """\
name: {stack}
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo started $$(hostname) mode=$$MODE; exec sleep 600"]
    init: true
    stop_grace_period: 1s
    environment: {{MODE: {mode}}}
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s, order: stop-first}}
      rollback_config: {{parallelism: 0, monitor: 1s}}
  idle:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
"""


class Lines:
    """The output of a running command, line by line, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        """Interrupt it as a person would (Ctrl-C) and return its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        self._thread.join(timeout=5)
        return code


@pytest.fixture
def stack(swarm_prefix: str) -> Iterator[str]:
    name = f"{swarm_prefix}e"
    try:
        yield name
    finally:
        remove_prefixed(name)


def task_containers(stack: str, service: str) -> set[str]:
    return set(
        docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={stack}_{service}"
        ).split()
    )


def test_logs_restart_events_rollback(stack: str, tmp_path: Path) -> None:
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE.format(stack=stack, image=TEST_REF, mode="one"))
    cli = Cli(stack, tmp_path / "root", 0, "swarm")
    cli.ok("-f", str(f), "--wait-timeout", "60")

    # logs: one line per task, prefixed by the task (<stack>_web.<slot>), --tail per task
    def started() -> list[str]:
        out = cli.ok("logs", "web", "--stack", stack, "--tail", "5")
        return [line for line in out.splitlines() if "started" in line]

    lines = wait_for(lambda: (s := started()) and len(s) == 2 and s, 20, "both tasks' output")
    prefixes = sorted(line.split(" | ", 1)[0].strip() for line in lines)
    assert prefixes == [f"{stack}_web.1", f"{stack}_web.2"], lines
    assert all(line.endswith("mode=one") for line in lines), lines
    one = cli.ok("logs", "idle", "--stack", stack)
    assert one == "", one  # a service that printed nothing
    r = cli.run("logs", "nosuch", "--stack", stack)
    assert r.returncode == 1 and f"no service nosuch in stack {stack}" in r.stderr, r.stderr

    # restart = service update --force: every task replaced, one at a time; followed by
    # `logs -f` (the new tasks' lines appear with their own prefix) and `events`
    before = task_containers(stack, "web")
    follow = Lines(cli.spawn("logs", "web", "--stack", stack, "-f"))
    events = Lines(cli.spawn("events", "--stack", stack, "-o", "json"))
    time.sleep(1.5)  # both subscribed
    out = cli.ok("restart", "--stack", stack, "web", "--wait-timeout", "60")
    assert f"restarted {stack}_web: converged" in out, out
    after = task_containers(stack, "web")
    assert len(after) == 2 and not after & before, (before, after)
    wait_for(
        lambda: sum("started" in line for line in follow.lines) >= 4, 20, "the new tasks' output"
    )
    assert follow.stop() == 0
    assert events.stop() == 0
    docs = [json.loads(line) for line in events.lines if line.startswith("{")]
    updates = [d["detail"] for d in docs if d["kind"] == "service" and d["detail"]]
    assert "updating -> completed" in updates, docs
    starts = [d for d in docs if d["kind"] == "container" and d["action"] == "start"]
    assert len(starts) == 2 and all(d["service"] == "web" for d in starts), docs
    assert all(d["stack"] == stack for d in docs), docs

    # rollback without an agent: the swarm's previous spec, per service
    f.write_text(COMPOSE.format(stack=stack, image=TEST_REF, mode="two"))
    cli.ok("-f", str(f), "--wait-timeout", "60")
    out = cli.ok("rollback", "--stack", stack, "--service", "web", "--wait-timeout", "60")
    assert f"rolled back {stack}_web to its previous spec" in out, out
    env = docker(
        "service",
        "inspect",
        f"{stack}_web",
        "--format",
        "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
    )
    assert "MODE=one" in env, env
    # the manifests still say two: drift, which the next apply converges
    assert cli.run("diff", "--exit-code", "-f", str(f)).returncode == 2
    r = cli.run("rollback", "--stack", stack, "--service", "idle")
    assert r.returncode == 1, r
    assert "it has no previous spec" in r.stdout and "not rolled back" in r.stderr, r
    r = cli.run("rollback", "0123456789abcdef")
    assert r.returncode == 1 and "without an agent" in r.stderr, r.stderr

    cli.ok("down", "-f", str(f))
    assert task_containers(stack, "web") == set()
