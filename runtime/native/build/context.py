"""The build context: its files minus what `.dockerignore` excludes, the sources a COPY or
ADD names (paths and Go `filepath.Match` globs), and the content digest of those sources,
which is what the layer cache keys a copy on.

Sources are read from a *tree*: the context directory, or the mounted root file system of a
stage or image (`--from`). In a tree that is a root file system, a source path is resolved
inside it (symlinks are followed as the container would see them, never out of it).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator

import msgspec

from pyapply.runtime.base import BuildFailed
from pyapply.runtime.native.build import dockerignore
from pyapply.runtime.native.build.fsops import safe_join

_GLOB_CHARS = re.compile(r"[*?\[]")


def has_glob(path: str) -> bool:
    return bool(_GLOB_CHARS.search(path))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match as a regex: `*` and `?` never match '/'."""
    return dockerignore.compile_pattern(re.sub(r"\*+", "*", dockerignore.clean(pattern)))


class Source(msgspec.Struct, frozen=True):
    """One matched source: `rel` its path in the tree ('.' the root), `host` where it is."""

    rel: str
    host: str
    is_dir: bool


class Tree:
    """Files to copy from: a context directory (with its .dockerignore) or a root file
    system (`rootfs=True`: absolute symlinks resolve inside it)."""

    def __init__(
        self, root: str, matcher: dockerignore.Matcher | None = None, *, rootfs: bool = False
    ) -> None:
        self.root = root
        self.matcher = matcher or dockerignore.Matcher(())
        self.rootfs = rootfs

    def excluded(self, rel: str) -> bool:
        return not self.rootfs and self.matcher.excluded(rel)

    def walk(self, rel: str) -> Iterator[tuple[str, str]]:
        """(path relative to `rel`, host path) of everything below directory `rel` that is
        not excluded, sorted, parents first."""
        base = self.host(rel)
        yield from self._walk(base, rel, "")

    def _walk(self, base: str, rel: str, sub: str) -> Iterator[tuple[str, str]]:
        here = os.path.join(base, sub) if sub else base
        for name in sorted(os.listdir(here), key=os.fsencode):
            child = f"{sub}/{name}" if sub else name
            full = os.path.join(base, child)
            in_tree = child if rel == "." else f"{rel}/{child}"
            is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
            if self.excluded(in_tree):
                if is_dir and self.matcher.may_reinclude_below(in_tree):
                    yield from self._walk(base, rel, child)
                continue
            yield child, full
            if is_dir:
                yield from self._walk(base, rel, child)

    def host(self, rel: str) -> str:
        """Where `rel` is on the host (symlinks resolved inside the tree)."""
        # a context's symlinks resolve inside it too (an absolute target from its root), as
        # BuildKit's do: a COPY never reads the host's files through a link in the context
        return safe_join(self.root, "/" + rel if rel != "." else "/")

    def all_paths(self) -> list[str]:
        return [rel for rel, _ in self.walk(".")]

    def match(self, pattern: str, what: str) -> list[Source]:
        """The sources `pattern` names; none is an error naming `what` (the instruction)."""
        cleaned = dockerignore.clean(pattern)
        if not has_glob(cleaned):
            if cleaned != "." and self.excluded(cleaned):
                raise BuildFailed(f"{what}: {pattern}: excluded by .dockerignore")
            host = self.host(cleaned)
            try:
                st = os.stat(host)
            except OSError:
                raise BuildFailed(
                    f"{what}: {pattern}: no such file or directory in {self.label()}"
                ) from None
            return [Source(cleaned, host, stat.S_ISDIR(st.st_mode))]
        if self.rootfs:
            # a glob in a root file system: match the names of its parent directory
            parent, _, _ = cleaned.rpartition("/")
            candidates = [
                f"{parent}/{n}" if parent else n
                for n in sorted(os.listdir(self.host(parent or ".")))
            ]
        else:
            candidates = self.all_paths()
        rx = glob_regex(cleaned)
        found = [c for c in candidates if rx.match(c)]
        if not found:
            raise BuildFailed(
                f"{what}: {pattern}: no source files were specified (nothing matches in {self.label()})"
            )
        out = []
        for rel in found:
            host = self.host(rel)
            out.append(Source(rel, host, os.path.isdir(host)))
        return out

    def label(self) -> str:
        return "the stage or image" if self.rootfs else "the build context"

    def entries(self, src: Source) -> Iterator[tuple[str, str]]:
        """What copying `src` copies: ('', host) for a file, else its tree below."""
        if not src.is_dir:
            yield "", src.host
            return
        if self.rootfs:
            yield from Tree(src.host, rootfs=False)._walk(src.host, ".", "")
        else:
            yield from self.walk(src.rel)


def digest_sources(tree: Tree, sources: list[Source]) -> str:
    """sha256 over what copying `sources` would copy: names, types, modes, link targets and
    file contents (owners and times are set by the copy, so they do not count)."""
    h = hashlib.sha256()
    for src in sources:
        h.update(f"S {src.rel} {int(src.is_dir)}\n".encode())
        for rel, host in tree.entries(src):
            st = os.lstat(host) if rel else os.stat(host)
            kind = stat.S_IFMT(st.st_mode)
            h.update(
                f"E {rel} {kind:o} {stat.S_IMODE(st.st_mode):o}\n".encode(
                    "utf-8", "surrogateescape"
                )
            )
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(host)) + b"\n")
            elif stat.S_ISREG(st.st_mode):
                with open(host, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                h.update(b"\n")
    return "sha256:" + h.hexdigest()
