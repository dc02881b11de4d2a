"""YAML documents as plain data, plus where every key and value was written.

Errors about a manifest must name the file, line and column of the offending field, but plain
`yaml.safe_load` forgets positions. This module composes PyYAML's node graph and builds the
data from it, recording the 1-based position of every mapping key and of every value
(mapping values and sequence items) under its path, e.g. `("services", "web", "ports", 0)`.

The data is what compose (YAML 1.2, via Go's yaml.v3) would see:
- only `true`/`false` (any case style) are booleans; `yes`, `no`, `on`, `off` stay strings;
- `12:30` stays a string (no base-60 integers, the classic `ports: [22:22]` trap);
- timestamps stay strings; keys are the text as written;
- anchors, aliases and `<<` merge keys work; an alias is expanded into a fresh copy at each
  place it is used (so later in-place changes never leak between them), with the positions
  of the anchored text;
- a duplicate key is an error, as in compose;
- what one file may cost is bounded before anything is built (see "Limits" below): its
  nesting depth, and its number of values as written and after alias and merge-key expansion;
- compose's merge tags `!reset` (drop the value inherited from an earlier file or from
  `extends`) and `!override` (replace it instead of merging) are kept in `Document.tags` under
  the value's path; the value itself is read as if it had no tag.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pyapply.reconciler.core.errors import PyapplyError

Path = tuple[str | int, ...]
Pos = tuple[int, int]  # 1-based line, column

_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT = (_TAG + t for t in ("str", "null", "bool", "int", "float"))
_MERGE = _TAG + "merge"
_PLAIN_TEXT_TAGS = {_TAG + "timestamp", _TAG + "value"}
RESET, OVERRIDE = "!reset", "!override"
_MERGE_TAGS = (RESET, OVERRIDE)

# ---------------------------------------------------------------------------------------------
# Limits
#
# The agent reads whatever a commit brings, so no manifest may stall or exhaust it: a 600-byte
# file of aliases can stand for billions of values. These bounds are the loader's, in one
# place (manifest.py, interpolate.py and compose.py use them too); each sits far above what a
# hand-written stack needs and far below what would hurt.

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Bytes in one manifest, `.env` or `env_file` (read no further than that). Real compose files
are tens of kilobytes; 4 MiB is a hundred times that, and still reads in well under a second."""

MAX_EXPANDED_CHARS = 4 * MAX_FILE_BYTES
"""Characters that variables may put into the strings of one load (`${A}` in manifests and
`.env` files): a value may be long and used many times, and in a `.env` file `A=${A}${A}`
doubles A on each line."""

MAX_DEPTH = 64
"""How deep anything may nest: mappings and lists (counting the levels that aliases and merge
keys bring in), `${...}` defaults inside defaults, and chains of `extends` or `include`. A
compose file's deepest field is 7 levels down; 64 keeps every recursive step of the loader
(and of jsonschema) far from Python's recursion limit."""

MAX_NODES = 100_000
"""Values in one file (all its documents), counted as written and again after aliases and
merge keys are expanded (the output's size, not only the input's): a thousand services of
ninety values each fit, an alias bomb does not. Loading costs some tens of microseconds per
value, so this also bounds the time an honest but huge file takes. What else multiplies values
counts against it too: port ranges, files included and services extended (per load)."""


class YamlSyntaxError(PyapplyError):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.message = message
        self.line = line
        self.column = column


class Document(msgspec.Struct):
    data: Any
    start: Pos
    keys: dict[Path, Pos] = msgspec.field(default_factory=dict)
    values: dict[Path, Pos] = msgspec.field(default_factory=dict)
    errors: list[tuple[Pos, str]] = msgspec.field(
        default_factory=list
    )  # duplicate keys, bad tags...
    tags: dict[Path, str] = msgspec.field(default_factory=dict)  # "!reset" / "!override" by path
    # the file each path was written in, when a document is assembled from several files
    # (compose merges); a path not here belongs to the document's own file
    files: dict[Path, str] = msgspec.field(default_factory=dict)


