"""Is a file sealed (kept encrypted in git)? Cheap checks, so that loading plain manifests,
env files, configs and secrets never imports the decryption (`manifest.sops`); and the
process-wide record of the values decrypted so far, which every redactor hides.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

AGE_MAGIC = b"age-encryption.org/v1\n"
AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
MAX_REVEALED = 10_000  # plaintext values kept for redaction (oldest forgotten first)

_lock = threading.Lock()
_revealed: dict[str, None] = {}


def is_age(content: bytes) -> bool:
    """An age file: the binary header, or the ASCII armor (which may follow white space)."""
    return content.startswith(AGE_MAGIC) or content.lstrip()[: len(AGE_ARMOR)] == AGE_ARMOR


def has_sops_metadata(data: Any) -> bool:
    """A parsed document that is a SOPS file (YAML or JSON): it carries `sops.mac`."""
    meta = data.get("sops") if isinstance(data, dict) else None
    return isinstance(meta, dict) and "mac" in meta


def may_be_sealed(content: bytes) -> bool:
    """False only when `content` is surely not encrypted: not age, and no `sops` anywhere
    (every SOPS form, YAML, JSON, dotenv and binary, holds its metadata under that name)."""
    return is_age(content) or b"sops" in content


def reveal(values: Iterable[str | bytes]) -> None:
    """Remember decrypted values (blank ones are not secret), for `revealed`."""
    with _lock:
        for value in values:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if not text.strip():
                continue
            _revealed.pop(text, None)
            _revealed[text] = None
        while len(_revealed) > MAX_REVEALED:
            del _revealed[next(iter(_revealed))]


def revealed() -> tuple[str, ...]:
    """Every plaintext value decrypted by this process (for `Redactor`)."""
    with _lock:
        return tuple(_revealed)


def forget_revealed() -> None:
    with _lock:
        _revealed.clear()
