"""The layer cache: what a build step produced, under a key made of everything it depends
on, so that a step whose key is known executes nothing.

A key is the sha256 of a canonical JSON document: the parent's key (the chain: the base
image id, then each step's key, so a change anywhere above changes everything below), the
instruction as written and as expanded, the build args it uses (name=value), and for a copy
the content digest of its sources (or, with --from, the source stage's key). Metadata-only
steps (ENV, USER, ...) take part in the chain too, since RUN sees them.

Entries live in `<root>/build/cache.json` ({key: {"diff_id", "empty"}}), written atomically
under a lock. An entry whose layer blob has gone (pruned with its images) is a miss.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from pyapply.runtime.statefs import atomic_write, private_dir

CACHE_VERSION = 1


def step_key(
    parent: str,
    instruction: str,
    expanded: str = "",
    args: Mapping[str, str] | None = None,
    sources: str = "",
    extra: Sequence[str] = (),
) -> str:
    """The cache key of a step (pure)."""
    doc = {
        "v": CACHE_VERSION,
        "parent": parent,
        "instruction": instruction,
        "expanded": expanded,
        "args": sorted(f"{k}={v}" for k, v in (args or {}).items()),
        "sources": sources,
        "extra": list(extra),
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(body.encode("utf-8", "surrogateescape")).hexdigest()


class Entry(msgspec.Struct, frozen=True):
    diff_id: str | None  # None: the step changed no file (no layer)

    def to_json(self) -> dict[str, Any]:
        return {"diff_id": self.diff_id}


class LayerCache:
    """The cache file of one state root."""

    def __init__(self, build_dir: str) -> None:
        private_dir(build_dir)
        self.path = os.path.join(build_dir, "cache.json")
        self.lock_path = os.path.join(build_dir, "cache.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}  # a damaged cache is an empty one: it only costs a rebuild
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> Entry | None:
        found = self._read().get(key)
        if not isinstance(found, dict):
            return None
        diff_id = found.get("diff_id")
        return Entry(diff_id=str(diff_id) if diff_id else None)

    def put(self, key: str, entry: Entry) -> None:
        with self._locked():
            entries = self._read()
            entries[key] = entry.to_json()
            atomic_write(
                self.path,
                json.dumps({"version": CACHE_VERSION, "entries": entries}, sort_keys=True),
            )
