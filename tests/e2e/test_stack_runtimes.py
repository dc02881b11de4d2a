"""The stack-level loop on every runtime that runs stacks -- docker, native and swarm -- with
one compose file, through the real CLI: apply, no-op re-apply, `diff --exit-code` 0/2, scale
up and down, an environment change rolled out (the replicas replaced), prune of a removed
service, a config's new content reaching the replicas, a secret read, down. On swarm also: a
field a swarm cannot have is refused with file:line:col.

`stack_runtime` gives each test the runtime and a view of a service's replicas that means the
same on each: containers `<stack>-<service>-N` on one host, a service's tasks on a swarm (a
single-node swarm on the main dockerd, tests/e2e/swarm.py, set up once for the module).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import _under_test
from tests.e2e.runtimes import Cli, RuntimeUnderTest
from tests.e2e.swarm import TEST_REF, docker, new_prefix, remove_prefixed, single_node_swarm

pytestmark = pytest.mark.e2e

STACK_RUNTIMES = ("docker", "native", "swarm")


class StackUnderTest:
    """A runtime under test, seen stack by stack: a service's running replicas, a command
    run in one of them, the CLI."""

    def __init__(self, name: str, stack: str, image: str, cli: Cli) -> None:
        self.name, self.stack, self.image, self.cli = name, stack, image, cli

    def replicas(self, service: str) -> dict[str, str]:
        """The running replicas of `service`: instance id -> name."""
        raise NotImplementedError

    def exec(self, service: str, *argv: str) -> str:
        """The output of `argv` in one running replica, stripped."""
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        raise NotImplementedError


class OneHost(StackUnderTest):
    def __init__(self, rut: RuntimeUnderTest, image: str) -> None:
        super().__init__(rut.name, rut.stack, image, rut.cli())
        self.rut = rut

    def replicas(self, service: str) -> dict[str, str]:
        return {
            c.id: name
            for name, c in self.rut.observe.containers(self.stack).items()
            if c.labels.get("io.pyapply.service") == service and c.running
        }

    def exec(self, service: str, *argv: str) -> str:
        name = sorted(self.replicas(service).values())[0]
        code, out = self.rut.exec(name, *argv)
        assert code == 0, (name, argv, out)
        return out.strip()

    def leftovers(self) -> list[str]:
        return sorted(self.rut.observe.containers(self.stack))


class OnSwarm(StackUnderTest):
    def replicas(self, service: str) -> dict[str, str]:
        rows = docker(
            "ps",
            "--filter",
            f"label=com.docker.swarm.service.name={self.stack}_{service}",
            "--format",
            "{{.ID}} {{.Names}}",
        ).splitlines()
        return dict(r.split(" ", 1) for r in rows)

    def exec(self, service: str, *argv: str) -> str:
        container = sorted(self.replicas(service))[0]
        return docker("exec", container, *argv)

    def leftovers(self) -> list[str]:
        label = f"label=io.pyapply.stack={self.stack}"
        return [
            f"{kind} {n}"
            for kind in ("service", "config", "secret")
            for n in docker(kind, "ls", "-q", "--filter", label).split()
        ]


@pytest.fixture(scope="module")
def swarm_prefix() -> Iterator[str]:
    prefix = new_prefix()
    with single_node_swarm(prefix):
        yield prefix


@pytest.fixture(params=STACK_RUNTIMES)
def stack_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StackUnderTest]:
    """The `runtime` fixture of conftest.py, and swarm too."""
    if request.param != "swarm":
        for rut in _under_test(str(request.param), request, tmp_path):
            yield OneHost(rut, "pyapply-test/busybox:latest")
        return
    prefix = request.getfixturevalue("swarm_prefix")
    stack = prefix + uuid.uuid4().hex[:4]
    s = OnSwarm("swarm", stack, TEST_REF, Cli(stack, tmp_path / "root", 0, "swarm"))
    try:
        yield s
    finally:
        left = s.leftovers()
        remove_prefixed(stack)
    assert not left, f"left behind on the swarm: {left}"


COMPOSE = """\
name: {stack}
services:
  web:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{MODE: one}}
    configs: [{{source: conf, target: /etc/app.conf}}]
    secrets: [pw]
    deploy:
      replicas: {web}
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s}}
{worker}configs:
  conf:
    content: "{conf}"
secrets:
  pw:
    file: ./pw.txt
"""

WORKER = """\
  worker:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{MODE: {mode}}}
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s}}
"""


def write(
    s: StackUnderTest,
    path: Path,
    *,
    web: int = 2,
    mode: str | None = "one",
    conf: str = "level=1",
) -> Path:
    worker = "" if mode is None else WORKER.format(image=s.image, mode=mode)
    path.write_text(COMPOSE.format(stack=s.stack, image=s.image, web=web, worker=worker, conf=conf))
    return path


def test_the_stack_loop(stack_runtime: StackUnderTest, tmp_path: Path) -> None:
    s = stack_runtime
    (tmp_path / "pw.txt").write_text("pw-1")
    f = write(s, tmp_path / "compose.yaml")
    apply = ("-f", str(f), "--wait-timeout", "60")

    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 2 and len(s.replicas("worker")) == 1
    assert s.exec("web", "cat", "/etc/app.conf") == "level=1"
    assert s.exec("web", "cat", "/run/secrets/pw") == "pw-1"
    out = s.cli.ok(*apply)  # a no-op: nothing done, nothing replaced
    assert "no changes" in out, out
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    # scale up and an environment change: drift (2), then rolled out
    worker_before = set(s.replicas("worker"))
    write(s, f, web=3, mode="two")
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 2
    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 3
    assert s.exec("worker", "sh", "-c", "echo $MODE") == "two"
    assert not set(s.replicas("worker")) & worker_before  # replaced, not changed in place
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    # scale down, prune the service no longer declared, a config's new content
    write(s, f, web=1, mode=None, conf="level=2")
    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 1
    assert s.replicas("worker") == {}
    assert s.exec("web", "cat", "/etc/app.conf") == "level=2"
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    s.cli.ok("down", "-f", str(f))
    assert s.replicas("web") == {}
    assert s.leftovers() == []


def test_swarm_refuses_what_it_cannot_run(swarm_prefix: str, tmp_path: Path) -> None:
    """A field a swarm service has no place for: a located error, exit 1, nothing made."""
    stack = f"{swarm_prefix}x"
    f = tmp_path / "compose.yaml"
    f.write_text(
        f"name: {stack}\nservices:\n  a:\n    image: {TEST_REF}\n    cap_add: [NET_ADMIN]\n"
    )
    cli = Cli(stack, tmp_path / "root", 0, "swarm")
    r = cli.run("-f", str(f))
    assert r.returncode == 1
    assert f"{f}:5:5: services.a.cap_add: the swarm runtime does not set capabilities" in (
        r.stderr
    ), r.stderr
    assert "nothing was changed" in r.stderr
    assert not docker("service", "ls", "-q", "--filter", f"label=io.pyapply.stack={stack}")
