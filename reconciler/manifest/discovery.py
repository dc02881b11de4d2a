"""Which files a load reads, and the one digest of their content.

`yaml_files` is the one walk of a directory: every `*.yaml`/`*.yml` below it, skipping
dot-files and dot-directories, except that a directory holding a compose file is that
compose project only (its `compose.yaml` and `compose.override.yaml`; nothing else in or
below it is read). The loader reads what it finds (`discover`), and so does the agent,
for the revision of a directory it has not loaded (`manifest_files`,
`reconciler.manifest.revision`): both must see the same files, or one directory would have
two revisions. `content_digest` is the one hash of what was read.

Files are read by `read_file` only: regular files, bounded in size, never blocking.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.model import Problem
from pyapply.reconciler.manifest import sealed, yamlpos

COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
OVERRIDE_FILES = (
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
)

# a manifest may be kept encrypted with age as a whole: `stack.yaml.age` (SOPS-encrypted
# manifests keep their own name)
MANIFEST_SUFFIXES = (".yaml", ".yml", ".yaml.age", ".yml.age")


def project_files(directory: str) -> list[str]:
    """A directory's compose project: the first of COMPOSE_FILES found, then the first of
    OVERRIDE_FILES found; [] when the directory holds no compose file."""
    base = next((n for n in COMPOSE_FILES if os.path.isfile(os.path.join(directory, n))), None)
    if base is None:
        return []
    override = next((n for n in OVERRIDE_FILES if os.path.isfile(os.path.join(directory, n))), None)
    return [base] + ([override] if override else [])


def find_project(cwd: str, environ: Mapping[str, str]) -> list[str]:
    """The compose files a command reads when no `-f` is given, as compose finds them:
    `COMPOSE_FILE` (paths split on `COMPOSE_PATH_SEPARATOR`, by default the OS path list
    separator, relative to `cwd`), else `project_files` of `cwd` or of the nearest parent
    directory that has a compose file. Paths are relative to `cwd` (as a user would have
    written them); [] when there is no project."""
    listed = environ.get("COMPOSE_FILE", "")
    if listed:
        separator = environ.get("COMPOSE_PATH_SEPARATOR") or os.pathsep
        return [part for part in listed.split(separator) if part]
    directory = os.path.abspath(cwd)
    while True:
        names = project_files(directory)
        if names:
            return [os.path.relpath(os.path.join(directory, n), cwd) for n in names]
        parent = os.path.dirname(directory)
        if parent == directory:
            return []
        directory = parent


class Source(msgspec.Struct, frozen=True):
    """A manifest file to read: where it is, and how messages name it."""

    display: str  # as the user would write it: relative to where they pointed us
    path: str  # absolute
    # compose files with the same group form one project: "" a file of its own, "-f" the
    # files named on the command line, "dir:<path>" a directory's compose project
    group: str = ""

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def display_dir(self) -> str:
        return os.path.dirname(self.display)


class Unreadable(PyapplyError):
    """A file the loader will not or cannot read; the message is the sentence to report."""


def read_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (a symlink is followed), if it holds at most
    yamlpos.MAX_FILE_BYTES; raises Unreadable.

    A commit can put anything where a manifest is expected: a FIFO would block the loader for
    ever and a link to /dev/zero would fill its memory. So only regular files are opened (some
    devices act on open), without blocking, checked again on the open descriptor (the path may
    change in between), and read no further than one byte past the limit."""
    limit = yamlpos.MAX_FILE_BYTES
    not_regular = "not a regular file: a manifest, .env or env_file must be an ordinary file"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Unreadable(not_regular)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise Unreadable(f"cannot read the file: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable(not_regular)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise Unreadable(f"the file is larger than {limit // (1 << 20)} MiB, the most one may hold")
    except OSError as e:
        raise Unreadable(f"cannot read the file: {e.strerror}") from None
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """`read_file`, decrypted if it is encrypted (SOPS or age: an env file kept in git,
    `reconciler.manifest.sops`), decoded as UTF-8 (with or without a byte order mark)."""
    content = read_file(path)
    if sealed.may_be_sealed(content):
        from pyapply.reconciler.manifest import sops  # only for a sealed file (startup)

        try:
            content = sops.decrypt(content, os.path.basename(path), env=True)
        except sops.SopsError as e:
            where = f"line {e.line}: " if e.line is not None else ""
            raise Unreadable(f"{where}{e.message}") from None
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise Unreadable(f"the file is not UTF-8 text (line {line})") from None


def self_contained(doc: yamlpos.Document) -> bool:
    """A compose document with no include, extends, profiles or merge tags."""
    data = doc.data
    if doc.tags or "include" in data:
        return False
    services = data.get("services")
    if not isinstance(services, dict):
        return True
    return not any(
        isinstance(svc, dict) and ("extends" in svc or "profiles" in svc)
        for svc in services.values()
    )


# the top-level keys of a compose file: an override may hold any of them without services
COMPOSE_KEYS = frozenset(
    ("services", "include", "networks", "volumes", "configs", "secrets", "models")
)


def is_compose(data: Any) -> bool:
    """A compose file: no apiVersion, and services, includes or any other top-level section
    of the spec (an override file may hold only `networks:`)."""
    return (
        isinstance(data, dict) and "apiVersion" not in data and any(k in data for k in COMPOSE_KEYS)
    )


def yaml_files(root: str) -> Iterator[tuple[str, str]]:
    """(path relative to root, group) of the manifests below root: a directory holding a
    compose file is that compose project only (nothing else in or below it is read)."""
    for directory, dirs, files in os.walk(root):
        project = project_files(directory)
        if project:
            dirs[:] = []
            for name in project:
                path = os.path.join(directory, name)
                yield os.path.relpath(path, root), f"dir:{directory}"
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith(MANIFEST_SUFFIXES):
                yield os.path.relpath(os.path.join(directory, name), root), ""


def manifest_files(path: str) -> list[str]:
    """The manifest files a load of `path` reads first (absolute paths, sorted): the file
    itself, or those `yaml_files` finds below the directory. Files that these include or
    extend are only known by loading them."""
    absolute = os.path.abspath(path)
    if os.path.isfile(absolute):
        return [absolute]
    return sorted(os.path.join(absolute, rel) for rel, _ in yaml_files(absolute))


def discover(paths: Sequence[str], problems: list[Problem]) -> list[Source]:
    """The manifest files named by `paths` (files, or directories walked by `yaml_files`),
    each once, in the order given; a path that does not exist is a problem."""
    found: dict[str, Source] = {}
    for given in paths:
        shown = os.path.normpath(given)
        absolute = os.path.abspath(given)
        if os.path.isdir(absolute):
            entries = list(yaml_files(absolute))
            if not entries:
                problems.append(
                    Problem(
                        f"{shown}: no *.yaml or *.yml files in this directory",
                        severity="warning",
                    )
                )
            for rel, group in entries:
                path = os.path.join(absolute, rel)
                found.setdefault(path, Source(os.path.join(shown, rel), path, group))
        elif os.path.exists(absolute):  # `read_file` refuses what is not a regular file
            found.setdefault(absolute, Source(shown, absolute, "-f"))
        else:
            problems.append(Problem(f"{shown}: no such file or directory"))
    return list(found.values())


def content_digest(contents: Mapping[str, bytes]) -> str:
    """The sha256 (hex) of files' content by absolute path: what identifies a revision
    outside git, and what tells an edited work tree from its commit."""
    digest = hashlib.sha256()
    for path in sorted(contents):
        content = contents[path]
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def digest_files(files: Sequence[str]) -> str:
    """`content_digest` of the files at these absolute paths, read as the loader reads them
    (a file it cannot read is left out, as the loader leaves it out)."""
    contents: dict[str, bytes] = {}
    for path in files:
        try:
            contents[path] = read_file(path)
        except Unreadable:
            continue
    return content_digest(contents)
