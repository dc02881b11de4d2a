"""Damaged native state files, through the real CLI on a private state root.

- A container's state.json is recoverable: the container shows as dead, and `pyapply -f`
  replaces it after stopping what still runs of it, so exactly one instance writes to the
  shared volume afterwards.
- names.json, networks.json, ipam.json and images/index.json are not: every command gives
  one line naming the file and what to do, exit 1, and no traceback.
- `system reset --force` cleans up whatever the state files say, with nothing left in the
  kernel (the fixture's leak check runs after each test too).
- IPAM never hands out an address something answers on at the bridge.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pyapply.runtime.base import Conflict, NetworkConfig
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.helpers import TEST_IMAGE, Workdir
from tests.e2e.runtimes import NativeUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

# each instance writes its own random id into the shared volume, five times a second
WRITER_YAML = f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${{STACK}}
spec:
  services:
    w:
      image: {TEST_IMAGE}
      command:
        - sh
        - -c
        - "id=$$(cat /proc/sys/kernel/random/uuid); while :; do echo $$id >> /data/log; sleep 0.2; done"
      stop_grace_period: 1s
      volumes: ["data:/data"]
  volumes:
    data: {{}}
"""
WRITER_MARK = "random/uuid"


def _native(rut: RuntimeUnderTest) -> NativeUnderTest:
    assert isinstance(rut, NativeUnderTest)
    return rut


def _apply(native: NativeUnderTest, workdir: Workdir) -> tuple[Path, str]:
    manifest = workdir.write("stack.yaml", WRITER_YAML)
    native.cli().ok("-f", str(manifest))
    return manifest, f"{native.stack}-w-1"


def _state_json(native: NativeUnderTest, name: str) -> Path:
    key = native.native.key(name)
    assert key is not None, name
    return native.root / "containers" / key / "state.json"


