"""A plain compose project on a real dockerd, through the real command line.

manifests/compose-demo/ is written with compose-only syntax: an override file, a service
extended from another file, anchors and merge keys, a profile. It is applied, re-applied as a
no-op, grown by a profile, and torn down -- under a unique project name (COMPOSE_PROJECT_NAME)
and a free loopback port, leaving nothing behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import REPO_ROOT, http_get

pytestmark = pytest.mark.e2e

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
DEMO = str(REPO_ROOT / "manifests" / "compose-demo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def owned(client: Any, stack: str) -> dict[str, Any]:
    found = client.containers.list(all=True, filters={"label": f"io.pyapply.stack={stack}"})
    return {c.name: c for c in found}


def test_compose_project_applies_reapplies_and_comes_down(
    stack_name: str, docker_client: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": stack_name,
        "WEB_PORT": str(port),
        "PYAPPLY_ROOT": str(tmp_path / "root"),
        "PYAPPLY_RUNTIME": "docker",
    }
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

    s = stack_name
    try:
        ok("validate", "-f", DEMO)
        ok("-f", DEMO)
        names = owned(docker_client, s)
        assert sorted(names) == [f"{s}-web-1", f"{s}-worker-1"]  # debug is in a profile
        web = names[f"{s}-web-1"]
        # the override file's environment merged with compose.yaml's list form
        assert {"ROLE=web", "LOG_LEVEL=info"} <= set(web.attrs["Config"]["Env"])
        assert set(web.attrs["NetworkSettings"]["Networks"]) == {f"{s}_front", f"{s}_back"}
        worker = names[f"{s}-worker-1"]
        # extended from common.yaml: its command and TIER, with this file's ROLE
        assert worker.attrs["Config"]["Cmd"] == ["sleep", "100000"]
        assert {"ROLE=worker", "TIER=background"} <= set(worker.attrs["Config"]["Env"])
        assert worker.attrs["HostConfig"]["Init"] is True
        status, body = http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and body

        ids = {n: c.id for n, c in owned(docker_client, s).items()}
        assert "no changes" in ok("-f", DEMO)
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
        assert {n: c.id for n, c in owned(docker_client, s).items()} == ids

        # the converted pyapply/v1 Stack is the same stack: no drift against what runs
        converted = tmp_path / "stack.yaml"
        converted.write_text(ok("convert", "-f", DEMO))
        same = run("diff", "-f", str(converted), "--exit-code")
        assert same.returncode == 0, same.stdout + same.stderr

        # a profile adds its service and leaves the others alone
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 2
        ok("-f", DEMO, "--profile", "debug")
        after = {n: c.id for n, c in owned(docker_client, s).items()}
        assert sorted(after) == [f"{s}-debug-1", f"{s}-web-1", f"{s}-worker-1"]
        assert {n: after[n] for n in ids} == ids
        assert run("diff", "-f", DEMO, "--exit-code", "--profile", "debug").returncode == 0
        env["COMPOSE_PROFILES"] = "debug"
        assert run("diff", "-f", DEMO, "--exit-code").returncode == 0
    finally:
        down = run("down", "-f", DEMO, "--volumes")
    assert down.returncode == 0, down.stderr
    assert owned(docker_client, s) == {}
    assert docker_client.networks.list(filters={"label": f"io.pyapply.stack={s}"}) == []
