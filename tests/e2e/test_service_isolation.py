"""The compose fields that set a container's isolation, terminal, resolver and hooks, on
each real runtime (docker, native), through the real command line, checked from inside.

One project of three busybox services exercises them all at once:

- `box`: tty, devices, namespaced sysctls (net and IPC), dns/dns_search/dns_opt, shm_size,
  no-new-privileges and seccomp=unconfined, ipc: shareable, group_add, oom_score_adj,
  platform, runtime, a post_start hook (with user and environment) and a privileged
  pre_stop hook;
- `peer`: privileged, `pid: service:box`, `ipc: service:box`, cgroup_parent;
- `reader`: stdin_open without a tty (its `cat` would end at once on /dev/null), and
  mac_address.

It is applied, re-applied as a no-op, started again after `box` is stopped (which ends
`peer`, in its process namespace: both start again, the hook runs again, and `peer` joins
`box`'s new namespaces), diffed against a changed field (the plan names it), and taken down
(which runs the pre_stop hook, seen in a bind-mounted directory).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.runtimes import PYAPPLY, DockerUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

MANIFEST = """\
services:
  box:
    image: pyapply-test/busybox:latest
    command: ["sh", "-c", "echo ready; exec sleep 3600"]
    tty: true
    devices: ["/dev/null:/dev/xnull"]
    sysctls:
      net.ipv4.ip_forward: 1
      net.core.somaxconn: 1024
      kernel.shmmax: 1000000
    dns: [192.0.2.53]
    dns_search: example.test
    dns_opt: ["ndots:3"]
    shm_size: 32m
    security_opt: [no-new-privileges, "seccomp=unconfined"]
    ipc: shareable
    group_add: ["1234", nobody]
    oom_score_adj: 300
    platform: linux/amd64
    runtime: runc
    volumes: ["./out:/out"]
    post_start:
      - command: ["sh", "-c", "echo $$HOOK_VAR > /dev/shm/marker; id -u > /out/post_start"]
        user: "1000"
        environment: {HOOK_VAR: hooked}
    pre_stop:
      - command: ["sh", "-c", "grep CapEff /proc/self/status > /out/pre_stop; echo bye >> /out/pre_stop"]
        privileged: true
  peer:
    image: pyapply-test/busybox:latest
    command: ["sleep", "3601"]
    privileged: true
    pid: service:box
    ipc: service:box
    cgroup_parent: CGROUP
  reader:
    image: pyapply-test/busybox:latest
    command: ["cat"]
    stdin_open: true
    mac_address: 02:42:ac:1f:00:99
