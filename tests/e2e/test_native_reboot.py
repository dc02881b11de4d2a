"""The README's demo on the native runtime, made the way `make demo` makes it (an image built
from busybox-static and imported, no registry, no daemon), survives a simulated reboot.

The reboot is done by hand, as the kernel would: every container process and its conmon
killed, the health checker gone, overlay mounts unmounted, network namespaces, bridges,
veths, firewall rules and cgroups deleted. What survives is what survives a real reboot:
the state root on disk. `pyapply -f` must then bring the stack back, with its volume's data.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.helpers import REPO_ROOT, http_get, new_stack_name
from tests.e2e.reboot import reboot
from tests.e2e.runtimes import Cli, free_port

pytestmark = pytest.mark.e2e

DEMO = REPO_ROOT / "manifests" / "demo" / "stack.yaml"
IMAGE = "pyapply-test/busybox:latest"


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's image as `make demo` makes it: a rootfs tarball, no docker involved."""
    out = tmp_path_factory.mktemp("image") / "busybox-rootfs.tar"
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-test-image.sh"), "--tar", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Cli, Path, Path]]:
    root = (tmp_path / "root").resolve()
    manifest = tmp_path / "stack.yaml"
    stack = new_stack_name()
    manifest.write_text(DEMO.read_text().replace("name: demo\n", f"name: {stack}\n", 1))
    cli = Cli(stack, root, free_port(), runtime="native")
    cli.env["DEMO_PORT"] = str(cli.port)
    try:
        yield cli, root, manifest
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")
        cli.run("system", "reset", "--force")
        NetworkManager(root).reset()


def test_demo_comes_back_after_a_reboot(demo: tuple[Cli, Path, Path], busybox_tar: Path) -> None:
    cli, root, manifest = demo
    cli.ok("image", "import", str(busybox_tar), "--ref", IMAGE)
    cli.ok("-f", str(manifest))
    status, body = http_get(f"http://127.0.0.1:{cli.port}/", attempts=40)
    assert status == 200 and "hello from pyapply" in body, (status, body)
    # `make demo` imports again on every run: the same content must stay the same image
    cli.ok("image", "import", str(busybox_tar), "--ref", IMAGE)
    same = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert same.returncode == 0, f"a re-import changed the image:\n{same.stdout}{same.stderr}"
    marker = root / "volumes" / f"{cli.stack}_site" / "_data" / "marker.txt"
    marker.write_text("kept across reboots\n")

    reboot(root)
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{cli.port}/", timeout=1, attempts=1)
    drift = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert drift.returncode == 2, f"no drift seen after a reboot:\n{drift.stdout}{drift.stderr}"

    cli.ok("-f", str(manifest))
    status, body = http_get(f"http://127.0.0.1:{cli.port}/marker.txt", attempts=40)
    assert status == 200 and body == "kept across reboots\n", (status, body)
    rt = NativeRuntime(root)
    states = {c.name: c for c in rt.list_containers({"io.pyapply.stack": cli.stack})}
    assert sorted(states) == [f"{cli.stack}-web-1", f"{cli.stack}-worker-1"]
    assert all(s.running for s in states.values()), states
    resolved = rt.exec(f"{cli.stack}-web-1", ["ping", "-c1", "-W2", "worker"], timeout=10)
    assert resolved.exit_code == 0, resolved
    again = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert again.returncode == 0, f"not converged after the reboot:\n{again.stdout}{again.stderr}"
