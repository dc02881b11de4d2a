"""Compose projects: several files merged into one document, as the Compose Specification says.

A compose project is one or more compose files (`-f a.yaml -f b.yaml`, or a directory's
`compose.yaml` plus its `compose.override.yaml`). Before the loader normalises a project into
a Stack, this module assembles its files into one document:

1. each file is parsed and interpolated on its own (by the loader, which owns the variables
   and the error reporting), then turned into a tree of `Node`s (`reconciler.manifest.tree`)
   that remember where every key and value was written -- so that a problem in a merged
   project still names the file, line and column it came from;
2. `include:` entries are assembled as projects of their own (their own directory and `.env`),
   their relative paths made absolute, and their objects added to the including file (an
   object defined in both is an error);
3. the files are merged in order (`reconciler.manifest.merge`, which says how: mappings
   recursively, lists by key or appended, `!reset` and `!override` honoured);
4. `extends:` is resolved (after the merge, so an override file may change a base service),
   from the same project or from another file (`file:`), recursively, with cycles reported.
   The base's `depends_on` is inherited (merged with the service's own), as the reference
   loader does; its `links` and `volumes_from` are not;
5. profiles select the services (`select_profiles`).

Everything here is pure tree manipulation; reading files goes through the `Files` protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from pyapply.reconciler.manifest import yamlpos
from pyapply.reconciler.manifest.merge import (
    clean,
    merge,
    rebase_path,
    rebase_project,
    rebase_service,
)
from pyapply.reconciler.manifest.tree import Node, Path, Where, flatten, to_tree

# the tree and the merge, for the loader and the tests, which know projects by this module
__all__ = [
    "SECTIONS",
    "Assembler",
    "Files",
    "Node",
    "Path",
    "Where",
    "flatten",
    "merge",
    "profiles_of",
    "select_profiles",
    "to_tree",
]


class Files(Protocol):
    """What assembling needs from the loader."""

    def load_tree(self, path: str, display: str, env: dict[str, str]) -> Node | None:
        """Read, parse and interpolate one compose file (None if it could not be read; the
        loader has reported why)."""

    def env_for_dir(
        self, directory: str, display_dir: str, env_files: Sequence[str]
    ) -> dict[str, str]:
        """The variables of a project in `directory`: the environment over its `.env` (or
        over the given env files)."""

    def display(self, path: str) -> str:
        """How to show an absolute path to the user."""

    def problem(self, severity: str, where: Where | None, path: Path, message: str) -> None: ...


# ---------------------------------------------------------------------------------------------
# Assembling a project


def fill_bare_environment(project: Node, env: Mapping[str, str]) -> None:
    """Give a bare `environment` entry (`- VAR`, `VAR:` with no value) of an included
    project's services its value from the include's variables (its `env_file`), which the
    including project does not see."""
    services = project.get("services")
    if services is None or not isinstance(services.value, dict):
        return
    for svc in services.value.values():
        environment = svc.get("environment")
        if environment is None:
            continue
        if isinstance(environment.value, list):
            for i, item in enumerate(environment.value):
                if isinstance(item.value, str) and "=" not in item.value and item.value in env:
                    environment.value[i] = Node(
                        f"{item.value}={env[item.value]}", item.where, item.key, item.tag
                    )
        elif isinstance(environment.value, dict):
            for key, item in environment.value.items():
                if item.value is None and key in env:
                    environment.value[key] = Node(env[key], item.where, item.key, item.tag)


SECTIONS = ("services", "networks", "volumes", "configs", "secrets")


class Assembler(msgspec.Struct):
    files: Files
    read: list[str] = msgspec.field(default_factory=list)  # every file read, absolute
    _values: int = 0  # values read and copied (includes, extends)
    _over: bool = False  # past yamlpos.MAX_NODES, reported
    # the files of each include done (absolute paths): the same file included again, by the
    # project or by another include, is loaded once
    _included: set[tuple[str, ...]] = msgspec.field(default_factory=set)
    # (tree, section, name) of the resources an include brought into a file's tree
    _brought: set[tuple[int, str, str]] = msgspec.field(default_factory=set)
    # per file read for its services: what `extends` resolves in
    _file_scopes: dict[str, _Scope] = msgspec.field(default_factory=dict)

    def project(
        self, paths: Sequence[tuple[str, str]], env: dict[str, str], chain: tuple[str, ...] = ()
    ) -> Node | None:
        """The files (absolute path, display) merged in order, includes and extends resolved."""
        merged: Node | None = None
        for path, display in paths:
            if self._over:
                break  # reported: read no more
            tree = self.files.load_tree(path, display, env)
            if tree is None or not isinstance(tree.value, dict):
                continue
            if not self.count(tree, tree.where, (), "with the files read before it, this file"):
                continue
            self.read.append(path)
            self.includes(tree, (*chain, path))
            merged = tree if merged is None else merge(merged, tree)
        if merged is None:
            return None
        self.extends(merged, env)  # before `clean`: a service's `!reset` applies to its base
        return clean(merged) or merged

    # -- include

    def includes(self, tree: Node, chain: tuple[str, ...]) -> None:
        inc = tree.value.pop("include", None)
        if inc is None:
            return
        here = os.path.dirname(chain[-1])
        entries = inc.value if isinstance(inc.value, list) else None
        if entries is None:
            self.error(inc.where, ("include",), "must be a list of files or of {path: ...}")
            return
        for i, entry in enumerate(entries):
            epath: Path = ("include", i)
            paths: list[Node] = []
            project_dir: str | None = None
            env_files: list[str] = []
            if isinstance(entry.value, str):
                paths = [entry]
            elif isinstance(entry.value, dict) and entry.get("path") is not None:
                p = entry.get("path")
                assert p is not None
                paths = p.value if isinstance(p.value, list) else [p]
                pd = entry.get("project_directory")
                if pd is not None and isinstance(pd.value, str):
                    project_dir = str(rebase_path(pd.value, here))
                ef = entry.get("env_file")
                if ef is not None:
                    items = ef.value if isinstance(ef.value, list) else [ef]
                    for x in items:
                        given = str(rebase_path(x.value, here)) if isinstance(x.value, str) else ""
                        if not given:
                            self.error(x.where, (*epath, "env_file"), "must be a file path")
                        elif not os.path.exists(given):
                            shown = self.files.display(given)
                            self.error(
                                x.where, (*epath, "env_file"), f'env file "{shown}" does not exist'
                            )
                        else:
                            env_files.append(given)
                unknown = [
                    k
                    for k in entry.value
                    if k not in ("path", "project_directory", "env_file") and not k.startswith("x-")
                ]
                for k in unknown:
                    self.error(
                        entry.value[k].key, (*epath, k), f'unknown field "{k}" of an include'
                    )
            else:
                self.error(entry.where, epath, 'an include is a file path or a mapping with "path"')
                continue
            if not paths or not all(isinstance(p.value, str) and p.value for p in paths):
                self.error(entry.where, epath, "an include needs the path of a compose file")
                continue
            files = [(str(rebase_path(p.value, here)), p) for p in paths]
            missing = [(f, p) for f, p in files if not os.path.exists(f)]
            if missing:
                for f, p in missing:
                    self.error(
                        p.where, epath, f'included file "{self.files.display(f)}" does not exist'
                    )
                continue
            loop = next((f for f, _ in files if f in chain), None)
            if loop is not None:
                names = [self.files.display(c) for c in chain[chain.index(loop) :]]
                self.error(
                    entry.where,
                    epath,
                    "include cycle: " + " -> ".join([*names, self.files.display(loop)]),
                )
                continue
            if len(chain) >= yamlpos.MAX_DEPTH:  # each level of include recurses
                self.error(
                    entry.where,
                    epath,
                    f"includes nested more than {yamlpos.MAX_DEPTH} files deep",
                )
                continue
            included = tuple(f for f, _ in files)
            if included in self._included:
                continue  # loaded already: its resources are in the project once
            self._included.add(included)
            directory = project_dir or os.path.dirname(files[0][0])
            sub_env = self.files.env_for_dir(directory, self.files.display(directory), env_files)
            sub = self.project([(f, self.files.display(f)) for f, _ in files], sub_env, chain)
            if sub is None:
                continue
            if env_files:
                fill_bare_environment(sub, sub_env)
            rebase_project(sub, directory)
            self.add_included(tree, sub, entry)

    def add_included(self, tree: Node, sub: Node, entry: Node) -> None:
        for section in SECTIONS:
            objs = sub.get(section)
            if objs is None or not isinstance(objs.value, dict):
                continue
            mine = tree.get(section)
            if mine is None or not isinstance(mine.value, dict):
                mine = Node({}, objs.where, objs.key)
                tree.value[section] = mine
            for name, obj in objs.value.items():
                if name in mine.value:
                    other = obj.key or obj.where
                    here = mine.value[name].key or mine.value[name].where
                    also = (
                        f'{section[:-1]} "{name}" is also defined by the included file '
                        f"{other.display}:{other.line}:{other.column}"
                    )
                    if (id(tree), section, name) in self._brought:  # two includes clash
                        self.error(here, (section, name), also)
                    else:  # the spec: the including file's own definition is kept
                        self.files.problem(
                            "warning", here, (section, name), f"{also}; this one is kept"
                        )
                    continue
                mine.value[name] = obj
                self._brought.add((id(tree), section, name))

    # -- extends

    def extends(self, root: Node, env: dict[str, str]) -> None:
        services = root.get("services")
        if services is None or not isinstance(services.value, dict):
            return
        scope = _Scope(services, root.where.path)
        for name in _bases_first(services.value):
            self.resolve(scope, name, env, ())

    def resolve(
        self, scope: _Scope, name: str, env: dict[str, str], chain: tuple[tuple[str, str], ...]
    ) -> Node | None:
        """The service `name` of `scope` with its `extends` applied (in place)."""
        svc: Node | None = scope.services.value.get(name)
        if svc is None or not isinstance(svc.value, dict):
            return svc
        ext = svc.get("extends")
        if ext is None:
            return svc
        me = (scope.file, name)
        epath: Path = ("services", name, "extends")
        if me in chain:
            names = [n for _, n in chain[chain.index(me) :]] + [name]
            self.error(ext.key or ext.where, epath, "extends cycle: " + " -> ".join(names))
            svc.value.pop("extends", None)
            return svc
        if len(chain) >= yamlpos.MAX_DEPTH:  # resolving recurses once per link
            self.error(
                ext.key or ext.where,
                epath,
                f"extends chain of more than {yamlpos.MAX_DEPTH} services: "
                + " -> ".join([*(n for _, n in chain[:3]), "...", name]),
            )
            svc.value.pop("extends", None)
            return svc
        target, file_node = self.extends_target(ext, epath)
        if target is None:
            svc.value.pop("extends", None)
            return svc
        if file_node is None:
            other_scope = scope
            if target not in scope.services.value:
                self.error(
                    ext.where,
                    epath,
                    f'service "{name}" extends "{target}", which is not defined',
                )
                svc.value.pop("extends", None)
                return svc
        else:
            other_file = str(rebase_path(file_node.value, os.path.dirname(file_node.where.path)))
            other_scope_or = self.file_scope(other_file, env, file_node, epath)
            if other_scope_or is None:
                svc.value.pop("extends", None)
                return svc
            other_scope = other_scope_or
            if target not in other_scope.services.value:
                self.error(
                    ext.where,
                    epath,
                    f'service "{name}" extends "{target}", which is not defined in '
                    f'"{self.files.display(other_file)}"',
                )
                svc.value.pop("extends", None)
                return svc
        base = self.resolve(other_scope, target, env, (*chain, me))
        if other_scope is not scope and base is not None:
            base = clean(base)  # a copy: the other file's service stays as it is
            if base is not None:
                rebase_service(base, os.path.dirname(other_scope.file))
        svc.value.pop("extends", None)
        if base is None or not isinstance(base.value, dict):
            return svc
        inherited = Node(
            {k: v for k, v in base.value.items() if k not in _NOT_INHERITED},
            base.where,
            base.key,
        )
        if not self.count(inherited, ext.key or ext.where, epath, "what extends copies here"):
            return svc
        merged = merge(inherited, svc, ("services", name)) or svc
        svc.value = merged.value
        return svc

    def extends_target(self, ext: Node, epath: Path) -> tuple[str | None, Node | None]:
        if isinstance(ext.value, str) and ext.value:
            return ext.value, None
        if isinstance(ext.value, dict):
            service = ext.get("service")
            file_node = ext.get("file")
            for k, v in ext.value.items():
                if k not in ("service", "file") and not k.startswith("x-"):
                    self.error(v.key, (*epath, k), f'unknown field "{k}" of extends')
            if service is None or not isinstance(service.value, str) or not service.value:
                self.error(
                    ext.where, epath, 'extends needs "service": the name of the service to extend'
                )
                return None, None
            if file_node is not None and not (isinstance(file_node.value, str) and file_node.value):
                self.error(file_node.where, (*epath, "file"), "must be the path of a compose file")
                return None, None
            return service.value, file_node
        self.error(
            ext.where, epath, 'must be a service name or a mapping with "service" and "file"'
        )
        return None, None

    def file_scope(self, path: str, env: dict[str, str], node: Node, epath: Path) -> _Scope | None:
        cached = self._file_scopes.get(path)
        if cached is not None:
            return cached
        if not os.path.exists(path):
            self.error(
                node.where, (*epath, "file"), f'file "{self.files.display(path)}" does not exist'
            )
            return None
        tree = self.files.load_tree(path, self.files.display(path), env)
        if tree is None:
            return None
        self.read.append(path)
        services = tree.get("services")
        if services is None or not isinstance(services.value, dict):
            services = Node({}, tree.where)
        scope = _Scope(services, path)
        self._file_scopes[path] = scope
        return scope

    def error(self, where: Where | None, path: Path, message: str) -> None:
        self.files.problem("error", where, path, message)

    def count(self, node: Node, where: Where | None, path: Path, what: str) -> bool:
        """Counts the values of `node` against the bound on one file's (yamlpos.MAX_NODES):
        a project may include one file many times and extend one service many times, each a
        copy. False, reported once, when the project goes past it."""
        self._values += _size(node)
        if self._values <= yamlpos.MAX_NODES:
            return True
        if not self._over:
            self._over = True
            self.error(
                where,
                path,
                f"{what} brings the compose project past {yamlpos.MAX_NODES} values",
            )
        return False


def _size(node: Node) -> int:
    """How many values `node` holds, itself included."""
    count = 0
    todo = [node]
    while todo:
        n = todo.pop()
        count += 1
        if isinstance(n.value, dict):
            todo.extend(n.value.values())
        elif isinstance(n.value, list):
            todo.extend(n.value)
    return count


def _bases_first(services: dict[str, Node]) -> list[str]:
    """The names of `services`, each after the service of the same file it extends: resolved
    in this order, `Assembler.resolve` finds every base already resolved and recurses one
    level, however long the chain. A chain that ends in a cycle keeps the written order, so
    that the cycle is reported where it starts."""

    def base(name: str) -> str | None:
        svc = services.get(name)
        ext = svc.get("extends") if svc is not None and isinstance(svc.value, dict) else None
        if ext is None:
            return None
        target: Any = ext.value
        if isinstance(target, dict):
            service = ext.get("service")
            target = service.value if service is not None and ext.get("file") is None else None
        return target if isinstance(target, str) and target in services else None

    order: list[str] = []
    done: set[str] = set()
    for name in services:
        chain: list[str] = []
        seen: set[str] = set()
        link: str | None = name
        while link is not None and link not in done and link not in seen:
            chain.append(link)
            seen.add(link)
            link = base(link)
        order.extend(chain if link in seen else reversed(chain))
        done.update(chain)
    return order


# What a service does not inherit from the service it extends. `depends_on` is inherited, as
# the reference loader (compose v2) does, although older compose documentation said otherwise.
_NOT_INHERITED = ("links", "volumes_from")


class _Scope(msgspec.Struct):
    services: Node
    file: str  # absolute path of the file the services come from


# ---------------------------------------------------------------------------------------------
# Profiles


def profiles_of(svc: Node) -> list[str]:
    p = svc.get("profiles")
    if p is None or not isinstance(p.value, list):
        return []
    return [str(x.value) for x in p.value if isinstance(x.value, str)]


def select_profiles(root: Node, enabled: Sequence[str], files: Files) -> None:
    """Drop the services whose profiles are all disabled; a service that stays must not
    depend on one that goes."""
    services = root.get("services")
    if services is None or not isinstance(services.value, dict):
        return
    on = set(enabled)
    inactive: dict[str, list[str]] = {}
    for name, svc in services.value.items():
        profiles = profiles_of(svc)
        if profiles and "*" not in on and not on.intersection(profiles):
            inactive[name] = profiles
    for name, svc in services.value.items():
        if name in inactive:
            continue
        if isinstance(svc.value, dict):
            svc.value.pop("profiles", None)
        mode = svc.get("network_mode")
        peer = str(mode.value).removeprefix("service:") if mode is not None else ""
        if mode is not None and str(mode.value).startswith("service:") and peer in inactive:
            files.problem(
                "error",
                mode.where,
                ("services", name, "network_mode"),
                f'service "{name}" joins the network namespace of "{peer}", which is not '
                f"enabled: enable its profile ({', '.join(inactive[peer])}) with --profile or "
                "COMPOSE_PROFILES",
            )
            if isinstance(svc.value, dict):  # said once: not again as an unknown service
                svc.value.pop("network_mode", None)
        deps = svc.get("depends_on")
        if deps is None:
            continue
        for key, dep, entry, at in _dependencies(deps):
            if key not in inactive:
                continue
            _remove(deps, entry)
            required = True
            if isinstance(dep, dict) and isinstance(dep.get("required"), Node):
                required = dep["required"].value is not False
            if not required:
                continue
            listed = ", ".join(inactive[key])
            files.problem(
                "error",
                entry.key or entry.where,
                ("services", name, "depends_on", at),
                f'service "{name}" depends on "{key}", which is not enabled: enable its '
                f"profile ({listed}) with --profile or COMPOSE_PROFILES",
            )
    for name in inactive:
        del services.value[name]


def _dependencies(
    deps: Node,
) -> Iterator[tuple[str, dict[str, Node] | None, Node, str | int]]:
    if isinstance(deps.value, list):
        for i, item in enumerate(list(deps.value)):
            if isinstance(item.value, str):
                yield item.value, None, item, i
    elif isinstance(deps.value, dict):
        for key, item in list(deps.value.items()):
            yield key, item.value if isinstance(item.value, dict) else None, item, key


def _remove(deps: Node, entry: Node) -> None:
    if isinstance(deps.value, list):
        deps.value = [d for d in deps.value if d is not entry]
    elif isinstance(deps.value, dict):
        deps.value = {k: v for k, v in deps.value.items() if v is not entry}
