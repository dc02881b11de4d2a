"""The state root's files are private from creation, and trees of any depth are removed.

Modes are checked under umask 0, so nothing here passes thanks to the usual 022 umask, and
with os.chmod/fchmod/lchmod made to fail, so no file passes by being created wide and
narrowed afterwards (runtime/statefs.py and every writer that keeps state under a root).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import resource
import sqlite3
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyapply.reconciler.agent.history import History, materialise
from pyapply.reconciler.engine import execute
from pyapply.reconciler.engine.lock import host_lock
from pyapply.runtime.base import VolumeConfig
from pyapply.runtime.native import health, network
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.native.driver import NativeRuntime
from pyapply.runtime.native.images import ImageStore
from pyapply.runtime.statefs import (
    DEFAULT_ROOT,
    atomic_write,
    dirs_bottom_up,
    open_private,
    private_dir,
    rmtree,
    state_root,
)

REPO = Path(__file__).resolve().parents[3]


def mode(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_chmod(umask0: None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Umask 0, and any chmod fails the test: modes must come from creation."""
    return forbid_chmod(monkeypatch)


def forbid_chmod(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(repr(args))
        raise AssertionError(f"chmod after creation: {args!r}")

    for name in ("chmod", "fchmod", "lchmod"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    return calls


def all_modes(root: Path) -> dict[str, int]:
    out = {".": mode(root)}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = mode(p)
    return out


# ---------------------------------------------------------------------------------------------
# the helpers


def test_private_dir_creates_0700_and_tightens_an_old_root(tmp_path: Path, umask0: None) -> None:
    deep = tmp_path / "a" / "b" / "c"
    private_dir(deep)
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a/b", deep)] == [0o700] * 3
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    assert mode(old) == 0o755
    private_dir(old)  # made by a version before 0700 roots: shut on first use
    assert mode(old) == 0o700
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        private_dir(tmp_path / "file")


def test_atomic_write_is_0600_from_creation(
    tmp_path: Path, umask0: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Born 0600; a mode asked for is set on the descriptor of the unnamed temporary file
    (never by path, never on the final name), whatever the umask."""
    real_fchmod = os.fchmod
    forbid_chmod(monkeypatch)  # chmod by path fails the test ...
    born: list[tuple[str, int, int]] = []

    def fchmod(fd: int, m: int) -> None:  # ... fchmod is recorded with the mode it found
        finals = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
        named = any(os.path.samestat(os.fstat(fd), os.lstat(p)) for p in finals)
        born.append(("named" if named else "temp", stat.S_IMODE(os.fstat(fd).st_mode), m))
        real_fchmod(fd, m)

    monkeypatch.setattr(os, "fchmod", fchmod)
    target = tmp_path / "config.json"
    atomic_write(target, '{"env": ["DB_PASSWORD=x"]}')
    assert mode(target) == 0o600 and json.loads(target.read_text())["env"]
    assert born == []  # 0600 is the mode of creation: nothing to change
    # an old file of any mode is replaced by a new one, 0600
    target.unlink()
    target.write_text("old")
    assert mode(target) == 0o666  # umask 0
    atomic_write(target, b"new")
    assert mode(target) == 0o600 and target.read_bytes() == b"new"
    atomic_write(tmp_path / "hosts", "127.0.0.1 localhost\n", 0o644)  # asked for
    atomic_write(tmp_path / "secret", b"s3cret", 0o400)
    assert mode(tmp_path / "hosts") == 0o644 and mode(tmp_path / "secret") == 0o400
    assert born == [("temp", 0o600, 0o644), ("temp", 0o600, 0o400)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "hosts", "secret"]
    fd = open_private(tmp_path / "lock")
    os.close(fd)
    assert mode(tmp_path / "lock") == 0o600


def test_atomic_write_has_one_fsync_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable (the default): the content is fsynced before the rename and the directory
    after it. durable=False (a file that may be lost in a crash): no fsync at all.
    sync_dir=False: the content only, the caller fsyncs the directory. A write that fails
    leaves the old content and no temporary file."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append("fsync dir" if stat.S_ISDIR(st.st_mode) else f"fsync file {st.st_size}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(f"rename {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "state.json"
    atomic_write(target, "12345")
    assert events == ["fsync file 5", "rename state.json", "fsync dir"]
    events.clear()
    atomic_write(target, "123", durable=False)
    assert events == ["rename state.json"] and target.read_text() == "123"
    events.clear()
    # several files into one directory: their contents fsynced, the directory once, last
    atomic_write(tmp_path / "hosts", "1", sync_dir=False)
    atomic_write(target, "1234")
    assert events == [
        "fsync file 1",
        "rename hosts",
        "fsync file 4",
        "rename state.json",
        "fsync dir",
    ]
    events.clear()
    atomic_write(target, "12", durable=False, sync_dir=False)
    assert events == ["rename state.json"]

    def no_space(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "longer content")
    assert target.read_text() == "12"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts", "state.json"]


def test_one_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The state root: explicit, else $PYAPPLY_ROOT, else DEFAULT_ROOT; and DEFAULT_ROOT is
    the only place the default is spelled in code (docs and help texts may name it)."""
    monkeypatch.delenv("PYAPPLY_ROOT", raising=False)
    assert state_root() == DEFAULT_ROOT == "/var/lib/pyapply"
    assert state_root("") == DEFAULT_ROOT
    monkeypatch.setenv("PYAPPLY_ROOT", "/srv/pa")
    assert state_root() == "/srv/pa" and state_root(Path("/x")) == "/x"
    spelled = []
    for d in ("reconciler", "runtime"):
        for path in sorted((REPO / d).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value == DEFAULT_ROOT:
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert spelled == ["runtime/statefs.py:" + str(statefs_line())]


def statefs_line() -> int:
    text = (REPO / "runtime" / "statefs.py").read_text().splitlines()
    return next(n for n, line in enumerate(text, 1) if line.startswith("DEFAULT_ROOT = "))


def test_atomic_write_never_writes_through_a_planted_temp_or_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / "d").mkdir()
    # whatever sits at the old fixed temporary name is not reused
    (tmp_path / "d" / f".state.json.{os.getpid()}.tmp").symlink_to(outside)
    atomic_write(tmp_path / "d" / "state.json", "{}")
    assert outside.read_text() == "keep"
    assert mode(tmp_path / "d" / "state.json") == 0o600


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied afterwards by GNU rm (which has no depth limit), not by the code
    under test: a deep tree left behind would break pytest's own clean-up of old
    temporary directories (shutil.rmtree recurses) for every later session."""
    yield tmp_path
    subprocess.run(["rm", "-rf", "--one-file-system", str(tmp_path)], check=False, timeout=120)


def make_deep(top: Path, depth: int) -> None:
    """`depth` nested directories below `top`, each with a file, made relative to a
    directory descriptor (no path grows past PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_files_limit(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_rmtree_removes_a_tree_deeper_than_recursion_fds_and_path_max(scratch: Path) -> None:
    tmp_path = scratch
    top = tmp_path / "layer"
    make_deep(top, 2100)  # > the recursion limit, > 64 fds, a path > 4096 bytes
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (top / "d" / "link").symlink_to(outside)  # a symlink to a directory is not followed
    with open_files_limit(64):
        rmtree(top)
    assert not top.exists()
    assert (outside / "precious").read_text() == "keep"
    rmtree(top)  # gone is success
    (tmp_path / "file").write_text("x")
    rmtree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_dirs_bottom_up_at_any_depth(scratch: Path) -> None:
    tmp_path = scratch
    make_deep(tmp_path / "cg", 1500)
    (tmp_path / "cg" / "side").mkdir()
    order = dirs_bottom_up(tmp_path / "cg")
    assert len(order) == 1501
    depth = [p.count("/") for p in order]
    assert depth == sorted(depth, reverse=True)


# ---------------------------------------------------------------------------------------------
# every writer under a state root


def test_history_db_and_its_journals_are_0600_from_creation(
    tmp_path: Path, no_chmod: list[str]
) -> None:
    root = tmp_path / "root"
    History(str(root))
    db = root / "history.db"
    assert mode(root) == 0o700 and mode(db) == 0o600
    # a rollback journal while a transaction writes, then WAL and its index
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO state (key, value) VALUES ('k', 'v')")
        journal = root / "history.db-journal"
        assert journal.exists() and mode(journal) == 0o600
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("INSERT INTO state (key, value) VALUES ('k2', 'v')")
        for suffix in ("-wal", "-shm"):
            assert mode(root / f"history.db{suffix}") == 0o600
    finally:
        con.close()


def test_history_tightens_a_database_an_older_version_left_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    (root / "history.db").touch(mode=0o644)
    os.chmod(root / "history.db", 0o644)
    History(str(root))
    assert mode(root) == 0o700 and mode(root / "history.db") == 0o600


def test_materialised_revision_files_are_private(tmp_path: Path, no_chmod: list[str]) -> None:
    target = tmp_path / "root" / "agent" / "last-good"
    materialise({"stack.yaml": b"x", "secrets/db-password": b"s3cret"}, str(target))
    assert all_modes(tmp_path / "root") == {
        ".": 0o700,
        "agent": 0o700,
        "agent/last-good": 0o700,
        "agent/last-good/stack.yaml": 0o600,
        "agent/last-good/secrets": 0o700,
        "agent/last-good/secrets/db-password": 0o600,
    }


def test_host_lock_root_and_file(tmp_path: Path, no_chmod: list[str]) -> None:
    root = tmp_path / "root"
    with host_lock(str(root), timeout_s=1):
        pass
    assert mode(root) == 0o700 and mode(root / "lock") == 0o600


def test_secret_files_are_born_0600_then_given_their_mode(
    tmp_path: Path, umask0: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret's file gets the mode the container asks for (0400, 0444 for a config), set
    on the descriptor of a file that was 0600 from its creation."""
    born: list[int] = []
    real_fchmod = os.fchmod

    def fchmod(fd: int, m: int) -> None:
        born.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fchmod(fd, m)

    monkeypatch.setattr(os, "fchmod", fchmod)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod by path"))
    path = tmp_path / "root" / "files" / "shop" / "secret-db-password"
    execute.write_file_atomic(str(path), b"s3cret", 0o400)
    execute.write_file_atomic(str(path.with_name("config-app")), b"x", 0o444)
    assert born == [0o600, 0o600]
    assert mode(path) == 0o400 and mode(path.with_name("config-app")) == 0o444
    assert [mode(p) for p in (tmp_path / "root", path.parent.parent, path.parent)] == [0o700] * 3


def rootfs_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        data = b"#!/bin/sh\n"
        ti = tarfile.TarInfo("bin/tool")
        ti.size, ti.mode = len(data), 0o4755
        tf.addfile(ti, io.BytesIO(data))
    return path


def test_native_state_files_are_private_from_creation(
    tmp_path: Path, umask0: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    rt = NativeRuntime(root)
    # unpacking gives the image's files their own modes; the store's files are born private
    rt.image_store.import_archive(str(rootfs_tar(tmp_path / "rootfs.tar")), "local/tool:1")
    no_chmod = forbid_chmod(monkeypatch)
    rt.image_store.import_archive(str(rootfs_tar(tmp_path / "rootfs.tar")), "local/tool:2")
    rt.create_volume(VolumeConfig(name="data", labels={"k": "v"}))
    rt.names.save({"web": "web.abc123"})
    cm = ContainerManager(root)
    private_dir(cm.dir("c1"))
    cm._save("c1", {"id": "x", "env": ["DB_PASSWORD=s3cret"]})
    health.write_status(cm.dir("c1"), health.initial_status())
    network.write_json(root / "networks" / "networks.json", {"networks": {}})
    modes = all_modes(root)
    layer_dirs = [k for k in modes if k.startswith("images/layers/") and k.count("/") == 2]
    assert len(layer_dirs) == 1
    inside = layer_dirs[0] + "/"
    # what the image is made of keeps its own modes (setuid included), reachable only
    # through the 0700 directories above it
    assert modes[inside + "bin/tool"] == 0o4755
    expected_wide = {"volumes/data/_data": 0o755}
    for rel, m in modes.items():
        if rel.startswith(inside) or rel == layer_dirs[0]:
            continue
        full = root / rel if rel != "." else root
        if rel in expected_wide:
            assert m == expected_wide[rel], rel
        elif full.is_dir():
            assert m == 0o700, (rel, oct(m))
        else:
            assert m == 0o600, (rel, oct(m))
    for rel in (
        "images/index.json",
        "names.json",
        "volumes/data/meta.json",
        "containers/c1/state.json",
        "containers/c1/health.json",
        "networks/networks.json",
    ):
        assert modes[rel] == 0o600, rel
    assert no_chmod == []


def test_an_old_0755_root_is_tightened_on_first_use(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for d in ("", "images", "images/layers", "volumes"):
        (root / d).mkdir(mode=0o755, exist_ok=True)
        os.chmod(root / d, 0o755)
    NativeRuntime(root)
    assert mode(root) == 0o700
    assert mode(root / "images") == 0o700 and mode(root / "images/layers") == 0o700
    ImageStore(str(root))
    assert mode(root / "images") == 0o700
