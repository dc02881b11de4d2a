"""Files and directories of a state root: private from creation, written atomically, and
removed at any depth.

A state root holds what no other local user may see or use: image layers (setuid binaries,
device nodes), containers' OCI specs and state (their environment, secrets among it), the
files of configs and secrets, logs, the history database. Docker keeps /var/lib/docker at
0710 for the same reason. So, for everything pyapply keeps there:

- directories are made 0700 (`private_dir`). A root, or one of its directories, that an
  older pyapply left 0755 is tightened to 0700 the first time it is used, which shuts
  everything below it (entries made before, at whatever mode) out at once;
- files are created 0600 by the `open(2)` that makes them (`atomic_write`, `open_private`):
  never born with the umask's mode and chmod'ed later, so there is no moment at which
  another user can open one. A file that containers read through a bind mount (/etc/hosts,
  resolv.conf, configs, secrets) may ask for another mode (0644, 0444, 0400), which
  `atomic_write` sets on the descriptor of the unnamed temporary file, before the rename;
  the 0700 directories above it still keep the host's users out;
- state files are written by `atomic_write` only, with one fsync rule (content and
  directory, unless the caller says the file may be lost in a crash);
- `rmtree` is iterative and works relative to directory descriptors, so the depth of a tree
  it can remove is bounded neither by Python's recursion limit, nor by the open-file limit,
  nor by PATH_MAX (an image layer 2,000 directories deep; a container that made one in its
  rootfs or in a volume). It never follows a symlink and never crosses into another mount.

Both runtimes' state (the host lock, history, configs and secrets) and the native runtime's
use this module; it imports nothing of either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

import msgspec

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

# Where pyapply keeps its state when neither --root nor $PYAPPLY_ROOT says otherwise: the one
# definition, here in runtime/ so that both the drivers and reconciler/ (which may import
# runtime/, never the reverse) use it.
DEFAULT_ROOT = "/var/lib/pyapply"

# open(2) flags for a file we make: never through a symlink planted in our place
_CREATE = os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def state_root(explicit: str | os.PathLike[str] | None = None) -> str:
    """The state root: `explicit` (a --root option, a runtime's `root` argument), else
    $PYAPPLY_ROOT, else DEFAULT_ROOT."""
    if explicit is not None and os.fspath(explicit):
        return os.fspath(explicit)
    return os.environ.get("PYAPPLY_ROOT") or DEFAULT_ROOT


def private_dir(path: str | os.PathLike[str]) -> None:
    """Make `path` a directory only its owner can enter: missing directories on the way
    are created 0700; an existing one with group or other bits (made by an older version,
    or by hand) is tightened to 0700."""
    target = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    cur = target
    while True:
        try:
            st = os.stat(cur)
            break
        except FileNotFoundError:
            missing.append(cur)
            parent = os.path.dirname(cur)
            if parent == cur:
                raise
            cur = parent
    if not missing:
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), target)
        if stat.S_IMODE(st.st_mode) & 0o077:
            # made by a pyapply before 0700 roots, or by hand: shut it now
            os.chmod(target, PRIVATE_DIR_MODE)
        return
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:  # made meanwhile by another process: check it
            if d == target:
                private_dir(d)


def secret_file_problem(st: os.stat_result, path: str) -> str | None:
    """Why a file holding a secret (a private key, a token, a password) must not be used, as
    a sentence that names the fix; None when it may be. Such a file is a regular file that
    only its owner may read or change: ssh refuses a looser key the same way."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_mode & 0o077:
        return (
            f"mode {stat.S_IMODE(st.st_mode):04o} lets others read or change it; make it "
            f"0600 or 0400 (chmod 600 {path})"
        )
    return None


def open_private(path: str | os.PathLike[str], flags: int = os.O_RDWR) -> int:
    """os.open of a file that, if it has to be made, is made 0600 (locks, pid files)."""
    return os.open(path, flags | _CREATE, PRIVATE_FILE_MODE)


def atomic_write(
    path: str | os.PathLike[str],
    data: str | bytes,
    mode: int = PRIVATE_FILE_MODE,
    *,
    durable: bool = True,
    sync_dir: bool = True,
    owner: tuple[int | None, int | None] = (None, None),
) -> None:
    """Replace `path` with `data` so a reader sees the old content or the new, never a mix.

    The one way pyapply writes a state file. The new file is made 0600 by the open that
    creates it, under a unique temporary name (O_EXCL: never an old temporary file with
    another mode, never through a planted symlink); `mode` and `owner` (uid, gid; None keeps
    ours) are then set on that descriptor, before the file takes its name, so a file asking
    for 0400 or 0444 (a secret, a config a container reads through a bind mount) is never
    visible with any other mode, and its mode does not depend on the umask.

    The one fsync rule: a state file is `durable`, its content fsynced before the rename and
    its directory after it, so that after a crash the name holds the old content or the new
    and the rename itself is not lost. A caller passes durable=False only for a file that
    may be lost in a crash because it is rewritten soon anyway (a health status, rewritten
    at every probe). `sync_dir=False` leaves the directory's fsync to the caller, who writes
    several files into it and makes all their names durable with one fsync of it afterwards
    (a durable write of the last one, or `fsync_dir`). The directory must exist
    (`private_dir`)."""
    target = os.fspath(path)
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_EXCL | _CREATE, PRIVATE_FILE_MODE)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            if owner != (None, None):
                uid, gid = owner
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            if mode != PRIVATE_FILE_MODE or stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(directory or ".")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so the names made or renamed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# removal and walking, at any depth

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Level(msgspec.Struct):
    """A directory being emptied: its identity, its name in its parent, and the
    subdirectories still to remove (listed once, when it was entered)."""

    dev: int
    ino: int
    name: str
    subdirs: list[str] = msgspec.field(default_factory=list)


