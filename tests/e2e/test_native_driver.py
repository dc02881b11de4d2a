"""The native runtime through the real command line: a small stack applied, served, re-applied
as a no-op and taken down without leaving kernel objects behind.

The stack is one busybox httpd (from the local registry, pulled by the native image store),
a published loopback port and a named volume, under a private PYAPPLY_ROOT.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]

from runtime.base import (
    Attachment,
    Conflict,
    ContainerConfig,
    MountConfig,
    NetworkConfig,
    NotFound,
    PermanentError,
    Runtime,
    VolumeConfig,
)
from runtime.native.driver import NativeRuntime
from runtime.native.network import NetworkManager
from tests.e2e.helpers import http_get, new_stack_name
from tests.e2e.test_apply_docker import WEBDB, Cli, free_port

pytestmark = pytest.mark.e2e

IMAGE = "127.0.0.1:5000/pyapply-test/busybox:latest"

STACK_YAML = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    web:
      image: IMAGE
      command: ["httpd", "-f", "-p", "80", "-h", "/www"]
      init: true
      stop_grace_period: 1s
      ports: ["127.0.0.1:${WEB_PORT}:80"]
      volumes: ["data:/data"]
  volumes:
    data: {}
""".replace("IMAGE", IMAGE)


class NativeCli(Cli):
    def __init__(self, stack: str, root: Path, port: int) -> None:
        super().__init__(stack, root, port)
        self.env["PYAPPLY_RUNTIME"] = "native"


def _links(prefixes: tuple[str, ...]) -> set[str]:
    with IPRoute() as ipr:
        return {
            str(link.get("ifname"))
            for link in ipr.get_links()
            if str(link.get("ifname") or "").startswith(prefixes)
        }


def _overlay_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(root) in line]


def _netns_of(tag: str) -> list[str]:
    try:
        return [n for n in os.listdir("/run/netns") if n.startswith(f"pyapply-{tag}-")]
    except FileNotFoundError:
        return []


@pytest.fixture
def native(registry: str, tmp_path: Path) -> Iterator[tuple[NativeCli, Path, Path]]:
    root = (tmp_path / "root").resolve()
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK_YAML)
    cli = NativeCli(new_stack_name(), root, free_port())
    yield cli, root, manifest
    cli.run("down", "-f", str(manifest), "--volumes")
    NetworkManager(root).reset()


def test_small_stack_applies_serves_reapplies_and_goes(
    native: tuple[NativeCli, Path, Path],
) -> None:
    cli, root, manifest = native
    bridges_before = _links(("pa-", "pav"))

    cli.ok("-f", str(manifest))
    status, body = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200, (status, body)

    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, f"re-apply is not a no-op:\n{d.stdout}\n{d.stderr}"

    assert (root / "volumes" / f"{cli.stack}_data" / "_data").is_dir()
    nm = NetworkManager(root)
    tag = nm.tag
    bridge = nm.bridge_name(f"{cli.stack}_default")
    assert bridge in _links(("pa-",)), "the stack's bridge is missing"
    assert _netns_of(tag), "the container has no network namespace"

    cli.ok("down", "-f", str(manifest), "--volumes")
    assert _links(("pa-", "pav")) <= bridges_before, "bridges/veths left behind"
    assert not _overlay_mounts(root), "overlay mounts left behind"
    assert not _netns_of(tag), "network namespaces left behind"
    assert not (root / "volumes" / f"{cli.stack}_data").exists(), "volume left behind"
    assert not list(root.glob("containers/*")), "container state left behind"
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert bridge not in rules, "firewall rules left behind"


