"""A reboot done by hand, as the kernel would do it, for the native runtime's tests: every
container process and its conmon killed, the root's keeper and port proxy gone, overlay mounts unmounted,
network namespaces, bridges, veths, firewall rules and cgroups deleted -- of one state root
only, found through its own state. What survives is what survives a real reboot: the state
root on disk."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

from pyapply.runtime.native import firewall, health, rootfs
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.supervise import pid_alive


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), "processes survived SIGKILL"


def keeper_pids(root: Path) -> list[int]:
    """The root's keeper processes: the one that runs and any queued on its lock (two
    starts at once may each spawn one), by their command line (this root's only)."""
    marker, arg = b"pyapply.runtime.native.health", str(root).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in args and arg in args:
            found.append(int(proc.name))
    return found


def reboot(root: Path) -> None:
    """Take away everything a reboot takes away, leaving the state root on disk."""
    rt = NativeRuntime(root)
    health.stop_checker(root)
    keepers = keeper_pids(root)
    for pid in keepers:
        _kill(pid)
    _wait_gone(keepers)
    keys = [rt.key(c.name) or c.name for c in rt.list_containers({})]
    pids: list[int] = []
    proxy = rt.networks.proxy.pid()  # the userland proxy of ports on [::1]
    _kill(proxy)
    if proxy is not None:
        pids.append(proxy)
    for key in keys:
        for pid in (rt.containers.supervisor_pid(key), rt.containers.container_pid(key)):
            _kill(pid)  # conmon first: nobody is left to record the exit
            if pid is not None:
                pids.append(pid)
    _wait_gone(pids)
    for key in keys:
        rootfs.unmount(rt.containers.dir(key) / "rootfs")
        with contextlib.suppress(FileNotFoundError):
            netns.remove(rt.netns_name(key))
        for cg in rt.containers.cgroup_dirs(key):
            with contextlib.suppress(OSError):
                cg.rmdir()
    nm = rt.networks
    with IPRoute() as ipr:
        for net in nm.list():
            bridge = nm.bridge_name(net.name)
            for index in ipr.link_lookup(ifname=bridge):
                ipr.link("del", index=index)
            comment = firewall.network_comment(bridge)
            nm.firewall.delete_tagged(comments=[comment], prefixes=[comment + ":"])