# libyaml's parser when PyYAML was built with it: the same node graph, ten times faster.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]
    """A safe loader whose implicit booleans are YAML 1.2's."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL,
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse(text: str) -> Iterator[Document]:
    """Yield each document of a YAML stream (empty documents are skipped); raises
    YamlSyntaxError at the first syntax error (documents before it have been yielded)."""
    over_at, plain = _scan(text)
    loader = _Loader(text)
    index = -1
    built = 0  # values built so far: MAX_NODES bounds the whole file
    try:
        while True:
            index += 1
            if over_at is not None and over_at[0] == index:
                raise YamlSyntaxError(over_at[2], *over_at[1])
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            except yaml.MarkedYAMLError as e:
                mark = e.problem_mark or e.context_mark
                message = _sentence(e.problem or e.context or "invalid YAML")
                if e.context and e.problem:
                    message = f"{_sentence(e.problem)} ({e.context})"
                line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                raise YamlSyntaxError(f"invalid YAML: {message}", line, column) from None
            except yaml.reader.ReaderError as e:
                line = text.count("\n", 0, e.position) + 1
                column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
                raise YamlSyntaxError(
                    f"invalid YAML: unacceptable character #x{e.character:04x}"
                    if isinstance(e.character, int)
                    else "invalid YAML: unacceptable character",
                    line,
                    column,
                ) from None
            except yaml.YAMLError as e:
                raise YamlSyntaxError(f"invalid YAML: {e}", 1, 1) from None
            except RecursionError:  # PyYAML's pure-Python composer recurses (libyaml does not)
                raise YamlSyntaxError(
                    f"invalid YAML: nested more than {MAX_DEPTH} levels deep", 1, 1
                ) from None
            if node is None:
                continue
            size = plain.get(index)
            if size is None or size > MAX_NODES - built:
                over, size = _over_limits(node, MAX_NODES - built)
            else:
                over = None  # no alias: the scan bounded it as it will be built
            built += size
            if over is not None:
                (line, column), message = over
                raise YamlSyntaxError(message, line, column)
            doc = _Builder(_pos(node)).document(node)
            if doc.data is None and not doc.errors:
                continue
            yield doc
    finally:
        loader.dispose()


_COLLECTION_START = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_COLLECTION_END = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
_NODE_EVENTS = (*_COLLECTION_START, yaml.ScalarEvent, yaml.AliasEvent)


def _scan(text: str) -> tuple[tuple[int, Pos, str] | None, dict[int, int]]:
    """The first document (its index in the stream, the place and the sentence) that nests
    deeper than MAX_DEPTH, or that brings the file past MAX_NODES values, as written; and,
    by index, the number of values (nodes that are not mapping keys) of each document
    without an alias, which builds to exactly what is written: for these the scan's bounds
    are the build's, and `_over_limits` need not walk them again.

    Composing a document builds every node before any can be looked at: 4 MiB of "a," are two
    million nodes, a gigabyte and many seconds. libyaml's events cost far less and can be
    counted as they come, so this pass runs first, and a document is only composed once it is
    known to be of a bounded size. A syntax error ends the pass: composing reports it."""
    loader = _Loader(text)
    index = -1
    count = 0
    # per open collection: for a mapping, whether its next node is a key; None for a list
    open_: list[bool | None] = []
    # per open collection: whether it is (inside) a mapping key, which builds to no value
    in_key: list[bool] = []
    plain: dict[int, int] = {}
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentStartEvent):
                index += 1
                plain[index] = 0
            elif isinstance(event, _COLLECTION_END):
                open_.pop()
                in_key.pop()
            elif isinstance(event, _NODE_EVENTS):
                count += 1
                parent = open_[-1] if open_ else None
                if parent is not None:
                    open_[-1] = not parent  # a mapping's nodes alternate: key, value
                if isinstance(event, yaml.AliasEvent):
                    plain.pop(index, None)
                elif parent is not True and not (in_key and in_key[-1]) and index in plain:
                    plain[index] += 1
                # a value one level below its collection (the document being level 1); a
                # key is not a level of its own, as in `_over_limits`
                deep = len(open_) + 1 > MAX_DEPTH and parent is not True
                if isinstance(event, _COLLECTION_START):
                    open_.append(True if isinstance(event, yaml.MappingStartEvent) else None)
                    in_key.append(parent is True or bool(in_key and in_key[-1]))
                mark = event.start_mark
                where = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                if deep:
                    return (index, where, _DEEP), plain
                if count > MAX_NODES:
                    return (index, where, _TOO_MANY), plain
    except yaml.YAMLError:
        plain.pop(index, None)  # the error's document is not known to the end
    finally:
        loader.dispose()
    return None, plain


class _Resolver(yaml.resolver.Resolver):
    """Resolves the implicit type of a plain scalar as `_Loader` does."""


_Resolver.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers
_RESOLVER = _Resolver()


def _retagged(node: ScalarNode) -> ScalarNode:
    """A `!reset null` / `!override 5` scalar, with the tag it would have had untagged."""
    implicit = not node.style
    tag: str = _RESOLVER.resolve(  # type: ignore[no-untyped-call]
        ScalarNode, node.value, (implicit, not implicit)
    )
    return ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "y", "n")


def _quoted(text: str) -> str:
    """`text` in quotes for a message, shortened when long."""
    shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
    return '"' + shown.replace('"', '\\"') + '"'


def _sentence(text: str) -> str:
    return " ".join(text.split())


def _pos(node: Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


_DEEP = f"nested more than {MAX_DEPTH} levels deep (counting what aliases and merge keys bring in)"
_TOO_MANY = f"the file holds more than {MAX_NODES} values: split it into several files"
_EXPANDS = f"aliases or merge keys expand this value past {MAX_NODES} values in the file"


def _children(node: Node) -> list[Node]:
    """What building `node` builds in turn: list items, mapping values, merge sources."""
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [v for _, v in node.value]
    return []


def _over_limits(root: Node, budget: int) -> tuple[tuple[Pos, str] | None, int]:
    """Where the document `root` goes deeper than MAX_DEPTH or expands to more than `budget`
    values, if it does, and why; and how many values it expands to. Found before anything is
    built, in time linear in the number of distinct nodes.

    An alias is the very node object of its anchor, so the node graph is small even when its
    expansion is huge: the expanded size and height of each node are computed once, bottom up,
    without recursion. A node that contains itself (reported by the builder) counts as one
    value. Merge sources count in full, an upper bound of what the merge keeps."""
    size: dict[int, int] = {}  # id(node) -> values it expands to, itself included
    height: dict[int, int] = {}  # id(node) -> levels it expands to, itself included
    # the path being explored: node, its remaining children, size and height so far
    stack: list[tuple[Node, Iterator[Node], list[int]]] = [(root, iter(_children(root)), [1, 1])]
    on_path = {id(root)}
    while stack:
        node, todo, acc = stack[-1]
        child = next(todo, None)
        if child is not None:
            cid = id(child)
            if cid in on_path:
                acc[0] += 1
            elif cid in size:
                if len(stack) + height[cid] > MAX_DEPTH:
                    return (_pos(child), _DEEP), 0
                acc[0] += size[cid]
                acc[1] = max(acc[1], height[cid] + 1)
            elif len(stack) >= MAX_DEPTH:
                return (_pos(child), _DEEP), 0
            else:
                on_path.add(cid)
                stack.append((child, iter(_children(child)), [1, 1]))
            continue
        stack.pop()
        on_path.discard(id(node))
        size[id(node)], height[id(node)] = acc
        if acc[0] > budget:
            return (_pos(node), _EXPANDS), 0
        if stack:
            parent = stack[-1][2]
            parent[0] += acc[0]
            parent[1] = max(parent[1], acc[1] + 1)
    return None, size[id(root)]


class _Builder:
    """Builds the data of one document that `_scan` (a document without aliases) or
    `_over_limits` accepted (so its recursion is at most MAX_DEPTH deep and its output at
    most MAX_NODES values)."""

    def __init__(self, start: Pos) -> None:
        self.doc = Document(data=None, start=start)
        self.active: set[int] = set()
        self.constructor = SafeConstructor()

    def document(self, node: Node) -> Document:
        self.doc.data = self.build(node, ())
        return self.doc

    def build(self, node: Node, path: Path) -> Any:
        self.doc.values[path] = _pos(node)
        if node.tag in _MERGE_TAGS:
            self.doc.tags[path] = node.tag
            if isinstance(node, ScalarNode):
                return self.scalar(_retagged(node))
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if id(node) in self.active:
            self.doc.errors.append((_pos(node), "an alias refers to the node that contains it"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self.mapping(node, path)
        finally:
            self.active.discard(id(node))
        return None  # pragma: no cover - PyYAML only makes these three kinds

    def mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges: list[MappingNode] = []
        explicit: list[tuple[Node, Node]] = []
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                merges.extend(self.merge_sources(vnode))
            else:
                explicit.append((knode, vnode))
        # In `<<: [*a, *b]` the earlier mapping wins, and explicit keys win over all.
        for source in reversed(merges):
            if id(source) in self.active:
                self.doc.errors.append(
                    (_pos(source), "a merge key refers to the mapping that contains it")
                )
                continue
            self.active.add(id(source))
            try:
                out.update(self.mapping(source, path))
            finally:
                self.active.discard(id(source))
        seen: dict[str, Pos] = {}
        for knode, vnode in explicit:
            if not isinstance(knode, ScalarNode):
                self.doc.errors.append((_pos(knode), "a mapping key must be a plain string"))
                continue
            key = str(knode.value)
            if key in seen:
                self.doc.errors.append(
                    (_pos(knode), f'duplicate key "{key}" (first written at line {seen[key][0]})')
                )
                continue
            seen[key] = _pos(knode)
            child = (*path, key)
            self.doc.keys[child] = _pos(knode)
            out[key] = self.build(vnode, child)
        return out

    def merge_sources(self, node: Node) -> list[MappingNode]:
        if isinstance(node, MappingNode):
            return [node]
        if isinstance(node, SequenceNode) and all(isinstance(n, MappingNode) for n in node.value):
            return [n for n in node.value if isinstance(n, MappingNode)]
        self.doc.errors.append(
            (_pos(node), 'the merge key "<<" takes a mapping or a list of mappings')
        )
        return []

    def scalar(self, node: ScalarNode) -> Any:
        tag = node.tag
        raw: str = node.value
        if tag == _STR or tag in _PLAIN_TEXT_TAGS:
            return raw
        if tag == _NULL:
            return None
        if tag == _BOOL:
            if raw.lower() not in _BOOL_WORDS:  # an explicit `!!bool` may sit on any text
                self.doc.errors.append((_pos(node), f"{_quoted(raw)} is not true or false"))
            return raw.lower() in ("true", "yes", "on", "y")
        if tag in (_INT, _FLOAT):
            if ":" in raw:  # YAML 1.1 base 60, which compose does not have
                return raw
            # an explicit `!!int`/`!!float` tag may sit on any text, and an integer may have
            # more digits than Python converts (4,300)
            try:
                if tag == _INT:
                    return self.constructor.construct_yaml_int(node)
                return self.constructor.construct_yaml_float(node)
            except (ValueError, IndexError, OverflowError):
                digits = sum(c.isdigit() for c in raw)
                what = "an integer" if tag == _INT else "a number"
                message = f"{_quoted(raw)} is not {what}"
                if digits > 1000:
                    message = f"a number of {digits} digits is too long"
                self.doc.errors.append((_pos(node), message))
                return raw
        self.doc.errors.append((_pos(node), f'unsupported YAML tag "{tag}"'))
        return raw
