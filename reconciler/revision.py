"""What revision of the manifests is being applied: a git commit, or a content hash.

A directory inside a git work tree is identified by its HEAD commit (with the subject line);
uncommitted edits to the manifests themselves add a `+<content hash>` suffix so that two
different trees never share a revision. Anything else is `sha256:<content hash>`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Revision:
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


def identify(files: tuple[str, ...], content_digest: str) -> Revision:
    fallback = Revision(id=f"sha256:{content_digest[:12]}")
    if not files:
        return fallback
    directory = os.path.dirname(files[0])
    top = _git(directory, "rev-parse", "--show-toplevel")
    if not top or not all(os.path.realpath(f).startswith(os.path.realpath(top)) for f in files):
        return fallback
    commit = _git(directory, "rev-parse", "HEAD")
    if not commit:
        return fallback
    subject = _git(directory, "log", "-1", "--format=%s") or ""
    dirty = _git(top, "status", "--porcelain", "--", *files)
    rev_id = commit[:12]
    if dirty:
        rev_id += f"+{content_digest[:8]}"
    return Revision(id=rev_id, subject=subject, commit=commit)
