"""File operations of the builder confined to a root file system
(runtime/native/build/fsops.py): path resolution inside a root, and ADD's archive
extraction, which must never reach a file outside its destination."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pyapply.runtime.base import BuildFailed
from pyapply.runtime.native.build.fsops import extract, is_archive, safe_join, walk


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "abs").symlink_to("/etc")
    (root / "up").symlink_to("../../../..")
    r = str(root)
    assert safe_join(r, "/bin/sh") == f"{r}/usr/bin/sh"
    assert safe_join(r, "/abs/passwd") == f"{r}/etc/passwd"  # not the host's /etc
    assert safe_join(r, "/up/etc/shadow") == f"{r}/etc/shadow"
    assert safe_join(r, "/../../x") == f"{r}/x"
    assert safe_join(r, "/bin", follow_last=False) == f"{r}/bin"


def test_a_symlink_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(BuildFailed, match="too many levels"):
        safe_join(str(tmp_path), "/a/x")


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti


def test_an_archive_keeps_modes_owners_and_links(tmp_path: Path) -> None:
    arch = _archive(
        tmp_path / "ok.tgz",
        [
            (_info("d", tarfile.DIRTYPE, mode=0o750, uid=5, gid=6), None),
            (_info("d/tool", mode=0o4755, uid=0, gid=0), b"x"),
            (_info("d/abs", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
            (_info("d/same", tarfile.LNKTYPE, linkname="d/tool", mode=0o4755), None),
        ],
    )
    assert is_archive(str(arch)) and not is_archive(__file__)
    out = tmp_path / "out"
    out.mkdir()
    extract(str(arch), str(out), "ADD")
    st = os.stat(out / "d")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o750, 5, 6)
    assert os.stat(out / "d" / "tool").st_mode & 0o7777 == 0o4755
    assert os.readlink(out / "d" / "abs") == "/etc/passwd"
    assert [rel for rel, _ in walk(str(out))] == ["d", "d/abs", "d/same", "d/tool"]


@pytest.mark.parametrize(
    "members",
    [
        [(_info("../escape"), b"x")],
        [(_info("link", tarfile.SYMTYPE, linkname="/etc"), None), (_info("link/x"), b"x")],
        [(_info("hard", tarfile.LNKTYPE, linkname="../../../../etc/hostname"), None)],
        [(_info("hard", tarfile.LNKTYPE, linkname="/etc/hostname"), None)],
    ],
)
def test_an_archive_never_reaches_outside(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    arch = _archive(tmp_path / "bad.tgz", members)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildFailed):
        extract(str(arch), str(out), "ADD")
    assert not (tmp_path / "escape").exists()
    assert not (out / "hard").exists()
