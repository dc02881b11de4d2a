"""File operations inside a mounted root file system, as root on the host, that never leave
it: paths are resolved component by component with symlinks taken as the container would
take them (an absolute target restarts at the rootfs, `..` stops at it), and a file is
written only after the entry in its place is removed (O_NOFOLLOW | O_EXCL), so a symlink an
image put there is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile

from pyapply.runtime.base import BuildFailed

_MAX_LINKS = 255


def safe_join(root: str, path: str, *, follow_last: bool = True) -> str:
    """The host path of container path `path` under `root` (which is trusted)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise BuildFailed(f"{path}: too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _remove(path: str) -> None:
    """Remove whatever is at `path` (not following a symlink); absent is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def make_dirs(root: str, path: str, uid: int = 0, gid: int = 0, mode: int = 0o755) -> str:
    """mkdir -p of container path `path` inside `root`; created dirs get uid:gid and mode.
    Returns the host path. A non-directory in the way is an error."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur = "/"
    for part in parts:
        cur = cur.rstrip("/") + "/" + part
        host = safe_join(root, cur)
        try:
            st = os.stat(host)
        except FileNotFoundError:
            os.mkdir(host, mode)
            os.chown(host, uid, gid)
            os.chmod(host, mode)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise BuildFailed(f"cannot make directory {cur}: a file is in the way")
    return safe_join(root, path)


def copy_entry(src: str, dest: str, *, uid: int, gid: int, chmod: int | None) -> None:
    """Copy one entry (file, symlink, dir, fifo; not following `src` if it is a symlink) to
    host path `dest`, which the caller resolved inside the rootfs (its last component not
    followed)."""
    st = os.lstat(src)
    mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        try:
            dst = os.lstat(dest)
        except FileNotFoundError:
            dst = None
        if dst is None or not stat.S_ISDIR(dst.st_mode):
            _remove(dest)
            os.mkdir(dest, 0o700)
        os.chown(dest, uid, gid)
        os.chmod(dest, mode)
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns))
        return
    _remove(dest)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
        os.chown(dest, uid, gid, follow_symlinks=False)
        os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
        return
    if stat.S_ISREG(st.st_mode):
        fd = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dest, 0o600)
    else:
        return  # devices and sockets are not copied from a context
    os.chown(dest, uid, gid)
    os.chmod(dest, mode)
    os.utime(dest, ns=(st.st_mtime_ns, st.st_mtime_ns))


def is_archive(path: str) -> bool:
    """A tar archive, plain or gzip/bzip2/xz-compressed (what ADD extracts)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        with (
            contextlib.suppress(tarfile.TarError, OSError, EOFError),
            tarfile.open(path, "r:*") as tf,
        ):
            tf.next()
            return True
        return False
    return len(head) >= 262 and head[257:262] == b"ustar"


def extract(archive: str, dest: str, what: str) -> None:
    """Extract `archive` into host dir `dest` (inside the rootfs), with tarfile's "tar"
    filter: no absolute paths, nothing outside `dest`, links inside it only."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(dest, filter="tar", numeric_owner=True)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BuildFailed(f"{what}: cannot extract {os.path.basename(archive)}: {e}") from e
