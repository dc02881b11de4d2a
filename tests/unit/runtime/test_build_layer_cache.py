"""Cache keys (runtime/native/build/cache.py) and reproducible layer tars with whiteouts
(runtime/native/build/layertar.py). The whiteout case makes a 0:0 character device, as
overlayfs does, which needs root (as the native runtime does)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

from pyapply.runtime.native.build.cache import Entry, LayerCache, step_key
from pyapply.runtime.native.build.layertar import drop_mount_stubs, write_layer


def test_keys_change_with_every_input_and_only_with_them() -> None:
    base = step_key("p", "RUN make", args={"A": "1"}, sources="s")
    assert base == step_key("p", "RUN make", args={"A": "1"}, sources="s")
    assert base != step_key("q", "RUN make", args={"A": "1"}, sources="s")  # parent chain
    assert base != step_key("p", "RUN make all", args={"A": "1"}, sources="s")
    assert base != step_key("p", "RUN make", args={"A": "2"}, sources="s")
    assert base != step_key("p", "RUN make", args={"A": "1", "B": "x"}, sources="s")
    assert base != step_key("p", "RUN make", args={"A": "1"}, sources="t")  # file content
    assert step_key("p", "x", args={"A": "1", "B": "2"}) == step_key(
        "p", "x", args={"B": "2", "A": "1"}
    )


def test_the_cache_file(tmp_path: Path) -> None:
    cache = LayerCache(str(tmp_path / "build"))
    assert cache.get("k") is None
    cache.put("k", Entry("sha256:" + "a" * 64))
    cache.put("e", Entry(None))
    again = LayerCache(str(tmp_path / "build"))
    assert again.get("k") == Entry("sha256:" + "a" * 64)
    assert again.get("e") == Entry(None)
    (tmp_path / "build" / "cache.json").write_text("{broken")
    assert LayerCache(str(tmp_path / "build")).get("k") is None  # damaged: only a miss


def _tree(root: Path, when: int) -> None:
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b" / "z").write_text("z")
    (root / "b" / "y").symlink_to("z")
    os.link(root / "a.txt", root / "hard")
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (when, when), follow_symlinks=False)


def _layer(root: Path, epoch: int) -> tuple[bytes, int]:
    out = io.BytesIO()
    n = write_layer(str(root), out, epoch)
    return out.getvalue(), n


def test_layers_are_reproducible(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _tree(one, 2_000_000_000)
    _tree(two, 2_100_000_000)  # made at another time: clamped to the same epoch
    a, count = _layer(one, 1_000)
    b, _ = _layer(two, 1_000)
    assert count == 5
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    with tarfile.open(fileobj=io.BytesIO(a)) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["a.txt", "b", "b/y", "b/z", "hard"]
    assert {m.mtime for m in members} == {1_000}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    assert members[-1].islnk() and members[-1].linkname == "a.txt"
    assert members[2].issym() and members[2].linkname == "z"
    older, _ = _layer(one, 3_000_000_000)  # an epoch after the files: their own times
    with tarfile.open(fileobj=io.BytesIO(older)) as tf:
        assert {m.mtime for m in tf.getmembers()} == {2_000_000_000}


def test_deletions_become_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "new").mkdir()
    os.setxattr(upper / "new", "trusted.overlay.opaque", b"y")
    (upper / "new" / "f").write_text("f")
    data, _ = _layer(upper, 0)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = [(m.name, m.type) for m in tf.getmembers()]
    assert names == [
        ("etc", tarfile.DIRTYPE),
        ("etc/.wh.gone", tarfile.REGTYPE),
        ("new", tarfile.DIRTYPE),
        ("new/.wh..wh..opq", tarfile.REGTYPE),
        ("new/f", tarfile.REGTYPE),
    ]


def test_runc_mount_points_are_not_a_change(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc").chmod(0o755)
    (upper / "etc").mkdir(parents=True)
    (upper / "etc").chmod(0o755)
    (upper / "etc" / "hosts").write_text("")  # made by runc as a mount point
    (upper / "proc").mkdir()
    (upper / "kept").write_text("x")
    drop_mount_stubs(str(upper), [str(lower)])
    assert sorted(p.name for p in upper.iterdir()) == ["kept"]
    # a mount point the image has is a change of the image's file: kept
    (lower / "etc" / "hostname").write_text("img")
    (upper / "etc").mkdir()
    (upper / "etc" / "hostname").write_text("")
    drop_mount_stubs(str(upper), [str(lower)])
    assert (upper / "etc" / "hostname").exists()