def _writers(native: NativeUnderTest) -> set[int]:
    """The writer loops running in the root's cgroups (any hierarchy)."""
    parent = native.native.containers.cgroup_parent.strip("/")
    pids: set[int] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/{parent}/*/cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    out = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if WRITER_MARK in argv:
            out.add(pid)
    return out


def _ids_written(native: NativeUnderTest, seconds: float) -> set[str]:
    """The instance ids written to the shared volume during the next `seconds`."""
    log = native.root / "volumes" / f"{native.stack}_data" / "_data" / "log"
    start = log.stat().st_size
    time.sleep(seconds)
    with open(log, "rb") as f:
        f.seek(start)
        return {line.strip().decode() for line in f.read().splitlines() if line.strip()}


def _one_line_error(out: subprocess.CompletedProcess[str], path: Path) -> str:
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith(f"error: {path} is damaged ("), errors[0]
    assert errors[0].endswith("; run `pyapply system reset` or restore it"), errors[0]
    return errors[0]


@pytest.mark.parametrize("damage", ["[]", None])
def test_damaged_container_state_apply_leaves_exactly_one_instance(
    native: RuntimeUnderTest, workdir: Workdir, damage: str | None
) -> None:
    n = _native(native)
    manifest, name = _apply(n, workdir)
    assert len(_writers(n)) == 1
    before = _ids_written(n, 0.6)
    assert len(before) == 1

    state = _state_json(n, name)
    if damage is None:
        state.unlink()
    else:
        state.write_text(damage)
    cli = n.cli()
    # seen, not a traceback: the container shows as dead, and the diff wants it replaced
    got = cli.run("get", "-f", str(manifest))
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr
    assert name in got.stdout and "dead" in got.stdout, got.stdout
    diff = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert diff.returncode == 2, (diff.stdout, diff.stderr)

    cli.ok("-f", str(manifest))
    assert len(_writers(n)) == 1, "two instances run after the replacement"
    after = _ids_written(n, 1.0)
    assert len(after) == 1 and after != before, (before, after)
    assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0


def test_damaged_state_files_give_one_clear_error_and_reset_cleans_up(
    native: RuntimeUnderTest, workdir: Workdir
) -> None:
    n = _native(native)
    manifest, _name = _apply(n, workdir)
    cli = n.cli()
    root = n.root
    # a volume's meta.json is repaired: the volume shows missing, apply writes it again
    # and keeps the data
    meta = root / "volumes" / f"{n.stack}_data" / "meta.json"
    meta.write_text("[]")
    assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 2
    cli.ok("-f", str(manifest))
    assert json.loads(meta.read_text())["labels"]["io.pyapply.stack"] == n.stack
    assert (meta.parent / "_data" / "log").stat().st_size > 0
    ipam = json.loads((root / "networks" / "ipam.json").read_text())
    for net in ipam["networks"].values():
        net["subnet"] = "garbage"
    nets = json.loads((root / "networks" / "networks.json").read_text())
    for rec in nets["networks"].values():  # two endpoints on one address
        ep = next(iter(rec["endpoints"].values()))
        rec["endpoints"]["ghost"] = {**ep, "veth": "pavghost"}
    # (file, damage, commands that read it and must fail with the one line, its reason)
    apply, diff, get = (
        ["-f", str(manifest)],
        ["diff", "-f", str(manifest)],
        ["get", "--stack", n.stack],
    )
    cases = [
        (root / "names.json", "garbage", [apply, diff, get], "not JSON"),
        (
            root / "networks" / "networks.json",
            "[]",
            [apply, get, ["down", "-f", str(manifest)]],
            "a list, not an object",
        ),
        (root / "networks" / "networks.json", json.dumps(nets), [apply, diff], "both hold"),
        (
            root / "networks" / "ipam.json",
            json.dumps(ipam),
            [apply, diff, get],
            "'garbage' is not a network",
        ),
        (
            root / "images" / "index.json",
            "[]",
            [apply, diff, ["image", "ls"]],
            "a list, not an object",
        ),
    ]
    for path, text, runs, reason in cases:
        original = path.read_bytes() if path.exists() else None
        path.write_text(text)
        for args in runs:
            line = _one_line_error(cli.run(*args), path)
            assert reason in line, (args, line)
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)
    assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0
    assert len(_writers(n)) == 1  # nothing was changed by the failing commands

    # everything damaged at once: the reset still removes it all, by name and tag
    (root / "names.json").write_text("garbage")
    (root / "networks" / "ipam.json").write_text(json.dumps(ipam))
    (root / "networks" / "networks.json").write_text("[]")
    (root / "images" / "index.json").write_text("[]")
    (next((root / "containers").iterdir()) / "state.json").write_text("{}")
    out = cli.run("system", "reset", "--force")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert "swept by name instead" in out.stderr
    assert _writers(n) == set()
    assert sorted(p.name for p in root.iterdir()) == []
    assert n.kernel_leftovers() == []


def test_ipam_skips_an_address_live_in_the_kernel(native: RuntimeUnderTest) -> None:
    """A container the state forgot (its endpoint and lease lost) still answers on its
    address at the bridge: the next attach must not hand that address out again."""
    n = _native(native)
    nm = NetworkManager(n.root)
    net = f"{n.stack}_n"
    netns = [f"pyapply-test-{n.stack}-{i}" for i in (1, 2)]
    nm.create(NetworkConfig(name=net, labels={"io.pyapply.stack": n.stack}))
    n.note_networks()
    try:
        for ns in netns:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
        first = nm.attach(net, "forgotten", netns[0])
        # talk to it from the host: the bridge learns its neighbour
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(20):
                s.sendto(b"x", (first, 9))
                neigh = subprocess.run(
                    ["ip", "-4", "neigh", "show", first],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                ).stdout
                if "lladdr" in neigh:
                    break
                time.sleep(0.1)
        assert "lladdr" in neigh, neigh
        # the state loses it (its endpoint and lease), the kernel does not
        path = n.root / "networks" / "networks.json"
        doc = json.loads(path.read_text())
        del doc["networks"][net]["endpoints"]["forgotten"]
        path.write_text(json.dumps(doc))
        ipam_path = n.root / "networks" / "ipam.json"
        ipam = json.loads(ipam_path.read_text())
        del ipam["networks"][net]["leases"]["forgotten"]
        ipam_path.write_text(json.dumps(ipam))

        second = nm.attach(net, "next", netns[1])
        assert second != first
        with pytest.raises(Conflict, match="in use in the kernel"):
            nm.attach(net, "third", netns[1], ipv4_address=first)
    finally:
        nm.reset()
        for ns in netns:
            if os.path.exists(f"/run/netns/{ns}"):
                subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
