"""`RUN --mount`: what a RUN step sees besides its stage's file system, and that never lands
in the step's layer.

- `type=bind` (the default type): `source` (default the root) of the build context (with
  .dockerignore applied), or of a stage or image (`from=`), at `target`; read-only unless
  `rw`, and then its changes go to a throwaway overlay upper dir. Its content digest (or
  the stage's key, the image's id) is part of the step's cache key.
- `type=cache`: a directory kept by the builder's state root across builds
  (`<root>/build/mounts/cache/`, 0700, never in a layer), chosen by `id` (default: the
  target); `mode`/`uid`/`gid` set when it is first made; `sharing` shared (the default),
  locked (one RUN at a time: the others wait) or private (a busy cache gives a fresh,
  throwaway directory instead). Its content is not part of the cache key, as in BuildKit:
  a cache mount is a speed-up, not an input.
- `type=tmpfs`: an empty tmpfs at `target`, `size` bytes at most.
- `type=secret`: the content given with `--secret id=ID,src=FILE` (BuildConfig.secrets)
  as a read-only file at `target` (default /run/secrets/ID), `mode` 0400 and `uid`/`gid`
  0 unless given; a secret not given is no mount, or an error when `required`. The file
  is written for the RUN into the build's 0700 scratch dir and removed after it; its
  content is in no layer and not in the cache key (as in BuildKit: a changed secret does
  not rebuild the step).
- `type=ssh` is refused at its line.

The mount point runc makes for a target the image lacks is removed from the layer
afterwards (layertar.drop_mount_stubs). Parsing (`parse_mount`) is pure; `RunMounts` does
the host side of one RUN.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from pyapply.runtime.base import BuildFailed, MountConfig
from pyapply.runtime.native import rootfs
from pyapply.runtime.native.build.context import Source, Tree, digest_sources, has_glob
from pyapply.runtime.native.build.copying import from_layers
from pyapply.runtime.native.build.fsops import copy_entry, safe_join
from pyapply.runtime.native.build.state import StageState
from pyapply.runtime.statefs import private_dir, rmtree

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyapply.runtime.native.build.builder import Builder

MountKind = Literal["bind", "cache", "tmpfs", "secret"]
Sharing = Literal["shared", "private", "locked"]

_KEYS: dict[str, frozenset[str]] = {
    "bind": frozenset({"source", "from", "readonly", "readwrite"}),
    "cache": frozenset(
        {"id", "source", "from", "readonly", "readwrite", "sharing", "mode", "uid", "gid"}
    ),
    "tmpfs": frozenset({"size"}),
    "secret": frozenset({"id", "required", "mode", "uid", "gid"}),
}
_ALIASES = {
    "src": "source",
    "dst": "target",
    "destination": "target",
    "ro": "readonly",
    "rw": "readwrite",
}
_BOOLEAN = frozenset({"readonly", "readwrite", "required"})
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class MountSpec(msgspec.Struct, frozen=True):
    """One `--mount`, its values expanded and checked; `target` absolute."""

    type: MountKind
    target: str
    source: str = ""
    from_ref: str | None = None
    read_only: bool = False
    id: str = ""
    sharing: Sharing = "shared"
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    size: int | None = None
    required: bool = False

    def key_text(self) -> str:
        """The spec as it takes part in the step's cache key."""
        if self.type == "tmpfs":
            return f"tmpfs target={self.target} size={self.size}"
        if self.type == "secret":  # never the content
            return (
                f"secret target={self.target} id={self.id} required={int(self.required)} "
                f"mode={self.mode:o} uid={self.uid} gid={self.gid}"
            )
        if self.type == "cache":
            return (
                f"cache target={self.target} id={self.id} sharing={self.sharing} "
                f"mode={self.mode:o} uid={self.uid} gid={self.gid} ro={int(self.read_only)}"
            )
        return (
            f"bind target={self.target} source={self.source} from={self.from_ref or ''} "
            f"ro={int(self.read_only)}"
        )


