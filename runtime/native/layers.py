"""Storage primitives of the native image store: the content-addressed blob store and the
safe unpacking of layer tarballs into directories usable as overlayfs lowerdirs.

Blobs live at `<images>/blobs/<algorithm>/<hex>`; each is written to a temporary file under
`<images>/tmp/`, its digest checked while it streams in, fsynced, and renamed into place, so a
blob that exists is complete and correct. A layer is unpacked once into
`<images>/layers/<diffid-hex>/`, again through a temporary directory and a rename.

Unpacking is done member by member, never with `tarfile.extractall`:

- names are normalised (leading `/` and `.` components dropped); any `..` component is refused;
- an entry whose parent path goes through a symlink is refused (a layer written by a real
  image builder never has one; following it could write outside the layer), and so is an entry
  whose parent is not a directory;
- hardlinks must name an earlier entry of the same layer, reached without symlinks;
- an existing entry is replaced, never written through (files are opened with O_NOFOLLOW and
  O_EXCL after the old entry is removed);
- `.wh.NAME` becomes an overlayfs whiteout (a 0:0 character device), `.wh..wh..opq` the
  `trusted.overlay.opaque=y` xattr on its directory; other `.wh..wh.*` entries (aufs
  bookkeeping) are ignored, and `trusted.overlay.*` xattrs carried by the archive are dropped;
- modes (setuid included), numeric owners, mtimes, symlinks, hardlinks, devices, FIFOs and
  xattrs (pax `SCHILY.xattr.*`/`LIBARCHIVE.xattr.*`) are kept when running as root. That is
  safe on the host because the store's directories are 0700 (runtime/statefs.py): a
  setuid-root binary or a 0666 device node of a layer is out of every other user's reach.

The uncompressed stream is hashed while it is read, and the layer is refused unless it matches
the expected diff_id. gzip, bzip2, xz and uncompressed layers are read with the standard
library; zstd only when the `zstandard` module is installed.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from pyapply.runtime.base import PermanentError, TransientError
from pyapply.runtime.statefs import PRIVATE_DIR_MODE, fsync_dir, private_dir, rmtree

if TYPE_CHECKING:
    import tarfile

CHUNK = 1 << 20
DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
OPAQUE_XATTR = "trusted.overlay.opaque"


class UnsafeLayerError(PermanentError):
    """A layer archive tried to write outside its root, or is otherwise not acceptable."""


class DigestMismatch(PermanentError):
    """Content did not hash to the digest it was announced with."""


def check_digest(digest: str) -> tuple[str, str]:
    """Split a digest into (algorithm, hex), refusing anything but sha256/sha512 in lowercase
    hex (a digest from a manifest becomes a file name)."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise PermanentError(f"invalid or unsupported digest {digest!r}")
    algo, _, hexpart = digest.partition(":")
    return algo, hexpart


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _syncfs(path: str) -> None:
    """Flush the file system holding `path` (syncfs(2)); falls back to sync(2)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is not None and syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Blob store


class BlobStore:
    """Content-addressed blobs under `blobs_dir`, with temporary files under `tmp_dir` (same
    file system, so a finished blob is renamed into place)."""

    def __init__(self, blobs_dir: str, tmp_dir: str) -> None:
        self.dir = blobs_dir
        self.tmp = tmp_dir
        private_dir(self.dir)
        private_dir(self.tmp)

    def path(self, digest: str) -> str:
        algo, hexpart = check_digest(digest)
        return os.path.join(self.dir, algo, hexpart)

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def size(self, digest: str) -> int:
        return os.path.getsize(self.path(digest))

    def read(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob's content (manifests, configs), checked against its digest."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise PermanentError(f"blob {digest} is not in the store") from None
        if len(data) > limit:
            raise PermanentError(f"blob {digest} is larger than {limit} bytes")
        algo, _ = check_digest(digest)
        if f"{algo}:{hashlib.new(algo, data).hexdigest()}" != digest:
            raise DigestMismatch(f"stored blob {digest} is corrupt")
        return data

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        view = memoryview(data)
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            chunk = bytes(view[pos : pos + n])
            pos += len(chunk)
            return chunk

        return self.ingest(read, digest, len(data))

    def ingest(
        self,
        read: Callable[[int], bytes],
        digest: str | None = None,
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Stream content from `read(n)` into the store and return its digest.

        With `digest`, the content must hash to it (else DigestMismatch, nothing kept); with
        `size`, it must be exactly that long (longer: PermanentError; shorter: TransientError,
        a truncated transfer). Without `digest`, the sha256 of the content names it.
        `progress(bytes_so_far)` is called after each chunk."""
        algo = "sha256"
        if digest is not None:
            algo, _ = check_digest(digest)
        h = hashlib.new(algo)
        fd, tmp = self._tmpfile()
        total = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    want = CHUNK if size is None else min(CHUNK, size - total + 1)
                    chunk = read(want)
                    if not chunk:
                        break
                    total += len(chunk)
                    if size is not None and total > size:
                        raise DigestMismatch(
                            f"blob {digest or ''} is longer than its announced {size} bytes"
                        )
                    h.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress(total)
                out.flush()
                os.fsync(out.fileno())
            got = f"{algo}:{h.hexdigest()}"
            if size is not None and total < size:
                raise TransientError(
                    f"blob {digest or got} was truncated: {total} of {size} bytes received"
                )
            if digest is not None and got != digest:
                raise DigestMismatch(f"blob content hashes to {got}, expected {digest}")
            final = self.path(got)
            # the temporary file was made 0600, and stays so: blobs are for us alone
            os.makedirs(os.path.dirname(final), mode=PRIVATE_DIR_MODE, exist_ok=True)
            os.rename(tmp, final)
            tmp = ""
            fsync_dir(os.path.dirname(final))
            return got
        finally:
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> Iterator[str]:
        for algo in ("sha256", "sha512"):
            d = os.path.join(self.dir, algo)
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            for name in names:
                digest = f"{algo}:{name}"
                if DIGEST_RE.match(digest):
                    yield digest

    def _tmpfile(self) -> tuple[int, str]:
        path = os.path.join(self.tmp, "blob-" + secrets.token_hex(8))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return fd, path