"""

CAP_ALL = (1 << 41) - 1  # CAP_CHOWN .. CAP_CHECKPOINT_RESTORE


def host_bounding_set() -> int:
    """The capabilities this host lets a process hold (a sandbox may lack some)."""
    status = Path("/proc/self/status").read_text()
    return int(status_fields(status)["CapBnd"], 16)


def status_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def remove_cgroup_parent(parent: str) -> None:
    """rmdir the cgroup parent the runtime made, in every hierarchy (it outlives its
    containers on both runtimes, as with Docker)."""
    root = Path("/sys/fs/cgroup")
    for hierarchy in [root, *root.iterdir()]:
        with contextlib.suppress(OSError):
            (hierarchy / parent.strip("/")).rmdir()


def test_isolation_fields_run_on_both_runtimes(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    s = runtime.stack
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    (project / "out").chmod(0o777)  # the post_start hook writes there as uid 1000
    parent = f"pyapply-test-{s}"
    manifest = project / "compose.yaml"
    text = MANIFEST.replace("CGROUP", parent)
    # dockerd gives a privileged container every capability it knows, which fails where the
    # host's bounding set lacks some (seen in sandboxes without CAP_SYS_RESOURCE); native
    # gives every capability the host has
    full_host = host_bounding_set() & CAP_ALL == CAP_ALL
    privileged = runtime.name == "native" or full_host
    if not privileged:
        text = text.replace("privileged: true\n", "privileged: false\n")
    manifest.write_text(text)
    env = {**runtime.env, "COMPOSE_PROJECT_NAME": s}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args, "-f", str(manifest)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def inside(container: str, *argv: str) -> str:
        code, out = runtime.exec(f"{s}-{container}-1", *argv)
        assert code == 0, f"{argv} in {container}: {code} {out}"
        return out

    try:
        up = run("apply")
        assert up.returncode == 0, up.stdout + up.stderr
        box = status_fields(inside("box", "cat", "/proc/self/status"))
        assert box["NoNewPrivs"] == "1" and box["Seccomp"] == "0", box
        assert inside("box", "ls", "-l", "/dev/xnull").startswith("c")
        inside("box", "sh", "-c", "echo x > /dev/xnull")
        assert inside("box", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
        assert inside("box", "cat", "/proc/sys/net/core/somaxconn").strip() == "1024"
        assert inside("box", "cat", "/proc/sys/kernel/shmmax").strip() == "1000000"
        resolv = inside("box", "cat", "/etc/resolv.conf").splitlines()
        if isinstance(runtime, DockerUnderTest):
            # on a user-defined network dockerd's own resolver answers (127.0.0.11) and
            # forwards to the name servers asked for
            assert runtime.attrs(f"{s}-box-1")["HostConfig"]["Dns"] == ["192.0.2.53"]
        else:
            assert "nameserver 192.0.2.53" in resolv, resolv
        assert "search example.test" in resolv and "options ndots:3" in resolv, resolv
        assert inside("box", "df", "-k", "/dev/shm").splitlines()[1].split()[1] == "32768"
        assert {"0", "1234", "65534"} <= set(inside("box", "id", "-G").split())
        assert inside("box", "cat", "/proc/1/oom_score_adj").strip() == "300"
        assert inside("box", "readlink", "/proc/1/fd/1").startswith("/dev/pts/")
        # what the terminal showed is its log ("\r\n": the terminal's line ends)
        assert "ready" in runtime.observe.logs(f"{s}-box-1"), runtime.observe.logs(f"{s}-box-1")
        # the post_start hook ran as its user, with its environment, after the start
        assert (project / "out" / "post_start").read_text().strip() == "1000"
        assert inside("box", "cat", "/dev/shm/marker").strip() == "hooked"

        peer = status_fields(inside("peer", "cat", "/proc/self/status"))
        if privileged:
            assert int(peer["CapEff"], 16) == host_bounding_set() & CAP_ALL, peer
            assert peer["Seccomp"] == "0" and peer["NoNewPrivs"] == "0", peer
            assert "loop0" in inside("peer", "ls", "/dev").split()  # the host's devices
        # box's processes and /dev/shm are peer's too
        assert inside("peer", "cat", "/proc/1/cmdline").split("\0")[:2] == ["sleep", "3600"]
        assert inside("peer", "cat", "/dev/shm/marker").strip() == "hooked"
        assert f"/{parent}/" in inside("peer", "cat", "/proc/self/cgroup")

        reader = runtime.observe.must(f"{s}-reader-1")
        assert reader.status == "running"  # `cat` waits on an open stdin
        assert inside("reader", "readlink", "/proc/1/fd/0").startswith("pipe:")
        link = inside("reader", "cat", "/sys/class/net/eth0/address").strip()
        assert link == "02:42:ac:1f:00:99"

        ids = {n: c.id for n, c in runtime.observe.containers(s).items()}
        again = run("diff", "--exit-code")
        assert again.returncode == 0, again.stdout + again.stderr

        # box stopped: peer, in its process namespace, ends with it; an apply starts box
        # again (its post_start hook runs again), then peer, in box's new namespaces
        (project / "out" / "post_start").unlink()
        runtime.stop(f"{s}-box-1", timeout=1)
        deadline = time.monotonic() + 15
        while runtime.observe.running(f"{s}-peer-1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not runtime.observe.running(f"{s}-peer-1")
        restarted = run("apply")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert (project / "out" / "post_start").read_text().strip() == "1000"
        assert inside("peer", "cat", "/proc/1/cmdline").split("\0")[:2] == ["sleep", "3600"]
        assert inside("peer", "cat", "/dev/shm/marker").strip() == "hooked"
        manifest.write_text(MANIFEST.replace("CGROUP", parent).replace("192.0.2.53", "192.0.2.54"))
        changed = run("diff", "--exit-code")
        assert changed.returncode == 2, changed.stdout + changed.stderr
        lines = changed.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if f"container {s}-box-1: recreate" in line)
        assert lines[at + 1].strip() == "dns: ['192.0.2.53'] -> ['192.0.2.54']", changed.stdout
        assert {n: c.id for n, c in runtime.observe.containers(s).items()} == ids
    finally:
        down = run("down")
        remove_cgroup_parent(parent)
    assert down.returncode == 0, down.stdout + down.stderr
    caps, bye = (project / "out" / "pre_stop").read_text().splitlines()
    assert bye == "bye"
    if privileged:  # the privileged hook had every capability of the host
        assert int(status_fields(caps)["CapEff"], 16) == host_bounding_set() & CAP_ALL, caps
    if not privileged:  # said plainly, never a bare "operation not permitted"
        manifest.write_text(
            "services:\n  p:\n    image: pyapply-test/busybox:latest\n"
            '    command: ["true"]\n    privileged: true\n'
        )
        try:
            failed = run("apply")
        finally:
            run("down")
        assert failed.returncode == 1
        assert "privileged container gets every capability" in failed.stdout + failed.stderr
