"""Helpers for the robustness tests: every place in a parsed document, to put wrong shapes in."""

from __future__ import annotations

from typing import Any


def value_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value below `node` (keys of mappings, indexes of lists)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += value_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += value_paths(value, (*prefix, i))
    return out
