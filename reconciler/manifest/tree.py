"""A compose document as a tree of `Node`s that remember where every key and value was
written, so that a problem in a project merged from several files still names the file,
line and column it came from. `to_tree` builds one from a parsed document; `flatten` turns
a tree back into a document (data and positions) for the loader to validate and build.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pyapply.reconciler.manifest import yamlpos

Path = tuple[str | int, ...]


class Where(msgspec.Struct, frozen=True):
    """A position in a file: the file as shown to the user, 1-based line and column, and the
    file's absolute path (whose directory relative paths in it are resolved against)."""

    display: str
    line: int
    column: int
    path: str


class Node(msgspec.Struct):
    value: Any  # dict[str, Node] | list[Node] | a scalar
    where: Where
    key: Where | None = None  # where the mapping key of this value was written
    tag: str | None = None  # yamlpos.RESET / yamlpos.OVERRIDE

    def get(self, name: str) -> Node | None:
        return self.value.get(name) if isinstance(self.value, dict) else None

    def plain(self) -> Any:
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def to_tree(doc: yamlpos.Document, display: str, abspath: str) -> Node:
    def where(pos: tuple[int, int] | None) -> Where:
        line, column = pos or doc.start
        return Where(display, line, column, abspath)

    def build(value: Any, path: Path) -> Node:
        node = Node(value, where(doc.values.get(path)), tag=doc.tags.get(path))
        if isinstance(value, dict):
            out: dict[str, Node] = {}
            for k, v in value.items():
                child = build(v, (*path, k))
                child.key = where(doc.keys.get((*path, k)))
                out[k] = child
            node.value = out
        elif isinstance(value, list):
            node.value = [build(v, (*path, i)) for i, v in enumerate(value)]
        return node

    return build(doc.data, ())


def flatten(root: Node) -> yamlpos.Document:
    """The tree as a plain document, keeping every position and the file it is in."""
    doc = yamlpos.Document(data=None, start=(root.where.line, root.where.column))

    def walk(node: Node, path: Path) -> Any:
        doc.values[path] = (node.where.line, node.where.column)
        doc.files[path] = node.where.display
        if isinstance(node.value, dict):
            out: dict[str, Any] = {}
            for k, v in node.value.items():
                child = (*path, k)
                if v.key is not None:
                    doc.keys[child] = (v.key.line, v.key.column)
                out[k] = walk(v, child)
            return out
        if isinstance(node.value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node.value)]
        return node.value

    doc.data = walk(root, ())
    # a key is reported in its value's file: merging keeps a key and its value together
    return doc
