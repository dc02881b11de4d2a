"""Helpers shared by the loader's unit tests: writing manifest trees, walking documents."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write(root: Path, files: Mapping[str, str]) -> None:
    """Write `{relative path: text}` below `root` (text dedented, leading newline dropped)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def value_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value below `node` (keys of mappings, indexes of lists), for the
    robustness tests that put wrong shapes in every place."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += value_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += value_paths(value, (*prefix, i))
    return out
