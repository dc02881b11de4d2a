"""The whole loop against a real dockerd, through the real command line.

The stack is manifests/webdb/ under a unique name and port. What is checked is what a user
would check: docker inspect, HTTP from loopback to the published port, reachability between
containers, and the exit codes of `pyapply diff --exit-code`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.e2e.helpers import REPO_ROOT, http_get

pytestmark = pytest.mark.e2e

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
WEBDB = REPO_ROOT / "manifests" / "webdb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cli:
    """Runs `pyapply` as a user would, with the stack's name and port in the environment."""

    def __init__(self, stack: str, root: Path, port: int) -> None:
        self.stack = stack
        self.port = port
        self.env = {
            **os.environ,
            "STACK": stack,
            "WEB_PORT": str(port),
            "PYAPPLY_ROOT": str(root),
            "PYAPPLY_RUNTIME": "docker",
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str, **env: str) -> str:
        out = self.run(*args, **env)
        assert out.returncode == 0, (
            f"pyapply {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out.stdout

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYAPPLY, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture
def cli(stack_name: str, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(stack_name, tmp_path / "root", free_port())
    yield c
    c.run("down", "-f", str(WEBDB), "--volumes")


def containers(client: Any, stack: str) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"io.pyapply.stack={stack}"})
    return {c.name: c for c in found}


def exec_ok(client: Any, name: str, *cmd: str) -> tuple[int, str]:
    code, out = client.containers.get(name).exec_run(list(cmd))
    return int(code), out.decode(errors="replace")


def test_apply_converges_and_reapply_is_a_noop(cli: Cli, docker_client: Any) -> None:
    out = cli.ok("-f", str(WEBDB))
    s = cli.stack
    names = containers(docker_client, s)
    assert sorted(names) == sorted(
        f"{s}-{n}" for n in ("db-1", "web-1", "edge-1", "worker-1", "worker-2")
    )
    web = names[f"{s}-web-1"]
    labels = web.labels
    assert labels["io.pyapply.stack"] == s
    assert labels["io.pyapply.service"] == "web"
    assert labels["io.pyapply.replica"] == "1"
    assert len(labels["io.pyapply.spec-hash"]) == 16
    assert labels["io.pyapply.revision"]
    assert web.attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert web.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert web.attrs["HostConfig"]["PidsLimit"] == 64
    assert set(web.attrs["NetworkSettings"]["Networks"]) == {f"{s}_front", f"{s}_back"}
    back = docker_client.networks.get(f"{s}_back")
    assert back.attrs["Internal"] is True
    assert back.attrs["Labels"]["io.pyapply.stack"] == s
    assert docker_client.volumes.get(f"{s}_data").attrs["Labels"]["io.pyapply.stack"] == s
    assert "s3cret" not in out  # secret-like values never printed

    status, body = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200 and "pyapply test image" in body

    # web (front+back) reaches db by service name; edge (front only) cannot, by name or IP.
    code, text = exec_ok(docker_client, f"{s}-web-1", "wget", "-q", "-O-", "http://db:5432/ready")
    assert code == 0 and "ready" in text
    db_ip = docker_client.containers.get(f"{s}-db-1").attrs["NetworkSettings"]["Networks"][
        f"{s}_back"
    ]["IPAddress"]
    code, _ = exec_ok(
        docker_client, f"{s}-edge-1", "wget", "-q", "-T", "2", "-O-", "http://db:5432/ready"
    )
    assert code != 0
    code, _ = exec_ok(
        docker_client, f"{s}-edge-1", "wget", "-q", "-T", "2", "-O-", f"http://{db_ip}:5432/ready"
    )
    assert code != 0

    ids = {n: c.id for n, c in names.items()}
    again = cli.ok("-f", str(WEBDB))
    assert "no changes" in again
    assert {n: c.id for n, c in containers(docker_client, s).items()} == ids
    assert cli.run("diff", "-f", str(WEBDB), "--exit-code").returncode == 0

    got = json.loads(cli.ok("get", "-f", str(WEBDB), "-o", "json"))
    states = {c["name"]: (c["status"], c["health"]) for c in got[0]["containers"]}
    assert states[f"{s}-db-1"] == ("running", "healthy")


