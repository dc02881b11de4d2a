"""`pyapply --runtime swarm` through the real CLI on a single-node swarm (the main dockerd):
apply a compose file, diff, out-of-band changes shown and converged back, config rotation,
an update the swarm rolls back, `docker stack services`, down; and the same compose file
deployed by `docker stack deploy` ends up equivalent.

Every object carries a random prefix and is removed at the end; the main dockerd leaves the
swarm only if these tests made it a manager (tests/e2e/swarm.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.e2e.runtimes import PYAPPLY
from tests.e2e.swarm import (
    HOST_ADDR,
    TEST_REF,
    HostLink,
    SwarmHost,
    docker,
    new_prefix,
    pinned_test_image,
    remove_prefixed,
    swarm_objects,
    wait_for,
)

pytestmark = pytest.mark.e2e

COMPOSE = """\
services:
  web:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 2s
    environment:
      MODE: one
    ports:
      - target: 8080
        published: {port}
        mode: host
    networks: [back]
    configs:
      - source: conf
        target: /etc/app.conf
    secrets: [pw]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      restart_policy: {{condition: any, delay: 1s}}
      update_config: {{parallelism: 1, monitor: 2s, failure_action: rollback}}
      rollback_config: {{parallelism: 0, monitor: 1s}}
  worker:
    image: {image}
    command: {worker_command}
    init: true
    stop_grace_period: 2s
    networks: [back]
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 2s, failure_action: rollback}}
      rollback_config: {{parallelism: 0, monitor: 1s}}
networks:
  back:
    driver: overlay
configs:
  conf:
    content: "{conf}"
secrets:
  pw:
    file: ./pw.txt
