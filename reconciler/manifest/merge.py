"""Merging compose files in order, as the Compose Specification says, and making the
relative paths of an included or extending file absolute.

`merge` merges mappings recursively; `command`, `entrypoint` and `healthcheck.test` are
replaced; `environment`, `labels`, `depends_on`, service `networks`, `ulimits` ... are
merged by key whichever syntax each file used; `ports`, `volumes`, `configs`, `secrets` by
their unique key (the container path for mounts); lists such as `dns`, `cap_add`, `expose`
are appended without duplicates; other lists appended. A value tagged `!reset` removes what
earlier files set; one tagged `!override` replaces it whole. Pure tree manipulation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pyapply.reconciler.manifest import yamlpos
from pyapply.reconciler.manifest.tree import Node, Path


def _match(pattern: tuple[str, ...], path: Path) -> bool:
    return len(pattern) == len(path) and all(
        p in ("*", q) for p, q in zip(pattern, path, strict=True)
    )


_REPLACE = [("services", "*", f) for f in ("command", "entrypoint")] + [
    ("services", "*", "healthcheck", "test")
]
# list-or-mapping fields merged by key ("KEY=VALUE" lists become mappings)
_BY_KEY_EQ = [("services", "*", f) for f in ("environment", "labels", "sysctls", "annotations")] + [
    ("services", "*", "build", "args"),
    ("services", "*", "build", "labels"),
    ("services", "*", "deploy", "labels"),
    ("networks", "*", "labels"),
    ("volumes", "*", "labels"),
]
# list-of-names-or-mapping fields merged by key (a listed name becomes `name: null`/defaults)
_BY_NAME = [("services", "*", "networks"), ("services", "*", "depends_on")]
# lists whose items are unique by a key; a later item with the same key replaces the earlier
_UNIQUE: list[tuple[tuple[str, ...], Callable[[Node], Any]]] = []
_DEDUP = [
    ("services", "*", f)
    for f in (
        "dns",
        "dns_search",
        "dns_opt",
        "expose",
        "cap_add",
        "cap_drop",
        "external_links",
        "links",
        "group_add",
        "security_opt",
        "devices",
        "tmpfs",
        "env_file",
        "profiles",
        "extra_hosts",
        "volumes_from",
    )
]


def _port_key(n: Node) -> Any:
    v = n.plain()
    if isinstance(v, dict):
        return (
            "long",
            v.get("host_ip", ""),
            v.get("target"),
            str(v.get("published", "")),
            v.get("protocol", "tcp"),
        )
    return ("short", str(v))


def _mount_key(n: Node) -> Any:
    v = n.plain()
    if isinstance(v, dict):
        return v.get("target")
    if isinstance(v, str):
        parts = v.split(":")
        return os.path.normpath(parts[1] if len(parts) > 1 else parts[0])
    return repr(v)


def _file_ref_key(prefix: str) -> Callable[[Node], Any]:
    def key(n: Node) -> Any:
        v = n.plain()
        target = str((v.get("target") or v.get("source")) if isinstance(v, dict) else v)
        return target if target.startswith("/") else prefix + target

    return key


_UNIQUE = [
    (("services", "*", "ports"), _port_key),
    (("services", "*", "volumes"), _mount_key),
    (("services", "*", "configs"), _file_ref_key("/")),
    (("services", "*", "secrets"), _file_ref_key("/run/secrets/")),
]


def clean(node: Node) -> Node | None:
    """A tree with `!reset` values removed and `!override` tags dropped."""
    if node.tag == yamlpos.RESET:
        return None
    out = Node(node.value, node.where, node.key)
    if isinstance(node.value, dict):
        out.value = {k: c for k, v in node.value.items() if (c := clean(v)) is not None}
    elif isinstance(node.value, list):
        out.value = [c for v in node.value if (c := clean(v)) is not None]
    return out


def _as_mapping(node: Node, by_name: bool, path: Path) -> Node:
    """The mapping form of a list-or-mapping field."""
    if not isinstance(node.value, list):
        return node
    out: dict[str, Node] = {}
    for item in node.value:
        if not isinstance(item.value, str | int | float) or isinstance(item.value, bool):
            return node  # a shape the schema will report
        text = str(item.value)
        if by_name and path[-1] == "depends_on":
            condition = Node("service_started", item.where, item.where)
            out[text] = Node({"condition": condition}, item.where, item.where)
        elif by_name:
            out[text] = Node(None, item.where, item.where)
        else:
            key, eq, value = text.partition("=")
            out[key] = Node(value if eq else None, item.where, item.where)
    return Node(out, node.where, node.key, node.tag)


def merge(base: Node | None, over: Node, path: Path = ()) -> Node | None:
    """`over` (a later file) merged onto `base`; None when `over` resets the value."""
    if over.tag == yamlpos.RESET:
        return None
    if base is None or over.tag == yamlpos.OVERRIDE:
        return clean(over)
    if any(_match(p, path) for p in _REPLACE):
        return clean(over)
    by_name = any(_match(p, path) for p in _BY_NAME)
    if by_name or any(_match(p, path) for p in _BY_KEY_EQ):
        base, over = _as_mapping(base, by_name, path), _as_mapping(over, by_name, path)
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        out = dict(base.value)
        for k, v in over.value.items():
            merged = merge(out.get(k), v, (*path, k))
            if merged is None:
                out.pop(k, None)
            else:
                merged.key = v.key or merged.key
                out[k] = merged
        return Node(out, over.where, over.key)
    if isinstance(base.value, list) and isinstance(over.value, list):
        unique = next((key for p, key in _UNIQUE if _match(p, path)), None)
        if unique is None and any(_match(p, path) for p in _DEDUP):
            unique = _scalar_key
        items = list(base.value)
        for item in over.value:
            c = clean(item)
            if c is None:
                continue
            if unique is not None:
                k = unique(c)
                same = [i for i, old in enumerate(items) if unique(old) == k]
                if same:
                    i = same[0]
                    old = items[i]
                    if isinstance(old.value, dict) and isinstance(c.value, dict):
                        items[i] = merge(old, c, (*path, i)) or c
                    else:
                        items[i] = c
                    continue
            items.append(c)
        return Node(items, over.where, over.key)
    return clean(over)


def _scalar_key(n: Node) -> Any:
    v = n.plain()
    return repr(v) if isinstance(v, dict | list) else str(v)


# ---------------------------------------------------------------------------------------------
# Paths made absolute (for included projects and services extended from another file)


def rebase_path(value: Any, directory: str) -> Any:
    if not isinstance(value, str) or not value or value.startswith(("/", "~")):
        return value
    if "://" in value or value.startswith("git@"):
        return value  # a remote build context
    return os.path.normpath(os.path.join(directory, value))


def _set(node: Node | None, directory: str) -> None:
    if node is not None and isinstance(node.value, str):
        node.value = rebase_path(node.value, directory)


def rebase_service(svc: Node, directory: str) -> None:
    """Relative paths in a service made absolute against `directory`."""
    if not isinstance(svc.value, dict):
        return
    build = svc.get("build")
    if build is not None:
        if isinstance(build.value, str):
            _set(build, directory)
        else:
            _set(build.get("context"), directory)
    for name in ("env_file", "label_file"):
        files = svc.get(name)
        if files is None:
            continue
        items = files.value if isinstance(files.value, list) else [files]
        for item in items:
            if isinstance(item.value, dict):
                _set(item.get("path"), directory)
            else:
                _set(item, directory)
    volumes = svc.get("volumes")
    if volumes is not None and isinstance(volumes.value, list):
        for item in volumes.value:
            if isinstance(item.value, str):
                parts = item.value.split(":")
                if len(parts) > 1 and parts[0].startswith("."):
                    parts[0] = rebase_path(parts[0], directory)
                    item.value = ":".join(parts)
            elif isinstance(item.value, dict):
                kind = item.get("type")
                if kind is not None and kind.value == "bind":
                    _set(item.get("source"), directory)
    extends = svc.get("extends")
    if extends is not None:
        _set(extends.get("file"), directory)


def rebase_project(root: Node, directory: str) -> None:
    services = root.get("services")
    if services is not None and isinstance(services.value, dict):
        for svc in services.value.values():
            rebase_service(svc, directory)
    for section in ("configs", "secrets"):
        objs = root.get(section)
        if objs is not None and isinstance(objs.value, dict):
            for obj in objs.value.values():
                _set(obj.get("file"), directory)
