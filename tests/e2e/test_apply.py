"""The whole loop against each real runtime (docker, native), through the real command line.

The stack is manifests/webdb/ under a unique name and port. What is checked is what a user
would check: the runtime's own view of the objects (through the Runtime protocol, plus
`docker inspect` on docker and the kernel's view inside the container on both), HTTP from
loopback to the published port, reachability between containers, and the exit codes of
`pyapply diff --exit-code`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import pytest

from pyapply.runtime.base import ContainerState
from tests.e2e.helpers import REPO_ROOT, STACK_LABEL, http_get
from tests.e2e.runtimes import PYAPPLY, WEBDB, Cli, DockerUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

# cgroup v1 (per-controller dirs) or v2 (one unified dir), as the container sees its own
CGROUP_LIMITS = (
    "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
    " || cat /sys/fs/cgroup/memory.max; "
    "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
    "q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null) "
    "&& echo $q $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) || cat /sys/fs/cgroup/cpu.max"
)


def fetch(runtime: RuntimeUnderTest, container: str, url: str) -> tuple[int, str]:
    """wget from inside a container, killed after 5 s (exit 137). Not `wget -T`: busybox
    1.35's wget crashes (exit 139) whenever -T is given, which would pass for "unreachable"."""
    return runtime.exec(container, "timeout", "-s", "KILL", "5", "wget", "-q", "-O-", url)


@pytest.fixture
def cli(runtime: RuntimeUnderTest) -> Iterator[Cli]:
    c = runtime.cli()
    yield c
    c.run("down", "-f", str(WEBDB), "--volumes")


def containers(runtime: RuntimeUnderTest) -> dict[str, ContainerState]:
    return runtime.observe.containers(runtime.stack)


def ids(runtime: RuntimeUnderTest) -> dict[str, str]:
    return {n: c.id for n, c in containers(runtime).items()}


def test_apply_converges_and_reapply_is_a_noop(cli: Cli, runtime: RuntimeUnderTest) -> None:
    out = cli.ok("-f", str(WEBDB))
    s = cli.stack
    obs = runtime.observe
    names = containers(runtime)
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
    assert web.memory_bytes == 64 * 1024 * 1024
    if isinstance(runtime, DockerUnderTest):
        attrs = runtime.attrs(f"{s}-web-1")
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["HostConfig"]["PidsLimit"] == 64
    # the limits as the kernel enforces them, seen from inside (the same on every runtime)
    code, text = runtime.exec(f"{s}-web-1", "sh", "-c", CGROUP_LIMITS)
    assert code == 0, text
    memory, pids, cpu = text.splitlines()
    assert int(memory) == 64 * 1024 * 1024
    assert pids == "64"
    quota, period = (int(x) for x in cpu.split())
    assert quota * 2 == period  # cpus: 0.5
    assert web.networks == tuple(sorted((f"{s}_front", f"{s}_back")))
    back = obs.network(f"{s}_back")
    assert back is not None and back.internal is True
    assert back.labels["io.pyapply.stack"] == s
    front = obs.network(f"{s}_front")
    assert front is not None and front.internal is False
    data = obs.volume(f"{s}_data")
    assert data is not None and data.labels["io.pyapply.stack"] == s
    assert "s3cret" not in out  # secret-like values never printed

    status, body = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200 and "pyapply test image" in body

    # web (front+back) reaches db by service name; edge (front only) cannot, by name or IP.
    code, text = runtime.exec(f"{s}-web-1", "wget", "-q", "-O-", "http://db:5432/ready")
    assert code == 0 and "ready" in text, text
    # db is on `back` only: its one global address is its address there
    code, text = runtime.exec(f"{s}-db-1", "ip", "-o", "-4", "addr", "show", "scope", "global")
    assert code == 0 and len(text.splitlines()) == 1, text
    db_ip = text.split()[3].split("/")[0]
    # the same request from web, which is on `back`, succeeds: the failures below are the
    # isolation, not the request
    assert fetch(runtime, f"{s}-web-1", f"http://{db_ip}:5432/ready") == (0, "ready\n")
    code, text = fetch(runtime, f"{s}-edge-1", "http://db:5432/ready")
    assert code in (1, 137) and "ready" not in text, (code, text)
    code, text = fetch(runtime, f"{s}-edge-1", f"http://{db_ip}:5432/ready")
    assert code in (1, 137) and "ready" not in text, (code, text)

    before = ids(runtime)
    again = cli.ok("-f", str(WEBDB))
    assert "no changes" in again
    assert ids(runtime) == before
    assert cli.run("diff", "-f", str(WEBDB), "--exit-code").returncode == 0

    got = json.loads(cli.ok("get", "-f", str(WEBDB), "-o", "json"))
    states = {c["name"]: (c["status"], c["health"]) for c in got[0]["containers"]}
    assert states[f"{s}-db-1"] == ("running", "healthy")


