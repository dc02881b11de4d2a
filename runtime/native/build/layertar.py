"""A build step's file system change (an overlayfs upper dir) as a reproducible layer tar.

Overlayfs records a deletion as a 0:0 character device and a replaced directory with the
`trusted.overlay.opaque=y` xattr; an OCI layer says the same with `.wh.NAME` files and a
`.wh..wh..opq` entry. The tar is reproducible: entries sorted by path (bytes), mtimes
clamped to the build's epoch (SOURCE_DATE_EPOCH style), no user/group names, no atime or
ctime, pax headers only for what needs them (long names, xattrs) in a fixed order. The same
tree gives the same bytes, so the same digest.

`drop_mount_stubs` removes what runc leaves in an upper dir for its own mounts (an empty
/etc/hosts file made as a mount point, say) when the image did not have it, so a RUN that
changes nothing leaves no layer.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# Where runc mounts things in every build container (oci.default_mounts and the /etc files).
MOUNT_POINTS = ("proc", "dev", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf")


def _walk(root: str, rel: str = "") -> Iterator[str]:
    """Every path below `root`, relative, depth first with each level sorted by bytes (a
    stable order, parents before children)."""
    names = sorted(os.listdir(os.path.join(root, rel) if rel else root), key=os.fsencode)
    for n in names:
        child = f"{rel}/{n}" if rel else n
        yield child
        if stat.S_ISDIR(os.lstat(os.path.join(root, child)).st_mode):
            yield from _walk(root, child)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _xattrs(path: str) -> list[tuple[str, bytes]]:
    """Extended attributes worth keeping (capabilities, user.*), sorted; overlayfs's own go."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        if n.startswith("trusted.overlay.") or n.startswith("security.selinux"):
            continue
        with contextlib.suppress(OSError):
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
    return out


def _info(name: str, st: os.stat_result, epoch: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = min(int(st.st_mtime), epoch)
    return ti


def write_layer(upper: str, out: BinaryIO, epoch: int, *, clamp: bool = False) -> int:
    """Write the tar of `upper` to `out`; returns the number of entries (0: no change).
    With `clamp`, the mtimes in `upper` are clamped as in the tar, so that the directory
    can serve as the layer's directory (what unpacking the tar would give)."""
    count = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for rel in _walk(upper):
            path = os.path.join(upper, rel)
            st = os.lstat(path)
            parent, _, base = rel.rpartition("/")
            if is_whiteout(st):
                ti = tarfile.TarInfo(
                    f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
                )
                ti.mode, ti.mtime = 0o644, min(int(st.st_mtime), epoch)
                tf.addfile(ti)
                count += 1
                continue
            ti = _info(rel, st, epoch)
            if clamp:
                _as_layer_dir(path, st, epoch)
            xattrs = _xattrs(path)
            if xattrs:
                ti.pax_headers = {
                    "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs
                }
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                count += 1
                if _opaque(path):
                    marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
                    marker.mode, marker.mtime = 0o644, ti.mtime
                    tf.addfile(marker)
                    count += 1
                continue
            if stat.S_ISREG(st.st_mode):
                inode = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and inode in links:
                    ti.type, ti.linkname = tarfile.LNKTYPE, links[inode]
                    tf.addfile(ti)
                else:
                    links[inode] = rel
                    ti.size = st.st_size
                    with open(path, "rb") as f:
                        tf.addfile(ti, f)
            elif stat.S_ISLNK(st.st_mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
                tf.addfile(ti)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tf.addfile(ti)
            elif stat.S_ISFIFO(st.st_mode):
                ti.type = tarfile.FIFOTYPE
                tf.addfile(ti)
            else:
                continue  # sockets have no place in a layer
            count += 1
    return count


def _as_layer_dir(path: str, st: os.stat_result, epoch: int) -> None:
    """Make an upper dir entry what unpacking its tar entry gives: the mtime clamped, and
    overlayfs's own bookkeeping (origin, impure: xattrs about the mount it came from)
    dropped; the opaque marker stays, it is part of the layer."""
    if int(st.st_mtime) > epoch:
        os.utime(path, ns=(epoch * 10**9,) * 2, follow_symlinks=False)
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith("trusted.overlay.") and name != OPAQUE_XATTR:
                os.removexattr(path, name, follow_symlinks=False)


def lower_lstat(lowers: Sequence[str], rel: str) -> os.stat_result | None:
    """What `rel` is in the merged view of `lowers` (base first), None when absent: the
    topmost layer that has it decides; a whiteout there means deleted."""
    for layer in reversed(lowers):
        try:
            st = os.lstat(os.path.join(layer, rel))
        except (FileNotFoundError, NotADirectoryError):
            continue
        return None if is_whiteout(st) else st
    return None


def drop_mount_stubs(upper: str, lowers: Sequence[str], extra: Sequence[str] = ()) -> None:
    """Remove runc's mount points from `upper` when the image lacked them and they are
    empty (`extra`: more of them, relative, a RUN's --mount targets), and then their
    parent directories while nothing else changed in them: an empty directory of the upper
    dir that is either the same as below (a copy-up for the mount point's sake) or, for
    the `extra` targets, absent below (made by runc on the way to the mount point)."""
    targets = [t.strip("/") for t in extra]
    for rel in (*MOUNT_POINTS, *targets):
        path = os.path.join(upper, rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not rel or lower_lstat(lowers, rel) is not None:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            os.unlink(path)
        elif stat.S_ISDIR(st.st_mode) and not os.listdir(path) and not _opaque(path):
            os.rmdir(path)
        else:
            continue
        parent = os.path.dirname(rel)
        while parent:
            ppath = os.path.join(upper, parent)
            below = lower_lstat(lowers, parent)
            try:
                pst = os.lstat(ppath)
                if os.listdir(ppath) or _opaque(ppath) or not stat.S_ISDIR(pst.st_mode):
                    break
            except OSError:
                break
            same = below is not None and (pst.st_mode, pst.st_uid, pst.st_gid) == (
                below.st_mode,
                below.st_uid,
                below.st_gid,
            )
            if not same and not (below is None and rel in targets):
                break
            os.rmdir(ppath)
            parent = os.path.dirname(parent)
