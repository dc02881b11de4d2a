"""The native runtime through the real command line: a small stack applied, served, re-applied
as a no-op and taken down without leaving kernel objects behind.

The stack is one busybox httpd (from the local registry, pulled by the native image store),
a published loopback port and a named volume, under a private PYAPPLY_ROOT.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

from pyapply.runtime.base import (
    Attachment,
    Conflict,
    ContainerConfig,
    Event,
    HealthConfig,
    MountConfig,
    NetworkConfig,
    NotFound,
    Runtime,
    VolumeConfig,
)
from pyapply.runtime.native import health
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.helpers import http_get, new_stack_name
from tests.e2e.runtimes import WEBDB, Cli, free_port

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


def _links(alias_prefix: str) -> set[str]:
    """Interfaces whose alias marks them as made for one state root (other tests' are not
    this test's business, and may come and go meanwhile)."""
    with IPRoute() as ipr:
        return {
            str(link.get("ifname"))
            for link in ipr.get_links()
            if str(link.get("ifalias") or "").startswith(alias_prefix)
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

    cli.ok("-f", str(manifest))
    status, body = http_get(f"http://127.0.0.1:{cli.port}/")
    assert status == 200, (status, body)

    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, f"re-apply is not a no-op:\n{d.stdout}\n{d.stderr}"

    assert (root / "volumes" / f"{cli.stack}_data" / "_data").is_dir()
    nm = NetworkManager(root)
    tag = nm.tag
    bridge = nm.bridge_name(f"{cli.stack}_default")
    assert bridge in _links(nm.alias_prefix), "the stack's bridge is missing"
    assert _netns_of(tag), "the container has no network namespace"

    cli.ok("down", "-f", str(manifest), "--volumes")
    assert not _links(nm.alias_prefix), "bridges/veths left behind"
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
            rt.create_container(msgspec.structs.replace(cfg, labels=other))
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
        renamed = f"{stack}-box-2"
        rt.rename_container(cfg.name, renamed)
        assert rt.get_container(cfg.name) is None
        moved = rt.get_container(renamed)
        assert moved is not None and moved.id == cid and moved.running
        assert renamed in rt.networks.hosts_for(rt.key(renamed) or "")
        rt.rename_container(renamed, cfg.name)
        assert rt.get_container(renamed) is None and rt.get_container(cfg.name) is not None
        assert not (root / "names.json").read_text().strip("{}\n ")

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
        # not `wget -T`: busybox 1.35's wget crashes (139) with it, which looks unreachable
        fetch = ["timeout", "-s", "KILL", "5", "wget", "-q", "-O-", f"http://{db_ip}:5432/ready"]
        out = rt.exec(f"{s}-web-1", fetch)
        assert out.exit_code == 0 and b"ready" in out.output, out  # the address is right
        out = rt.exec(f"{s}-edge-1", fetch)
        assert out.exit_code in (1, 137), out  # refused or never answered: isolated

        cli.ok("down", "-f", str(manifest), "--volumes")
        assert not _netns_of(NetworkManager(root).tag)
        assert not _overlay_mounts(root)
        assert not list(root.glob("containers/*"))
        assert rt.list_networks({"io.pyapply.stack": s}) == []
        assert rt.list_volumes({"io.pyapply.stack": s}) == []
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")
        NetworkManager(root).reset()


def _next_event(events: Iterator[Event], name: str, action: str) -> Event:
    for event in events:  # the stream ends only on close(): the test's timeout bounds it
        if event.name == name and event.action == action:
            return event
    raise AssertionError(f"the event stream ended before {action} of {name}")


@pytest.mark.timeout(120)
def test_rename_events_and_a_lost_namespace(registry: str, tmp_path: Path) -> None:
    """What start-first updates, the agent and a reboot need of the driver: a renamed
    container keeps running under its new name while a new one takes the old name; deaths,
    starts and removals are reported; a container whose netns vanished starts again with
    its address and name resolution."""
    stack = new_stack_name()
    root = (tmp_path / "root").resolve()
    rt = NativeRuntime(root)
    labels = {"io.pyapply.stack": stack}
    net = f"{stack}_net"

    def box(name: str) -> ContainerConfig:
        return ContainerConfig(
            name=name,
            image=IMAGE,
            labels=labels,
            command=("sleep", "1000"),
            init=True,
            stop_timeout_s=1.0,
            networks=(Attachment(network=net, aliases=("box",)),),
        )

    old, temp = f"{stack}-box-1", f"{stack}-box-1--next"
    try:
        rt.pull_image(IMAGE)
        rt.create_network(NetworkConfig(name=net, labels=labels))
        events = rt.events(labels)
        # the start-first dance: old runs, temp starts, old goes, temp takes old's name
        rt.create_container(box(old))
        rt.start_container(old)
        assert _next_event(events, old, "start").labels == labels
        rt.create_container(box(temp))
        rt.start_container(temp)
        first = rt.get_container(temp)
        assert first is not None
        rt.rename_container(old, f"{stack}-box-1-old")
        rt.rename_container(temp, old)
        with pytest.raises(Conflict):
            rt.rename_container(f"{stack}-box-1-old", old)
        rt.remove_container(f"{stack}-box-1-old")
        # polling sees the removed container under the name it had at its last look
        gone = next(e for e in events if e.action == "destroy")
        assert gone.name in (old, f"{stack}-box-1-old") and gone.labels == labels
        assert [c.name for c in rt.list_containers(labels)] == [old]
        # a second update: the temp name's own key is taken by the renamed container
        rt.create_container(box(temp))
        rt.start_container(temp)
        both = {c.name: c for c in rt.list_containers(labels)}
        assert sorted(both) == [old, temp] and both[old].id == first.id
        assert both[temp].running and both[old].running
        out = rt.exec(temp, ["sh", "-c", f"ping -c1 -W2 {old} && ping -c1 -W2 {temp}"])
        assert out.exit_code == 0, out
        rt.remove_container(temp)
        kept = rt.get_container(old)
        assert kept is not None and kept.running

        # a death is an event
        pid = rt.container_pid(old)
        assert pid is not None
        os.kill(pid, 9)
        assert _next_event(events, old, "die")
        dead = rt.get_container(old)
        assert dead is not None and dead.status == "exited"

        # the namespace is gone (as after a reboot): start makes it again, same address
        ip_before = rt.networks.hosts_for(rt.key(old) or "")
        netns.remove(rt.netns_name(rt.key(old) or ""))
        rt.start_container(old)
        back = rt.get_container(old)
        assert back is not None and back.running and back.networks == (net,)
        assert rt.networks.hosts_for(rt.key(old) or "") == ip_before
        out = rt.exec(old, ["ping", "-c1", "-W2", old])
        assert out.exit_code == 0, out
        rt.close()
        rest = list(events)  # the stream ends once the runtime is closed
        assert all(e.labels == labels for e in rest), rest
    finally:
        rt.close()
        for c in rt.list_containers(labels):
            rt.remove_container(c.name)
        rt.remove_network(net)
        NetworkManager(root).reset()
        assert not _netns_of(rt.networks.tag)
        assert not (root / "names.json").exists() or not json.loads(
            (root / "names.json").read_text()
        )


class Killed(BaseException):
    """The process died here (SIGKILL): nothing after it runs; its flocks go with its fds."""


def test_a_removal_killed_part_way_leaves_no_container_without_a_name(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal killed after its container's dir left (renamed to the removed prefix, the
    state file in it) lists nothing and the next removal deletes the rest; a start-first
    update's rename onto a name whose container has no state (a create or removal killed
    part-way, as older versions left) finishes that removal instead of leaving a dir no
    name leads to."""
    from pyapply.runtime.native import containers as containersmod
    from pyapply.runtime.native.container_state import REMOVED_PREFIX

    stack = new_stack_name()
    root = (tmp_path / "root").resolve()
    rt = NativeRuntime(root)
    labels = {"io.pyapply.stack": stack}
    cdirs = root / "containers"

    def box(name: str) -> ContainerConfig:
        return ContainerConfig(
            name=name, image=IMAGE, labels=labels, command=("sleep", "1000"), init=True
        )

    old, temp = f"{stack}-box-1", f"{stack}-box-1--next"
    real_delete = containersmod._delete_settled

    def dies_in_the_removed_dir(cdir: Path, keep: str | None = None) -> None:
        if cdir.name.startswith(REMOVED_PREFIX):
            raise Killed(str(cdir))
        real_delete(cdir, keep)

    try:
        rt.pull_image(IMAGE)
        for name in (old, temp):
            rt.create_container(box(name))
            rt.start_container(name)
        temp_id = rt.get_container(temp).id  # type: ignore[union-attr]
        monkeypatch.setattr(containersmod, "_delete_settled", dies_in_the_removed_dir)
        with pytest.raises(Killed):
            rt.remove_container(old)
        monkeypatch.setattr(containersmod, "_delete_settled", real_delete)
        left = [d.name for d in cdirs.iterdir() if d.name.startswith(REMOVED_PREFIX)]
        assert len(left) == 1 and (cdirs / left[0] / "state.json").exists()
        # not listed, by any name or key; the name is free
        assert [c.name for c in rt.list_containers({})] == [temp]
        assert rt.get_container(old) is None
        rt.rename_container(temp, old)
        assert [(c.name, c.id) for c in rt.list_containers({})] == [(old, temp_id)]

        # a name whose container has no state: the rename finishes its removal
        rt.create_container(box(temp))
        key = rt.key(temp)
        assert key is not None
        os.unlink(cdirs / key / "state.json")
        os.unlink(cdirs / key / "config.json")
        dead = rt.get_container(temp)
        assert dead is not None and dead.status == "dead" and dead.labels == {}
        rt.create_container(box(f"{stack}-box-1--next2"))
        rt.rename_container(f"{stack}-box-1--next2", temp)
        assert not (cdirs / key).exists()
        names = sorted(c.name for c in rt.list_containers({}))
        assert names == [old, temp]
        assert all(c.labels == labels for c in rt.list_containers({}))
        # the next removal sweeps what the killed one left
        rt.remove_container(temp)
        assert not [d for d in cdirs.iterdir() if d.name.startswith(REMOVED_PREFIX)]
    finally:
        monkeypatch.setattr(containersmod, "_delete_settled", real_delete)
        for c in rt.list_containers({}):
            rt.remove_container(c.name)
        rt.close()
        assert not cdirs.exists() or not list(cdirs.iterdir())
        assert not _overlay_mounts(root)


@pytest.mark.timeout(180)
def test_image_healthcheck_applies_unless_the_service_has_one(tmp_path: Path) -> None:
    """As on dockerd: a container with no healthcheck of its own runs its image's
    HEALTHCHECK; a disabled one (test NONE) runs none."""
    tag = f"pyapply-test/hc-{new_stack_name()}:latest"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM pyapply-test/busybox:latest\n"
        'HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD ["test", "-f", "/tmp/ok"]\n'
    )
    subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], check=True, timeout=120)
    archive = tmp_path / "hc.tar"
    try:
        subprocess.run(["docker", "save", "-o", str(archive), tag], check=True, timeout=120)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    root = (tmp_path / "root").resolve()
    rt = NativeRuntime(root)
    labels = {"io.pyapply.stack": new_stack_name()}
    script = ("sh", "-c", "sleep 1; touch /tmp/ok; sleep 1000")
    own = ContainerConfig(
        name=f"{labels['io.pyapply.stack']}-own-1",
        image=tag,
        labels=labels,
        command=script,
        init=True,
        stop_timeout_s=1.0,
    )
    off = msgspec.structs.replace(
        own, name=f"{labels['io.pyapply.stack']}-off-1", health=HealthConfig(("NONE",))
    )
    try:
        rt.image_store.import_archive(str(archive))
        for cfg in (own, off):
            rt.create_container(cfg)
            rt.start_container(cfg.name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = rt.get_container(own.name)
            if state is not None and state.health == "healthy":
                break
            time.sleep(0.2)
        state = rt.get_container(own.name)
        assert state is not None and state.health == "healthy", state
        disabled = rt.get_container(off.name)
        assert disabled is not None and disabled.running and disabled.health is None
    finally:
        for cfg in (own, off):
            rt.remove_container(cfg.name)
        NetworkManager(root).reset()
        health.stop_checker(root)


def test_an_overlay_or_shm_mounted_again_is_left_as_it_is(tmp_path: Path) -> None:
    """mount_overlay and mount_shm on a target that has their mount already (a start after
    a create, a create run again) mount nothing more, and see the mount by its device alone;
    an empty dir is mounted."""
    from pyapply.runtime.native import rootfs

    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "f").write_text("x")
    cdir = tmp_path / "c"
    cdir.mkdir(mode=0o700)
    target, shm = cdir / "rootfs", cdir / "shm"

    def ours() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(str(cdir))]

    try:
        for _ in range(3):
            rootfs.mount_overlay([lower], cdir / "upper", cdir / "work", target)
            rootfs.mount_shm(shm, 1 << 20)
        assert sorted(ours()) == sorted([str(target), str(shm)])
        assert (target / "f").read_text() == "x"
    finally:
        for point in (target, shm):
            rootfs.unmount(point)
    assert ours() == []
