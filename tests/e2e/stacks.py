"""A runtime under test seen stack by stack, the same on every runtime that runs stacks:
a service's running replicas (containers `<stack>-<service>-N` on one host, a service's tasks
on a swarm), a command run in one of them, the CLI, what the stack left. The `stack_runtime`
fixture (conftest.py) gives one per runtime: docker, native and swarm.
"""

from __future__ import annotations

from tests.e2e.runtimes import Cli, RuntimeUnderTest
from tests.e2e.swarm import docker

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