"""


class Env(msgspec.Struct):
    prefix: str
    dir: Path
    port: int

    def write(self, conf: str = "level=1", worker_command: str = '["sleep", "600"]') -> Path:
        path = self.dir / "compose.yaml"
        path.write_text(
            COMPOSE.format(image=TEST_REF, port=self.port, conf=conf, worker_command=worker_command)
        )
        return path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYAPPLY_RUNTIME": "swarm"}
        return subprocess.run(
            [PYAPPLY, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=self.dir,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    prefix = new_prefix()
    link = HostLink(prefix)
    swarm = SwarmHost(HOST_ADDR)
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}

    try:
        link.create()
        swarm.start()
        before = swarm_objects(prefix)
        pinned_test_image()  # the image in the local registry: what a swarm pulls from
        d = tmp_path_factory.mktemp(prefix) / prefix  # the directory names the stack
        d.mkdir()
        (d / "pw.txt").write_text("hunter2-secret")
        yield Env(prefix, d, _free_port())
        after = swarm_objects(prefix)
    finally:
        remove_prefixed(prefix)
        swarm.stop()
        link.remove()
    # what the tests made, they removed (down, not the clean-up above); swarm objects only:
    # other tests on this dockerd make local networks meanwhile
    assert after == before


def _inspect(name: str) -> dict[str, object]:
    doc: list[dict[str, object]] = json.loads(docker("service", "inspect", name))
    return doc[0]


def _spec(name: str) -> dict[str, object]:
    spec = _inspect(name)["Spec"]
    assert isinstance(spec, dict)
    return spec


def test_apply_diff_drift_rotation_rollback_down(env: Env) -> None:
    stack = env.prefix
    compose = env.write()
    # a swarm-only check: depends_on ordering cannot be waited for, said where it is written
    bad = env.dir / "bad.yaml"
    bad.write_text(
        "name: bad\nservices:\n  a:\n    image: x\n    depends_on:\n"
        "      b: {condition: service_healthy}\n  b:\n    image: x\n"
    )
    r = env.cli("apply", "-f", str(bad))
    assert r.returncode == 1
    assert f"{bad}:6:22: services.a.depends_on.b.condition: a swarm starts" in r.stderr, r.stderr

    r = env.cli("apply", "-f", str(compose), "--wait-timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"service {stack}_web: converged" in r.stdout
    assert f"service {stack}_worker: converged" in r.stdout
    assert "hunter2-secret" not in r.stdout + r.stderr
    spec = _spec(f"{stack}_web")
    assert "@sha256:" in spec["TaskTemplate"]["ContainerSpec"]["Image"]  # type: ignore[index]
    assert _spec(f"{stack}_worker")["Mode"] == {"Replicated": {"Replicas": 2}}
    ports = _inspect(f"{stack}_web")["Endpoint"]["Ports"]  # type: ignore[index]
    assert ports[0]["PublishMode"] == "host" and ports[0]["PublishedPort"] == env.port
    assert env.cli("diff", "--exit-code", "-f", str(compose)).returncode == 0
    services = docker("stack", "services", stack, "--format", "{{.Name}} {{.Replicas}}")
    assert sorted(services.splitlines()) == [f"{stack}_web 1/1", f"{stack}_worker 2/2"]

    # out of band: an env var and the replica count, by hand
    docker("service", "update", "--detach", "--env-add", "EXTRA=1", f"{stack}_web")
    docker("service", "update", "--detach", "--replicas", "3", f"{stack}_worker")
    r = env.cli("diff", "--exit-code", "-f", str(compose))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"service {stack}_web: update (changed out of band)" in r.stdout
    assert "env.EXTRA: 1 -> (none)" in r.stdout
    assert "replicas: 3 -> 2" in r.stdout
    r = env.cli("apply", "-f", str(compose), "--wait-timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert env.cli("diff", "--exit-code", "-f", str(compose)).returncode == 0
    assert _spec(f"{stack}_worker")["Mode"] == {"Replicated": {"Replicas": 2}}

    # a config's new content: a new object, the service switched, the old one removed
    old_configs = docker("config", "ls", "--filter", f"label=io.pyapply.stack={stack}", "-q")
    compose = env.write(conf="level=2")
    r = env.cli("apply", "-f", str(compose), "--wait-timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"config {stack}_conf_" in r.stdout and "replaced or no longer declared" in r.stdout
    new_configs = docker("config", "ls", "--filter", f"label=io.pyapply.stack={stack}", "-q")
    assert len(new_configs.split()) == 1 and new_configs != old_configs
    used = _spec(f"{stack}_web")["TaskTemplate"]["ContainerSpec"]["Configs"]  # type: ignore[index]
    assert [c["ConfigID"] for c in used] == [new_configs.strip()]

    # a bad update (the command exits at once): the swarm rolls it back; pyapply says so
    bad_compose = env.write(conf="level=2", worker_command='["sh", "-c", "exit 3"]')
    r = env.cli("apply", "-f", str(bad_compose), "--wait-timeout", "60")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"service {stack}_worker: rolled back" in r.stdout, r.stdout
    r = env.cli("diff", "--exit-code", "-f", str(bad_compose))
    assert r.returncode == 2 and "the last update was rolled back" in r.stdout, r.stdout

    r = env.cli("get", "--stack", stack, "-o", "json")
    assert r.returncode == 0, r.stderr
    [doc] = json.loads(r.stdout)
    assert sorted(s["name"] for s in doc["services"]) == [f"{stack}_web", f"{stack}_worker"]

    r = env.cli("down", "--stack", stack, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for kind in ("service", "config", "secret"):
        assert not docker(kind, "ls", "-q", "--filter", f"label=io.pyapply.stack={stack}")
    wait_for(
        lambda: not docker("network", "ls", "-q", "--filter", f"label=io.pyapply.stack={stack}"),
        20,
        "the stack's network to go",
    )


def test_same_compose_file_as_docker_stack_deploy(env: Env) -> None:
    """Deployed by `docker stack deploy` and by pyapply, one compose file gives the same
    services (names, replicas, image, mode, command, env, endpoint mode, ports) and networks."""
    ours, theirs = f"{env.prefix}p", f"{env.prefix}d"
    d = env.dir.parent / ours  # pyapply names a compose stack after its directory
    d.mkdir()
    (d / "pw.txt").write_text("pw")
    (d / "conf.txt").write_text("conf")
    text = COMPOSE.format(
        image=pinned_test_image(), port=0, conf="", worker_command='["sleep", "600"]'
    )
    # what docker stack's compose schema knows: file-based configs, ports chosen by the node
    text = text.replace('    content: ""', "    file: ./conf.txt").replace(
        "        published: 0\n", ""
    )
    (d / "compose.yaml").write_text(text)
    try:
        r = env.cli("apply", "-f", str(d / "compose.yaml"), "--wait-timeout", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        docker("stack", "deploy", "--detach=true", "-c", str(d / "compose.yaml"), theirs)

        def summary(stack: str) -> dict[str, object]:
            out: dict[str, object] = {}
            for key in ("web", "worker"):
                info = _inspect(f"{stack}_{key}")
                spec = info["Spec"]
                assert isinstance(spec, dict)
                c = spec["TaskTemplate"]["ContainerSpec"]
                nets = spec["TaskTemplate"].get("Networks", [])
                out[key] = {
                    "mode": spec["Mode"],
                    "image": c["Image"],
                    "args": c.get("Args"),
                    "env": c.get("Env"),
                    "init": c.get("Init"),
                    "endpoint": spec["EndpointSpec"]["Mode"],
                    "ports": [
                        (p["TargetPort"], p["Protocol"], p["PublishMode"])
                        for p in spec["EndpointSpec"].get("Ports", [])
                    ],
                    "networks": sorted(
                        docker(
                            "network", "inspect", n["Target"], "--format", "{{.Name}}"
                        ).removeprefix(stack + "_")
                        for n in nets
                    ),
                    "aliases": sorted(a for n in nets for a in n.get("Aliases", [])),
                    "configs": [x["File"]["Name"] for x in c.get("Configs", [])],
                    "secrets": [x["File"]["Name"] for x in c.get("Secrets", [])],
                    "namespace": spec["Labels"].get("com.docker.stack.namespace") == stack,
                }
            return out

        assert summary(ours) == summary(theirs)
        for stack in (ours, theirs):
            nets = docker(
                "network",
                "ls",
                "--filter",
                f"label=com.docker.stack.namespace={stack}",
                "--format",
                "{{.Name}} {{.Driver}} {{.Scope}}",
            )
            assert nets.splitlines() == [f"{stack}_back overlay swarm"]
    finally:
        env.cli("down", "--stack", ours)
        docker("stack", "rm", theirs, check=False)
        remove_prefixed(ours)
        remove_prefixed(theirs)
