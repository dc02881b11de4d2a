"""Reading a seccomp profile named by `security_opt: [seccomp=FILE]`.

The profile is in Docker's JSON format (schemas/v1/seccomp.schema.json). The loader reads it
once, checks it, and keeps its compact JSON text in the model: that text is what both
runtimes are given (Docker takes it inline in SecurityOpt; the native runtime compiles it),
and what the spec hash covers, so an edited profile recreates the containers that use it.
Only a regular file of bounded size is read, so a FIFO or /dev/zero cannot stall a load.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from typing import Any

from pyapply.reconciler.core.errors import PyapplyError

MAX_BYTES = 1 << 20  # Docker's default profile is about 20 KB


class ProfileError(PyapplyError, ValueError):
    """A profile that cannot be used; the message is a sentence naming the file."""


@functools.cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    from pyapply.schemas import load_v1

    return Draft202012Validator(load_v1("seccomp.schema.json"))


def _read(path: str, shown: str) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ProfileError(f"seccomp profile {shown}: cannot read: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProfileError(f"seccomp profile {shown}: not a regular file")
        data = b""
        while len(data) <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise ProfileError(f"seccomp profile {shown}: larger than {MAX_BYTES} bytes")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def read_profile(path: str, shown: str) -> str:
    """The profile at `path` (shown to people as `shown`) as compact JSON text, or
    ProfileError saying what is wrong and where in the file."""
    data = _read(path, shown)
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ProfileError(f"seccomp profile {shown}: not UTF-8 text") from e
    except json.JSONDecodeError as e:
        raise ProfileError(
            f"seccomp profile {shown}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}"
        ) from e
    except (ValueError, RecursionError) as e:
        raise ProfileError(f"seccomp profile {shown}: not valid JSON: {e}") from e
    errors = sorted(_validator().iter_errors(doc), key=lambda err: list(err.absolute_path))
    if errors:
        err = errors[0]
        raise ProfileError(
            f"seccomp profile {shown}: {_json_path(err.absolute_path)}: {err.message}"
        )
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
