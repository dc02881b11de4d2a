"""What revision of the manifests is being applied: a git commit, or a content hash.

A directory inside a git work tree is identified by its HEAD commit (with the subject line);
uncommitted edits to the manifests themselves add a `+<content hash>` suffix so that two
different trees never share a revision. Anything else is `sha256:<content hash>`.

`identify` decides it from the files a load read and their digest (what `apply` records);
`of_directory` from a directory not loaded (what the agent records before it loads a
revision, so that a revision that fails to load still has one). Both take their files from
the one walk and their digest from the one hash of `reconciler.manifest.discovery`, so one
directory has one revision.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest import discovery


class Revision(msgspec.Struct, frozen=True):
    id: str
    subject: str = ""
    commit: str | None = None


def _git(cwd: str, *args: str) -> str | None:
    try:
        out = subprocess.run(
            # no optional locks: `git status` must never take index.lock from under a
            # `git pull` or `git commit` running at the same time (the watch agent)
            ["git", "--no-optional-locks", "-C", cwd, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def _in_work_tree(directory: str) -> bool:
    """Whether git could find a repository from `directory`: a `.git` in it or above, or
    git's own variables naming one. Decided without starting git, so that manifests outside
    any repository (the common case of a `-f` file) cost no process."""
    if os.environ.get("GIT_DIR") or os.environ.get("GIT_WORK_TREE"):
        return True
    here = os.path.abspath(directory)
    while True:
        if os.path.lexists(os.path.join(here, ".git")):
            return True
        parent = os.path.dirname(here)
        if parent == here:
            return False
        here = parent


def identify(files: tuple[str, ...], content_digest: str) -> Revision:
    fallback = Revision(id=f"sha256:{content_digest[:12]}")
    if not files:
        return fallback
    directory = os.path.dirname(files[0])
    if not _in_work_tree(directory):
        return fallback
    top = _git(directory, "rev-parse", "--show-toplevel")
    if not top or not all(os.path.realpath(f).startswith(os.path.realpath(top)) for f in files):
        return fallback
    # the commit and its subject in one call (one process less)
    head = _git(directory, "log", "-1", "--format=%H%n%s")
    commit, _, subject = (head or "").partition("\n")
    if not commit:
        return fallback
    dirty = _git(top, "status", "--porcelain", "--", *files)
    rev_id = commit[:12]
    if dirty:
        rev_id += f"+{content_digest[:8]}"
    return Revision(id=rev_id, subject=subject, commit=commit)


def of_directory(directory: str) -> Revision:
    """The revision of `directory` (or of one manifest file) as `apply -f` of it records it,
    without loading it: the files the loader's walk finds, hashed as the loader hashes them.
    (A file that a compose project includes or extends from outside the walk is only known
    by loading the project: `identify` of a load counts it, this cannot.)"""
    files = discovery.manifest_files(directory)
    # no manifests at all (they were deleted): still the commit, when there is one
    probe = tuple(files) or (os.path.join(os.path.abspath(directory), "."),)
    return identify(probe, discovery.digest_files(files))


# What may abbreviate a revision id: at least 7 hex digits of the commit (or of the content
# hash after `sha256:`), optionally on into a `+<hash>` suffix. Nothing else does, so no
# argument ever matches by pattern (the ids are compared as plain strings, never as SQL
# LIKE patterns, where `%` matched every revision).
PREFIX_MIN_HEX = 7
_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{7,64}(?:\+[0-9a-f]{0,64})?")


class UnknownRevision(PyapplyError):
    """No recorded revision is the one asked for."""


class BadRevision(UnknownRevision):
    """The argument is neither a recorded id nor something that may abbreviate one."""


class AmbiguousRevision(UnknownRevision):
    """The prefix abbreviates more than one recorded revision."""


def is_prefix(given: str) -> bool:
    """Whether `given` may stand for the ids it begins (see _PREFIX)."""
    return _PREFIX.fullmatch(given) is not None


def match_revision(given: str, known: Iterable[str]) -> str:
    """The one id of `known` that `given` names: itself, or the only id that it is a prefix
    of (at least 7 hex digits). Every argument that takes a revision goes through here."""
    names = set(known)
    if given in names:
        return given
    if not is_prefix(given):
        raise BadRevision(
            f"{given!r} is not a revision: give its id or a prefix of at least "
            f"{PREFIX_MIN_HEX} hex digits (see `pyapply history`)"
        )
    found = sorted(n for n in names if n.startswith(given))
    if not found:
        raise UnknownRevision(f"no recorded revision {given!r} (see `pyapply history`)")
    if len(found) > 1:
        shown = ", ".join(found[:10]) + (f" (+{len(found) - 10} more)" if len(found) > 10 else "")
        raise AmbiguousRevision(f"revision {given!r} is ambiguous: {shown}")
    return found[0]
