"""`security_opt` in manifests: seccomp=unconfined, seccomp=FILE (a profile in Docker's
format, relative to the manifest), no-new-privileges, and the located errors of a bad
profile (reconciler/manifest/loader.py, reconciler/manifest/seccomp_file.py), through to the container
config both runtimes receive (reconciler/core/translate.py) and the compose rendering.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import write

from pyapply.reconciler.core import translate
from pyapply.reconciler.core.model import ManifestError, Stack
from pyapply.reconciler.manifest import dump as compose_render
from pyapply.reconciler.manifest.loader import Loaded, load

DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
}


def load_stack(here: Path, opts: str, files: dict[str, str] | None = None) -> Loaded:
    write(
        here,
        {
            **(files or {}),
            "stack.yaml": f"name: s\nservices:\n  a:\n    image: img\n    security_opt: {opts}\n",
        },
    )
    return load(["stack.yaml"], environ={})


def only(loaded: Loaded) -> Stack:
    assert len(loaded.stacks) == 1
    return loaded.stacks[0]


def errors(here: Path, opts: str, files: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_stack(here, opts, files)
    return [str(p) for p in info.value.problems]


def test_unconfined_and_no_new_privileges(here: Path) -> None:
    loaded = load_stack(here, '["seccomp=unconfined", "no-new-privileges:true"]')
    assert only(loaded).services[0].seccomp == "unconfined" and not loaded.warnings
    assert only(load_stack(here, '["seccomp:unconfined"]')).services[0].seccomp == "unconfined"
    assert only(load_stack(here, '["no-new-privileges"]')).services[0].seccomp is None


def test_profile_file_is_read_relative_to_the_manifest(here: Path) -> None:
    text = json.dumps(DENY_MKDIR, indent=2)
    write(here, {"sub/profiles/deny.json": text})
    write(
        here,
        {
            "sub/stack.yaml": "name: s\nservices:\n  a:\n    image: img\n"
            "    security_opt: [seccomp=profiles/deny.json]\n"
        },
    )
    stack = only(load(["sub"], environ={}))
    service = stack.services[0]
    assert json.loads(service.seccomp or "") == DENY_MKDIR
    assert service.seccomp_file == str(here / "sub" / "profiles" / "deny.json")
    config = translate.container_config(stack, service, 1, file_paths={})
    assert config.seccomp == service.seccomp
    # the spec hash covers the profile's content; the last-applied label holds its digest
    hashed = translate.hash_input(config)
    assert hashed.seccomp is not None and hashed.seccomp.startswith("profile sha256:")
    write(here, {"sub/profiles/deny.json": json.dumps({**DENY_MKDIR, "defaultErrnoRet": 1})})
    other = only(load(["sub"], environ={})).services[0]
    assert other.seccomp != service.seccomp
    assert compose_render.service(service)["security_opt"] == [f"seccomp={service.seccomp_file}"]


def test_other_options_warn(here: Path) -> None:
    loaded = load_stack(here, '["apparmor=unconfined", "label=disable"]')
    assert [str(w) for w in loaded.warnings] == [
        'stack.yaml:5:43: warning: services.a.security_opt[1]: security option "label=disable" '
        "is not supported and is ignored",
    ]
    assert loaded.stacks[0].services[0].apparmor == "unconfined"


def test_bad_profiles_are_located_errors(here: Path) -> None:
    os.mkfifo(here / "fifo.json")
    bad = {
        "broken.json": '{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [\n}\n',
        "wrong.json": json.dumps(
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "ALLOW"}]}
        ),
        "nan.json": '{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": NaN}',
    }
    assert errors(
        here,
        '["seccomp=missing.json", "seccomp=", "seccomp=unconfined"]',
    ) == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile missing.json: cannot read: "
        "No such file or directory",
        "stack.yaml:5:44: services.a.security_opt[1]: seccomp needs a value: unconfined or a "
        "profile file",
        "stack.yaml:5:56: services.a.security_opt[2]: seccomp is given more than once",
    ]
    assert errors(here, "[seccomp=broken.json]", bad) == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile broken.json:4:1: not valid "
        "JSON: Expecting value"
    ]
    assert errors(here, "[seccomp=wrong.json]", bad) == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile wrong.json: "
        "syscalls[0].action: 'ALLOW' is not one of ['SCMP_ACT_KILL', 'SCMP_ACT_KILL_PROCESS', "
        "'SCMP_ACT_KILL_THREAD', 'SCMP_ACT_TRAP', 'SCMP_ACT_ERRNO', 'SCMP_ACT_TRACE', "
        "'SCMP_ACT_ALLOW', 'SCMP_ACT_LOG', 'SCMP_ACT_NOTIFY']"
    ]
    assert errors(here, "[seccomp=nan.json]", bad) == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile nan.json: not valid JSON: "
        "NaN is not a number JSON allows"
    ]
    # a FIFO or a device is refused at once, never read (it would block or never end)
    assert errors(here, "[seccomp=fifo.json]") == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile fifo.json: not a regular file"
    ]
    assert errors(here, "[seccomp=/dev/zero]") == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile /dev/zero: not a regular file"
    ]
    (here / "big.json").write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "x": "' + "a" * (1 << 20) + '"}'
    )
    assert errors(here, "[seccomp=big.json]") == [
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile big.json: larger than "
        "1048576 bytes"
    ]
    assert errors(here, "seccomp=unconfined") == [
        "stack.yaml:5:19: services.a.security_opt: must be a list, got a string"
    ]


def test_cli_validate_reports_a_bad_profile_with_exit_1(here: Path) -> None:
    write(
        here,
        {
            "bad.json": '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]}]}',
            "stack.yaml": "name: s\nservices:\n  a:\n    image: img\n"
            "    security_opt: [seccomp=bad.json]\n",
        },
    )
    pyapply = str(Path(sys.executable).parent / "pyapply")
    done = subprocess.run(
        [pyapply, "validate", "-f", "stack.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "stack.yaml:5:20: services.a.security_opt[0]: seccomp profile bad.json: syscalls[0]: "
        "'action' is a required property"
    ) in done.stderr
    assert "Traceback" not in done.stderr
