"""seccomp on each real runtime (docker, native), through the real command line.

A small C probe (tests/e2e/probes/syscalls.c), compiled statically with the host's gcc at
test time, is bind-mounted read-only into three busybox containers of one stack: one under
the default profile, one `security_opt: [seccomp=unconfined]`, one under a profile file that
denies mkdir with EACCES. Each prints one line per system call ("name=ok" or the errno's
name) into its log. The test asserts the expected outcome of every call, records the matrix
per runtime (tmp/seccomp-matrix-<runtime>.json under the test's directory, and the test's
output), and, on native, that every call Docker's default profile blocks is blocked too:
the docker case of the same session is the reference when it ran first, else a `docker run`
of the probe made there.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import RuntimeUnderTest

pytestmark = pytest.mark.e2e

PROBE_SOURCE = Path(__file__).parent / "probes" / "syscalls.c"
BLOCKED = "EPERM"

# The default profile: what each call gives. Calls Docker's profile answers differently by
# engine version map to the set of outcomes seen across versions; native must give the first.
DEFAULT: dict[str, tuple[str, ...]] = {
    "mount": (BLOCKED,),
    "unshare": (BLOCKED,),
    "keyctl": (BLOCKED,),
    "personality_query": ("ok",),
    "personality_addr_no_randomize": (BLOCKED,),
    "kcmp": (BLOCKED,),
    "get_mempolicy": (BLOCKED,),
    # Docker 20.10 allows io_uring and AF_VSOCK; its profile v0.2.3 (Docker 25+) does not
    "io_uring_setup": (BLOCKED, "ok"),
    "socket_vsock": (BLOCKED, "ok"),
    "socket_inet": ("ok",),
    "ptrace": ("ok",),  # a child of ours: allowed on kernels >= 4.8, as in Docker's profile
    "init_module": (BLOCKED,),
    "finit_module": (BLOCKED,),
    "clone_newuser": (BLOCKED,),
    "clone3": ("ENOSYS",),  # so that libc falls back to clone, whose flags are checked
    "mkdir": ("ok",),
}
# Unconfined: no filter, so what the kernel says (no CAP_SYS_ADMIN for mount; the module
# calls are ENOSYS on a kernel without modules, EPERM without CAP_SYS_MODULE otherwise).
UNCONFINED: dict[str, tuple[str, ...]] = {
    "mount": (BLOCKED, "ENOENT"),
    "unshare": ("ok",),
    "keyctl": ("ok",),
    "personality_query": ("ok",),
    "personality_addr_no_randomize": ("ok",),
    "kcmp": ("ok",),
    "get_mempolicy": ("ok",),
    "io_uring_setup": ("ok",),
    "socket_vsock": ("ok", "EAFNOSUPPORT"),
    "socket_inet": ("ok",),
    "ptrace": ("ok",),
    "init_module": ("ENOSYS", BLOCKED),
    "finit_module": ("ENOSYS", BLOCKED),
    "clone_newuser": ("ok",),
    "clone3": ("ok",),
    "mkdir": ("ok",),
}
DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
}

# What the docker run of this session saw under the default profile (the reference).
_DOCKER_SEEN: dict[str, str] = {}


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing (setup installs gcc and libc6-dev)", pytrace=False)
    out = tmp_path_factory.mktemp("probe") / "syscalls"
    done = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-o", str(out), str(PROBE_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"cannot compile the probe:\n{done.stderr}"
    return out


def manifest(tmp_path: Path, stack: str, probe: Path) -> Path:
    path = tmp_path / "stack" / "stack.yaml"
    (tmp_path / "stack" / "profiles").mkdir(parents=True)
    (tmp_path / "stack" / "profiles" / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    services = ""
    for name, opts in (
        ("default", ""),
        ("unconfined", "      security_opt: [seccomp=unconfined]\n"),
        ("custom", "      security_opt: [seccomp=profiles/deny-mkdir.json]\n"),
    ):
        services += (
            f"    {name}:\n      image: {TEST_IMAGE}\n"
            '      command: ["/probe/syscalls"]\n'
            f'      volumes: ["{probe}:/probe/syscalls:ro"]\n' + opts
        )
    path.write_text(
        f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\n"
        f"spec:\n  services:\n{services}"
    )
    return path


def results(runtime: RuntimeUnderTest, container: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = runtime.observe.logs(container)
        if "probe-done" in text:
            return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        time.sleep(0.2)
    raise AssertionError(f"{container} did not finish its probe in {timeout}s: {text!r}")


def mismatches(seen: dict[str, str], expected: dict[str, tuple[str, ...]]) -> list[str]:
    return [
        f"{name}: {seen.get(name)} (expected {' or '.join(want)})"
        for name, want in expected.items()
        if seen.get(name) not in want
    ]


def docker_reference(client: Any, probe: Path) -> dict[str, str]:
    """The probe under dockerd's default profile, run here when the docker case of this
    session has not (e.g. `-k native`)."""
    name = "pyapply-seccomp-ref-" + secrets.token_hex(4)
    try:
        out = client.containers.run(
            TEST_IMAGE,
            ["/probe/syscalls"],
            name=name,
            volumes={str(probe): {"bind": "/probe/syscalls", "mode": "ro"}},
            network_mode="none",
        )
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True)
    text = out.decode(errors="replace")
    assert "probe-done" in text, text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_seccomp_matrix(
    runtime: RuntimeUnderTest, tmp_path: Path, probe: Path, docker_client: Any
) -> None:
    path = manifest(tmp_path, runtime.stack, probe)
    cli = runtime.cli()
    try:
        cli.ok("-f", str(path))
        matrix: dict[str, Any] = {
            variant: results(runtime, f"{runtime.stack}-{variant}-1")
            for variant in ("default", "unconfined", "custom")
        }
        # idempotent: the profiles (the default, none, a file's content) are what was applied
        drift = cli.run("diff", "--exit-code", "-f", str(path))
        assert drift.returncode == 0, drift.stdout + drift.stderr
        # an edited profile file is a changed spec: the container that uses it is recreated
        (path.parent / "profiles" / "deny-mkdir.json").write_text(
            json.dumps({**DENY_MKDIR, "defaultErrnoRet": 1})
        )
        drift = cli.run("diff", "--exit-code", "-f", str(path))
        assert drift.returncode == 2, drift.stdout + drift.stderr
        assert f"{runtime.stack}-custom-1: recreate" in drift.stdout
        assert f"{runtime.stack}-default-1" not in drift.stdout
    finally:
        cli.run("down", "-f", str(path))
    record = tmp_path / f"seccomp-matrix-{runtime.name}.json"
    record.write_text(json.dumps(matrix, indent=2, sort_keys=True))
    print(f"seccomp matrix on {runtime.name}: {json.dumps(matrix, sort_keys=True)}")

    default, unconfined, custom = matrix["default"], matrix["unconfined"], matrix["custom"]
    assert set(default) == set(DEFAULT), default
    if runtime.name == "native":
        # native is Docker's v0.2.3 profile: the strict outcome of every call
        strict = {name: want[:1] for name, want in DEFAULT.items()}
        assert mismatches(default, strict) == []
        reference = _DOCKER_SEEN or docker_reference(docker_client, probe)
        assert set(reference) == set(DEFAULT), reference
        print(f"seccomp reference (docker, default profile): {json.dumps(reference)}")
        looser = [n for n, r in reference.items() if r != "ok" and default.get(n) != r]
        assert looser == [], f"blocked by docker, not by native: {looser}"
    else:
        assert mismatches(default, DEFAULT) == []
        _DOCKER_SEEN.update(default)
    assert mismatches(unconfined, UNCONFINED) == []
    # the custom profile applies its own rule (EACCES for mkdir) and nothing of the default
    assert custom["mkdir"] == "EACCES"
    assert custom["personality_addr_no_randomize"] == "ok" and custom["kcmp"] == "ok"