# ---------------------------------------------------------------------------------------------
# Decompression and hashing


class _HashingReader:
    """A file-like `read(n)` over `src` that hashes everything read."""

    def __init__(self, src: Any, algo: str) -> None:
        self._src = src
        self.hash = hashlib.new(algo)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._src.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def open_decompressed(f: BinaryIO) -> Any:
    """Wrap a (seekable) layer blob in the decompressor its magic bytes call for."""
    # the decompressors and tarfile are imported where a layer is read, so that what only
    # looks at the store (a no-op apply resolving its images) never loads them
    import bz2
    import gzip
    import lzma

    head = f.read(6)
    f.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            raise PermanentError(
                "layer is zstd-compressed and the zstandard module is not installed"
            ) from None
        return zstandard.ZstdDecompressor().stream_reader(f)
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f, "rb")
    return f


def diff_id_of(path: str) -> str:
    """sha256 of a layer blob's uncompressed content: its diff_id."""
    import lzma

    with open(path, "rb") as f:
        src = open_decompressed(f)
        r = _HashingReader(src, "sha256")
        try:
            r.drain()
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise PermanentError(f"cannot decompress layer {path}: {e}") from e
        return "sha256:" + r.hash.hexdigest()


# ---------------------------------------------------------------------------------------------
# Safe extraction


