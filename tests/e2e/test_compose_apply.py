"""A plain compose project on each real runtime (docker, native), through the real command
line.

manifests/compose-demo/ is written with compose-only syntax: an override file, a service
extended from another file, anchors and merge keys, a profile. It is applied, re-applied as a
no-op, grown by a profile, and torn down -- under a unique project name (COMPOSE_PROJECT_NAME)
and a free loopback port, leaving nothing behind.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyapply.runtime.base import ContainerState
from tests.e2e.helpers import REPO_ROOT, http_get
from tests.e2e.runtimes import PYAPPLY, DockerUnderTest, RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e

DEMO = str(REPO_ROOT / "manifests" / "compose-demo")


def owned(runtime: RuntimeUnderTest) -> dict[str, ContainerState]:
    return runtime.observe.containers(runtime.stack)


def test_compose_project_applies_reapplies_and_comes_down(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    port = free_port()
    env = {**runtime.env, "COMPOSE_PROJECT_NAME": runtime.stack, "WEB_PORT": str(port)}
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
        assert sorted(names) == [f"{s}-web-1", f"{s}-worker-1"]  # debug is in a profile
        web = names[f"{s}-web-1"]
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

        # the converted pyapply/v1 Stack is the same stack: no drift against what runs
        converted = tmp_path / "stack.yaml"
        converted.write_text(ok("convert", "-f", DEMO))
        same = run("diff", "-f", str(converted), "--exit-code")
        assert same.returncode == 0, same.stdout + same.stderr

        # a profile adds its service and leaves the others alone
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 2
        ok("-f", DEMO, "--profile", "debug")
        after = {n: c.id for n, c in owned(runtime).items()}
        assert sorted(after) == [f"{s}-debug-1", f"{s}-web-1", f"{s}-worker-1"]
        assert {n: after[n] for n in ids} == ids
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 0
        env["COMPOSE_PROFILES"] = "debug"
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
    finally:
        down = run("down", "-f", DEMO, "--volumes")
    assert down.returncode == 0, down.stderr
    assert owned(runtime) == {}
    assert runtime.observe.networks(s) == {}
