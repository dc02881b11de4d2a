"""The JSON Schemas of manifests (schemas/v1) and their errors in words.

`errors` validates a document; a document found valid once is remembered (by a digest of
schema and document, in the user's cache directory), so that most runs never import or
compile jsonschema, which would be most of a no-op apply's start-up. `explain` turns one
schema error into sentences a person understands, located at the value or at its key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

from pyapply.reconciler.manifest.values import join_or, kind_of, show, suggest

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

Path = tuple[str | int, ...]


def schema(name: Literal["stack", "compose"] = "stack") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pyapply/v1 Stack document or of a compose file."""
    return cast(dict[str, Any], json.loads(json.dumps(_schemas()[name])))


def errors(name: str, data: Any) -> list[tuple[Path, str, bool]]:
    """What is wrong with `data` against the schema `name` ("stack" or "compose"): (path,
    sentence, locate-at-the-key) for each thing wrong, in the order of the paths."""
    cache_key = _validation_key(name, data)
    if cache_key is not None and _known_valid(cache_key):
        return []
    found = sorted(
        validator(name).iter_errors(data),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    if not found and cache_key is not None:
        _remember_valid(cache_key)
    return [item for err in found for item in explain(err)]


@functools.cache
def _schemas() -> dict[str, dict[str, Any]]:
    from pyapply.schemas import load_v1

    return {name: load_v1(f"{name}.schema.json") for name in ("stack", "compose")}


@functools.cache
def validator(name: str) -> Draft202012Validator:
    # costly to import: only on a cache miss
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    schemas = _schemas()
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    # JSON Schema counts 5.0 as an integer and knows no NaN; YAML has both. A manifest's
    # integer is written as one (`pids_limit: 5.0` would be dropped later, `replicas: 2.0`
    # would reach range()), and no field means anything by NaN or infinity.
    checker = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda _, v: (
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ),
        }
    )
    strict = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator, type_checker=checker
    )
    return cast("Draft202012Validator", strict(schemas[name], registry=registry))


def _cache_dir() -> str:
    explicit = os.environ.get("PYAPPLY_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pyapply", "valid")


# Changes when `validator` judges differently with the same schema (strict integers, finite
# numbers), so that documents cached as valid under the old rules are checked again.
_VALIDATOR_RULES = b"strict-numbers"


def _validation_key(name: str, data: Any) -> str | None:
    """A digest of (schema, document): documents already found valid against the same
    schema are not validated again, which spares every run the cost of importing and
    compiling jsonschema (most of a no-op apply's start-up)."""
    try:
        doc = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    h = hashlib.sha256()
    h.update(_schema_digest(name).encode() + _VALIDATOR_RULES)
    h.update(b"\0" + name.encode() + b"\0" + doc.encode())
    return h.hexdigest()


@functools.cache
def _schema_digest(name: str) -> str:
    return hashlib.sha256(json.dumps(_schemas()[name], sort_keys=True).encode()).hexdigest()


def _known_valid(key: str) -> bool:
    return os.path.exists(os.path.join(_cache_dir(), key))


def _remember_valid(key: str) -> None:
    try:
        os.makedirs(_cache_dir(), exist_ok=True)
        with open(os.path.join(_cache_dir(), key), "w"):
            pass
    except OSError:
        pass  # a cache only: failing to write it changes nothing but speed


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}


def _yaml_float(value: float) -> str:
    """NaN and infinity as YAML spells them."""
    if math.isnan(value):
        return ".nan"
    return ".inf" if value > 0 else "-.inf"


def explain(err: ValidationError) -> Iterator[tuple[Path, str, bool]]:
    """A JSON Schema error in words: (path, sentence, locate-at-the-key) for each thing
    wrong. Shared with the other documents pyapply reads (policy files)."""
    path: Path = tuple(err.absolute_path)
    value: Any = err.validator_value
    instance: Any = err.instance
    if err.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(err.schema.get("properties", {})) if isinstance(err.schema, dict) else []
        patterns = err.schema.get("patternProperties", {}) if isinstance(err.schema, dict) else {}
        for key in instance:
            if key not in known and not any(re.search(p, key) for p in patterns):
                yield (*path, key), f'unknown field "{key}"{suggest(key, known)}', True
    elif err.validator == "required" and isinstance(instance, dict):
        for name in value:
            if name not in instance:
                yield path, f'missing required field "{name}"', True
    elif err.validator == "type":
        types = [value] if isinstance(value, str) else list(value)
        if "integer" in types and "number" in types:
            types.remove("integer")
        words = [_TYPE_WORDS.get(t, t) for t in types]
        if len(words) > 1:
            words = [w if w != "true or false" else "a boolean" for w in words]
        got = kind_of(instance)
        if isinstance(instance, float) and not math.isfinite(instance):
            got = f"{_yaml_float(instance)}: NaN and infinity are not numbers a manifest can use"
        elif isinstance(instance, float):
            got = show(instance)  # 5.0 where an integer is meant
        yield path, f"must be {join_or(words)}, got {got}", False
    elif err.validator == "enum":
        allowed = join_or([show(v) for v in value])
        yield path, f"must be one of {allowed}, got {show(instance)}", False
    elif err.validator == "const":
        yield path, f"must be {show(value)}, got {show(instance)}", False
    elif err.validator == "minimum":
        yield path, f"must be at least {value}, got {show(instance)}", False
    elif err.validator == "maximum":
        yield path, f"must be at most {value}, got {show(instance)}", False
    elif err.validator == "minLength" and value == 1:
        yield path, "must not be empty", False
    else:
        yield path, err.message, False