def parse_size(text: str, where: str) -> int:
    """A size in bytes ("65536", "64m", "1GiB"), as Docker's tmpfs sizes read."""
    m = _SIZE.match(text.strip())
    if m is None:
        raise BuildFailed(f"{where}: invalid size {text!r}", where=where)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _int(text: str, where: str, what: str, base: int = 10) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise BuildFailed(
            f"{where}: --mount {what}={text!r} is not a number", where=where
        ) from None
    if value < 0:
        raise BuildFailed(f"{where}: --mount {what} cannot be negative", where=where)
    return value


def parse_mount(raw: str, expand: Callable[[str], str], workdir: str, where: str) -> MountSpec:
    """One `--mount=...` value (comma-separated `key=value` fields, CSV-quoted as Docker
    reads them); values expanded with `expand` ($ARGs and ENV); a relative target is
    relative to `workdir`."""
    try:
        fields = next(csv.reader([raw]), [])
    except csv.Error as e:
        raise BuildFailed(f"{where}: --mount={raw}: {e}", where=where) from None
    values: dict[str, str] = {}
    for f in fields:
        key, eq, value = f.partition("=")
        key = _ALIASES.get(key.strip().lower(), key.strip().lower())
        if not key:
            continue
        if not eq:
            if key not in _BOOLEAN:
                raise BuildFailed(f"{where}: --mount: {key} needs a value ({key}=...)", where=where)
            value = "true"
        values[key] = expand(value)
    kind = values.pop("type", "bind")
    if kind == "ssh":
        raise BuildFailed(
            f"{where}: RUN --mount=type=ssh is not supported by this builder (no SSH agent is "
            "forwarded into builds)",
            where=where,
        )
    if kind not in _KEYS:
        raise BuildFailed(
            f"{where}: --mount type={kind}: unknown mount type (bind, cache, tmpfs, secret)",
            where=where,
        )
    if kind == "secret" and not values.get("target"):
        if not values.get("id"):
            raise BuildFailed(f"{where}: --mount type=secret needs an id or a target", where=where)
        values["target"] = f"/run/secrets/{values['id']}"
    target = values.pop("target", "")
    if not target:
        raise BuildFailed(f"{where}: --mount type={kind} needs a target", where=where)
    target = os.path.normpath(target if target.startswith("/") else f"{workdir}/{target}")
    if target in ("/", "//"):
        raise BuildFailed(f"{where}: --mount cannot be mounted at /", where=where)
    for key in values:
        if key not in _KEYS[kind]:
            raise BuildFailed(f"{where}: --mount type={kind} does not take {key}", where=where)
    for key in _BOOLEAN & values.keys():
        if values[key].lower() not in ("true", "false", "1", "0"):
            raise BuildFailed(f"{where}: --mount {key}={values[key]!r}: true or false", where=where)
    flag = {k: values.pop(k).lower() in ("true", "1") for k in _BOOLEAN & values.keys()}
    if kind == "tmpfs":
        size = values.get("size")
        return MountSpec("tmpfs", target, size=None if size is None else parse_size(size, where))
    if kind == "bind":
        read_only = not flag.get("readwrite", False) or flag.get("readonly", False)
        return MountSpec(
            "bind",
            target,
            source=values.get("source", "") or "/",
            from_ref=values.get("from") or None,
            read_only=read_only,
        )
    if kind == "secret":
        return MountSpec(
            "secret",
            target,
            id=values.get("id") or os.path.basename(target),
            required=flag.get("required", False),
            mode=_int(values["mode"], where, "mode", 8) if "mode" in values else 0o400,
            uid=_int(values["uid"], where, "uid") if "uid" in values else 0,
            gid=_int(values["gid"], where, "gid") if "gid" in values else 0,
            read_only=True,
        )
    if values.get("from") or values.get("source"):
        raise BuildFailed(
            f"{where}: --mount type=cache with from=/source= (a cache seeded from a stage) is "
            "not supported by this builder",
            where=where,
        )
    sharing = values.get("sharing", "shared")
    if sharing not in ("shared", "private", "locked"):
        raise BuildFailed(
            f"{where}: --mount sharing={sharing}: shared, private or locked", where=where
        )
    return MountSpec(
        "cache",
        target,
        id=values.get("id") or target,
        sharing=sharing,  # type: ignore[arg-type]
        mode=_int(values["mode"], where, "mode", 8) if "mode" in values else 0o755,
        uid=_int(values["uid"], where, "uid") if "uid" in values else 0,
        gid=_int(values["gid"], where, "gid") if "gid" in values else 0,
        read_only=flag.get("readonly", False) and not flag.get("readwrite", False),
    )


