"""Reading the native runtime's state files with the care given to manifests.

Every JSON file the native runtime keeps under its state root (a container's state.json,
names.json, networks.json and ipam.json, the image index, a volume's meta.json, a health
file) is read through `read_json` with a small shape: the types and required fields the
code relies on. A file that is not what we wrote (truncated, hand-edited, `[]`, a subnet of
"garbage") is reported once, as `DamagedState`, naming the file, what is wrong and what to
do, instead of a KeyError or AttributeError deep in a reconcile pass.

Shapes are plain functions `(value, where) -> value` built from the combinators below, so a
reader states its file's layout in one expression and the checks are written once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from pyapply.runtime.base import PermanentError

Shape = Callable[[Any, str], Any]

REMEDY = "run `pyapply system reset` or restore it"


class DamagedState(PermanentError):
    """A state file exists but does not hold what pyapply wrote there."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path} is damaged ({reason}); {REMEDY}")


class _Bad(Exception):
    """A shape mismatch at a path inside the document (turned into DamagedState)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)


def _at(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------
# shapes


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Bad(where, f"{_kind(value)}, not a string")
    return value


def nonempty(value: Any, where: str) -> str:
    text = string(value, where)
    if not text:
        raise _Bad(where, "empty")
    return text


def integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(where, f"{_kind(value)}, not an integer")
    return value


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(where, f"{_kind(value)}, not a number")
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(where, f"{_kind(value)}, not true or false")
    return value


def anything(value: Any, where: str) -> Any:
    return value


def ipv4_network(value: Any, where: str) -> IPv4Network:
    text = string(value, where)
    try:
        return IPv4Network(text, strict=True)
    except ValueError:
        raise _Bad(where, f"{text!r} is not a network") from None


def ipv4_address(value: Any, where: str) -> IPv4Address:
    text = string(value, where)
    try:
        return IPv4Address(text)
    except ValueError:
        raise _Bad(where, f"{text!r} is not an IPv4 address") from None


def ipv6_network(value: Any, where: str) -> IPv6Network:
    text = string(value, where)
    try:
        return IPv6Network(text, strict=True)
    except ValueError:
        raise _Bad(where, f"{text!r} is not an IPv6 network") from None


def ipv6_address(value: Any, where: str) -> IPv6Address:
    text = string(value, where)
    try:
        return IPv6Address(text)
    except ValueError:
        raise _Bad(where, f"{text!r} is not an IPv6 address") from None


def optional(shape: Shape) -> Shape:
    """`shape`, or null."""

    def check(value: Any, where: str) -> Any:
        return None if value is None else shape(value, where)

    return check


def list_of(item: Shape) -> Shape:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise _Bad(where, f"{_kind(value)}, not a list")
        return [item(v, _at(where, i)) for i, v in enumerate(value)]

    return check


def map_of(item: Shape) -> Shape:
    """An object with any keys (strings), each value of `item`'s shape."""

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(where, f"{_kind(value)}, not an object")
        return {k: item(v, _at(where, k)) for k, v in value.items()}

    return check


def record(
    required: Mapping[str, Shape], optional_fields: Mapping[str, Shape] | None = None
) -> Shape:
    """An object with these fields; others are kept unchecked (a newer pyapply may add)."""
    more = optional_fields or {}

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Bad(where, f"{_kind(value)}, not an object")
        for key, shape in required.items():
            if key not in value:
                raise _Bad(_at(where, key), "missing")
            shape(value[key], _at(where, key))
        for key, shape in more.items():
            if key in value:
                shape(value[key], _at(where, key))
        return value

    return check


def checked(shape: Shape, rule: Callable[[Any, str], None]) -> Shape:
    """`shape`, then a rule over the whole value (uniqueness, consistency) that raises
    `bad(where, reason)` when broken."""

    def check(value: Any, where: str) -> Any:
        out = shape(value, where)
        rule(out, where)
        return out

    return check


def bad(where: str, reason: str) -> Exception:
    """The error a `checked` rule raises."""
    return _Bad(where, reason)


# ---------------------------------------------------------------------------------------------
# reading


def validate(path: str | Path, doc: Any, shape: Shape) -> Any:
    """`doc` (what `path` holds) checked against `shape`; DamagedState if it does not fit."""
    try:
        return shape(doc, "")
    except _Bad as e:
        raise DamagedState(path, str(e)) from None


def read_json(path: str | Path, shape: Shape) -> Any:
    """The JSON document in `path`, checked against `shape`; None when the file does not
    exist; DamagedState when it cannot be read or parsed, or does not fit."""
    return parse_json(path, read_bytes(path), shape)


def read_bytes(path: str | Path) -> bytes | None:
    """What `path` holds; None when it does not exist; DamagedState when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DamagedState(path, f"cannot be read: {e.strerror or e}") from None


def parse_json(path: str | Path, data: bytes | None, shape: Shape) -> Any:
    """`read_json` of what `read_bytes` read from `path`."""
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedState(path, f"cannot be read: {e}") from None
    if not text.strip():
        raise DamagedState(path, "empty")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise DamagedState(path, f"not JSON: {e}") from None
    return validate(path, doc, shape)
