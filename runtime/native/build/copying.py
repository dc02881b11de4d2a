"""COPY and ADD: the sources (the context, or `--from` a stage or an image), the cache key
of the copy (the content digest of its sources, or the source stage's key / image id), and
the copy itself into the step's mounted overlay.

Docker's rules: several sources need a destination directory ending in `/`; a directory
source copies its content, not itself; a file goes to `dest/name` when `dest` ends in `/`
or is a directory, else to `dest`; a relative destination is relative to WORKDIR; new files
and directories belong to 0:0 unless `--chown` says otherwise (names resolved in the
image's /etc/passwd and /etc/group); `--chmod` sets their mode. ADD also extracts a local tar
archive (plain, gzip, bzip2, xz) into the destination; ADD of a URL is refused, since this
builder has no network access of its own to fetch with (and so is `ADD --checksum`, which
Docker takes for URL sources only).

A heredoc source (`COPY <<EOF /dest`, several in one COPY, `<<-` stripping leading tabs) is
a file of that name holding the heredoc, mode 0644 unless --chmod says otherwise; its
content has $VARs expanded unless the delimiter was quoted (`<<"EOF"`), as BuildKit does.
The content is part of the step's cache key.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import secrets
import stat
from typing import TYPE_CHECKING

from pyapply.runtime.base import BuildFailed, NotFound, PermanentError, RuntimeFailure
from pyapply.runtime.native import oci
from pyapply.runtime.native.build import cache as cachemod
from pyapply.runtime.native.build import words
from pyapply.runtime.native.build.context import Source, Tree, digest_sources
from pyapply.runtime.native.build.fsops import (
    copy_entry,
    extract,
    is_archive,
    make_dirs,
    safe_join,
    walk,
)
from pyapply.runtime.native.build.parse import Instruction
from pyapply.runtime.native.build.state import StageState
from pyapply.runtime.native.images import ImageRecord, ImageStore
from pyapply.runtime.statefs import rmtree

if TYPE_CHECKING:
    from pyapply.runtime.native.build.builder import Builder


def base_layers(store: ImageStore, record: ImageRecord, where: str) -> None:
    """Make sure a stored image's layer directories are there (unpacked again from their
    blobs if they went); an image whose blobs went too is a clear error."""
    try:
        store.layer_dirs(record)
    except NotFound as e:
        raise BuildFailed(f"{where}: {e}", where=where) from None


def from_layers(builder: Builder, ref: str, what: str) -> tuple[list[str], str]:
    """The layers (diff ids) of what `--from=ref` names, a stage built before or an image
    (pulled if missing, or with --pull), and what stands for their content in a cache key
    (the stage's key, the image's id). `what` starts the error messages."""
    where = what.partition(": ")[0]
    stage = builder._df().stage(ref)
    if stage is not None:
        if stage.index not in builder.stages:
            raise BuildFailed(f"{what}: stage not built yet", where=where)
        source = builder.stages[stage.index]
        return list(source.diff_ids), "stage " + source.key
    record = None if builder.config.pull else builder.store.resolve(ref)
    if record is None:
        try:
            record = builder.store.pull(ref)
        except RuntimeFailure as e:
            raise BuildFailed(f"{what}: {e}", where=where) from None
    base_layers(builder.store, record, where)
    return list(record.diff_ids), "image " + record.id


_FLAGS = {
    "COPY": {"from", "chown", "chmod", "link"},
    "ADD": {"chown", "chmod", "link", "checksum"},
}
_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@)", re.IGNORECASE)


def _heredoc_name(word: str) -> str | None:
    """The delimiter of a heredoc source word (`<<EOF`, `<<-"EOF"`), None for a path."""
    m = re.fullmatch(r"\d*<<-?\s*(.+)", word)
    return m.group(1).strip("'\"") if m else None


def _read(root: str, path: str) -> str:
    host = safe_join(root, path)
    try:
        with open(host, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class CopyStep:
    """One COPY or ADD instruction, prepared (sources found, key computed) before it is
    looked up in the cache, applied into a mounted overlay on a miss (a `--from` source is
    mounted then, and unmounted by `close`)."""

    def __init__(self, builder: Builder, ins: Instruction, st: StageState, where: str) -> None:
        self.ins = ins
        self.st = st
        self.where = where
        self.what = f"{where}: {ins.cmd}"
        self.is_add = ins.cmd == "ADD"
        self.scratch = str(builder.tmp)
        self._mount: contextlib.ExitStack = contextlib.ExitStack()
        for name in ins.flag_names():
            if name not in _FLAGS[ins.cmd]:
                raise BuildFailed(f"{where}: {ins.cmd} --{name} is not supported", where=where)
        if len(ins.value) < 2:
            raise BuildFailed(f"{where}: {ins.cmd} needs a source and a destination", where=where)
        if _heredoc_name(ins.value[-1]) is not None:
            raise BuildFailed(
                f"{where}: {ins.cmd} cannot take a heredoc as its destination", where=where
            )
        self.scratch_dir: str | None = None
        self.heredocs = self._heredocs(ins, st, where)
        values = [st.expand(v, where) for v in ins.value if _heredoc_name(v) is None]
        self.sources, self.dest = values[:-1], values[-1]
        for src in self.sources:
            if _URL.match(src):
                raise BuildFailed(
                    f"{where}: {ins.cmd} {src}: fetching URLs is not supported (this builder "
                    "works offline); download it into the build context and COPY it",
                    where=where,
                )
        if ins.flag("checksum") is not None:
            raise BuildFailed(
                f"{where}: ADD --checksum: only a URL source can be checked (Docker refuses it "
                "for local files too), and this builder does not fetch URLs",
                where=where,
            )
        self.chown = self._flag("chown")
        chmod = self._flag("chmod")
        if chmod is not None and not re.fullmatch(r"[0-7]{3,4}", chmod):
            raise BuildFailed(f"{where}: --chmod={chmod}: an octal mode is expected", where=where)
        self.chmod = int(chmod, 8) if chmod is not None else None
        self._builder = builder
        self._lowers: list[str] | None = None  # --from: the source's layers, mounted late
        origin = self._source(builder)
        self.tree = Tree(builder.config.context, builder.context_matcher)
        self.matched: list[Source] = []
        if origin is None:
            self.matched = self._match()
            origin = digest_sources(self.tree, self.matched)
        if self.heredocs:
            origin += " heredocs " + digest_sources(self.tree, self.heredocs)
        self._key = cachemod.step_key(
            st.key,
            ins.original,
            expanded=" ".join([*values, self.chown or "", chmod or ""]),
            sources=origin,
        )

    def _heredocs(self, ins: Instruction, st: StageState, where: str) -> list[Source]:
        """The heredoc sources, each written to a file of its name in a scratch dir of the
        step (removed by `close`)."""
        if not ins.heredocs:
            return []
        self.scratch_dir = os.path.join(self.scratch, f"heredoc-{secrets.token_hex(4)}")
        os.mkdir(self.scratch_dir, 0o700)
        out = []
        for i, doc in enumerate(ins.heredocs):
            if "/" in doc.name or doc.name in (".", ".."):
                raise BuildFailed(
                    f"{where}: {ins.cmd} <<{doc.name}: a heredoc's name is its file's name "
                    "and cannot hold '/'",
                    where=where,
                )
            text = doc.body()
            if doc.expand:
                try:
                    text = words.expand_heredoc(text, st.expansion_env(), escape=st.escape)
                except words.WordError as e:
                    raise BuildFailed(f"{where}: <<{doc.name}: {e}", where=where) from None
            folder = os.path.join(self.scratch_dir, str(i))
            os.mkdir(folder, 0o700)
            host = os.path.join(folder, doc.name)
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
            os.chmod(host, 0o644)  # whatever the umask
            out.append(Source(doc.name, host, False))
        return out

    def _match(self) -> list[Source]:
        matched: list[Source] = []
        for src in self.sources:
            matched += self.tree.match(src, self.what)
        if len(matched) + len(self.heredocs) > 1 and not self.dest.endswith("/"):
            raise BuildFailed(
                f"{self.where}: {self.ins.cmd} with more than one source needs a destination "
                "directory ending in /",
                where=self.where,
            )
        return matched

    def _flag(self, name: str) -> str | None:
        raw = self.ins.flag(name)
        return None if raw is None else self.st.expand(raw, self.where)

    def _source(self, builder: Builder) -> str | None:
        """For --from, what stands for the sources' content in the key (the stage's key,
        the image's id), and the layers to mount when the copy runs (only on a cache
        miss); None: the sources are in the context, their digest is the key's."""
        ref = self._flag("from")
        if ref is None:
            return None
        diff_ids, origin = from_layers(builder, ref, f"{self.where}: --from={ref}")
        self._lowers = builder.lower_dirs(
            StageState(name=None, base_id="", diff_ids=list(diff_ids))
        )
        return origin

    def key(self) -> str:
        return self._key

    def close(self) -> None:
        self._mount.close()
        if self.scratch_dir is not None:
            rmtree(self.scratch_dir)
            self.scratch_dir = None

    # -- applying ------------------------------------------------------------------------

    def _owner(self, root: str) -> tuple[int, int]:
        if not self.chown:
            return 0, 0
        try:
            user = oci.resolve_user(
                self.chown, _read(root, "/etc/passwd"), _read(root, "/etc/group")
            )
        except PermanentError as e:
            raise BuildFailed(
                f"{self.where}: --chown={self.chown}: {e}", where=self.where
            ) from None
        return user.uid, user.gid

    def apply(self, root: str) -> None:
        if self._lowers is not None:  # --from: the source's root file system, now
            mounted = self._mount.enter_context(self._builder.mounted(self._lowers))
            self.tree = Tree(str(mounted), rootfs=True)
            self.matched = self._match()
        uid, gid = self._owner(root)
        dest = self.st.resolve_path(self.dest)
        dest_is_dir = self.dest.endswith("/") or self.dest in (".", "./")
        for src in [*self.matched, *self.heredocs]:
            if src.is_dir:
                base = make_dirs(root, dest, uid, gid)
                self._chmod_dir(base, uid, gid)
                for rel, host in self.tree.entries(src):
                    target = safe_join(root, f"{dest.rstrip('/')}/{rel}", follow_last=False)
                    copy_entry(host, target, uid=uid, gid=gid, chmod=self.chmod)
                continue
            inline = src in self.heredocs
            if self.is_add and not inline and not self.tree.rootfs and is_archive(src.host):
                self._add_archive(src, root, dest)
                continue
            host_dest = safe_join(root, dest)
            if dest_is_dir or os.path.isdir(host_dest):
                make_dirs(root, dest, uid, gid)
                path = f"{dest.rstrip('/')}/{posixpath.basename(src.rel)}"
            else:
                make_dirs(root, posixpath.dirname(dest) or "/")
                path = dest
            target = safe_join(root, path, follow_last=False)
            if os.path.isdir(target) and not os.path.islink(target):
                raise BuildFailed(f"{self.what}: cannot replace directory {path} with a file")
            copy_entry(src.host, target, uid=uid, gid=gid, chmod=self.chmod)

    def _add_archive(self, src: Source, root: str, dest: str) -> None:
        """ADD of a local archive: extracted into a scratch dir, then copied into the rootfs
        (symlinks resolved inside it), owners and modes as in the archive unless --chown
        or --chmod say otherwise."""
        staging = os.path.join(self.scratch, f"add-{secrets.token_hex(4)}")
        os.mkdir(staging, 0o700)
        try:
            extract(src.host, staging, self.what)
            uid, gid = self._owner(root) if self.chown else (None, None)
            make_dirs(root, dest)
            for rel, host in walk(staging):
                target = safe_join(root, f"{dest.rstrip('/')}/{rel}", follow_last=False)
                copy_entry(host, target, uid=uid, gid=gid, chmod=self.chmod)
        finally:
            rmtree(staging)

    def _chmod_dir(self, path: str, uid: int, gid: int) -> None:
        if self.chmod is not None:
            os.chmod(path, self.chmod)
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode) and self.chown:
            os.chown(path, uid, gid)
