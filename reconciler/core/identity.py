"""Names, ownership labels and spec hashes: how pyapply recognises what it made.

Everything pyapply creates carries the `io.pyapply.*` labels; pruning only ever touches
objects that carry the stack's label. The spec hash is the sha256 of a canonical JSON form of
what the object should be, so a changed manifest shows up as a changed label, whatever the
runtime reports back.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from pyapply.runtime.base import Uncompared


class _Probe(msgspec.Struct):
    made: list[int] = msgspec.field(default_factory=list)


# what a default made by a factory is in `__struct_defaults__`
_Factory = type(_Probe.__struct_defaults__[0])

PREFIX = "io.pyapply."
STACK = PREFIX + "stack"
SERVICE = PREFIX + "service"
REPLICA = PREFIX + "replica"
SPEC_HASH = PREFIX + "spec-hash"
REVISION = PREFIX + "revision"
NETWORK = PREFIX + "network"
VOLUME = PREFIX + "volume"

# A container being replaced start-first lives under this suffix until the old one is gone.
NEXT_SUFFIX = "--next"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def normalise_stack_name(name: str) -> str:
    """Compose's project-name rule: lower case, only [a-z0-9_-], starting alphanumeric."""
    lowered = re.sub(r"[^a-z0-9_-]", "", name.lower())
    return lowered.lstrip("_-")


def valid_stack_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def container_name(stack: str, service: str, replica: int) -> str:
    return f"{stack}-{service}-{replica}"


def network_name(stack: str, network: str) -> str:
    return f"{stack}_{network}"


def volume_name(stack: str, volume: str) -> str:
    return f"{stack}_{volume}"


def canonical_json(value: Any) -> str:
    """Deterministic JSON of value types (msgspec Structs), mappings, tuples and scalars."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_NO_DEFAULT = object()

# per value type: its compared fields, each with its default (_NO_DEFAULT if none; a
# factory's value made once: it is only ever compared with)
_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}
_SCALARS = (str, int, float, type(None))


def compared_fields(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    found = _FIELDS.get(cls)
    if found is None:
        names = cls.__struct_fields__
        given = cls.__struct_defaults__  # the defaults of the last fields
        defaults = (_NO_DEFAULT,) * (len(names) - len(given)) + tuple(
            d.factory() if isinstance(d, _Factory) else d for d in given
        )
        skip = cls.__uncompared__ if issubclass(cls, Uncompared) else frozenset()
        found = tuple((n, d) for n, d in zip(names, defaults, strict=True) if n not in skip)
        _FIELDS[cls] = found
    return found


def _plain(value: Any) -> Any:
    """Fields left at their defaults are omitted, so that a field added to a config in a
    later version does not change the hash (and recreate) every container made before."""
    if isinstance(value, _SCALARS):  # bool is an int
        return value
    if isinstance(value, msgspec.Struct):
        return {
            name: _plain(v)
            for name, default in compared_fields(type(value))
            if (v := getattr(value, name)) != default
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def digest(value: Any, length: int = 16) -> str:
    return digest_text(canonical_json(value), length)


def digest_text(text: str, length: int = 16) -> str:
    """`digest` of a value whose `canonical_json` is `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def labels(
    stack: str,
    *,
    revision: str,
    spec_hash: str,
    service: str | None = None,
    replica: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    out = dict(extra or {})
    out[STACK] = stack
    out[SPEC_HASH] = spec_hash
    out[REVISION] = revision
    if service is not None:
        out[SERVICE] = service
    if replica is not None:
        out[REPLICA] = str(replica)
    return out