def test_driver_is_idempotent_and_speaks_the_error_taxonomy(registry: str, tmp_path: Path) -> None:
    """The NativeRuntime itself: idempotent create/remove, Conflict, NotFound, in-use."""
    stack = new_stack_name()
    root = (tmp_path / "root").resolve()
    rt = NativeRuntime(root)
    labels = {"io.pyapply.stack": stack}
    other = {"io.pyapply.stack": stack, "io.pyapply.spec-hash": "other"}
    net, vol = f"{stack}_net", f"{stack}_data"
    cfg = ContainerConfig(
        name=f"{stack}-box-1",
        image=IMAGE,
        labels=labels,
        command=("sleep", "1000"),
        init=True,
        stop_timeout_s=1.0,
        networks=(Attachment(network=net, aliases=("box",)),),
        mounts=(
            MountConfig(type="volume", source=vol, target="/data"),
            MountConfig(type="volume", source="", target="/anon"),
        ),
    )
    try:
        assert isinstance(rt, Runtime)
        assert rt.images([IMAGE]) == {IMAGE: None}
        with pytest.raises(NotFound):
            rt.create_container(cfg)
        info = rt.pull_image(IMAGE)
        assert rt.images([IMAGE]) == {IMAGE: info}

        rt.remove_container(cfg.name)
        rt.remove_network(net)
        rt.remove_volume(vol)
        assert rt.get_container(cfg.name) is None
        with pytest.raises(NotFound):
            rt.start_container(cfg.name)
        with pytest.raises(NotFound):
            rt.stop_container(cfg.name)

        rt.create_network(NetworkConfig(name=net, labels=labels))
        rt.create_network(NetworkConfig(name=net, labels=labels))
        with pytest.raises(Conflict):
            rt.create_network(NetworkConfig(name=net, labels=other))
        rt.create_volume(VolumeConfig(name=vol, labels=labels))
        rt.create_volume(VolumeConfig(name=vol, labels=labels))
        with pytest.raises(Conflict):
            rt.create_volume(VolumeConfig(name=vol, labels=other))
        assert [v.name for v in rt.list_volumes(labels)] == [vol]
        assert rt.list_volumes({"io.pyapply.stack": "nope"}) == []

        cid = rt.create_container(cfg)
        assert rt.create_container(cfg) == cid
        with pytest.raises(Conflict):
            rt.create_container(replace(cfg, labels=other))
        created = rt.get_container(cfg.name)
        assert created is not None and created.status == "created"
        rt.start_container(cfg.name)
        rt.start_container(cfg.name)
        state = rt.get_container(cfg.name)
        assert state is not None and state.running and state.networks == (net,)
        assert state.image_id == info.id
        assert [c.id for c in rt.list_containers(labels)] == [cid]
        network = rt.get_network(net)
        assert network is not None and network.containers == (cfg.name,)

        out = rt.containers.exec(cfg.name, ["sh", "-c", "echo hi > /data/f && cat /etc/hosts"])
        assert out.exit_code == 0 and b"box" in out.output, out
        assert (root / "volumes" / vol / "_data" / "f").read_text() == "hi\n"

        with pytest.raises(Conflict):
            rt.remove_volume(vol)
        with pytest.raises(Conflict):
            rt.remove_network(net)
        with pytest.raises(PermanentError, match="not supported"):
            rt.rename_container(cfg.name, f"{stack}-box-2")

        rt.stop_container(cfg.name, 1.0)
        stopped = rt.get_container(cfg.name)
        assert stopped is not None and stopped.status == "exited"

        rt.remove_container(cfg.name)
        rt.remove_container(cfg.name)
        assert rt.get_container(cfg.name) is None
        assert rt.get_volume(vol) is not None  # a named volume survives its container
        assert not _netns_of(rt.networks.tag)
        rt.remove_network(net)
        rt.remove_volume(vol)
        assert rt.get_network(net) is None and rt.get_volume(vol) is None
    finally:
        rt.remove_container(cfg.name)
        NetworkManager(root).reset()


def test_webdb_stack_converges_with_isolation(registry: str, tmp_path: Path) -> None:
    """The docker e2e stack (manifests/webdb) on the native runtime: healthcheck dependency,
    two networks (front cannot reach back), a shared volume, replicas."""
    root = (tmp_path / "root").resolve()
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(
        (WEBDB / "stack.yaml")
        .read_text()
        .replace("image: pyapply-test/busybox:latest", f"image: {IMAGE}")
    )
    cli = NativeCli(new_stack_name(), root, free_port())
    s = cli.stack
    try:
        cli.ok("-f", str(manifest))
        status, body = http_get(f"http://127.0.0.1:{cli.port}/")
        assert status == 200 and "pyapply test image" in body
        d = cli.run("diff", "-f", str(manifest), "--exit-code")
        assert d.returncode == 0, f"re-apply is not a no-op:\n{d.stdout}\n{d.stderr}"

        rt = NativeRuntime(root)
        names = {c.name: c for c in rt.list_containers({"io.pyapply.stack": s})}
        assert sorted(names) == sorted(
            f"{s}-{n}" for n in ("db-1", "web-1", "edge-1", "worker-1", "worker-2")
        )
        assert names[f"{s}-db-1"].health == "healthy"
        out = rt.containers.exec(f"{s}-web-1", ["wget", "-q", "-O-", "http://db:5432/ready"])
        assert out.exit_code == 0 and b"ready" in out.output, out
        hosts = rt.networks.hosts_for(f"{s}-web-1")
        db_ip = next(line.split()[0] for line in hosts.splitlines() if f"{s}-db-1" in line)
        out = rt.containers.exec(
            f"{s}-edge-1", ["wget", "-q", "-T", "2", "-O-", f"http://{db_ip}:5432/ready"]
        )
        assert out.exit_code != 0, out

        cli.ok("down", "-f", str(manifest), "--volumes")
        assert not _netns_of(NetworkManager(root).tag)
        assert not _overlay_mounts(root)
        assert not list(root.glob("containers/*"))
        assert rt.list_networks({"io.pyapply.stack": s}) == []
        assert rt.list_volumes({"io.pyapply.stack": s}) == []
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")
        NetworkManager(root).reset()