def test_env_change_recreates_only_that_service(cli: Cli, docker_client: Any) -> None:
    cli.ok("-f", str(WEBDB))
    before = {n: c.id for n, c in containers(docker_client, cli.stack).items()}
    plan = cli.run("diff", "-f", str(WEBDB), "--exit-code", "-o", "json", LOG_LEVEL="debug")
    assert plan.returncode == 2
    doc = json.loads(plan.stdout)
    schema = json.loads((REPO_ROOT / "schemas" / "v1" / "plan.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    changes = doc["stacks"][0]["changes"]
    assert [(c["action"], c["name"]) for c in changes] == [("recreate", f"{cli.stack}-web-1")]
    assert {"field": "env.LOG_LEVEL", "old": "info", "new": "debug"} in changes[0]["fields"]

    cli.ok("-f", str(WEBDB), LOG_LEVEL="debug")
    after = {n: c.id for n, c in containers(docker_client, cli.stack).items()}
    changed = sorted(n for n in before if before[n] != after.get(n))
    assert changed == [f"{cli.stack}-web-1"]
    env = docker_client.containers.get(f"{cli.stack}-web-1").attrs["Config"]["Env"]
    assert "LOG_LEVEL=debug" in env
    assert cli.run("diff", "-f", str(WEBDB), "--exit-code", LOG_LEVEL="debug").returncode == 0


def test_changes_made_by_hand_are_drift_and_repaired(cli: Cli, docker_client: Any) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    drifts = {
        "docker stop": lambda: docker_client.containers.get(f"{s}-web-1").stop(timeout=5),
        "docker rm": lambda: docker_client.containers.get(f"{s}-edge-1").remove(force=True),
        "docker network disconnect": lambda: docker_client.networks.get(f"{s}_back").disconnect(
            f"{s}-web-1"
        ),
    }
    for what, act in drifts.items():
        act()
        d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
        assert d.returncode == 2, f"{what}: diff said {d.returncode}\n{d.stdout}{d.stderr}"
        cli.ok("-f", str(WEBDB))
        assert cli.run("diff", "-f", str(WEBDB), "--exit-code").returncode == 0, what
    web = docker_client.containers.get(f"{s}-web-1")
    assert web.status == "running"
    assert set(web.attrs["NetworkSettings"]["Networks"]) == {f"{s}_front", f"{s}_back"}
    assert docker_client.containers.get(f"{s}-edge-1").status == "running"
    status, _ = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200


def test_removed_service_is_pruned_and_volume_data_survives(
    cli: Cli, docker_client: Any, tmp_path: Path
) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    code, _ = exec_ok(docker_client, f"{s}-db-1", "sh", "-c", "echo precious > /data/keep.txt")
    assert code == 0

    # A service removed from the manifest is pruned; nothing else is touched.
    text = (WEBDB / "stack.yaml").read_text()
    start = text.index("    edge:")
    end = text.index("    worker:")
    pruned = tmp_path / "pruned" / "stack.yaml"
    pruned.parent.mkdir()
    pruned.write_text(text[:start] + text[end:])
    before = {n: c.id for n, c in containers(docker_client, s).items()}
    cli.ok("-f", str(pruned))
    after = {n: c.id for n, c in containers(docker_client, s).items()}
    assert f"{s}-edge-1" not in after
    assert {n: i for n, i in before.items() if n != f"{s}-edge-1"} == after

    # Recreate db (env change): the file in the volume survives.
    cli.ok("-f", str(pruned), DB_PASSWORD="changed")
    assert containers(docker_client, s)[f"{s}-db-1"].id != before[f"{s}-db-1"]
    assert exec_ok(docker_client, f"{s}-db-1", "cat", "/data/keep.txt") == (0, "precious\n")

    # down keeps the volume; apply again finds the file; down --volumes removes it.
    cli.ok("down", "-f", str(pruned))
    assert containers(docker_client, s) == {}
    assert docker_client.volumes.get(f"{s}_data")
    assert not docker_client.networks.list(filters={"label": f"io.pyapply.stack={s}"})
    cli.ok("-f", str(pruned))
    assert exec_ok(docker_client, f"{s}-db-1", "cat", "/data/keep.txt") == (0, "precious\n")
    cli.ok("down", "-f", str(pruned), "--volumes")
    assert not docker_client.volumes.list(filters={"label": f"io.pyapply.stack={s}"})


def _assert_converged(cli: Cli, docker_client: Any) -> None:
    s = cli.stack
    d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr
    names = sorted(containers(docker_client, s))
    assert names == sorted(f"{s}-{n}" for n in ("db-1", "web-1", "edge-1", "worker-1", "worker-2"))
    every = [c.name for c in docker_client.containers.list(all=True) if c.name.startswith(s)]
    assert sorted(every) == names  # no strays, no temporaries
    assert http_get(f"http://127.0.0.1:{cli.port}/")[0] == 200


@pytest.mark.parametrize("delay", [0.2, 0.8, 1.6, 3.0])
def test_apply_killed_part_way_is_finished_by_the_next(
    cli: Cli, docker_client: Any, delay: float
) -> None:
    proc = cli.spawn("-f", str(WEBDB))
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cli.ok("-f", str(WEBDB))
    _assert_converged(cli, docker_client)


def test_apply_killed_mid_recreate_is_finished_by_the_next(cli: Cli, docker_client: Any) -> None:
    """SIGKILL the apply the moment dockerd reports the old container destroyed: the point of a
    stop-first recreate where the old container is gone and the new one may not exist yet."""
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    old_id = docker_client.containers.get(f"{s}-web-1").id
    events = docker_client.events(
        filters={"container": f"{s}-web-1", "event": "destroy"},
        since=int(time.time()),
        decode=True,
    )
    proc = subprocess.Popen(
        [PYAPPLY, "-f", str(WEBDB)],
        env={**cli.env, "LOG_LEVEL": "debug"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    destroyed = threading.Event()

    def kill_on_destroy() -> None:
        for ev in events:
            if ev.get("id") == old_id:
                proc.send_signal(signal.SIGKILL)
                destroyed.set()
                return

    watcher = threading.Thread(target=kill_on_destroy, daemon=True)
    watcher.start()
    try:
        proc.wait(timeout=120)
    finally:
        events.close()
    assert destroyed.is_set(), "the apply ended before the old container was destroyed"
    # Killed part-way: the new container is missing, or created by the killed apply; never two.
    left = [c for c in docker_client.containers.list(all=True) if c.name.startswith(f"{s}-web-")]
    assert len(left) <= 1
    cli.ok("-f", str(WEBDB), LOG_LEVEL="debug")
    env = docker_client.containers.get(f"{s}-web-1").attrs["Config"]["Env"]
    assert "LOG_LEVEL=debug" in env
    cli.env["LOG_LEVEL"] = "debug"
    _assert_converged(cli, docker_client)


def test_invalid_manifest_changes_nothing(cli: Cli, docker_client: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: " + cli.stack + "}\n"
        "spec:\n  services:\n    web:\n      image: pyapply-test/busybox:latest\n"
        "      depends_on: [nope]\n"
    )
    out = cli.run("-f", str(bad))
    assert out.returncode == 1
    assert f"{bad}:8:" in out.stderr and "nope" in out.stderr
    assert "Traceback" not in out.stderr
    assert containers(docker_client, cli.stack) == {}


def test_completed_dependency_and_missing_image(
    cli: Cli, docker_client: Any, tmp_path: Path
) -> None:
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {cli.stack}}}
spec:
  services:
    migrate:
      image: pyapply-test/busybox:latest
      command: ["sh", "-c", "sleep 1; echo migrated > /data/done"]
      volumes: ["data:/data"]
    app:
      image: pyapply-test/busybox:latest
      command: ["sh", "-c", "cat /data/done && exec sleep 100000"]
      init: true
      stop_grace_period: 1s
      volumes: ["data:/data"]
      depends_on:
        migrate: {{condition: service_completed_successfully}}
  volumes:
    data: {{}}
"""
    )
    cli.ok("-f", str(manifest))
    app = docker_client.containers.get(f"{cli.stack}-app-1")
    assert app.status == "running"
    assert b"migrated" in app.logs()
    assert docker_client.containers.get(f"{cli.stack}-migrate-1").attrs["State"]["ExitCode"] == 0
    # the completed one-shot is not drift
    assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0
    logs = cli.ok("logs", "app", "--file", str(manifest))
    assert "migrated" in logs

    never = tmp_path / "never.yaml"
    never.write_text(
        manifest.read_text().replace(
            'image: pyapply-test/busybox:latest\n      command: ["sh", "-c", "cat',
            'image: pyapply-test/absent:1\n      pull_policy: never\n      command: ["sh", "-c", "cat',
        )
    )
    out = cli.run("-f", str(never))
    assert out.returncode == 1
    assert (
        "pyapply-test/absent:1 is not present and pull_policy is never" in out.stdout + out.stderr
    )
    cli.ok("down", "-f", str(manifest), "--volumes")


def test_changed_network_is_recreated_with_its_users(
    cli: Cli, docker_client: Any, tmp_path: Path
) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    old_net = docker_client.networks.get(f"{s}_back").id
    before = {n: c.id for n, c in containers(docker_client, s).items()}
    changed = tmp_path / "changed" / "stack.yaml"
    changed.parent.mkdir()
    changed.write_text(
        (WEBDB / "stack.yaml").read_text().replace("back: {internal: true}", "back: {}")
    )

    plan = cli.run("diff", "-f", str(changed), "--exit-code")
    assert plan.returncode == 2
    assert f"~ network {s}_back: recreate (spec changed)" in plan.stdout
    cli.ok("-f", str(changed))
    net = docker_client.networks.get(f"{s}_back")
    assert net.id != old_net and net.attrs["Internal"] is False
    after = {n: c.id for n, c in containers(docker_client, s).items()}
    # every container on `back` was recreated; edge (front only) was not touched
    assert after[f"{s}-edge-1"] == before[f"{s}-edge-1"]
    for name in (f"{s}-db-1", f"{s}-web-1", f"{s}-worker-1", f"{s}-worker-2"):
        assert after[name] != before[name], name
    assert cli.run("diff", "-f", str(changed), "--exit-code").returncode == 0
    assert http_get(f"http://127.0.0.1:{cli.port}/")[0] == 200
