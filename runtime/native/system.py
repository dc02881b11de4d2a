"""Reset a native state root: everything pyapply made under it and in the kernel, gone.

`pyapply system reset` needs one operation that leaves a host as if the root had never been
used, and that still works when the state is half lost (a crash, a hand-deleted file, a
reboot in the middle of a teardown). So it runs in two passes:

1. the ordinary way, through the driver: every container it lists is removed (stopped,
   unpublished, detached, unmounted, its netns and cgroups deleted), then every network
   (NetworkManager.reset(), which also finds bridges and veths by their interface alias);
2. a sweep for what the state no longer knows, found by what ties it to this root and to
   nothing else: runc's state directory under the root, the root's path in the command line
   of conmon and of the health checker, mounts under the root in mountinfo, netns files named
   `pyapply-<tag>-*`, cgroups of the container directories, and the bridges (and their
   firewall comments) named after the root's networks.

Only then are the root's own entries deleted, and only those pyapply makes (ROOT_ENTRIES):
a root pointed at a directory holding other things keeps them, and says so. Every step is
a no-op when there is nothing to do, so a reset can be run again after a partial one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from pyapply.runtime.base import ContainerState, RuntimeFailure
from pyapply.runtime.native import firewall, rootfs
from pyapply.runtime.native.containers import CGROUP_FS, ContainerManager, kill_cgroup
from pyapply.runtime.native.driver import NETNS_DIR, NativeRuntime
from pyapply.runtime.native.netlink import IPRoute, netns_remove
from pyapply.runtime.native.statefile import DamagedState
from pyapply.runtime.native.supervise import DEFAULT_RUNC, pid_alive
from pyapply.runtime.statefs import dirs_bottom_up, rmtree

# What pyapply keeps directly under a state root (fnmatch patterns): the driver's and the
# managers' directories, the host lock, the driver lock, the agent's lifetime lock, the
# health checker's files, the agent's history and directories, rollback scratch dirs, and
# atomic-write temporaries.
ROOT_ENTRIES = (
    "images",
    "build",  # the builder's layer cache and temporary dirs (runtime/native/build)
    "containers",
    "runc",
    "networks",
    "volumes",
    "files",
    "agent",
    "names.json",
    ".names.json.*",
    "lock",
    "driver.lock",
    "agent.lock",
    "health.*",
    "history.db*",
    "revisions.db*",
    "rollback-*",
)
HEALTH_MARKER = "pyapply.runtime.native.health"
KILL_WAIT_S = 5.0


class ResetReport(msgspec.Struct):
    """What a reset removed, by kind ("container", "network", ...), what it left in the root
    because pyapply did not make it, and what it could not do."""

    root: str
    removed: dict[str, list[str]] = msgspec.field(default_factory=dict)
    kept: list[str] = msgspec.field(default_factory=list)
    errors: list[str] = msgspec.field(default_factory=list)
    damaged: list[str] = msgspec.field(default_factory=list)  # state files pass 2 swept around

    def add(self, kind: str, what: str) -> None:
        items = self.removed.setdefault(kind, [])
        if what not in items:
            items.append(what)

    def attempt(self, what: str, fn: Callable[..., object], *args: object) -> bool:
        """Run one step, fn(*args); a failure is recorded and the reset goes on."""
        try:
            fn(*args)
        except DamagedState as e:
            # not a failure of the reset: pass 2 finds by name and tag what the file held
            if e.message not in self.damaged:
                self.damaged.append(e.message)
            return False
        except Exception as e:  # any failure: say it, and clean up the rest
            message = e.message if isinstance(e, RuntimeFailure) else str(e) or repr(e)
            self.errors.append(f"{what}: {message}")
            return False
        return True


def reset(root: str | os.PathLike[str], *, runc: str = DEFAULT_RUNC) -> ResetReport:
    """Remove every container, network, volume and image of the state root `root`, the
    kernel objects and processes they left, and the root's contents. Returns what went."""
    path = Path(root).absolute()
    existed = path.exists()
    rt = NativeRuntime(path)
    report = ResetReport(str(rt.root))
    # taken first: the sweeps below need them after the driver forgot its containers
    keys = _container_keys(rt)
    networks = _network_names(rt, keys)

    _stop_health_checker(rt.root, report)
    _remove_containers(rt, report)
    _sweep_runc(rt.root, runc, report)
    _sweep_processes(rt.root, report)
    _sweep_cgroups(rt.containers, keys, report)
    _sweep_mounts(rt.root, report)
    _sweep_netns(rt.networks.tag, report)
    _remove_networks(rt, networks, keys, report)
    _remove_volumes(rt, report)
    _remove_images(rt, report)
    _remove_entries(rt.root, report)
    rt.containers.remove_cgroup_parent()  # only where empty: other roots may use /pyapply
    if not existed:
        with contextlib.suppress(OSError):
            rt.root.rmdir()
    return report


