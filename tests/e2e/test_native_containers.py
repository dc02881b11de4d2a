"""Native containers against the real runc and conmon (runtime/native/containers.py).

The rootfs is a single lower layer made here from Debian's busybox-static, so these tests do
not depend on the image store. Everything lives under a temporary state root and is removed
at the end, even on failure: containers (runc delete, conmon and health loops killed by pid),
overlay mounts, cgroup directories. A missing runc or conmon is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyapply.runtime.base import ContainerConfig, ContainerState, HealthConfig, MountConfig, Ulimit
from pyapply.runtime.native import health, rootfs, runc_files
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.native.supervise import pid_alive

pytestmark = pytest.mark.e2e

RUNC = "/usr/sbin/runc"
CONMON = "/usr/bin/conmon"
BUSYBOX = "/bin/busybox"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lowerdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox rootfs: bin/busybox, its applets as symlinks, passwd/group, /tmp."""
    for tool in (RUNC, CONMON, BUSYBOX):
        if not os.access(tool, os.X_OK):
            pytest.fail(
                f"{tool} is missing; install runc, conmon and busybox-static", pytrace=False
            )
    layer = tmp_path_factory.mktemp("busybox-layer")
    (layer / "bin").mkdir()
    shutil.copy2(BUSYBOX, layer / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (layer / "bin" / applet).symlink_to("busybox")
    (layer / "etc").mkdir()
    (layer / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (layer / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (layer / "tmp").mkdir(mode=0o1777)
    (layer / "tmp").chmod(0o1777)
    (layer / "root").mkdir(mode=0o700)
    return layer


@pytest.fixture(scope="module", autouse=True)
def cgroup_parent() -> Iterator[None]:
    """Remove the cgroup parents this module made (/pyapply/<root tag>, and /pyapply if it
    was not there), where they are empty."""
    fs = Path("/sys/fs/cgroup")
    before = {*fs.glob("*/pyapply"), *fs.glob("*/pyapply/*")}
    yield
    made = [p for p in (*fs.glob("*/pyapply/*"), *fs.glob("*/pyapply")) if p not in before]
    for p in made:  # the roots' parents first, then /pyapply
        with contextlib.suppress(OSError):
            p.rmdir()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def manager(root: Path) -> Iterator[ContainerManager]:
    """A manager on a private root; removes every container made under it afterwards and
    checks nothing of ours is left (processes, mounts, cgroups)."""
    mgr = ContainerManager(root, runc=RUNC, conmon=CONMON)
    yield mgr
    names = [p.name for p in mgr.containers_dir.iterdir()] if mgr.containers_dir.is_dir() else []
    supervisors = [pid for n in names if (pid := mgr.supervisor_pid(n)) is not None]
    for name in names:
        mgr.remove(name)
    checker = health.checker_pid(root)
    health.stop_checker(root)
    leftovers = [
        *(str(p) for n in names for p in mgr.cgroup_dirs(n)),
        *(m for m in rootfs.mountpoints() if m.startswith(str(root))),
        *(f"conmon {pid}" for pid in supervisors if pid_alive(pid)),
        *([f"health checker {checker}"] if checker is not None and pid_alive(checker) else []),
    ]
    assert leftovers == []
    assert not any(mgr.containers_dir.iterdir())


_counter = iter(range(1, 10_000))


def cname(prefix: str) -> str:
    return f"pyt-{os.getpid()}-{prefix}-{next(_counter)}"


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state(mgr: ContainerManager, name: str) -> ContainerState:
    st = mgr.state(name)
    assert st is not None
    return st


def run(
    mgr: ContainerManager, lowerdir: Path, name: str, *command: str, **kw: object
) -> ContainerState:
    cfg = ContainerConfig(name=name, image="busybox:test", command=command, **kw)  # type: ignore[arg-type]
    mgr.create(cfg, [lowerdir])
    mgr.start(name)
    return state(mgr, name)


def sh(mgr: ContainerManager, name: str, line: str) -> tuple[int, str]:
    res = mgr.exec(name, ["sh", "-c", line], timeout=20)
    return res.exit_code, res.output.decode()


def test_detached_container_outlives_its_creator(
    manager: ContainerManager, lowerdir: Path, root: Path
) -> None:
    name = cname("detached")
    script = textwrap.dedent(
        f"""
        from pyapply.runtime.base import ContainerConfig
        from pyapply.runtime.native.containers import ContainerManager
        m = ContainerManager({str(root)!r})
        cfg = ContainerConfig(name={name!r}, image="busybox:test", labels={{"io.pyapply.stack": "t"}},
                              command=("sh", "-c", "echo hello; sleep 1000"))
        m.create(cfg, [{str(lowerdir)!r}])
        m.start({name!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    st = state(manager, name)
    assert st.status == "running"
    assert st.labels == {"io.pyapply.stack": "t"}
    assert st.started_at and st.finished_at is None
    wait_for(lambda: b"hello\n" in list(manager.logs(name)), what="hello in the logs")
    assert list(manager.logs(name, tail=1)) == [b"hello\n"]
    assert [s.name for s in manager.list({"io.pyapply.stack": "t"})] == [name]
    assert manager.list({"io.pyapply.stack": "other"}) == []
    conmon = manager.supervisor_pid(name)
    assert conmon is not None
    rss = subprocess.run(["ps", "-o", "rss=", "-p", str(conmon)], capture_output=True, text=True)
    print(f"conmon RSS: {rss.stdout.strip()} kB")
    assert int(rss.stdout) < 5 * 1024
    # a new, empty network namespace: loopback only
    code, out = sh(manager, name, "ls /sys/class/net")
    assert (code, out.split()) == (0, ["lo"])


def test_stop_with_handled_sigterm_records_143(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("term")
    run(manager, lowerdir, name, "sh", "-c", "trap 'exit 143' TERM; echo up; sleep 1000 & wait")
    wait_for(lambda: b"up\n" in list(manager.logs(name)), what="the trap to be set")
    t0 = time.monotonic()
    manager.stop(name, timeout=20)
    assert time.monotonic() - t0 < 10
    st = state(manager, name)
    assert (st.status, st.exit_code) == ("exited", 143)
    assert st.finished_at is not None and st.finished_at >= (st.started_at or "")


def test_stop_with_init_forwards_sigterm(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("init")
    run(manager, lowerdir, name, "sleep", "1000", init=True)
    _, out = sh(manager, name, "cat /proc/1/cmdline | tr '\\0' ' '")
    assert out.startswith("/sbin/docker-init -- sleep 1000")
    t0 = time.monotonic()
    manager.stop(name, timeout=20)
    assert time.monotonic() - t0 < 10
    assert state(manager, name).exit_code == 143


def test_stop_with_ignored_sigterm_kills_after_grace(
    manager: ContainerManager, lowerdir: Path
) -> None:
    name = cname("kill")
    # sh as pid 1 without a handler ignores SIGTERM
    run(manager, lowerdir, name, "sh", "-c", "sleep 1000")
    t0 = time.monotonic()
    manager.stop(name, timeout=1.5)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 10
    st = state(manager, name)
    assert (st.status, st.exit_code) == ("exited", 137)
    assert st.finished_at is not None
    assert manager.list() == [st]


def test_exit_code_recorded_without_watcher(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("exit3")
    run(manager, lowerdir, name, "sh", "-c", "sleep 0.3; exit 3")
    conmon = manager.supervisor_pid(name)
    assert conmon is not None
    wait_for(lambda: state(manager, name).status == "exited", what="the exit")
    st = state(manager, name)
    assert st.exit_code == 3 and st.finished_at is not None
    wait_for(lambda: not pid_alive(conmon), what="conmon to exit")
    # conmon's exit command deleted it from runc, so the cgroups are gone already
    wait_for(lambda: manager.cgroup_dirs(name) == [], what="the cgroups to go")
    assert state(manager, name).exit_code == 3


def test_rootfs_changes_survive_restart_and_vanish_on_remove(
    manager: ContainerManager, lowerdir: Path
) -> None:
    name = cname("rootfs")
    first = run(manager, lowerdir, name, "sleep", "1000")
    assert sh(manager, name, "echo kept > /data.txt")[0] == 0
    manager.stop(name, timeout=0.5)
    assert state(manager, name).status == "exited"
    manager.start(name)
    st = state(manager, name)
    assert (st.status, st.id, st.exit_code) == ("running", first.id, None)
    assert sh(manager, name, "cat /data.txt") == (0, "kept\n")
    assert not (lowerdir / "data.txt").exists()
    manager.remove(name)
    assert manager.state(name) is None
    manager.remove(name)  # gone is success
    run(manager, lowerdir, name, "sleep", "1000")
    assert sh(manager, name, "cat /data.txt")[0] != 0


def test_seccomp_blocks_namespaces_unless_sys_admin(
    manager: ContainerManager, lowerdir: Path
) -> None:
    """The filter is on (Seccomp: 2), a new user namespace or mount is refused with the
    default capabilities, and allowed again with cap_add SYS_ADMIN."""
    probe = "grep Seccomp: /proc/self/status; unshare -U true && echo userns; unshare -m true && echo mountns"
    plain = cname("seccomp")
    run(manager, lowerdir, plain, "sleep", "1000")
    _, out = sh(manager, plain, probe)
    assert "Seccomp:\t2" in out and "userns" not in out and "mountns" not in out, out
    assert sh(manager, plain, "echo still-works")[1] == "still-works\n"
    admin = cname("seccompadm")
    run(manager, lowerdir, admin, "sleep", "1000", cap_add=("SYS_ADMIN",))
    _, out = sh(manager, admin, probe)
    assert "Seccomp:\t2" in out and "userns" in out and "mountns" in out, out


def test_cgroup_limits_and_rlimits(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("limits")
    run(
        manager,
        lowerdir,
        name,
        "sleep",
        "1000",
        memory_bytes=64 * 1024 * 1024,
        pids_limit=42,
        nano_cpus=500_000_000,
        ulimits=(Ulimit("nofile", 100_000, 100_000),),
    )
    dirs = {p.relative_to("/sys/fs/cgroup").parts[0]: p for p in manager.cgroup_dirs(name)}
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
    assert state(manager, name).memory_bytes == 64 * 1024 * 1024
    # a limit changed behind our back is observed (out-of-band mutation)
    (dirs["memory"] / "memory.limit_in_bytes").write_text(str(96 * 1024 * 1024))
    assert state(manager, name).memory_bytes == 96 * 1024 * 1024
    assert (dirs["pids"] / "pids.max").read_text().strip() == "42"
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
    import resource

    host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code, out = sh(manager, name, "grep 'Max open files' /proc/1/limits")
    assert code == 0
    soft, hard = out.split()[3:5]
    assert (int(soft), int(hard)) == (min(100_000, host_hard), min(100_000, host_hard))
    code, out = sh(manager, name, "ulimit -n")
    assert int(out) == min(100_000, host_hard)


def test_read_only_rootfs_tmpfs_and_binds(
    manager: ContainerManager, lowerdir: Path, tmp_path: Path
) -> None:
    name = cname("ro")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "app.conf").write_text("x=1\n")
    (tmp_path / "vol").mkdir()
    run(
        manager,
        lowerdir,
        name,
        "sleep",
        "1000",
        read_only=True,
        mounts=(
            MountConfig(type="tmpfs", target="/scratch", tmpfs_size=1024 * 1024),
            MountConfig(type="bind", target="/cfg", source=str(tmp_path / "cfg"), read_only=True),
            MountConfig(type="volume", target="/data", source=str(tmp_path / "vol")),
        ),
    )
    assert sh(manager, name, "cat /cfg/app.conf") == (0, "x=1\n")
    assert sh(manager, name, "touch /cfg/nope")[0] != 0
    assert sh(manager, name, "echo v > /data/f")[0] == 0
    assert (tmp_path / "vol" / "f").read_text() == "v\n"
    code, out = sh(manager, name, "touch /nope")
    assert code != 0 and "Read-only file system" in out
    assert sh(manager, name, "touch /scratch/yes && ls /scratch") == (0, "yes\n")
    code, out = sh(manager, name, "grep ' /scratch ' /proc/mounts")
    assert code == 0 and out.startswith("tmpfs /scratch tmpfs") and "size=1024k" in out
    # Docker's masked and read-only paths
    assert sh(manager, name, "cat /proc/timer_list | wc -c") == (0, "0\n")
    assert sh(manager, name, "ls /sys/firmware | wc -l") == (0, "0\n")
    assert sh(manager, name, "echo 1 > /proc/sys/kernel/domainname")[0] != 0


def test_healthcheck_goes_healthy_then_unhealthy(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("health")
    st = run(
        manager,
        lowerdir,
        name,
        "sleep",
        "1000",
        health=HealthConfig(
            test=("CMD-SHELL", "test -f /tmp/ok"), interval_s=0.2, timeout_s=2, retries=2
        ),
    )
    assert st.health == "starting"
    assert sh(manager, name, "touch /tmp/ok")[0] == 0
    wait_for(lambda: state(manager, name).health == "healthy", what="healthy")
    assert sh(manager, name, "rm /tmp/ok")[0] == 0
    wait_for(lambda: state(manager, name).health == "unhealthy", what="unhealthy")
    checker = health.checker_pid(manager.root)
    assert checker is not None
    manager.stop(name, timeout=0.5)
    assert state(manager, name).health == "unhealthy"  # the last status is kept
    # with nothing left to check, the checker goes away by itself
    wait_for(lambda: not pid_alive(checker), timeout=health.IDLE_EXIT_S + 5, what="idle exit")
    # and a restart begins as "starting" again, with a new checker
    manager.start(name)
    assert state(manager, name).health == "starting"
    assert sh(manager, name, "touch /tmp/ok")[0] == 0
    wait_for(lambda: state(manager, name).health == "healthy", what="healthy again")


def test_hostname_user_env_workdir(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("ident")
    st = run(
        manager,
        lowerdir,
        name,
        "sleep",
        "1000",
        hostname="web1",
        user="nobody",
        working_dir="/tmp",
        env=("A=1", "PATH=/bin"),
        cap_drop=("ALL",),
    )
    assert "A=1" in st.env and "PATH=/bin" in st.env
    assert sh(manager, name, "hostname; cat /etc/hostname") == (0, "web1\nweb1\n")
    assert sh(manager, name, "id -u; id -g; pwd") == (0, "65534\n65534\n/tmp\n")
    code, out = sh(manager, name, "grep CapEff /proc/self/status")
    assert out.split()[1] == "0000000000000000"
    code, out = sh(manager, name, "grep -c . /etc/hosts; cat /etc/resolv.conf")
    assert code == 0 and "nameserver" in out
    manager.write_etc_files(name, hosts=[("10.89.0.5", ["db", "db-1"])], nameservers=["10.89.0.1"])
    assert "10.89.0.5\tdb db-1" in sh(manager, name, "cat /etc/hosts")[1]
    assert sh(manager, name, "cat /etc/resolv.conf")[1] == "nameserver 10.89.0.1\n"


def test_create_is_idempotent_and_names_conflict(manager: ContainerManager, lowerdir: Path) -> None:
    from pyapply.runtime.base import Conflict

    name = cname("idem")
    cfg = ContainerConfig(name=name, image="busybox:test", command=("true",), labels={"k": "1"})
    cid = manager.create(cfg, [lowerdir])
    assert manager.create(cfg, [lowerdir]) == cid
    with pytest.raises(Conflict):
        manager.create(ContainerConfig(name=name, image="x", command=("true",)), [lowerdir])
    assert state(manager, name).status == "created"
    manager.stop(name)  # not running: success


def test_killed_process_recorded_by_conmon(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("killed")
    run(manager, lowerdir, name, "sleep", "1000")
    pid = manager.container_pid(name)
    assert pid is not None
    os.kill(pid, 9)  # the container's init, which this test started
    wait_for(lambda: state(manager, name).status == "exited", what="the exit")
    assert state(manager, name).exit_code == 137


def test_recovery_after_supervisor_and_mounts_are_gone(
    manager: ContainerManager, lowerdir: Path
) -> None:
    """As after a reboot: conmon and the process killed, the overlay unmounted."""
    name = cname("reboot")
    run(manager, lowerdir, name, "sleep", "1000")
    assert sh(manager, name, "echo kept > /data.txt")[0] == 0
    conmon, pid = manager.supervisor_pid(name), manager.container_pid(name)
    assert conmon is not None and pid is not None
    os.kill(conmon, 9)
    wait_for(lambda: not pid_alive(conmon), what="conmon to die")
    assert state(manager, name).status == "running"  # the process outlives its supervisor
    os.kill(pid, 9)
    wait_for(lambda: not pid_alive(pid), what="the process to die")
    rootfs.unmount(manager.dir(name) / "rootfs")
    st = state(manager, name)
    assert (st.status, st.exit_code) == ("exited", 255)
    manager.stop(name)  # nothing to stop: success
    manager.start(name)
    assert state(manager, name).status == "running"
    assert sh(manager, name, "cat /data.txt") == (0, "kept\n")


def test_logs_follow_both_streams(manager: ContainerManager, lowerdir: Path) -> None:
    name = cname("follow")
    run(
        manager,
        lowerdir,
        name,
        "sh",
        "-c",
        "for i in 1 2 3; do echo $i; sleep 0.2; done; echo err >&2",
    )
    lines = list(manager.logs(name, follow=True))
    assert lines == [b"1\n", b"2\n", b"3\n", b"err\n"]
    assert list(manager.logs(name, tail=2)) == [b"3\n", b"err\n"]
    assert state(manager, name).exit_code == 0


def test_log_is_rotated_by_size_without_losing_lines(root: Path, lowerdir: Path) -> None:
    """The keeper rotates ctr.log at its size (ctr.log.1, .2, the oldest dropped) and conmon
    reopens it: `logs -f` that started before the rotations sees every line once, in order,
    and so does a plain read of what the kept files hold."""
    mgr = ContainerManager(root, runc=RUNC, conmon=CONMON, log_size_max=4096, log_files=3)
    name = cname("logrot")
    try:
        run(
            mgr,
            lowerdir,
            name,
            "sh",
            "-c",
            "i=0; while [ $i -lt 600 ]; do echo line$i; i=$((i+1)); sleep 0.005; done",
        )
        followed = [int(line[4:]) for line in mgr.logs(name, follow=True)]
        assert followed == list(range(followed[0], 600)) and followed[0] < 50, followed[:5]
        cdir = mgr.dir(name)
        assert (cdir / "ctr.log.1").exists() and (cdir / "ctr.log.2").exists()
        assert not (cdir / "ctr.log.3").exists(), "more files kept than asked for"
        kept = [int(line[4:]) for line in mgr.logs(name)]
        assert kept == list(range(kept[0], 600)) and kept[0] > 0, kept[:5]
        assert list(mgr.logs(name, tail=1)) == [b"line599\n"]
        assert len(list(mgr.logs(name, tail=len(kept) + 10))) == len(kept)
    finally:
        mgr.remove(name)
        health.stop_checker(root)
    assert mgr.state(name) is None and mgr.cgroup_dirs(name) == []


def test_concurrent_starts_make_one_container(manager: ContainerManager, lowerdir: Path) -> None:
    import concurrent.futures

    name = cname("race")
    cfg = ContainerConfig(name=name, image="busybox:test", command=("sleep", "1000"))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(lambda _: manager.create(cfg, [lowerdir]), range(4)))
        list(pool.map(lambda _: manager.start(name), range(4)))
    assert len(ids) == 1
    assert state(manager, name).status == "running"
    cid = next(iter(ids))
    out = subprocess.run(["pgrep", "-f", f"conmon .*-c {cid}"], capture_output=True, text=True)
    assert len(out.stdout.split()) == 1


def test_start_failure_is_reported_and_cleaned(manager: ContainerManager, lowerdir: Path) -> None:
    from pyapply.runtime.base import RuntimeFailure

    name = cname("badcmd")
    manager.create(
        ContainerConfig(name=name, image="busybox:test", command=("/no/such/binary",)), [lowerdir]
    )
    with pytest.raises(RuntimeFailure, match=r"no such file|not found"):
        manager.start(name)
    assert state(manager, name).status != "running"
    wait_for(lambda: manager.cgroup_dirs(name) == [], what="the cgroups to go")


def test_runc_files_say_what_runc_list_says(manager: ContainerManager, lowerdir: Path) -> None:
    """The statuses read from runc's own files (`runc_files`, what observation uses) are
    the ones `runc list` gives, for running and paused containers."""
    running, paused = cname("files"), cname("files")
    run(manager, lowerdir, running, "sleep", "1000")
    cid = run(manager, lowerdir, paused, "sleep", "1000").id
    runc = [RUNC, f"--root={manager.runc_root}"]

    def by_runc() -> dict[str, dict[str, object]]:
        out = subprocess.run([*runc, "list", "--format=json"], capture_output=True, check=True)
        keys = ("id", "pid", "status", "bundle")
        return {i["id"]: {k: i[k] for k in keys} for i in json.loads(out.stdout)}

    subprocess.run([*runc, "pause", cid], check=True)
    try:
        seen = runc_files.list_states(manager.runc_root)
        assert seen is not None
        assert sorted(i["status"] for i in seen.values()) == ["paused", "running"]
        assert seen == by_runc()
    finally:
        subprocess.run([*runc, "resume", cid], check=True)
    assert runc_files.list_states(manager.runc_root) == by_runc()
    assert state(manager, paused).status == "running"