def mount_flags(flags: tuple[str, ...]) -> list[str]:
    """The values of a RUN's `--mount=` flags, in order."""
    return [f.partition("=")[2] for f in flags if f.partition("=")[0] == "--mount"]


def cache_dir(build_dir: Path, spec: MountSpec) -> Path:
    """Where the cache mount `spec.id` is kept (its parent 0700; the name a digest of the
    id, which may be any text)."""
    parent = build_dir / "mounts" / "cache"
    private_dir(parent)
    return parent / hashlib.sha256(spec.id.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class RunMounts:
    """The mounts of one RUN: resolved (sources found, digests taken) on creation, so that
    the step's cache key can hold them; made on the host by `open` only when the step
    runs; undone by `close` (locks released, overlays unmounted, scratch dirs removed)."""

    def __init__(self, builder: Builder, raw: list[str], st: StageState, where: str) -> None:
        self.builder = builder
        self.where = where
        self.specs = [
            parse_mount(r, lambda v: st.expand(v, where), st.workdir(), where) for r in raw
        ]
        self._stack = contextlib.ExitStack()
        self._origins: list[str] = []
        self._sources: list[tuple[Tree, Source] | list[str]] = []
        seen: set[str] = set()
        for spec in self.specs:
            if spec.target in seen:
                raise BuildFailed(f"{where}: two --mount flags at {spec.target}", where=where)
            seen.add(spec.target)
            origin = ""
            if spec.type == "bind" and spec.from_ref is None:
                if has_glob(spec.source):
                    raise BuildFailed(
                        f"{where}: --mount source={spec.source}: a path, not a pattern",
                        where=where,
                    )
                tree = Tree(builder.config.context, builder.context_matcher)
                src = tree.match(spec.source.lstrip("/") or ".", f"{where}: RUN --mount")[0]
                self._sources.append((tree, src))
                origin = "context " + digest_sources(tree, [src])
            elif spec.type == "bind":
                assert spec.from_ref is not None
                diff_ids, origin = from_layers(
                    builder, spec.from_ref, f"{where}: --mount from={spec.from_ref}"
                )
                self._sources.append(diff_ids)
            else:
                self._sources.append([])
            self._origins.append(origin)

    def key_parts(self) -> list[str]:
        """What the step's cache key holds of the mounts: each spec, and for a bind the
        content (digest) of what it mounts."""
        return [
            f"{s.key_text()} {o}".strip() for s, o in zip(self.specs, self._origins, strict=True)
        ]

    def targets(self) -> list[str]:
        return [s.target for s in self.specs]

    def open(self) -> tuple[MountConfig, ...]:
        """Make the mounts on the host; what the RUN container mounts, in order."""
        out = []
        for spec, source in zip(self.specs, self._sources, strict=True):
            if spec.type == "tmpfs":
                out.append(MountConfig("tmpfs", spec.target, tmpfs_size=spec.size))
            elif spec.type == "secret":
                host = self._secret(spec)
                if host is not None:
                    out.append(MountConfig("bind", spec.target, host, read_only=True))
            elif spec.type == "cache":
                out.append(MountConfig("bind", spec.target, self._cache(spec), spec.read_only))
            else:
                host = self._bind_source(spec, source)
                if not spec.read_only:
                    host = self._writable(host)
                out.append(MountConfig("bind", spec.target, host, spec.read_only))
        return tuple(out)

    def close(self) -> None:
        self._stack.close()

    # -- the host side -------------------------------------------------------------------

    def _scratch(self, prefix: str) -> Path:
        path = self.builder.tmp / f"{prefix}-{secrets.token_hex(4)}"
        path.mkdir(mode=0o700)
        self._stack.callback(rmtree, path)
        return path

    def _bind_source(self, spec: MountSpec, source: tuple[Tree, Source] | list[str]) -> str:
        if isinstance(source, tuple):
            tree, src = source
            if not src.is_dir:
                return src.host
            # a copy (hard links where it can) of what .dockerignore lets through: the
            # step must not see excluded files, as a BuildKit context does not hold them
            staged = self._scratch("bind") / "src"
            staged.mkdir(mode=0o755)
            for rel, host in tree.entries(src):
                _link_or_copy(host, str(staged / rel))
            return str(staged)
        lowers = self.builder.lower_dirs(StageState(name=None, base_id="", diff_ids=source))
        mounted = self._stack.enter_context(self.builder.mounted(lowers))
        host = safe_join(str(mounted), spec.source)
        if not os.path.exists(host):
            raise BuildFailed(
                f"{self.where}: --mount from={spec.from_ref}: {spec.source}: no such file or "
                "directory",
                where=self.where,
            )
        return host

    def _writable(self, host: str) -> str:
        """A writable view of directory `host` whose changes are thrown away (an overlay
        with a scratch upper dir); a file is copied instead."""
        if not os.path.isdir(host):
            copy = self._scratch("rwbind") / "file"
            copy_entry(host, str(copy), uid=None, gid=None, chmod=None)
            return str(copy)
        work = self.builder.tmp / f"rwbind-{secrets.token_hex(4)}"
        work.mkdir(mode=0o700)
        target = work / "rootfs"  # the workspace's sweep unmounts */rootfs of a killed build
        rootfs.mount_overlay([host], work / "upper", work / "work", target)
        self._stack.callback(rmtree, work)
        self._stack.callback(rootfs.unmount, target)
        return str(target)

    def _secret(self, spec: MountSpec) -> str | None:
        """The secret's file for the RUN (None: not given and not required)."""
        content = self.builder.config.secrets.get(spec.id)
        if content is None:
            if spec.required:
                raise BuildFailed(
                    f"{self.where}: secret {spec.id!r} is required and was not given "
                    f"(--secret id={spec.id},src=FILE)",
                    where=self.where,
                )
            return None
        path = self._scratch("secret") / "secret"
        # made with its final mode: the content is never readable by anyone else, even
        # for a moment; the 0700 scratch dir keeps the host's users away as well
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, spec.mode)
            os.fchown(fd, spec.uid, spec.gid)
        finally:
            os.close(fd)
        return str(path)

    def _cache(self, spec: MountSpec) -> str:
        path = cache_dir(self.builder.build_dir, spec)
        lock = path.with_name(path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._stack.callback(os.close, fd)
        if spec.sharing == "private":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use: this RUN gets a cache of its own, thrown away
                fresh = self._scratch("cache") / "dir"
                fresh.mkdir(mode=spec.mode)
                os.chown(fresh, spec.uid, spec.gid)
                return str(fresh)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX if spec.sharing == "locked" else fcntl.LOCK_SH)
        if not path.is_dir():
            path.mkdir()
            os.chmod(path, spec.mode)  # the mode as given, whatever the umask
            os.chown(path, spec.uid, spec.gid)
        return str(path)


def _link_or_copy(src: str, dest: str) -> None:
    if os.path.isfile(src) and not os.path.islink(src):
        try:
            os.link(src, dest)
            return
        except OSError:
            pass  # another file system, or links not allowed: a copy
    copy_entry(src, dest, uid=None, gid=None, chmod=None)
