"""Compose-shaped documents and the context of one being loaded.

A manifest document is either a `pyapply/v1` `Stack` (the compose-shaped spec under `spec`)
or a plain compose file; `envelope` tells which. A `Context` follows one document through
loading: it knows where every field was written (for located problems), interpolates
`${VAR}` and casts strings to numbers and booleans where compose does (`prepare`),
validates against the JSON Schema and remembers which fields had errors (`ok`), and
resolves host paths written in it. `Session` is what all the documents of one `load`
share: the problems found, the interpolation budget, and the policy's file guard.
`StackDocument` is a loaded stack as written, with positions, for the checks that read
more than the model holds (the policy).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import msgspec

from pyapply.reconciler.core.model import Location, Problem
from pyapply.reconciler.manifest import schema, yamlpos
from pyapply.reconciler.manifest.discovery import Source
from pyapply.reconciler.manifest.interpolate import (
    Budget,
    DotenvProblem,
    InterpolationError,
    interpolate,
)
from pyapply.reconciler.manifest.values import Bad, kind_of, scalar_str, show

API_VERSION = "pyapply/v1"
KIND = "Stack"

Path = tuple[str | int, ...]


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")
SECTIONS = ("services", "networks", "volumes", "configs", "secrets")


# May the loader read this env file (absolute path), written in a manifest whose
# directories are these? "read"; "quiet": read it, but never quote its lines in a message
# (a file from outside the manifest's directory, such as /proc/self/environ); "skip": do not
# read it at all. A policy decides (`reconciler.manifest.policy`).
FileAccess = Literal["read", "quiet", "skip"]
FileGuard = Callable[[str, Sequence[str]], FileAccess]


class StackDocument(msgspec.Struct, frozen=True):
    """A loaded stack as it was written (after interpolation), with where every field is.

    Checks that read a stack as written (the policy reads `privileged`, `pid`, `devices`,
    `security_opt` ... with every position, fields that pyapply only warns about too) use
    this instead of re-reading files. Paths are full document paths, `base` included."""

    data: Any  # the whole document; the compose-shaped spec is at `base`
    base: Path  # ("spec",) for a pyapply/v1 Stack, () for a compose file
    display: str  # the file shown for a field not recorded in `positions.files`
    directory: str  # the manifest's (compose project's) directory, absolute
    positions: yamlpos.Document
    # host paths the loader resolved (bind sources, env files, config and secret files),
    # absolute, by the path of the field that names them
    resolved: Mapping[Path, str] = msgspec.field(default_factory=dict)
    dotenv: str | None = None  # the `.env` beside the manifest, when there is one

    @property
    def spec(self) -> Any:
        return walk(self.data, self.base)

    def location(self, path: Path, *, key: bool = False) -> Location:
        return locate(self.positions, self.display, path, key=key)

    def directory_of(self, path: Path) -> str:
        """The directory of the file `path` was written in (another file than the
        manifest's for compose includes and `extends`), absolute."""
        shown = self.positions.files.get(path)
        return os.path.dirname(os.path.abspath(shown)) if shown else self.directory


def format_path(path: Sequence[str | int]) -> str:
    """`("spec", "services", "web", "ports", 0)` -> `spec.services.web.ports[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


MISSING: Any = object()


def walk(data: Any, parts: Sequence[str | int]) -> Any:
    """The value at `parts` below `data`, or MISSING."""
    for part in parts:
        in_dict = isinstance(data, dict) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            return MISSING
        data = data[part]
    return data


# ---------------------------------------------------------------------------------------------
# Interpolation and type casting over the document tree

# Maps whose keys are names or data (so `x-foo` there is a name, not an extension field).
_DATA_MAPS = {
    "labels",
    "environment",
    "driver_opts",
    "networks",
    "ulimits",
    "sysctls",
    "options",
    "aux_addresses",
    "depends_on",
    "extra_hosts",
    "annotations",
    "args",
}

# Compose turns these strings into numbers or booleans after interpolation.
_CASTS: dict[tuple[str, ...], str] = {
    ("services", "*", "scale"): "int",
    ("services", "*", "pids_limit"): "int",
    ("services", "*", "deploy", "replicas"): "int",
    ("services", "*", "deploy", "update_config", "parallelism"): "int",
    ("services", "*", "deploy", "resources", "limits", "pids"): "int",
    ("services", "*", "deploy", "restart_policy", "max_attempts"): "int",
    ("services", "*", "healthcheck", "retries"): "int",
    ("services", "*", "ulimits", "*"): "int",
    ("services", "*", "ulimits", "*", "soft"): "int",
    ("services", "*", "ulimits", "*", "hard"): "int",
    ("services", "*", "ports", "*", "target"): "int",
    ("services", "*", "read_only"): "bool",
    ("services", "*", "init"): "bool",
    ("services", "*", "tty"): "bool",
    ("services", "*", "stdin_open"): "bool",
    ("services", "*", "privileged"): "bool",
    ("services", "*", "oom_score_adj"): "int",
    ("services", "*", "post_start", "*", "privileged"): "bool",
    ("services", "*", "pre_stop", "*", "privileged"): "bool",
    ("services", "*", "healthcheck", "disable"): "bool",
    ("services", "*", "build", "no_cache"): "bool",
    ("services", "*", "build", "pull"): "bool",
    ("services", "*", "depends_on", "*", "required"): "bool",
    ("services", "*", "depends_on", "*", "restart"): "bool",
    ("services", "*", "volumes", "*", "read_only"): "bool",
    ("services", "*", "volumes", "*", "volume", "nocopy"): "bool",
    ("services", "*", "env_file", "*", "required"): "bool",
    ("networks", "*", "internal"): "bool",
    ("networks", "*", "external"): "bool",
    ("networks", "*", "enable_ipv6"): "bool",
    ("networks", "*", "attachable"): "bool",
    ("volumes", "*", "external"): "bool",
    ("configs", "*", "external"): "bool",
    ("secrets", "*", "external"): "bool",
}
_TRUE = {"true", "yes", "y", "on"}
_FALSE = {"false", "no", "n", "off"}


_CASTS_BY_END: dict[tuple[int, str], list[tuple[tuple[str, ...], str]]] = {}
for _pattern, _kind in _CASTS.items():
    _CASTS_BY_END.setdefault((len(_pattern), _pattern[-1]), []).append((_pattern, _kind))


def cast_kind(rel: Path) -> str | None:
    if not rel:
        return None
    last = rel[-1] if isinstance(rel[-1], str) else "*"
    candidates = _CASTS_BY_END.get((len(rel), last), []) + _CASTS_BY_END.get((len(rel), "*"), [])
    for pattern, kind in candidates:
        if all(p in ("*", r) for p, r in zip(pattern, rel, strict=True)):
            return kind
    return None


def cast_value(value: str, kind: str) -> Any:
    text = value.strip()
    if kind == "int" and re.fullmatch(r"[+-]?[0-9]{1,18}", text):  # fits in 64 bits
        return int(text)
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    return value


def is_extension(parent_rel: Path, key: str) -> bool:
    """Is `key` an `x-*` extension field (ignored) rather than a name or data key?"""
    if not key.startswith("x-"):
        return False
    if not parent_rel:
        return True
    last = parent_rel[-1]
    if len(parent_rel) == 1:
        return last not in SECTIONS
    return not (isinstance(last, str) and last in _DATA_MAPS)


def locate(doc: yamlpos.Document, display: str, path: Path, *, key: bool = False) -> Location:
    """Where `path` was written: its value (its key for mappings, lists and `key=True`), else
    the nearest parent that has a position."""
    p = path
    while True:
        kpos = doc.keys.get(p)
        vpos = doc.values.get(p)
        whole = key or isinstance(walk(doc.data, p), dict | list)
        pos = (kpos or vpos) if whole else (vpos or kpos)
        if pos:
            return Location(doc.files.get(p, display), pos[0], pos[1])
        if not p:
            return Location(display, *doc.start)
        p = p[:-1]


def problem_order(p: Problem) -> tuple[str, int, int, str, str]:
    loc = p.location
    return (loc.file, loc.line, loc.column, p.path, p.message) if loc else ("", 0, 0, "", p.message)


class Session:
    """What the documents of one `load` share: the problems found (in every file), the
    budget of characters that variables may put into strings, the policy's file guard, and
    the counters bounding what one load may expand to."""

    def __init__(self, environ: dict[str, str], file_guard: FileGuard | None = None) -> None:
        self.environ = environ
        self.file_guard = file_guard
        self.problems: list[Problem] = []
        self.budget = Budget()  # of characters put into strings by variables
        self.unset_warned: set[tuple[str, str]] = set()  # (file, variable) warned about
        self.dotenv_paths: dict[str, str] = {}  # directory -> its .env, when there is one
        self.ports = 0  # ports published so far, ranges counted in full
        # the compose project name given outside the files (`-p/--project-name`), which
        # wins over COMPOSE_PROJECT_NAME and `name:`
        self.project_name: str | None = None
        # False for `config`/`convert`, which render what compose would: the checks of what
        # only matters when running (a missing file, a host port published twice) then warn
        self.strict = True

    def access(self, path: str, directories: Sequence[str]) -> FileAccess:
        return "read" if self.file_guard is None else self.file_guard(path, directories)

    def env_problems(
        self, problems: Sequence[DotenvProblem], shown: str, access: FileAccess
    ) -> None:
        for p in problems:
            message = p.message
            if access == "quiet":  # located, but none of the file's text
                message = (
                    "cannot be read as KEY=VALUE (the line is not shown: the file is outside "
                    "the manifest's directory)"
                )
            self.problems.append(Problem(message, Location(shown, p.line, p.column)))


class Context:
    """A document being loaded: where things are, what is wrong, and the variables."""

    def __init__(self, session: Session, source: Source, doc: yamlpos.Document) -> None:
        self.session = session
        self.source = source
        self.doc = doc
        self.base: Path = ()
        self.env: dict[str, str] = {}
        self.bad: set[Path] = set()  # paths with a schema error, and all their parents
        self.broken: set[Path] = set()  # paths whose value itself has the wrong shape
        self.resolved: dict[Path, str] = {}  # see `resolve`
        # a compose project's name when it is given outside its files (-p, then
        # COMPOSE_PROJECT_NAME from the environment or .env); None: `name:`, else the directory
        self.project_name: str | None = None

    @property
    def compose(self) -> bool:
        return not self.base

    def location(self, path: Path, *, key: bool = False) -> Location:
        return locate(self.doc, self.source.display, path, key=key)

    def report(
        self,
        severity: Literal["error", "warning"],
        path: Path,
        message: str,
        key: bool,
        one_host: bool = False,
    ) -> None:
        self.session.problems.append(
            Problem(message, self.location(path, key=key), format_path(path), severity, one_host)
        )

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.report("error", path, message, key)

    def refuse(self, path: Path, message: str, *, key: bool = False) -> None:
        """An error when the stack is to run (`validate`, `apply`), a warning when it is only
        rendered (`Session.strict` off)."""
        if self.session.strict:
            self.error(path, message, key=key)
        else:
            self.warn(path, message, key=key)

    def warn(self, path: Path, message: str, *, key: bool = False, one_host: bool = False) -> None:
        """A warning; `one_host`: about the runtimes of one host only (`Problem.one_host`)."""
        self.report("warning", path, message, key, one_host)

    def ok(self, path: Path) -> bool:
        """No schema error at or below `path`, so its value has the shape the schema says."""
        return path not in self.bad

    def resolve(self, given: str, at: Path | None = None) -> tuple[str, str]:
        """A path written in the manifest -> (absolute path, path to show); `at`, the field
        that names it, records it for the checks that read `StackDocument.resolved`."""
        expanded = given
        if given == "~" or given.startswith("~/"):
            home = self.env.get("HOME") or os.path.expanduser("~")
            expanded = home + given[1:]
        if os.path.isabs(expanded):
            absolute = shown = os.path.normpath(expanded)
        else:
            absolute = os.path.normpath(os.path.join(self.source.directory, expanded))
            shown = os.path.normpath(os.path.join(self.source.display_dir, expanded))
        if at is not None:
            self.resolved[at] = absolute
        return absolute, shown

    def directories(self, path: Path) -> list[str]:
        """The manifest's directories for a field: the project's, and the one of the file
        the field was written in (an included or extended file's)."""
        shown = self.doc.files.get(path)
        dirs = [self.source.directory]
        if shown:
            dirs.append(os.path.dirname(os.path.abspath(shown)))
        return dirs

    # -- interpolation and casting

    def prepare(self, node: Any, path: Path) -> None:
        rel = self.relative(path)
        items: Iterator[tuple[str | int, Any]]
        if isinstance(node, dict):
            items = ((k, v) for k, v in list(node.items()) if not is_extension(rel, k))
        elif isinstance(node, list):
            items = iter(list(enumerate(node)))
        else:
            return
        for key, value in items:
            child = (*path, key)
            if isinstance(value, str):
                value = self.interpolate(value, child)
                kind = cast_kind(self.relative(child))
                if kind:
                    value = cast_value(value, kind)
                node[key] = value
            else:
                self.prepare(value, child)

    def relative(self, path: Path) -> Path:
        if self.base and path[: len(self.base)] == self.base:
            return path[len(self.base) :]
        return () if self.base else path

    def interpolate(self, value: str, path: Path) -> str:
        try:
            result = interpolate(value, self.env, self.session.budget)
        except InterpolationError as e:
            self.error(path, str(e))
            self.mark_bad(path)
            return value
        for name in result.unset:
            if (self.source.path, name) not in self.session.unset_warned:
                self.session.unset_warned.add((self.source.path, name))
                self.warn(path, f'variable "{name}" is not set; using an empty string')
        return result.value

    # -- schema

    def validate(self, name: str) -> None:
        for path, message, key in schema.errors(name, self.doc.data):
            self.error(path, message, key=key)
            self.mark_bad(path)

    def mark_bad(self, path: Path) -> None:
        """Reported already: the value at `path` is not read any further."""
        self.broken.add(path)
        for i in range(len(path) + 1):
            self.bad.add(path[:i])


class Fields:
    """Reads the fields of one mapping of a document (a service): only where the schema
    found no error at or below a field, so that readers can trust the shapes the schema
    promises; a value that does not parse is reported at its field."""

    def __init__(self, ctx: Context, raw: dict[str, Any], path: Path) -> None:
        self.ctx = ctx
        self.raw = raw
        self.path = path

    def at(self, *parts: str | int) -> Path:
        return (*self.path, *parts)

    def get(self, *parts: str | int) -> Any:
        """The value at `parts` below the service if present and well-shaped, else MISSING."""
        value = walk(self.raw, parts)
        return value if value is not MISSING and self.ctx.ok(self.at(*parts)) else MISSING

    def entries(self, *parts: str | int) -> list[tuple[Any, Any, Path]]:
        """(key or index, value, path) of the well-shaped entries of a list or mapping."""
        value = walk(self.raw, parts)
        pairs: Iterator[tuple[Any, Any]]
        if self.at(*parts) in self.ctx.broken:
            return []
        if isinstance(value, list):
            pairs = enumerate(value)
        elif isinstance(value, dict):
            pairs = iter(value.items())
        else:
            return []
        out = []
        for key, item in pairs:
            path = self.at(*parts, key)
            if self.ctx.ok(path):
                out.append((key, item, path))
        return out

    def attempt(self, path: Path, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Bad as e:
            self.ctx.error(path, str(e))
            return MISSING


def envelope(ctx: Context) -> bool:
    """Recognise the document: a pyapply/v1 Stack (its spec under `spec`) or a compose file
    (top-level `services`); `ctx.base` then says which. Anything else is reported."""
    data = ctx.doc.data
    if not isinstance(data, dict):
        ctx.error((), f"a manifest document must be a mapping, got {kind_of(data)}")
        return False
    if "apiVersion" in data:
        api = data["apiVersion"]
        if api != API_VERSION:
            ctx.error(
                ("apiVersion",),
                f'unknown apiVersion {show(api)}: this pyapply reads "{API_VERSION}"',
            )
            return False
        if "kind" not in data:
            ctx.error((), f'missing "kind": a {API_VERSION} document is "kind: {KIND}"')
            return False
        if data["kind"] != KIND:
            ctx.error(
                ("kind",),
                f'unknown kind {show(data["kind"])}: {API_VERSION} defines only "{KIND}"',
            )
            return False
        ctx.base = ("spec",)
    elif "services" in data:
        ctx.base = ()
    else:
        ctx.error(
            (),
            f'not a pyapply manifest: expected "apiVersion: {API_VERSION}" and '
            f'"kind: {KIND}", or a compose file with top-level "services"',
        )
        return False
    return True


def ignored(ctx: Context, raw: dict[str, Any], path: Path, names: Sequence[str]) -> None:
    for name in names:
        if name in raw:
            ctx.warn((*path, name), f'"{name}" is not supported and is ignored', key=True)


def list_or_dict(ctx: Context, raw: Any, path: Path, what: str) -> dict[str, str]:
    """labels: {k: v} or ["k=v"] -> {k: v} (values stringified like compose)."""
    out: dict[str, str] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            out[key] = scalar_str(value)
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            key, _, value = item.partition("=")
            if not key:
                ctx.error((*path, i), f"{show(item)} is not a {what} of the form KEY=value")
                continue
            out[key] = value
    return out
