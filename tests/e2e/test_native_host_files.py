"""The native runtime's files on the host: nothing under a state root is open to another
local user, and trees of any depth go away.

Issue 17 found a state root and its layers at 0755: a setuid-root binary of any image ran as
root for `nobody` straight from `<root>/images/layers/...`, device nodes from layers were
usable, and each container's config.json (its environment, passwords included) was readable.
Here a real root holds a running container (an environment secret, a secret file, and a deep
tree it made in its rootfs), an imported image with a setuid-root binary and a 0666 device
node, and a history database holding a secret; then a child process that became `nobody`
tries to stat, open, list and execute every path under the root, and the named targets one
by one. The root sits in a directory `nobody` may enter (checked), so every refusal comes
from the root's own modes. The container runs as uid 65534, so `nobody` reaches its rootfs
through /proc/<pid>/root (as with any runtime); the rootfs is mounted nodev, so the image's
device node cannot be opened there either.

The second test imports a layer 2,000 directories deep with `pyapply image import`:
`image rm` must delete it from disk and `system reset` must remove it.

Each test resets its root (`system reset --force`) afterwards, checks that nothing of it is
left in the kernel (helpers of test_native_system.py), and deletes its directory with GNU rm,
which has no depth limit.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyapply.reconciler.agent.history import History
from pyapply.runtime.native.driver import NativeRuntime
from tests.e2e.helpers import new_stack_name
from tests.e2e.test_native_system import Env, free_port, leftovers, scrub

pytestmark = pytest.mark.e2e

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
NOBODY = 65534
BUSYBOX = "/bin/busybox"
ENV_SECRET = "s3cret-env-VALUE-7d1f"
FILE_SECRET = b"s3cret-file-VALUE-93ac\n"
DEEP_IN_CONTAINER = 1100  # levels the container makes in its rootfs (> the recursion limit)

STACK_YAML = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: STACK
spec:
  services:
    app:
      image: IMAGE
      user: "65534:65534"
      command:
        - sh
        - -c
        - >-
          cat /etc/hosts /etc/resolv.conf /run/secrets/db-password > /dev/null &&
          ls / > /dev/null && echo ready-as-$$(id -u) &&
          mkdir /tmp/deep && cd /tmp/deep && i=0 &&
          while [ $$i -lt DEPTH ]; do mkdir d && cd d; i=$$((i+1)); done &&
          echo deep-done; exec sleep 100000
      environment:
        DB_PASSWORD: ENV_SECRET
      secrets:
        - source: db-password
          uid: "65534"
      stop_grace_period: 1s
  secrets:
    db-password:
      file: ./db-password
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _image_tar(path: Path) -> Path:
    """A rootfs: busybox and its applets, a setuid-root copy of it, a 0666 char device
    (1:3, what /dev/null is: harmless, and usable by anyone who can reach it)."""
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    body = Path(BUSYBOX).read_bytes()

    def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.linkname = kind, mode, 0, 0, link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.CHRTYPE:
            ti.devmajor, ti.devminor = 1, 3
        tf.addfile(ti, io.BytesIO(data) if data else None)

    with tarfile.open(path, "w") as tf:
        for d, m in (("bin", 0o755), ("etc", 0o755), ("opt", 0o755), ("tmp", 0o1777)):
            add(d, tarfile.DIRTYPE, m)
        add("bin/busybox", tarfile.REGTYPE, 0o755, body)
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("opt/suid-root", tarfile.REGTYPE, 0o4755, body)
        add("opt/null", tarfile.CHRTYPE, 0o666)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd)
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return path


def _paths_under(root: Path, max_depth: int = 40) -> list[Path]:
    """Every path under `root` (root included) down to `max_depth` levels, without
    following symlinks or recursing (the container made a tree deeper than the recursion
    limit). Deeper paths lie below one of these, so they are refused the same way."""
    out = [root]
    todo = [(root, 0)]
    while todo:
        cur, depth = todo.pop()
        if depth >= max_depth:
            continue
        with os.scandir(cur) as it:
            for entry in it:
                p = Path(entry.path)
                out.append(p)
                if entry.is_dir(follow_symlinks=False):
                    todo.append((p, depth + 1))
    return out


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """fn() in a forked child that dropped to uid/gid 65534 with no groups; its result
    comes back as JSON through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            data = json.dumps({"ok": fn()}).encode()
        except BaseException as e:  # report anything, never unwind into pytest
            data = json.dumps({"error": repr(e)}).encode()
            code = 1
        with os.fdopen(w, "wb") as fh:
            fh.write(data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        raw = fh.read()
    _, status = os.waitpid(pid, 0)
    doc = json.loads(raw)
    assert "error" not in doc and os.waitstatus_to_exitcode(status) == 0, doc
    return doc["ok"]


def _attempts(paths: list[str], programs: set[str]) -> dict[str, list[str]]:
    """As the current (unprivileged) user: which of stat, open, list work on each path, and
    exec on `programs` (the executable files, as root sees them). Runs in the child."""
    done: dict[str, list[str]] = {}
    for p in paths:
        ok: list[str] = []
        try:
            os.lstat(p)
            ok.append("stat")
        except OSError:
            pass
        try:
            os.close(os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            ok.append("open")
        except OSError:
            pass
        try:
            os.listdir(p)
            ok.append("list")
        except OSError:
            pass
        if p in programs:
            try:
                subprocess.run([p, "true"], capture_output=True, timeout=10, check=False)
                ok.append("exec")
            except OSError:
                pass
        done[p] = ok
    return done


def _try_open(path: str) -> str:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as e:
        return type(e).__name__
    return "ok"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Env]:
    """A state root in a directory `nobody` may enter; afterwards reset, checked, removed."""
    for tool in ("runc", "conmon", "iptables", "iptables-save"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing; run `make setup`", pytrace=False)
    # short (a deep layer's paths must fit PATH_MAX) and reachable by nobody, unlike
    # pytest's tmp_path (/tmp/pytest-of-root is 0700, which would hide everything anyway)
    base = Path(tempfile.mkdtemp(prefix="pa-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    work = base / "work"
    work.mkdir()
    stack = new_stack_name()
    root = base / "root"
    e = Env(
        root=root,
        work=work,
        stack=stack,
        port=free_port(),
        image=f"local/perms-{stack}:1",
        env={**os.environ, "PYAPPLY_ROOT": str(root), "PYAPPLY_RUNTIME": "native"},
    )
    try:
        yield e
    finally:
        out = e.run("system", "reset", "--force")
        left = leftovers(e, wait_s=5)
        if left:
            scrub(e)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False, timeout=300)
    assert out.returncode == 0 and "recursion" not in out.stderr, out.stderr
    assert not left, left


def test_nothing_under_the_root_is_open_to_another_user(host: Env) -> None:
    e = host
    e.containers = (f"{e.stack}-app-1",)
    e.networks = (f"{e.stack}_default",)
    e.ok("image", "import", str(_image_tar(e.work / "image.tar")), "--ref", e.image)
    secret_src = e.work / "db-password"
    secret_src.write_bytes(FILE_SECRET)
    manifest = e.work / "stack.yaml"
    manifest.write_text(
        STACK_YAML.replace("STACK", e.stack)
        .replace("IMAGE", e.image)
        .replace("ENV_SECRET", ENV_SECRET)
        .replace("DEPTH", str(DEEP_IN_CONTAINER))
    )
    e.ok("-f", str(manifest))
    hist = History(str(e.root))  # what the agent records: every revision's files
    hist.store_revision("rev1", "test", "dir", {"db-password": FILE_SECRET})

    # the container, as uid 65534 inside, still reads what it must, and made its deep tree
    deadline = time.monotonic() + 60
    logs = ""
    while "deep-done" not in logs and time.monotonic() < deadline:
        time.sleep(0.3)
        logs = e.run("logs", "app", "--file", str(manifest)).stdout
    assert f"ready-as-{NOBODY}" in logs and "deep-done" in logs, logs

    root = e.root
    cdir = root / "containers" / e.containers[0]
    [layer] = list((root / "images" / "layers").iterdir())
    state = json.loads((cdir / "state.json").read_text())
    files_dir = root / "files" / e.stack
    [secret_file] = [p for p in files_dir.iterdir() if p.read_bytes() == FILE_SECRET]
    targets = {
        "root": root,
        "config.json": cdir / "config.json",
        "state.json": cdir / "state.json",
        "container log": cdir / "ctr.log",
        "runc state": root / "runc" / state["id"] / "state.json",
        "layers": root / "images" / "layers",
        "setuid binary in the layer": layer / "opt" / "suid-root",
        "setuid binary in the rootfs": cdir / "rootfs" / "opt" / "suid-root",
        "device node in the layer": layer / "opt" / "null",
        "device node in the rootfs": cdir / "rootfs" / "opt" / "null",
        "secret file": secret_file,
        "history.db": root / "history.db",
        "revisions.db": root / "revisions.db",
        "container upper dir": cdir / "upper",
    }
    # what is at stake is really there, as root sees it
    assert ENV_SECRET in (cdir / "config.json").read_text()
    # the revisions' files (secret files among them) are kept apart from the history
    assert FILE_SECRET.strip() in (root / "revisions.db").read_bytes()
    assert FILE_SECRET.strip() not in (root / "history.db").read_bytes()
    for what in ("setuid binary in the layer", "setuid binary in the rootfs"):
        st = os.stat(targets[what])
        assert st.st_uid == 0 and st.st_mode & stat.S_ISUID, what
    for what in ("device node in the layer", "device node in the rootfs"):
        st = os.lstat(targets[what])
        assert stat.S_ISCHR(st.st_mode) and _mode(targets[what]) == 0o666, what

    # the modes themselves
    for d in (root, root / "images", root / "images" / "layers", root / "containers", cdir):
        assert _mode(d) == 0o700, d
    for d in (root / "runc", root / "files", files_dir, root / "networks"):
        assert _mode(d) == 0o700, d
    for f in ("config.json", "state.json"):
        assert _mode(cdir / f) == 0o600, f
    assert _mode(root / "history.db") == 0o600 and _mode(root / "revisions.db") == 0o600
    assert _mode(root / "images" / "index.json") == 0o600

    found = _paths_under(root)
    paths = [str(p) for p in found]
    programs = {
        str(p) for p in found if stat.S_ISREG(os.lstat(p).st_mode) and os.lstat(p).st_mode & 0o111
    }
    assert {str(targets[w]) for w in targets if w.startswith("setuid")} <= programs
    for p in targets.values():
        assert str(p) in paths, p
    # the container runs as 65534, so nobody may reach its rootfs through /proc/<pid>/root
    # (ptrace rules, as with any runtime): the rootfs is mounted nodev, so the image's device
    # node is of no use there either
    pid = NativeRuntime(root).containers.container_pid(e.containers[0])
    assert pid is not None
    proc_root = f"/proc/{pid}/root"
    control = e.work.parent / "control"
    control.write_text("readable")
    control.chmod(0o644)

    def probe() -> dict[str, Any]:
        return {
            "control": {
                "list base": sorted(os.listdir(e.work.parent)),
                "read": Path(control).read_text(),
                "stat root": stat.S_ISDIR(os.stat(root).st_mode),
                "exec busybox": subprocess.run(
                    [BUSYBOX, "id", "-u"], capture_output=True, text=True, timeout=10
                ).stdout.strip(),
            },
            "attempts": _attempts(paths, programs),
            "proc root": {
                name: _try_open(f"{proc_root}/{name}") for name in ("dev/null", "opt/null")
            },
        }

    seen = _as_nobody(probe)
    # the child really is nobody, and can reach the root's parent: the refusals below are
    # the root's doing
    assert seen["control"] == {
        "list base": ["control", "root", "work"],
        "read": "readable",
        "stat root": True,
        "exec busybox": str(NOBODY),
    }
    assert seen["proc root"] == {"dev/null": "ok", "opt/null": "PermissionError"}, seen
    attempts: dict[str, list[str]] = seen["attempts"]
    allowed = {p: ops for p, ops in attempts.items() if ops}
    # the root itself can be stat'ed (its parent is open); nothing else, nothing more
    assert allowed == {str(root): ["stat"]}, allowed
    for what, p in targets.items():
        if p != root:
            assert attempts[str(p)] == [], what
    assert len(attempts) > 500  # the walk went through the layer, the rootfs, the upper dir


def _deep_layer_tar(path: Path, depth: int) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        name = ""
        for _ in range(depth):
            name = f"{name}/d" if name else "d"
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        data = b"at the bottom\n"
        ti = tarfile.TarInfo(f"{name}/f")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return path


def test_a_layer_2000_directories_deep_is_removed_by_image_rm_and_reset(host: Env) -> None:
    e = host
    tar = _deep_layer_tar(e.work / "deep.tar", 2000)
    layers = e.root / "images" / "layers"
    blobs = e.root / "images" / "blobs" / "sha256"

    t0 = time.monotonic()
    e.ok("image", "import", str(tar), "--ref", "local/deep:1")
    import_s = time.monotonic() - t0
    [layer] = list(layers.iterdir())
    assert len(list(blobs.iterdir())) == 2  # the layer and the config
    # the bottom is there: 2,000 levels down (walked relative to descriptors: the path
    # is longer than PATH_MAX allows from here)
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(2000):
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        assert os.listdir(fd) == ["f"]
    finally:
        os.close(fd)
    assert import_s < 60, import_s

    out = e.ok("image", "rm", "local/deep:1")
    assert "deleted: sha256:" in out, out
    assert list(layers.iterdir()) == [] and list(blobs.iterdir()) == []  # gone from disk

    e.ok("image", "import", str(tar), "--ref", "local/deep:1")
    assert len(list(layers.iterdir())) == 1
    out = e.run("system", "reset", "--force")
    assert out.returncode == 0, out.stderr
    assert "recursion" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "local/deep:1" in out.stdout, out.stdout
    assert not (e.root / "images").exists()
