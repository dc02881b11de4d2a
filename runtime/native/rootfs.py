"""A container's root file system: an overlay of the image's layer directories (read-only
lowerdirs, shared by every container of the image) and a per-container upperdir/workdir.

Writes land in the upperdir, so they survive stop/start (the mount stays, and is re-made if
it went away, e.g. after a reboot) and vanish on remove (the upperdir is deleted).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from pyapply.runtime.base import PermanentError, RuntimeFailure

MNT_DETACH = 2
# nodev: a device node that an image ships, or that a container's root makes in its rootfs,
# cannot be opened through this mount by anyone, in the container or on the host (where a
# user with the uid of a container's process reaches its rootfs through /proc/<pid>/root).
# The container's /dev is a tmpfs of its own (runc), with the devices the spec allows.
MS_NODEV = 4
MS_NOSUID = 2  # with nodev and noexec: a shareable /dev/shm, as runc mounts one
MS_NOEXEC = 8
# The kernel takes mount options in one page; beyond it the lowerdir list does not fit.
_MAX_OPTIONS = 4095


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded at the first mount: find_library runs `ldconfig -p`, a cost every
    command that imports this module (a no-op apply among them) would pay otherwise."""
    import ctypes.util  # shutil, tempfile ...: loaded with libc, not with this module

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_char_p,
    ]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:  # nearly every line: no per-character loop (a host has hundreds)
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints() -> set[str]:
    """Every mount point of this mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {_unescape(line.split()[4]) for line in f if line.strip()}


def is_mounted(target: str | Path) -> bool:
    return str(Path(target).resolve()) in mountpoints()


def _own_fs_mounted(target: str | Path) -> bool:
    """Whether a filesystem of its own (an overlay, a tmpfs: each has a device number of
    its own) is mounted at `target`: its device differs from its parent's. Two stats, where
    `is_mounted` reads every mount of the host (a create and a start each asked, and
    mountinfo grows with every container); a stat that fails (a broken mount) asks
    mountinfo."""
    path = Path(target).resolve()
    try:
        return os.lstat(path).st_dev != os.lstat(path.parent).st_dev
    except OSError:
        return is_mounted(path)


def overlay_options(layer_dirs: Sequence[str | Path], upper: str | Path, work: str | Path) -> str:
    """Mount data for overlayfs. `layer_dirs` are in image order, base layer first; overlayfs
    wants the topmost lowerdir first, hence the reversal."""
    if not layer_dirs:
        raise PermanentError("an overlay rootfs needs at least one layer directory")
    for d in (*layer_dirs, upper, work):
        if any(c in str(d) for c in ":,"):
            raise PermanentError(f"overlay path may not contain ':' or ',': {d}")
    lower = ":".join(str(Path(d).resolve()) for d in reversed(list(layer_dirs)))
    data = f"lowerdir={lower},upperdir={Path(upper).resolve()},workdir={Path(work).resolve()}"
    if len(data) > _MAX_OPTIONS:
        raise PermanentError(f"too many layers for one overlay mount ({len(layer_dirs)})")
    return data


def mount_overlay(
    layer_dirs: Sequence[str | Path], upper: str | Path, work: str | Path, target: str | Path
) -> None:
    """Mount the overlay at `target` (creating upper/work/target); already mounted is success."""
    # The upper dir's mode is the mode of the container's "/", which every user in the
    # container must be able to enter: 0755, as dockerd makes it. The directory holding
    # all three (the container's) is 0700, which keeps the host's users out.
    for d, mode in ((upper, 0o755), (work, 0o700), (target, 0o700)):
        Path(d).mkdir(mode=mode, parents=True, exist_ok=True)
    if _own_fs_mounted(target):
        return
    for d in layer_dirs:
        if not Path(d).is_dir():
            raise PermanentError(f"image layer directory missing: {d}")
    data = overlay_options(layer_dirs, upper, work)
    target_b = str(Path(target).resolve()).encode()
    rc = _libc().mount(b"overlay", target_b, b"overlay", MS_NODEV, data.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"mount overlay on {target}: {os.strerror(err)}")


def mount_shm(target: str | Path, size: int) -> None:
    """A tmpfs for a shareable /dev/shm at `target` (made 0700; the mount is 1777 inside),
    kept on the host so that containers joining the IPC namespace bind the same one;
    already mounted is success."""
    Path(target).mkdir(mode=0o700, exist_ok=True)
    if _own_fs_mounted(target):
        return
    target_b = str(Path(target).resolve()).encode()
    data = f"mode=1777,size={size}".encode()
    rc = _libc().mount(b"shm", target_b, b"tmpfs", MS_NODEV | MS_NOSUID | MS_NOEXEC, data)
    if rc != 0:
        err = ctypes.get_errno()
        raise RuntimeFailure(f"mount tmpfs on {target}: {os.strerror(err)}")


def unmount(target: str | Path) -> None:
    """Unmount `target` (lazily if busy); not mounted is success."""
    path = str(Path(target).resolve())
    while path in mountpoints():
        rc = _libc().umount2(path.encode(), 0)
        if rc != 0:
            err = ctypes.get_errno()
            if err == errno.EBUSY:
                rc = _libc().umount2(path.encode(), MNT_DETACH)
                err = ctypes.get_errno() if rc != 0 else 0
            if rc != 0 and err not in (errno.EINVAL, errno.ENOENT):
                raise RuntimeFailure(f"unmount {path}: {os.strerror(err)}")
            if rc != 0:
                return
