"""SIGKILL of `pyapply -f` inside a native attach transaction, finished by the next apply.

A create's first attach is one transaction of the network state (under its lock, saved once,
fsynced): the container's hosts file registered, its lease taken, its veth made and plumbed
into its namespace, its hosts files rewritten. The kill comes when the veth of an endpoint is
in the kernel and the saved state does not list that endpoint yet: the middle of that
transaction, seen from outside (the veth names follow from the state root, network and
container: `NetworkManager.veth_name`). Three rounds, killing at the first, second and third
attach of a cold apply; after each, one apply must converge (`diff --exit-code` 0, every
service running, the published port answering), with as many kernel objects as an
uninterrupted apply of the same stack leaves. Each round ends with `down`; the `native`
fixture checks that nothing of the root is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from pyapply.runtime.native.network import NetworkManager
from tests.e2e.faults.conftest import converge, kernel_census, running_by_service, state_seen
from tests.e2e.helpers import TEST_IMAGE, Workdir, http_get
from tests.e2e.runtimes import PYAPPLY, NativeUnderTest, RuntimeUnderTest, free_port

pytestmark = pytest.mark.e2e

SERVICES = ("a", "b", "c")
NETWORKS = ("one", "two")
ROUNDS = 3
LIMIT_S = 120.0


def stack_yaml(stack: str, port: int) -> str:
    services = ""
    for svc in SERVICES:
        ports = f'      ports: ["127.0.0.1:{port}:80"]\n' if svc == "a" else ""
        services += f"""\
    {svc}:
      image: {TEST_IMAGE}
      command: ["httpd", "-f", "-p", "80", "-h", "/"]
      stop_grace_period: 1s
      networks: [{", ".join(NETWORKS)}]
{ports}"""
    return f"""\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: {stack}
spec:
  services:
{services}  networks:
    one: {{}}
    two: {{}}
"""


def _recorded(root: Path) -> set[tuple[str, str]]:
    """(network, container) of every endpoint the saved network state lists (the file is
    replaced atomically: a read sees one whole save)."""
    try:
        doc = json.loads((root / "networks" / "networks.json").read_text())
    except (OSError, ValueError):
        return set()
    return {(n, c) for n, rec in doc.get("networks", {}).items() for c in rec.get("endpoints", {})}


def kill_in_attach(native: NativeUnderTest, manifest: Path, nth: int) -> bool:
    """Run `pyapply -f MANIFEST`; SIGKILL it (its pid only) when the `nth` (from 1) endpoint
    seen half-made is there: its veth in the kernel, not in the saved state. Whether the
    kill landed (the run may end first)."""
    nm = NetworkManager(native.root)
    veths = {
        (f"{native.stack}_{net}", f"{native.stack}-{svc}-1"): nm.veth_name(
            f"{native.stack}_{net}", f"{native.stack}-{svc}-1"
        )
        for svc in SERVICES
        for net in NETWORKS
    }
    seen: set[tuple[str, str]] = set()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [PYAPPLY, "-f", str(manifest)],
            env=native.cli().env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        start = time.monotonic()
        try:
            while proc.poll() is None:
                assert time.monotonic() - start < LIMIT_S, "the apply did not end"
                made = {
                    ep for ep, veth in veths.items() if os.path.exists(f"/sys/class/net/{veth}")
                }
                half = made - _recorded(native.root) if made - seen else set()
                seen |= half
                if len(seen) >= nth:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return True
                time.sleep(0.001)
            return False
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_a_kill_inside_an_attach_transaction_is_finished_by_the_next_apply(
    native: RuntimeUnderTest, workdir: Workdir
) -> None:
    assert isinstance(native, NativeUnderTest)
    port = free_port()
    manifest = workdir.write("stack.yaml", stack_yaml(native.stack, port))
    cli = native.cli()

    converge(cli, [manifest], "an uninterrupted apply")
    clean: Counter[str] = kernel_census(native)
    cli.ok("down", "-f", str(manifest))

    landed = 0
    for nth in range(1, ROUNDS + 1):
        what = f"round {nth} (killed at the attach number {nth})"
        landed += kill_in_attach(native, manifest, nth)
        converge(cli, [manifest], what)
        running = running_by_service(native)
        assert running == Counter(dict.fromkeys(SERVICES, 1)), (
            f"{what}: running {dict(running)}; {state_seen(native)}"
        )
        assert http_get(f"http://127.0.0.1:{port}/")[0] in (200, 403, 404), what
        assert kernel_census(native) == clean, (
            f"{what}: kernel objects {dict(kernel_census(native))}, after an uninterrupted "
            f"apply {dict(clean)}"
        )
        cli.ok("down", "-f", str(manifest))
    # the kills must have landed inside the transaction, or the test tested nothing
    assert landed == ROUNDS, f"only {landed} of {ROUNDS} kills came inside an attach"
