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


def copy_entry(src: str, dest: str, *, uid: int | None, gid: int | None, chmod: int | None) -> None:
    """Copy one entry (file, symlink, dir, fifo; not following `src` if it is a symlink) to
    host path `dest`, which the caller resolved inside the rootfs (its last component not
    followed). uid/gid None keep the source's."""
    st = os.lstat(src)
    uid = st.st_uid if uid is None else uid
    gid = st.st_gid if gid is None else gid
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
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(dest, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
    else:
        return  # sockets have no place in an image
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


def _staging_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Extract `member` into the fresh directory `dest` only where it stays inside it: no
    `..`, no path through a symlink out of it, hardlinks to entries inside it; modes,
    owners and (absolute) symlink targets kept, as ADD keeps them."""
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        raise BuildFailed(f"archive entry {member.name!r} would leave the destination")
    real = os.path.realpath(dest)
    target = os.path.realpath(os.path.join(real, *parts))
    if os.path.commonpath([target, real]) != real:
        raise BuildFailed(f"archive entry {member.name!r} goes through a link out of it")
    if member.islnk():
        lparts = [p for p in member.linkname.split("/") if p not in ("", ".")]
        linked = os.path.realpath(os.path.join(real, *lparts))
        if ".." in lparts or os.path.commonpath([linked, real]) != real:
            raise BuildFailed(f"archive hardlink {member.name!r} points out of the archive")
        return member.replace(name="/".join(parts), linkname="/".join(lparts), deep=False)
    return member.replace(name="/".join(parts), deep=False)


def extract(archive: str, staging: str, what: str) -> None:
    """Extract `archive` into `staging`, a fresh directory of ours (never into a rootfs:
    its symlinks would resolve on the host); the caller copies the tree into place."""
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(staging, filter=_staging_filter, numeric_owner=True)
    except BuildFailed as e:
        raise BuildFailed(f"{what}: {os.path.basename(archive)}: {e}") from None
    except (tarfile.TarError, OSError, EOFError, KeyError) as e:
        # KeyError: a hardlink to an entry the archive does not hold
        raise BuildFailed(f"{what}: cannot extract {os.path.basename(archive)}: {e}") from e


def walk(top: str) -> list[tuple[str, str]]:
    """(relative path, host path) of everything below `top`, parents first, not following
    symlinks."""
    out: list[tuple[str, str]] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        base = os.path.join(top, rel) if rel else top
        for name in sorted(os.listdir(base), key=os.fsencode, reverse=True):
            child = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(os.lstat(os.path.join(top, child)).st_mode):
                todo.append(child)
            out.append((child, os.path.join(top, child)))
    return sorted(out, key=lambda e: os.fsencode(e[0]))