# ---------------------------------------------------------------------------------------------
# what the state still tells


def _container_keys(rt: NativeRuntime) -> list[str]:
    """The container directories under the root (keys), whatever their state file says."""
    cdirs = rt.containers.containers_dir
    if not cdirs.is_dir():
        return []
    return sorted(d.name for d in cdirs.iterdir() if d.is_dir() and not d.name.startswith("."))


def _network_names(rt: NativeRuntime, keys: Iterable[str]) -> set[str]:
    """Networks the root knows of: its network state, its IPAM state and the containers'
    own records (which survive the loss of the network state)."""
    names: set[str] = set()
    for fname, field_name in (("networks.json", "networks"), ("ipam.json", "networks")):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            doc = json.loads((rt.networks.dir / fname).read_text())
            names.update(str(n) for n in (doc.get(field_name) or {}))
    for key in keys:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            doc = json.loads((rt.containers.containers_dir / key / "state.json").read_text())
            names.update(str(n) for n in doc.get("networks") or ())
    return names


# ---------------------------------------------------------------------------------------------
# pass 1: the driver


def _stop_health_checker(root: Path, report: ResetReport) -> None:
    from pyapply.runtime.native import health

    pid = health.checker_pid(root)
    if pid is not None and report.attempt("stop the health checker", health.stop_checker, root):
        report.add("process", f"{pid} (health checker)")


def _remove_containers(rt: NativeRuntime, report: ResetReport) -> None:
    states: list[ContainerState] = []
    if not report.attempt("list containers", lambda: states.extend(rt.list_containers({}))):
        return  # the sweeps of pass 2 find them
    for state in states:
        if report.attempt(f"remove container {state.name}", rt.remove_container, state.name):
            report.add("container", state.name)


def _remove_networks(
    rt: NativeRuntime, names: set[str], keys: Iterable[str], report: ResetReport
) -> None:
    nm = rt.networks
    before = _our_links(nm.alias_prefix)
    try:
        nm.reset()
    except RuntimeFailure:
        # unreadable network state: without it, the kernel sweep by alias still works
        for fname in ("networks.json", "ipam.json"):
            with contextlib.suppress(OSError):
                (nm.dir / fname).unlink()
        report.attempt("reset networks", nm.reset)
    for name in sorted(names):
        report.add("network", name)
    # networks the state forgot whose bridge lost its alias (or is gone, its rules not)
    bridges = [nm.bridge_name(n) for n in sorted(names)]
    links = [*bridges, *(nm.veth_name(n, k) for n in sorted(names) for k in keys)]
    with IPRoute() as ipr:
        for ifname in links:
            for index in ipr.link_lookup(ifname=ifname):
                if report.attempt(f"delete {ifname}", _del_index, ipr, index):
                    before.add(ifname)
    if bridges:
        comments = [firewall.network_comment(b) for b in bridges]

        def drop_rules() -> None:
            if nm.firewall.delete_tagged(comments=comments, prefixes=[c + ":" for c in comments]):
                report.add("firewall rules", ", ".join(comments))

        report.attempt("delete firewall rules", drop_rules)
    still = _our_links(nm.alias_prefix)
    for ifname in sorted(before - still):
        report.add("interface", ifname)


def _del_index(ipr: Any, index: int) -> None:
    ipr.link("del", index=index)


def _our_links(alias_prefix: str) -> set[str]:
    with IPRoute() as ipr:
        return {
            str(link.get("ifname"))
            for link in ipr.get_links()
            if str(link.get("ifalias") or "").startswith(alias_prefix)
        }


def _remove_volumes(rt: NativeRuntime, report: ResetReport) -> None:
    with contextlib.suppress(RuntimeFailure):
        for v in rt.list_volumes({}):
            report.add("volume", v.name)
    report.attempt("delete volumes", rmtree, str(rt.volumes_dir))


def _remove_images(rt: NativeRuntime, report: ResetReport) -> None:
    with contextlib.suppress(RuntimeFailure):
        for rec in rt.image_store.list():
            report.add("image", ", ".join(rec.refs) or rec.id)
    report.attempt("delete images", rmtree, rt.image_store.dir)


# ---------------------------------------------------------------------------------------------
# pass 2: what the state forgot