def _open_dir(name: str, dir_fd: int) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory `fd`; return its subdirectories."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.name, dir_fd=fd)
    return subdirs


def rmtree(path: str | os.PathLike[str]) -> None:
    """Remove a file or a directory tree, without following symlinks; gone is success.

    Iterative, with one directory descriptor open at a time: each directory is entered by
    openat(O_NOFOLLOW) from its parent and left by openat("..") checked against the parent's
    recorded device and inode, so a tree moved under us is an error, never a walk elsewhere.
    A subdirectory on another device (a mount point) is refused (OSError EBUSY), since
    removing inside it would delete what the mount shows, not what we made."""
    target = os.path.abspath(os.fspath(path))
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        return
    parent, name = os.path.split(target)
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _rmtree_at(pfd, name, target)
    finally:
        os.close(pfd)


def _rmtree_at(top_parent: int, top_name: str, shown: str) -> None:
    fd = _open_dir(top_name, top_parent)
    if fd is None:
        return
    try:
        st = os.fstat(fd)
        dev = st.st_dev
        stack = [_Level(st.st_dev, st.st_ino, top_name, _empty_files(fd))]
        while stack:
            level = stack[-1]
            if level.subdirs:
                sub = level.subdirs.pop()
                child = _open_dir(sub, fd)
                if child is None:
                    continue
                cst = os.fstat(child)
                if cst.st_dev != dev:
                    os.close(child)
                    raise OSError(
                        errno.EBUSY, f"a mount point is in the way ({sub!r} below)", shown
                    )
                os.close(fd)
                fd = child
                stack.append(_Level(cst.st_dev, cst.st_ino, sub, _empty_files(fd)))
                continue
            stack.pop()
            if not stack:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            ust = os.fstat(up)
            if (ust.st_dev, ust.st_ino) != (stack[-1].dev, stack[-1].ino):
                os.close(up)
                raise OSError(errno.ESTALE, "the tree was moved while being removed", shown)
            os.close(fd)
            fd = up
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(level.name, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(top_name, dir_fd=top_parent)


def dirs_bottom_up(path: str | os.PathLike[str]) -> list[str]:
    """Every directory below `path` (not `path` itself, no symlinks followed), deepest
    first: the order to rmdir them in (cgroup trees). Iterative, so any depth works."""
    out: list[str] = []
    todo = [os.fspath(path)]
    while todo:
        cur = todo.pop()
        try:
            with os.scandir(cur) as it:
                subs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        out.extend(subs)
        todo.extend(subs)
    return sorted(out, key=lambda p: p.count("/"), reverse=True)