def _split(name: str, what: str = "entry") -> list[str]:
    """Normalise an archive path to components below the layer root."""
    if "\x00" in name:
        raise UnsafeLayerError(f"{what} {name!r}: NUL in path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerError(f"{what} {name!r}: '..' component would escape the layer root")
    return parts


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out.append((key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")))
        elif key.startswith("LIBARCHIVE.xattr."):
            xname = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            try:
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue
            out.append((xname, data))
    # overlayfs metadata is ours to set (opaque dirs); an archive must not redirect lookups.
    return [(k, v) for k, v in out if not k.startswith("trusted.overlay.")]


class _Extractor:
    def __init__(self, root: str) -> None:
        self.root = root
        self.as_root = os.geteuid() == 0
        self.dirs: dict[str, tarfile.TarInfo] = {}
        # Directories of this layer known to be real directories reached without symlinks
        # (checked or made by us; only we change the tree). An entry's parent is then found
        # with one lookup instead of an lstat per component, which for a tree 2,000
        # directories deep is the difference between seconds and minutes.
        self.known: set[str] = {root}

    def rel(self, parts: list[str]) -> str:
        return "/".join(parts) or "."

    def walk_parent(self, parts: list[str], name: str, create: bool) -> str:
        """The host path of the directory holding `parts[-1]`, checked component by component:
        no symlinks, no non-directories; missing directories are created if `create`."""
        full = "/".join((self.root, *parts[:-1]))
        if full in self.known:
            return full
        cur = self.root
        for i, comp in enumerate(parts[:-1]):
            cur = os.path.join(cur, comp)
            if cur in self.known:
                continue
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if not create:
                    raise UnsafeLayerError(
                        f"{name!r}: {self.rel(parts[: i + 1])} does not exist in the layer"
                    ) from None
                os.mkdir(cur, 0o755)
                self.known.add(cur)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayerError(
                    f"{name!r}: path goes through the symlink {self.rel(parts[: i + 1])} -> "
                    f"{os.readlink(cur)!r}, which could lead outside the layer root; refused"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(f"{name!r}: {self.rel(parts[: i + 1])} is not a directory")
            self.known.add(cur)
        return cur

    def clear(self, path: str, keep_dir: bool) -> None:
        """Make room for a new entry at `path`: an existing directory is kept if `keep_dir`
        (a directory entry over a directory), anything else is removed."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            rmtree(path)
            # its deferred attributes must not land on whatever takes its place, and it is
            # no longer a directory a path may go through
            prefix = path + "/"
            for p in [p for p in self.dirs if p == path or p.startswith(prefix)]:
                del self.dirs[p]
            self.known -= {p for p in self.known if p == path or p.startswith(prefix)}
        else:
            os.unlink(path)

    def extract(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        parts = _split(name)
        if not parts:  # the layer root itself
            if member.isdir():
                self.dirs[self.root] = member
            return
        if any(p.startswith(".wh..wh.") for p in parts[:-1]):
            return  # inside aufs metadata directories (.wh..wh.plnk/...)
        parent = self.walk_parent(parts, name, create=True)
        base = parts[-1]
        path = os.path.join(parent, base)

        if base.startswith(".wh."):
            self.whiteout(parts, parent, base, name)
            return

        if member.isdir():
            self.clear(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.known.add(path)
            self.dirs[path] = member
            self.set_xattrs(path, member, follow=True)
            return

        if member.islnk():
            self.hardlink(member, parts, path)
            return

        self.clear(path, keep_dir=False)
        if member.issym():
            os.symlink(member.linkname, path)
            if self.as_root:
                os.chown(path, member.uid, member.gid, follow_symlinks=False)
            self.set_xattrs(path, member, follow=False)
            self.set_mtime(path, member, follow=False)
        elif member.isreg():
            self.regular(tf, member, path)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            if member.isfifo():
                os.mkfifo(path, 0o600)
            elif not self.as_root:
                return  # device nodes need root; a rootless unpack leaves them out
            else:
                os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.set_owner_mode(path, member)
            self.set_xattrs(path, member, follow=False)
            self.set_mtime(path, member, follow=False)
        else:
            raise UnsafeLayerError(f"{name!r}: unsupported tar entry type {member.type!r}")

    def regular(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        src = tf.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            if self.as_root:
                os.fchown(out.fileno(), member.uid, member.gid)
            os.fchmod(out.fileno(), member.mode & 0o7777)
            for key, value in _xattrs(member):
                self._setxattr(out.fileno(), key, value, True)
            mt = int(member.mtime * 1e9)
            os.utime(out.fileno(), ns=(mt, mt))

    def hardlink(self, member: tarfile.TarInfo, parts: list[str], path: str) -> None:
        name = member.name
        tparts = _split(member.linkname, what=f"hardlink {name!r} ->")
        if not tparts:
            raise UnsafeLayerError(f"hardlink {name!r}: points at the layer root")
        if tparts == parts:
            return
        tparent = self.walk_parent(tparts, f"hardlink {name!r} -> {member.linkname!r}", False)
        target = os.path.join(tparent, tparts[-1])
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise UnsafeLayerError(
                f"hardlink {name!r} -> {member.linkname!r}: the target is not an earlier "
                "entry of this layer"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeLayerError(f"hardlink {name!r} -> {member.linkname!r}: a directory")
        self.clear(path, keep_dir=False)
        os.link(target, path, follow_symlinks=False)

    def whiteout(self, parts: list[str], parent: str, base: str, name: str) -> None:
        if base == ".wh..wh..opq":
            self._setxattr(parent, OPAQUE_XATTR, b"y", True)
            return
        if base.startswith(".wh..wh."):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to do
        target = base[len(".wh.") :]
        if target in ("", ".", ".."):
            raise UnsafeLayerError(f"{name!r}: invalid whiteout")
        path = os.path.join(parent, target)
        self.clear(path, keep_dir=False)
        if not self.as_root:
            raise PermanentError(f"{name!r}: creating an overlay whiteout needs root")
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def set_owner_mode(self, path: str, member: tarfile.TarInfo) -> None:
        if self.as_root:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        os.chmod(path, member.mode & 0o7777)

    def set_mtime(self, path: str, member: tarfile.TarInfo, follow: bool) -> None:
        mt = int(member.mtime * 1e9)
        os.utime(path, ns=(mt, mt), follow_symlinks=follow)

    def set_xattrs(self, path: str, member: tarfile.TarInfo, follow: bool) -> None:
        for key, value in _xattrs(member):
            self._setxattr(path, key, value, follow)

    def _setxattr(self, target: int | str, key: str, value: bytes, follow: bool) -> None:
        try:
            os.setxattr(target, key, value, follow_symlinks=follow)
        except OSError as e:
            # user.* on symlinks/devices, or a file system without xattrs: best effort,
            # except for the opaque marker, without which the layer would be wrong.
            if key == OPAQUE_XATTR:
                raise PermanentError(f"cannot mark an opaque directory ({e})") from e
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
                raise

    def finish(self) -> None:
        """Directory owners, modes and mtimes, deepest first (creating entries inside a
        directory changes its mtime)."""
        # Still a directory, reached without symlinks (chmod and utime follow them): checked
        # shallowest first, each against its already checked parent, with one lstat each
        # (a realpath per directory costs depth² lookups in a deep tree).
        by_depth = sorted(self.dirs, key=lambda p: p.count("/"))
        sound: set[str] = {self.root} if os.path.isdir(self.root) else set()
        for path in by_depth:
            if path == self.root:
                continue
            parent = os.path.dirname(path)
            if parent not in sound and not self._sound(parent, sound):
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    sound.add(path)
        for path in reversed(by_depth):
            if path in sound:
                member = self.dirs[path]
                self.set_owner_mode(path, member)
                self.set_mtime(path, member, follow=True)

    def _sound(self, path: str, sound: set[str]) -> bool:
        """Whether a directory without an entry of its own (made for a deeper entry) is
        still a directory reached without symlinks; remembered in `sound`."""
        todo: list[str] = []
        cur = path
        while cur != self.root and cur not in sound:
            todo.append(cur)
            cur = os.path.dirname(cur)
        if cur not in sound:
            return False
        for p in reversed(todo):
            try:
                if not stat.S_ISDIR(os.lstat(p).st_mode):
                    return False
            except FileNotFoundError:
                return False
            sound.add(p)
        return True


def unpack_layer(
    blob_path: str, dest: str, tmp_dir: str, expected_diff_id: str | None = None
) -> str:
    """Unpack the layer blob at `blob_path` into directory `dest` (which must not exist yet),
    atomically: into a fresh directory under `tmp_dir`, then renamed. Returns the diff_id
    (sha256 of the uncompressed tar); with `expected_diff_id`, a mismatch is DigestMismatch
    and nothing is kept. If `dest` appears meanwhile (a concurrent unpack), ours is dropped."""
    import gzip
    import lzma
    import tarfile

    algo = "sha256"
    if expected_diff_id is not None:
        algo, _ = check_digest(expected_diff_id)
    work = os.path.join(tmp_dir, "layer-" + secrets.token_hex(8))
    os.mkdir(work, 0o755)
    try:
        with open(blob_path, "rb") as f:
            reader = _HashingReader(open_decompressed(f), algo)
            ex = _Extractor(work)
            try:
                with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tf:
                    for member in tf:
                        ex.extract(tf, member)
                reader.drain()
                ex.finish()
            except (tarfile.TarError, EOFError, lzma.LZMAError, gzip.BadGzipFile) as e:
                raise PermanentError(f"layer {blob_path} is not a valid tar archive: {e}") from e
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise
                raise UnsafeLayerError(
                    f"layer {blob_path} holds a path too long for this host (PATH_MAX)"
                ) from e
            got = f"{algo}:{reader.hash.hexdigest()}"
            if expected_diff_id is not None and got != expected_diff_id:
                raise DigestMismatch(
                    f"layer content hashes to {got}, expected diff_id {expected_diff_id}"
                )
        _syncfs(work)
        try:
            os.rename(work, dest)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        else:
            work = ""
            fsync_dir(os.path.dirname(dest))
        return got
    finally:
        if work:
            rmtree(work)