def _sweep_runc(root: Path, runc: str, report: ResetReport) -> None:
    """Containers runc still knows in the root's runc state: deleted by force (their
    processes are killed, their cgroups removed)."""
    runc_root = root / "runc"
    if not runc_root.is_dir():
        return
    ids = [d.name for d in runc_root.iterdir() if (d / "state.json").is_file()]
    for cid in ids:

        def delete(cid: str = cid) -> None:
            proc = subprocess.run(
                [runc, f"--root={runc_root}", "delete", "--force", cid],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if proc.returncode != 0 and (runc_root / cid / "state.json").exists():
                raise RuntimeFailure(proc.stderr.strip() or f"exit status {proc.returncode}")

        if report.attempt(f"runc delete {cid[:12]}", delete):
            report.add("runc container", cid[:12])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def root_processes(root: Path) -> dict[int, str]:
    """Processes of this root: conmon supervising one of its containers, the root's health
    checker (both name the root's path on their command line) and conmon's children (the
    containers' init). pid -> what it is."""
    prefix = f"{root}/"
    found: dict[int, str] = {}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        argv = _cmdline(pid)
        if not argv or pid == os.getpid():
            continue
        ours = any(a == str(root) or prefix in a for a in argv[1:])
        if not ours:
            continue
        if os.path.basename(argv[0]) == "conmon":
            found[pid] = "conmon"
        elif HEALTH_MARKER in argv:
            found[pid] = "health checker"
    conmons = {p for p, what in found.items() if what == "conmon"}
    for pid in pids:
        if pid not in found and _ppid(pid) in conmons:
            found[pid] = "container process"
    return found


def _kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each, then wait (up to KILL_WAIT_S) until none is alive."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _sweep_processes(root: Path, report: ResetReport) -> None:
    procs = root_processes(root)
    _kill_all(procs)
    for pid, what in sorted(procs.items()):
        if pid_alive(pid):
            report.errors.append(f"process {pid} ({what}) did not die")
        else:
            report.add("process", f"{pid} ({what})")


def _cgroup_keys(containers: ContainerManager) -> set[str]:
    """The container cgroups under the root's cgroup parent, in any hierarchy (those of
    containers whose directory is gone as well)."""
    found: set[str] = set()
    rel = containers.cgroup_parent.strip("/")
    with contextlib.suppress(OSError):
        for h in CGROUP_FS.iterdir():
            with contextlib.suppress(OSError):
                found.update(d.name for d in (h / rel).iterdir() if d.is_dir())
    return found


def _sweep_cgroups(containers: ContainerManager, keys: Iterable[str], report: ResetReport) -> None:
    for key in sorted({*keys, *_cgroup_keys(containers)}):
        dirs = containers.cgroup_dirs(key)  # one per hierarchy (cgroup v1)
        for d in dirs:
            kill_cgroup([d])  # what is still in it: its state and runc's are gone
            # nested dirs first (runc makes none; a container may)
            for sub in [*dirs_bottom_up(d), str(d)]:
                with contextlib.suppress(OSError):
                    os.rmdir(sub)
        left = [str(d) for d in dirs if d.exists()]
        if left:
            report.errors.append(f"cgroups could not be removed: {', '.join(left)}")
        elif dirs:
            report.add("cgroup", f"{containers.cgroup_parent}/{key}")


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root` (deepest first, the order to unmount them)."""
    prefix = f"{root}/"
    return sorted((m for m in rootfs.mountpoints() if m.startswith(prefix)), key=len, reverse=True)


def _sweep_mounts(root: Path, report: ResetReport) -> None:
    for mnt in mounts_under(root):
        if report.attempt(f"unmount {mnt}", rootfs.unmount, mnt):
            report.add("mount", mnt)


def netns_files(tag: str) -> list[str]:
    """The root's network namespace files in /run/netns (NativeRuntime.netns_name)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"pyapply-{tag}-"))
    except FileNotFoundError:
        return []


def _sweep_netns(tag: str, report: ResetReport) -> None:
    for name in netns_files(tag):
        if report.attempt(f"delete netns {name}", netns_remove, name):
            report.add("netns", name)


def _remove_entries(root: Path, report: ResetReport) -> None:
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if not any(fnmatch.fnmatchcase(entry.name, p) for p in ROOT_ENTRIES):
            report.kept.append(entry.name)
            continue
        # the locks are our own doing (the CLI holds the host lock during the reset)
        if report.attempt(f"delete {entry}", rmtree, str(entry)) and "lock" not in entry.name:
            report.add("root entry", entry.name)