def test_env_change_recreates_only_that_service(cli: Cli, runtime: RuntimeUnderTest) -> None:
    cli.ok("-f", str(WEBDB))
    before = ids(runtime)
    plan = cli.run("diff", "-f", str(WEBDB), "--exit-code", "-o", "json", LOG_LEVEL="debug")
    assert plan.returncode == 2
    doc = json.loads(plan.stdout)
    schema = json.loads((REPO_ROOT / "schemas" / "v1" / "plan.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)
    changes = doc["stacks"][0]["changes"]
    assert [(c["action"], c["name"]) for c in changes] == [("recreate", f"{cli.stack}-web-1")]
    assert {"field": "env.LOG_LEVEL", "old": "info", "new": "debug"} in changes[0]["fields"]

    cli.ok("-f", str(WEBDB), LOG_LEVEL="debug")
    after = ids(runtime)
    changed = sorted(n for n in before if before[n] != after.get(n))
    assert changed == [f"{cli.stack}-web-1"]
    assert runtime.observe.env(f"{cli.stack}-web-1")["LOG_LEVEL"] == "debug"
    code, text = runtime.exec(f"{cli.stack}-web-1", "sh", "-c", "echo $LOG_LEVEL")
    assert (code, text) == (0, "debug\n")
    assert cli.run("diff", "-f", str(WEBDB), "--exit-code", LOG_LEVEL="debug").returncode == 0


def test_changes_made_by_hand_are_drift_and_repaired(cli: Cli, runtime: RuntimeUnderTest) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    hand = runtime.by_hand
    drifts: dict[str, Callable[[], None]] = {
        "stop": lambda: hand.stop(f"{s}-web-1", timeout=5),
        "kill": lambda: hand.kill(f"{s}-worker-2"),
        "rm": lambda: hand.remove(f"{s}-edge-1"),
        "network disconnect": lambda: hand.disconnect(f"{s}-web-1", f"{s}_back"),
        "memory limit update": lambda: hand.set_memory_limit(f"{s}-web-1", 48 * 1024 * 1024),
    }
    for what, act in drifts.items():
        act()
        if what == "kill" and runtime.name == "native":
            # worker's restart policy (unless-stopped) is kept by the state root's keeper,
            # with no pyapply running: the killed process is back on its own, counted as a
            # restart, and there is no drift left to see
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                worker = runtime.observe.must(f"{s}-worker-2")
                if worker.status == "running" and worker.restart_count == 1:
                    break
                time.sleep(0.1)
            assert (worker.status, worker.restart_count) == ("running", 1), worker
            d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
            assert d.returncode == 0, f"{what}: {d.stdout}{d.stderr}"
            continue
        d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
        assert d.returncode == 2, f"{what}: diff said {d.returncode}\n{d.stdout}{d.stderr}"
        cli.ok("-f", str(WEBDB))
        d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
        assert d.returncode == 0, f"{what}: {d.stdout}{d.stderr}"
    obs = runtime.observe
    web = obs.must(f"{s}-web-1")
    assert web.status == "running"
    assert web.networks == tuple(sorted((f"{s}_front", f"{s}_back")))
    assert web.memory_bytes == 64 * 1024 * 1024
    code, text = runtime.exec(f"{s}-web-1", "wget", "-q", "-O-", "http://db:5432/ready")
    assert code == 0 and "ready" in text, text
    assert obs.must(f"{s}-edge-1").status == "running"
    assert obs.must(f"{s}-worker-2").status == "running"
    status, _ = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200


def test_removed_service_is_pruned_and_volume_data_survives(
    cli: Cli, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    obs = runtime.observe
    code, _ = runtime.exec(f"{s}-db-1", "sh", "-c", "echo precious > /data/keep.txt")
    assert code == 0

    # A service removed from the manifest is pruned; nothing else is touched.
    text = (WEBDB / "stack.yaml").read_text()
    start = text.index("    edge:")
    end = text.index("    worker:")
    pruned = tmp_path / "pruned" / "stack.yaml"
    pruned.parent.mkdir()
    pruned.write_text(text[:start] + text[end:])
    before = ids(runtime)
    cli.ok("-f", str(pruned))
    after = ids(runtime)
    assert f"{s}-edge-1" not in after
    assert {n: i for n, i in before.items() if n != f"{s}-edge-1"} == after

    # Recreate db (env change): the file in the volume survives.
    cli.ok("-f", str(pruned), DB_PASSWORD="changed")
    assert ids(runtime)[f"{s}-db-1"] != before[f"{s}-db-1"]
    assert runtime.exec(f"{s}-db-1", "cat", "/data/keep.txt") == (0, "precious\n")

    # down keeps the volume; apply again finds the file; down --volumes removes it.
    cli.ok("down", "-f", str(pruned))
    assert containers(runtime) == {}
    assert obs.volume(f"{s}_data") is not None
    assert obs.networks(s) == {}
    cli.ok("-f", str(pruned))
    assert runtime.exec(f"{s}-db-1", "cat", "/data/keep.txt") == (0, "precious\n")
    cli.ok("down", "-f", str(pruned), "--volumes")
    assert obs.volumes(s) == {}
    assert obs.volume(f"{s}_data") is None


def _assert_converged(cli: Cli, runtime: RuntimeUnderTest) -> None:
    s = cli.stack
    d = cli.run("diff", "-f", str(WEBDB), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr
    names = sorted(containers(runtime))
    assert names == sorted(f"{s}-{n}" for n in ("db-1", "web-1", "edge-1", "worker-1", "worker-2"))
    every = runtime.observe.all_container_names(s)
    assert every == names  # no strays, no temporaries
    assert http_get(f"http://127.0.0.1:{cli.port}/")[0] == 200


@pytest.mark.parametrize("delay", [0.2, 0.8, 1.6, 3.0])
def test_apply_killed_part_way_is_finished_by_the_next(
    cli: Cli, runtime: RuntimeUnderTest, delay: float
) -> None:
    proc = cli.spawn("-f", str(WEBDB))
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cli.ok("-f", str(WEBDB))
    _assert_converged(cli, runtime)


def test_apply_killed_mid_recreate_is_finished_by_the_next(
    cli: Cli, runtime: RuntimeUnderTest
) -> None:
    """SIGKILL the apply the moment the runtime reports the old container destroyed (its
    event stream, through the Runtime protocol): the point of a stop-first recreate where
    the old container is gone and the new one may not exist yet."""
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    web = f"{s}-web-1"
    watcher_rt = runtime.open()
    events = watcher_rt.events({STACK_LABEL: s})
    proc = subprocess.Popen(
        [PYAPPLY, "-f", str(WEBDB)],
        env={**cli.env, "LOG_LEVEL": "debug"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    destroyed = threading.Event()

    def kill_on_destroy() -> None:
        with contextlib.suppress(Exception):  # the stream ends when its runtime is closed
            for ev in events:
                if ev.kind == "container" and ev.action == "destroy" and ev.name == web:
                    proc.send_signal(signal.SIGKILL)
                    destroyed.set()
                    return

    watcher = threading.Thread(target=kill_on_destroy, daemon=True)
    watcher.start()
    try:
        proc.wait(timeout=120)
    finally:
        with contextlib.suppress(Exception):
            watcher_rt.close()
    assert destroyed.is_set(), "the apply ended before the old container was destroyed"
    # Killed part-way: the new container is missing, or created by the killed apply; never two.
    left = runtime.observe.all_container_names(f"{s}-web-")
    assert len(left) <= 1, left
    cli.ok("-f", str(WEBDB), LOG_LEVEL="debug")
    assert runtime.observe.env(web)["LOG_LEVEL"] == "debug"
    cli.env["LOG_LEVEL"] = "debug"
    _assert_converged(cli, runtime)


def test_invalid_manifest_changes_nothing(
    cli: Cli, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
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
    assert containers(runtime) == {}


def test_completed_dependency_and_missing_image(
    cli: Cli, runtime: RuntimeUnderTest, tmp_path: Path
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
    obs = runtime.observe
    app = obs.must(f"{cli.stack}-app-1")
    assert app.status == "running"
    assert "migrated" in obs.logs(app.name)
    migrate = obs.must(f"{cli.stack}-migrate-1")
    assert (migrate.status, migrate.exit_code) == ("exited", 0)
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
    assert containers(runtime) == {}
    assert obs.volumes(cli.stack) == {}


def test_changed_network_is_recreated_with_its_users(
    cli: Cli, runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    cli.ok("-f", str(WEBDB))
    s = cli.stack
    obs = runtime.observe
    old_net = obs.network(f"{s}_back")
    assert old_net is not None
    before = ids(runtime)
    changed = tmp_path / "changed" / "stack.yaml"
    changed.parent.mkdir()
    changed.write_text(
        (WEBDB / "stack.yaml").read_text().replace("back: {internal: true}", "back: {}")
    )

    plan = cli.run("diff", "-f", str(changed), "--exit-code")
    assert plan.returncode == 2
    assert f"~ network {s}_back: recreate (spec changed)" in plan.stdout
    cli.ok("-f", str(changed))
    net = obs.network(f"{s}_back")
    assert net is not None and net.id != old_net.id and net.internal is False
    after = ids(runtime)
    # every container on `back` was recreated; edge (front only) was not touched
    assert after[f"{s}-edge-1"] == before[f"{s}-edge-1"]
    for name in (f"{s}-db-1", f"{s}-web-1", f"{s}-worker-1", f"{s}-worker-2"):
        assert after[name] != before[name], name
    assert cli.run("diff", "-f", str(changed), "--exit-code").returncode == 0
    assert http_get(f"http://127.0.0.1:{cli.port}/")[0] == 200
    code, text = runtime.exec(f"{s}-web-1", "wget", "-q", "-O-", "http://db:5432/ready")
    assert code == 0 and "ready" in text, text
