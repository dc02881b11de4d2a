"""Read manifest files and directories into validated, normalised Stacks.

The pipeline, for every YAML document of every file:
1. parse it keeping the position of every key and value (`yamlpos`);
2. recognise it: a `pyapply/v1` `Stack`, or a plain compose file (top-level `services`);
3. interpolate `${VAR}` in string values from the environment over the `.env` file beside
   the manifest (`interpolate`), then turn strings into numbers and booleans where compose
   would (so `replicas: ${N:-2}` works);
4. validate against the JSON Schema (schemas/v1), every error in words;
5. normalise the compose-shaped spec into `model` dataclasses, checking what a schema cannot
   say (port syntax, undeclared names, dependency cycles, host port clashes ...).

Nothing stops at the first mistake: `load` gathers every problem, each with file, line,
column and JSON path, and raises `ManifestError` when any of them is an error. It only reads
files; it never touches a container runtime.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.resources
import ipaddress
import json
import math
import os
import posixpath
import re
import shlex
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from pyapply.reconciler.core import identity
from pyapply.reconciler.manifest import compose, seccomp_file, swarm_deploy, yamlpos
from pyapply.reconciler.manifest.interpolate import (
    Budget,
    DotenvProblem,
    InterpolationError,
    interpolate,
    parse_dotenv,
)

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

from pyapply.reconciler.core.model import (
    Condition,
    ConfigSpec,
    Dependency,
    FileRef,
    Healthcheck,
    Location,
    ManifestError,
    Mount,
    NetworkSpec,
    Port,
    Problem,
    PullPolicy,
    Resources,
    SecretSpec,
    ServiceNetwork,
    ServiceSpec,
    Stack,
    Ulimit,
    UpdateConfig,
    UpdateOrder,
    VolumeSpec,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "FileAccess",
    "FileGuard",
    "Loaded",
    "StackDocument",
    "explain",
    "format_path",
    "load",
    "schema",
]

API_VERSION = "pyapply/v1"
KIND = "Stack"

Path = tuple[str | int, ...]

_OBJECT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECTIONS = ("services", "networks", "volumes", "configs", "secrets")


# May the loader read this env file (absolute path), written in a manifest whose
# directories are these? "read"; "quiet": read it, but never quote its lines in a message
# (a file from outside the manifest's directory, such as /proc/self/environ); "skip": do not
# read it at all. A policy decides (`reconciler.manifest.policy`).
FileAccess = Literal["read", "quiet", "skip"]
FileGuard = Callable[[str, Sequence[str]], FileAccess]


@dataclass(frozen=True)
class StackDocument:
    """A loaded stack as it was written (after interpolation), with where every field is.

    Checks that read what the model leaves out (the policy reads `privileged`, `pid`,
    `devices`, `security_opt` ... which pyapply does not run, and needs every position) use
    this instead of re-reading files. Paths are full document paths, `base` included."""

    data: Any  # the whole document; the compose-shaped spec is at `base`
    base: Path  # ("spec",) for a pyapply/v1 Stack, () for a compose file
    display: str  # the file shown for a field not recorded in `positions.files`
    directory: str  # the manifest's (compose project's) directory, absolute
    positions: yamlpos.Document
    # host paths the loader resolved (bind sources, env files, config and secret files),
    # absolute, by the path of the field that names them
    resolved: Mapping[Path, str] = field(default_factory=dict)
    dotenv: str | None = None  # the `.env` beside the manifest, when there is one

    @property
    def spec(self) -> Any:
        return _walk(self.data, self.base)

    def location(self, path: Path, *, key: bool = False) -> Location:
        return _locate(self.positions, self.display, path, key=key)

    def directory_of(self, path: Path) -> str:
        """The directory of the file `path` was written in (another file than the
        manifest's for compose includes and `extends`), absolute."""
        shown = self.positions.files.get(path)
        return os.path.dirname(os.path.abspath(shown)) if shown else self.directory


@dataclass(frozen=True)
class Loaded:
    stacks: tuple[Stack, ...]  # sorted by name
    warnings: tuple[Problem, ...]
    files: tuple[str, ...]  # every manifest file read (absolute paths), sorted
    content_digest: str  # sha256 hex of the files' bytes (path+content, sorted)
    # per stack name: the variables its manifest saw (the environment over its .env file);
    # configs and secrets with `environment:` read their value from here
    environments: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # per stack name: the stack as written, with positions
    documents: Mapping[str, StackDocument] = field(default_factory=dict)


def load(
    paths: Sequence[str],
    environ: Mapping[str, str] | None = None,
    profiles: Sequence[str] = (),
    file_guard: FileGuard | None = None,
) -> Loaded:
    """Load every manifest under `paths` (files, or directories searched recursively for
    *.yaml / *.yml). Raises ManifestError listing every error found (not just the first);
    warnings are returned in `Loaded.warnings`. `environ` defaults to os.environ.

    Compose files form projects (see `reconciler.manifest.compose`): a directory holding a
    `compose.yaml` (or `compose.yml`, `docker-compose.yaml`, `docker-compose.yml`) is that one
    project, with its `compose.override.yaml` if there is one, and nothing else below it is
    read; compose files named with `-f` are merged in order into one project, except that a
    file whose `name:` differs from the `name:` of the project so far starts another one.
    `profiles` enables compose profiles (default: `COMPOSE_PROFILES`, comma-separated).

    `file_guard`, when given, is asked before any env file (`env_file:`, `.env`) is read: a
    file it says "skip" for is not read at all (its variables are missing), so that a policy
    can refuse `env_file: /etc/shadow` without its content reaching any message (the caller
    must then report the refusal, as `reconciler.manifest.policy.check` does); one it says "quiet"
    for is read, but a line of it is never quoted in a message."""
    env = dict(os.environ if environ is None else environ)
    return _Loader(env, profiles, file_guard).load(paths)


def schema(name: Literal["stack", "compose"] = "stack") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pyapply/v1 Stack document or of a compose file."""
    return cast(dict[str, Any], json.loads(json.dumps(_schemas()[name])))


def explain(err: ValidationError) -> Iterator[tuple[Path, str, bool]]:
    """A JSON Schema error in words: (path, sentence, locate-at-the-key) for each thing
    wrong. Shared with the other documents pyapply reads (policy files)."""
    return _explain(err)


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


# ---------------------------------------------------------------------------------------------
# Schemas


@functools.cache
def _schemas() -> dict[str, dict[str, Any]]:
    root = importlib.resources.files("pyapply.schemas") / "v1"
    return {
        name: json.loads((root / f"{name}.schema.json").read_text(encoding="utf-8"))
        for name in ("stack", "compose")
    }


@functools.cache
def _validator(name: str) -> Draft202012Validator:
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


# Changes when `_validator` judges differently with the same schema (strict integers, finite
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


# ---------------------------------------------------------------------------------------------
# Small helpers


class _Bad(Exception):
    """A value is wrong; the message is the sentence to report."""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        if len(value) > 200:  # a message names the value; it need not repeat a whole file
            return (
                json.dumps(value[:100], ensure_ascii=False)[:-1] + f'..." ({len(value)} characters)'
            )
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _a(value: Any) -> str:
    """What kind of value this is, for "got ..." in messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _scalar_str(value: Any) -> str:
    """Compose's stringification of environment and label values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _join_or(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _parse_duration(value: Any) -> float:
    """Go's duration syntax in seconds: "1m30s" -> 90.0, "500ms" -> 0.5; raises _Bad."""
    hint = 'must be a duration such as "30s", "1m30s" or "500ms"'
    if isinstance(value, bool) or not isinstance(value, str):
        raise _Bad(f"{hint}, got {_show(value)}")
    text = value.strip()
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise _Bad(f"{hint}, got {_show(value)}")
    if total > _MAX_SECONDS:  # Go's durations are int64 nanoseconds; float("9"*400) is inf
        raise _Bad(f"must be at most about 292 years, got {_show(value)}")
    return total


_MAX_SECONDS = (2**63 - 1) / 1e9
_MAX_BYTES = 2**63 - 1  # sizes are int64 for docker and the kernel


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _parse_size(value: Any) -> int:
    """128m -> 134217728 (binary multipliers, like docker); a bare number is bytes."""
    if isinstance(value, bool):
        raise _Bad(f'must be a size such as "128m" or "1g", got {_show(value)}')
    if isinstance(value, int):
        if value < 0:
            raise _Bad(f"must not be negative, got {value}")
        size = value
    else:
        m = _SIZE.fullmatch(str(value).strip())
        if not m:
            raise _Bad(f'must be a size such as "128m" or "1g", got {_show(value)}')
        number = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
        if number > _MAX_BYTES:  # also inf, from a long string of digits
            raise _Bad(f"must be at most 8 EiB, got {_show(value)}")
        size = int(number)
    if size > _MAX_BYTES:
        raise _Bad(f"must be at most 8 EiB, got {_show(value)}")
    return size


def _parse_host_ip(host: str, ip: str) -> tuple[str, str]:
    """An extra_hosts entry: a host name and an IP address (or docker's "host-gateway")."""
    if not ip or not re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", host):
        raise _Bad(
            f'must be "host:ip" with a host name, got {_show(f"{host}:{ip}" if ip else host)}'
        )
    ip = ip.strip().removeprefix("[").removesuffix("]")
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise _Bad(f"{_show(ip)} is not an IP address (in the entry for {host})") from None
    return host, ip


def _parse_count(value: Any) -> int:
    """A positive whole number, as an int or a string ("3")."""
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value).strip()):
        raise _Bad(f"must be a whole number such as 3, got {_show(value)}")
    if int(value) < 1:
        raise _Bad(f"must be at least 1, got {int(value)}")
    return int(value)


def _parse_id(value: Any) -> str:
    """A numeric user or group id ("1000" or 1000): names would have to be looked up in
    the image, which the host-side file cannot do."""
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value).strip()):
        raise _Bad(f"must be a numeric id such as 1000, got {_show(value)}")
    return str(value).strip()


def _parse_mode(value: Any) -> int:
    """0440 (YAML reads a leading 0 as octal), "0440", "440" or "0o440" -> 0o440."""
    if isinstance(value, bool):
        raise _Bad(f'must be a file mode such as "0440", got {_show(value)}')
    if isinstance(value, int):
        mode = value
    else:
        text = str(value).strip().lower().removeprefix("0o")
        if not re.fullmatch(r"[0-7]+", text):
            raise _Bad(f'must be an octal file mode such as "0440", got {_show(value)}')
        mode = int(text, 8)
    if not 0 <= mode <= 0o7777:
        raise _Bad(f"must be a file mode between 0 and 07777, got {oct(mode)[2:]}")
    return mode


_MISSING: Any = object()


def _walk(data: Any, parts: Sequence[str | int]) -> Any:
    """The value at `parts` below `data`, or _MISSING."""
    for part in parts:
        in_dict = isinstance(data, dict) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_dict or in_list):
            return _MISSING
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
    ("services", "*", "healthcheck", "disable"): "bool",
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


def _cast_kind(rel: Path) -> str | None:
    if not rel:
        return None
    last = rel[-1] if isinstance(rel[-1], str) else "*"
    candidates = _CASTS_BY_END.get((len(rel), last), []) + _CASTS_BY_END.get((len(rel), "*"), [])
    for pattern, kind in candidates:
        if all(p in ("*", r) for p, r in zip(pattern, rel, strict=True)):
            return kind
    return None


def _cast(value: str, kind: str) -> Any:
    text = value.strip()
    if kind == "int" and re.fullmatch(r"[+-]?[0-9]{1,18}", text):  # fits in 64 bits
        return int(text)
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    return value


def _is_extension(parent_rel: Path, key: str) -> bool:
    """Is `key` an `x-*` extension field (ignored) rather than a name or data key?"""
    if not key.startswith("x-"):
        return False
    if not parent_rel:
        return True
    last = parent_rel[-1]
    if len(parent_rel) == 1:
        return last not in _SECTIONS
    return not (isinstance(last, str) and last in _DATA_MAPS)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Source:
    display: str  # as the user would write it: relative to where they pointed us
    path: str  # absolute
    # compose files with the same group form one project: "" a file of its own, "-f" the
    # files named on the command line, "dir:<path>" a directory's compose project
    group: str = ""

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def display_dir(self) -> str:
        return os.path.dirname(self.display)


class _Loader:
    def __init__(
        self,
        environ: dict[str, str],
        profiles: Sequence[str] = (),
        file_guard: FileGuard | None = None,
    ) -> None:
        self.environ = environ
        self.file_guard = file_guard
        self.dotenv_paths: dict[str, str] = {}  # directory -> its .env, when there is one
        self.profiles = [p for given in profiles for p in given.split(",") if p.strip()]
        self.problems: list[Problem] = []
        self.dotenv: dict[str, dict[str, str]] = {}
        self.unset_warned: set[tuple[str, str]] = set()
        self.drafts: list[_StackDraft] = []
        self.contents: dict[str, bytes] = {}  # every file read, for the digest
        self.preloaded: dict[str, yamlpos.Document] = {}
        self.ports = 0  # ports published so far, ranges counted in full
        self.budget = Budget()  # of characters put into strings by variables

    def load(self, paths: Sequence[str]) -> Loaded:
        sources = self.discover(paths)
        parsed: dict[str, list[yamlpos.Document]] = {}
        for source in sorted(sources, key=lambda s: s.path):
            content = self.read(source)
            if content is None:
                continue
            self.contents[source.path] = content
            parsed[source.path] = self.parse(source, content)
        self.documents(sources, parsed)
        digest = hashlib.sha256()
        for path in sorted(self.contents):
            content = self.contents[path]
            digest.update(f"{path}\0{len(content)}\0".encode())
            digest.update(content)
        self.check_duplicates()
        self.check_host_ports()
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            raise ManifestError(sorted(errors, key=_problem_order))
        stacks = sorted((d.stack() for d in self.drafts if d.name), key=lambda s: s.name)
        warnings = sorted((p for p in self.problems if p.severity == "warning"), key=_problem_order)
        return Loaded(
            stacks=tuple(stacks),
            warnings=tuple(warnings),
            files=tuple(sorted(self.contents)),
            content_digest=digest.hexdigest(),
            environments={d.name: dict(d.ctx.env) for d in self.drafts if d.name},
            documents={d.name: d.document() for d in self.drafts if d.name},
        )

    # -- files

    def discover(self, paths: Sequence[str]) -> list[_Source]:
        found: dict[str, _Source] = {}
        for given in paths:
            shown = os.path.normpath(given)
            absolute = os.path.abspath(given)
            if os.path.isdir(absolute):
                entries = list(_yaml_files(absolute))
                if not entries:
                    self.problems.append(
                        Problem(
                            f"{shown}: no *.yaml or *.yml files in this directory",
                            severity="warning",
                        )
                    )
                for rel, group in entries:
                    path = os.path.join(absolute, rel)
                    found.setdefault(path, _Source(os.path.join(shown, rel), path, group))
            elif os.path.exists(absolute):  # `read` refuses what is not a regular file
                found.setdefault(absolute, _Source(shown, absolute, "-f"))
            else:
                self.problems.append(Problem(f"{shown}: no such file or directory"))
        return list(found.values())

    def read(self, source: _Source) -> bytes | None:
        try:
            return _read_file(source.path)
        except _Unreadable as e:
            self.problems.append(Problem(str(e), Location(source.display, 1, 1)))
            return None

    def parse(self, source: _Source, content: bytes) -> list[yamlpos.Document]:
        docs: list[yamlpos.Document] = []
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = content.count(b"\n", 0, e.start) + 1
            self.problems.append(
                Problem("the file is not UTF-8 text", Location(source.display, line, 1))
            )
            return docs
        try:
            for doc in yamlpos.parse(text):
                for (line, column), message in doc.errors:
                    self.problems.append(Problem(message, Location(source.display, line, column)))
                docs.append(doc)
        except yamlpos.YamlSyntaxError as e:
            self.problems.append(Problem(e.message, Location(source.display, e.line, e.column)))
        return docs

    def documents(
        self, sources: Sequence[_Source], parsed: Mapping[str, list[yamlpos.Document]]
    ) -> None:
        """Every document, in the order the paths were given: compose files grouped into
        projects, everything else one document at a time."""
        projects: list[list[tuple[_Source, yamlpos.Document]]] = []
        by_group: dict[str, list[tuple[_Source, yamlpos.Document]]] = {}
        current_name: str | None = None
        for source in sources:
            docs = parsed.get(source.path, [])
            composes = [d for d in docs if _is_compose(d.data)]
            for doc in docs:
                if not _is_compose(doc.data):
                    self.document(source, doc)
            if not composes:
                continue
            if len(docs) > 1 or not source.group:
                projects.extend([(source, doc)] for doc in composes)
                continue
            doc = composes[0]
            if source.group != "-f":
                by_group.setdefault(source.group, []).append((source, doc))
                if len(by_group[source.group]) == 1:
                    projects.append(by_group[source.group])
                continue
            # files named with -f: one project, unless a file names another project
            name = self.declared_name(source, doc)
            group = by_group.get("-f")
            if group is None or (name and current_name and name != current_name):
                group = by_group["-f"] = []
                projects.append(group)
                current_name = None
            group.append((source, doc))
            current_name = name or current_name
        for project in projects:
            self.compose_project(project)

    def declared_name(self, source: _Source, doc: yamlpos.Document) -> str | None:
        name = doc.data.get("name") if isinstance(doc.data, dict) else None
        if not isinstance(name, str):
            return None
        try:
            return interpolate(name, self.env_for(source), self.budget).value
        except InterpolationError:
            return name

    def compose_project(self, entries: list[tuple[_Source, yamlpos.Document]]) -> None:
        first = entries[0][0]
        env = self.env_for(first)
        if len(entries) == 1 and _self_contained(entries[0][1]):
            # nothing to merge, include, extend or select: the document as it is
            doc = entries[0][1]
            ctx = _Ctx(self, first, doc)
            ctx.env = env
            ctx.prepare(doc.data, ())
            self.compose_stack(ctx, [first.path])
            return
        assembler = compose.Assembler(self)
        for source, doc in entries:
            self.preloaded[source.path] = doc
        root = assembler.project([(s.path, s.display) for s, _ in entries], env)
        self.preloaded.clear()
        if root is None or not isinstance(root.value, dict):
            return
        enabled = self.profiles or [
            p.strip() for p in env.get("COMPOSE_PROFILES", "").split(",") if p.strip()
        ]
        compose.select_profiles(root, enabled, self)
        ctx = _Ctx(self, first, compose.flatten(root))
        ctx.env = env
        self.compose_stack(ctx, list(dict.fromkeys(assembler.read)))

    def compose_stack(self, ctx: _Ctx, sources: list[str]) -> None:
        ctx.base = ()
        ctx.validate("compose")
        data = ctx.doc.data
        if "version" in data:
            ctx.warn(("version",), '"version" is obsolete and ignored', key=True)
        name, name_path = self.stack_name(ctx, data)
        draft = _StackDraft(ctx, name or "", name_path)
        draft.sources = sources
        draft.build(data)
        self.drafts.append(draft)

    # -- what compose.Assembler needs (the compose.Files protocol)

    def load_tree(self, path: str, display: str, env: dict[str, str]) -> compose.Node | None:
        source = _Source(display, path)
        doc = self.preloaded.pop(path, None)
        if doc is None:
            content = self.read(source)
            if content is None:
                return None
            self.contents[path] = content
            docs = self.parse(source, content)
            if not docs:
                return None
            doc = docs[0]
            if len(docs) > 1 or not isinstance(doc.data, dict) or "apiVersion" in doc.data:
                self.problems.append(
                    Problem(
                        "an included or extended file must be one compose document",
                        Location(display, *doc.start),
                    )
                )
                return None
        ctx = _Ctx(self, source, doc)
        ctx.env = env
        ctx.prepare(doc.data, ())
        return compose.to_tree(doc, display, path)

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

    def env_for_dir(
        self, directory: str, display_dir: str, env_files: Sequence[str]
    ) -> dict[str, str]:
        if not env_files:
            return self.env_for(
                _Source(os.path.join(display_dir, "x"), os.path.join(directory, "x"))
            )
        values: dict[str, str] = {}
        for path in env_files:
            shown = self.display(path)
            if not os.path.exists(path):
                self.problems.append(Problem(f"{shown}: env file does not exist"))
                continue
            # an include's env file: no field of the stack names it, so the loader says
            # itself what the policy made of it
            access = self.access(path, [directory])
            outside = f"{shown}: the env file of an include is outside its directory"
            if access == "skip":
                self.problems.append(Problem(f"{outside}; the policy denies reading it"))
                continue
            if access == "quiet":
                self.problems.append(Problem(outside, severity="warning"))
            values.update(self.dotenv_file(path, shown, access))
        return {**values, **self.environ}

    def display(self, path: str) -> str:
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel

    def problem(
        self, severity: str, where: compose.Where | None, path: compose.Path, message: str
    ) -> None:
        location = Location(where.display, where.line, where.column) if where else None
        self.problems.append(
            Problem(
                message,
                location,
                format_path(path),
                "warning" if severity == "warning" else "error",
            )
        )

    def dotenv_file(self, path: str, shown: str, access: FileAccess = "read") -> dict[str, str]:
        try:
            text = _read_text(path)
        except _Unreadable as e:
            self.problems.append(Problem(str(e), Location(shown, 1, 1)))
            return {}
        values, problems = parse_dotenv(text, self.environ, self.budget)
        self.env_problems(problems, shown, access)
        return values

    def env_for(self, source: _Source) -> dict[str, str]:
        """The variables for a manifest: the environment over the `.env` file beside it."""
        directory = source.directory
        if directory not in self.dotenv:
            values: dict[str, str] = {}
            path = os.path.join(directory, ".env")
            shown = os.path.join(source.display_dir, ".env")
            if os.path.lexists(path):
                self.dotenv_paths[directory] = path
            # a FIFO or a device there is an error (`dotenv_file` says so); a directory is
            # not meant as one (a virtualenv is often called .env)
            if os.path.exists(path) and not os.path.isdir(path):
                access = self.access(path, [directory])
                if access != "skip":
                    values = self.dotenv_file(path, shown, access)
            self.dotenv[directory] = {**values, **self.environ}
        return self.dotenv[directory]

    # -- documents

    def document(self, source: _Source, doc: yamlpos.Document) -> None:
        data = doc.data
        ctx = _Ctx(self, source, doc)
        if not isinstance(data, dict):
            ctx.error((), f"a manifest document must be a mapping, got {_a(data)}")
            return
        if "apiVersion" in data:
            api = data["apiVersion"]
            if api != API_VERSION:
                ctx.error(
                    ("apiVersion",),
                    f'unknown apiVersion {_show(api)}: this pyapply reads "{API_VERSION}"',
                )
                return
            if "kind" not in data:
                ctx.error((), f'missing "kind": a {API_VERSION} document is "kind: {KIND}"')
                return
            if data["kind"] != KIND:
                ctx.error(
                    ("kind",),
                    f'unknown kind {_show(data["kind"])}: {API_VERSION} defines only "{KIND}"',
                )
                return
            ctx.base = ("spec",)
        elif "services" in data:
            ctx.base = ()
        else:
            ctx.error(
                (),
                f'not a pyapply manifest: expected "apiVersion: {API_VERSION}" and '
                f'"kind: {KIND}", or a compose file with top-level "services"',
            )
            return
        ctx.env = self.env_for(source)
        ctx.prepare(data, ())
        ctx.validate("compose" if ctx.compose else "stack")
        spec = data if ctx.compose else data.get("spec")
        name, name_path = self.stack_name(ctx, data)
        draft = _StackDraft(ctx, name or "", name_path)
        draft.build(spec if isinstance(spec, dict) else {})
        self.drafts.append(draft)

    def stack_name(self, ctx: _Ctx, data: dict[str, Any]) -> tuple[str | None, Path]:
        rule = 'use lower-case letters, digits, "_" and "-", starting with a letter or digit'
        if not ctx.compose:
            path: Path = ("metadata", "name")
            name = _walk(data, path)
            if not isinstance(name, str) or not ctx.ok(path):
                return None, path  # already reported
            if not identity.valid_stack_name(name):
                ctx.error(path, f"invalid stack name {_show(name)}: {rule}")
            return name, path
        if "name" in data:
            name = data["name"]
            if not isinstance(name, str) or not ctx.ok(("name",)):
                return None, ("name",)
            if not identity.valid_stack_name(name):
                ctx.error(("name",), f"invalid stack name {_show(name)}: {rule}")
            return name, ("name",)
        env_name = ctx.env.get("COMPOSE_PROJECT_NAME")
        if env_name:
            if not identity.valid_stack_name(env_name):
                ctx.error(
                    (), f"COMPOSE_PROJECT_NAME {_show(env_name)} is not a valid stack name: {rule}"
                )
            return env_name, ()
        directory = os.path.basename(ctx.source.directory)
        name = identity.normalise_stack_name(directory)
        if not identity.valid_stack_name(name):
            ctx.error(
                (),
                f"cannot name the stack after its directory {_show(directory)}: "
                'add a top-level "name:"',
            )
        return name, ()

    # -- across documents

    def check_duplicates(self) -> None:
        first: dict[str, _StackDraft] = {}
        for draft in self.drafts:
            if not draft.name:
                continue
            if draft.name in first:
                other = first[draft.name].ctx.location(first[draft.name].name_path)
                draft.ctx.error(
                    draft.name_path,
                    f'stack "{draft.name}" is declared twice, here and at {other}',
                )
            else:
                first[draft.name] = draft

    def check_host_ports(self) -> None:
        """Two containers cannot publish the same host port, whatever stack they are in."""
        wildcard = {"", "0.0.0.0", "::"}
        # per (port, protocol): the first claim of all and the first on a wildcard address,
        # and the first claim per address; looked up, not scanned, so that many claims of one
        # port stay linear. A claim: (order, service, where)
        Claim = tuple[int, _ServiceDraft, str]
        taken: dict[tuple[int, str], tuple[list[Claim | None], dict[str, Claim]]] = {}
        claimed: list[Claim] = []
        for stack in self.drafts:
            for svc in stack.services:
                replicas_reported: set[Path] = set()
                for port, path in svc.ports:
                    if port.published is None:
                        continue
                    shown = f"{port.published}/{port.protocol}"
                    if port.host_ip:
                        shown = f"{port.host_ip}:{shown}"
                    if svc.spec.replicas > 1 and path not in replicas_reported:
                        replicas_reported.add(path)
                        svc.ctx.error(
                            path,
                            f'service "{svc.spec.name}" runs {svc.spec.replicas} replicas, which '
                            f"cannot all publish host port {shown}: leave the host port out "
                            "or run one replica",
                        )
                    firsts, by_ip = taken.setdefault(
                        (port.published, port.protocol), ([None, None], {})
                    )
                    if port.host_ip in wildcard:
                        clash = firsts[0]
                    else:
                        claims = [c for c in (by_ip.get(port.host_ip), firsts[1]) if c]
                        clash = min(claims, key=lambda c: c[0]) if claims else None
                    if clash is not None:
                        _, other, where = clash
                        whose = f'service "{other.spec.name}"'
                        if other.stack_name != stack.name:
                            whose += f' of stack "{other.stack_name}"'
                        svc.ctx.error(
                            path,
                            f"host port {shown} is already published by {whose} at {where}",
                        )
                    claim = (len(claimed), svc, str(svc.ctx.location(path)))
                    claimed.append(claim)
                    firsts[0] = firsts[0] or claim
                    if port.host_ip in wildcard:
                        firsts[1] = firsts[1] or claim
                    by_ip.setdefault(port.host_ip, claim)


class _Unreadable(Exception):
    """A file the loader will not or cannot read; the message is the sentence to report."""


def _read_file(path: str) -> bytes:
    """The bytes of the regular file at `path` (a symlink is followed), if it holds at most
    yamlpos.MAX_FILE_BYTES; raises _Unreadable.

    A commit can put anything where a manifest is expected: a FIFO would block the loader for
    ever and a link to /dev/zero would fill its memory. So only regular files are opened (some
    devices act on open), without blocking, checked again on the open descriptor (the path may
    change in between), and read no further than one byte past the limit."""
    limit = yamlpos.MAX_FILE_BYTES
    not_regular = "not a regular file: a manifest, .env or env_file must be an ordinary file"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _Unreadable(not_regular)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise _Unreadable(f"cannot read the file: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Unreadable(not_regular)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise _Unreadable(
            f"the file is larger than {limit // (1 << 20)} MiB, the most one may hold"
        )
    except OSError as e:
        raise _Unreadable(f"cannot read the file: {e.strerror}") from None
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    """`_read_file`, decoded as UTF-8 (with or without a byte order mark)."""
    content = _read_file(path)
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = content.count(b"\n", 0, e.start) + 1
        raise _Unreadable(f"the file is not UTF-8 text (line {line})") from None


def _self_contained(doc: yamlpos.Document) -> bool:
    """A compose document with no include, extends, profiles or merge tags."""
    data = doc.data
    if doc.tags or "include" in data:
        return False
    services = data.get("services")
    if not isinstance(services, dict):
        return True
    return not any(
        isinstance(svc, dict) and ("extends" in svc or "profiles" in svc)
        for svc in services.values()
    )


def _is_compose(data: Any) -> bool:
    """A compose file: no apiVersion, and services (or only includes, which bring them)."""
    return (
        isinstance(data, dict)
        and "apiVersion" not in data
        and ("services" in data or "include" in data)
    )


def _yaml_files(root: str) -> Iterator[tuple[str, str]]:
    """(path relative to root, group) of the manifests below root: a directory holding a
    compose file is that compose project only (nothing else in or below it is read)."""
    for directory, dirs, files in os.walk(root):
        project = compose.project_files(directory)
        if project:
            dirs[:] = []
            for name in project:
                path = os.path.join(directory, name)
                yield os.path.relpath(path, root), f"dir:{directory}"
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith((".yaml", ".yml")):
                yield os.path.relpath(os.path.join(directory, name), root), ""


def _locate(doc: yamlpos.Document, display: str, path: Path, *, key: bool = False) -> Location:
    """Where `path` was written: its value (its key for mappings, lists and `key=True`), else
    the nearest parent that has a position."""
    p = path
    while True:
        kpos = doc.keys.get(p)
        vpos = doc.values.get(p)
        whole = key or isinstance(_walk(doc.data, p), dict | list)
        pos = (kpos or vpos) if whole else (vpos or kpos)
        if pos:
            return Location(doc.files.get(p, display), pos[0], pos[1])
        if not p:
            return Location(display, *doc.start)
        p = p[:-1]


def _problem_order(p: Problem) -> tuple[str, int, int, str, str]:
    loc = p.location
    return (loc.file, loc.line, loc.column, p.path, p.message) if loc else ("", 0, 0, "", p.message)


# ---------------------------------------------------------------------------------------------
# One document


class _Ctx:
    """A document being loaded: where things are, what is wrong, and the variables."""

    def __init__(self, loader: _Loader, source: _Source, doc: yamlpos.Document) -> None:
        self.loader = loader
        self.source = source
        self.doc = doc
        self.base: Path = ()
        self.env: dict[str, str] = {}
        self.bad: set[Path] = set()  # paths with a schema error, and all their parents
        self.broken: set[Path] = set()  # paths whose value itself has the wrong shape
        self.resolved: dict[Path, str] = {}  # see `resolve`

    @property
    def compose(self) -> bool:
        return not self.base

    def location(self, path: Path, *, key: bool = False) -> Location:
        return _locate(self.doc, self.source.display, path, key=key)

    def report(
        self, severity: Literal["error", "warning"], path: Path, message: str, key: bool
    ) -> None:
        self.loader.problems.append(
            Problem(message, self.location(path, key=key), format_path(path), severity)
        )

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.report("error", path, message, key)

    def warn(self, path: Path, message: str, *, key: bool = False) -> None:
        self.report("warning", path, message, key)

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
            items = ((k, v) for k, v in list(node.items()) if not _is_extension(rel, k))
        elif isinstance(node, list):
            items = iter(list(enumerate(node)))
        else:
            return
        for key, value in items:
            child = (*path, key)
            if isinstance(value, str):
                value = self.interpolate(value, child)
                kind = _cast_kind(self.relative(child))
                if kind:
                    value = _cast(value, kind)
                node[key] = value
            else:
                self.prepare(value, child)

    def relative(self, path: Path) -> Path:
        if self.base and path[: len(self.base)] == self.base:
            return path[len(self.base) :]
        return () if self.base else path

    def interpolate(self, value: str, path: Path) -> str:
        try:
            result = interpolate(value, self.env, self.loader.budget)
        except InterpolationError as e:
            self.error(path, str(e))
            self.mark_bad(path)
            return value
        for name in result.unset:
            if (self.source.path, name) not in self.loader.unset_warned:
                self.loader.unset_warned.add((self.source.path, name))
                self.warn(path, f'variable "{name}" is not set; using an empty string')
        return result.value

    # -- schema

    def validate(self, name: str) -> None:
        cache_key = _validation_key(name, self.doc.data)
        if cache_key is not None and _known_valid(cache_key):
            return
        errors = sorted(
            _validator(name).iter_errors(self.doc.data),
            key=lambda e: [str(p) for p in e.absolute_path],
        )
        if not errors and cache_key is not None:
            _remember_valid(cache_key)
        for err in errors:
            for path, message, key in _explain(err):
                self.error(path, message, key=key)
                self.mark_bad(path)

    def mark_bad(self, path: Path) -> None:
        """Reported already: the value at `path` is not read any further."""
        self.broken.add(path)
        for i in range(len(path) + 1):
            self.bad.add(path[:i])


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


def _explain(err: ValidationError) -> Iterator[tuple[Path, str, bool]]:
    """A schema error -> (path, sentence, locate-at-the-key) for each thing wrong."""
    path: Path = tuple(err.absolute_path)
    value: Any = err.validator_value
    instance: Any = err.instance
    if err.validator == "additionalProperties" and isinstance(instance, dict):
        known = list(err.schema.get("properties", {})) if isinstance(err.schema, dict) else []
        patterns = err.schema.get("patternProperties", {}) if isinstance(err.schema, dict) else {}
        for key in instance:
            if key not in known and not any(re.search(p, key) for p in patterns):
                yield (*path, key), f'unknown field "{key}"{_suggest(key, known)}', True
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
        got = _a(instance)
        if isinstance(instance, float) and not math.isfinite(instance):
            got = f"{_yaml_float(instance)}: NaN and infinity are not numbers a manifest can use"
        elif isinstance(instance, float):
            got = _show(instance)  # 5.0 where an integer is meant
        yield path, f"must be {_join_or(words)}, got {got}", False
    elif err.validator == "enum":
        allowed = _join_or([_show(v) for v in value])
        yield path, f"must be one of {allowed}, got {_show(instance)}", False
    elif err.validator == "const":
        yield path, f"must be {_show(value)}, got {_show(instance)}", False
    elif err.validator == "minimum":
        yield path, f"must be at least {value}, got {_show(instance)}", False
    elif err.validator == "maximum":
        yield path, f"must be at most {value}, got {_show(instance)}", False
    elif err.validator == "minLength" and value == 1:
        yield path, "must not be empty", False
    else:
        yield path, err.message, False


# ---------------------------------------------------------------------------------------------
# Normalising a stack


@dataclass
class _ServiceDraft:
    ctx: _Ctx
    path: Path
    spec: ServiceSpec
    stack_name: str
    ports: list[tuple[Port, Path]] = field(default_factory=list)
    networks: list[tuple[str, Path]] = field(default_factory=list)
    addresses: list[tuple[str, ipaddress.IPv4Address, Path]] = field(default_factory=list)
    volumes: list[tuple[str, Path]] = field(default_factory=list)
    configs: list[tuple[str, Path]] = field(default_factory=list)
    secrets: list[tuple[str, Path]] = field(default_factory=list)
    depends: list[tuple[Dependency, Path]] = field(default_factory=list)


class _StackDraft:
    def __init__(self, ctx: _Ctx, name: str, name_path: Path) -> None:
        self.ctx = ctx
        self.name = name
        self.name_path = name_path
        self.services: list[_ServiceDraft] = []
        self.networks: dict[str, NetworkSpec] = {}
        self.volumes: dict[str, VolumeSpec] = {}
        self.configs: dict[str, ConfigSpec] = {}
        self.secrets: dict[str, SecretSpec] = {}
        self.declared: dict[str, set[str]] = {s: set() for s in _SECTIONS}
        self.sources: list[str] = [ctx.source.path]

    def stack(self) -> Stack:
        return Stack(
            name=self.name,
            services=tuple(sorted((s.spec for s in self.services), key=lambda s: s.name)),
            networks=tuple(v for _, v in sorted(self.networks.items())),
            volumes=tuple(v for _, v in sorted(self.volumes.items())),
            configs=tuple(v for _, v in sorted(self.configs.items())),
            secrets=tuple(v for _, v in sorted(self.secrets.items())),
            sources=tuple(self.sources),
            location=self.ctx.location(self.name_path),
        )

    def document(self) -> StackDocument:
        ctx = self.ctx
        return StackDocument(
            data=ctx.doc.data,
            base=ctx.base,
            display=ctx.source.display,
            directory=ctx.source.directory,
            positions=ctx.doc,
            resolved=dict(ctx.resolved),
            dotenv=ctx.loader.dotenv_paths.get(ctx.source.directory),
        )

    def build(self, spec: dict[str, Any]) -> None:
        ctx = self.ctx
        base = ctx.base
        sections: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            raw = spec.get(section)
            sections[section] = raw if isinstance(raw, dict) else {}
            if isinstance(raw, dict):
                self.declared[section] = set(raw)
                for key in raw:
                    if not _OBJECT_NAME.fullmatch(key):
                        what = section[:-1]
                        ctx.error(
                            (*base, section, key),
                            f'invalid {what} name {_show(key)}: use letters, digits, "_", "." '
                            'and "-", starting with a letter or digit',
                            key=True,
                        )
        if "include" in spec:
            ctx.error((*base, "include"), '"include" is not supported', key=True)
        for section in _SECTIONS:
            for key, raw in sections[section].items():
                path = (*base, section, key)
                raw = {} if raw is None else raw
                if not isinstance(raw, dict):
                    continue  # the schema said so
                if section == "services":
                    self.services.append(_ServiceBuilder(self, key, raw, path).build())
                elif section == "networks":
                    self.network(key, raw, path)
                elif section == "volumes":
                    self.volume(key, raw, path)
                else:
                    self.file_object(section, key, raw, path)
        self.check_references()
        self.check_cycles()

    # -- top-level objects

    def network(self, key: str, raw: dict[str, Any], path: Path) -> None:
        ctx = self.ctx
        external, external_name = self.external(raw, path)
        driver = raw.get("driver", "bridge")
        if driver != "bridge":
            ctx.warn(
                (*path, "driver"),
                f'network driver {_show(driver)} is not supported; only "bridge" is',
            )
        subnet = gateway = None
        ipam = raw.get("ipam") or {}
        if ipam and ctx.ok((*path, "ipam")):
            if ipam.get("driver", "default") != "default":
                ctx.warn((*path, "ipam", "driver"), "only the default IPAM driver is supported")
            _ignored(ctx, ipam, (*path, "ipam"), ("options",))
            configs = ipam.get("config") or []
            if len(configs) > 1:
                ctx.warn((*path, "ipam", "config", 1), "only the first IPAM config is used")
            if configs:
                first = configs[0]
                cpath = (*path, "ipam", "config", 0)
                _ignored(ctx, first, cpath, ("ip_range", "aux_addresses"))
                subnet, gateway = self.subnet(first, cpath)
        if raw.get("enable_ipv6"):
            ctx.warn((*path, "enable_ipv6"), "IPv6 networks are not supported; this is ignored")
        _ignored(ctx, raw, path, ("driver_opts", "attachable", "enable_ipv4"))
        if external:
            for name in ("driver", "internal", "ipam", "labels", "driver_opts"):
                if name in raw:
                    ctx.error(
                        (*path, name),
                        f'an external network is not created by pyapply, so "{name}" cannot be set',
                        key=True,
                    )
        self.networks[key] = NetworkSpec(
            name=key,
            driver=driver if isinstance(driver, str) else "bridge",
            internal=bool(raw.get("internal", False)),
            subnet=subnet,
            gateway=gateway,
            labels=self.labels(raw, path),
            external=external,
            external_name=external_name,
            location=ctx.location(path, key=True),
        )

    def subnet(self, cfg: dict[str, Any], path: Path) -> tuple[str | None, str | None]:
        ctx = self.ctx
        subnet = cfg.get("subnet")
        gateway = cfg.get("gateway")
        network = None
        if subnet is not None:
            try:
                network = ipaddress.ip_network(subnet)
            except ValueError:
                ctx.error(
                    (*path, "subnet"),
                    f"{_show(subnet)} is not a valid subnet such as 172.20.0.0/24",
                )
                subnet = None
        if gateway is not None:
            try:
                address = ipaddress.ip_address(gateway)
            except ValueError:
                ctx.error((*path, "gateway"), f"{_show(gateway)} is not a valid IP address")
                return subnet, None
            if network is not None and address not in network:
                ctx.error((*path, "gateway"), f"gateway {gateway} is outside the subnet {subnet}")
        return subnet, gateway

    def volume(self, key: str, raw: dict[str, Any], path: Path) -> None:
        ctx = self.ctx
        external, external_name = self.external(raw, path)
        driver = raw.get("driver", "local")
        if driver != "local":
            ctx.warn(
                (*path, "driver"),
                f'volume driver {_show(driver)} is not supported; only "local" is',
            )
        opts: tuple[tuple[str, str], ...] = ()
        if isinstance(raw.get("driver_opts"), dict) and ctx.ok((*path, "driver_opts")):
            opts = tuple(sorted((k, _scalar_str(v)) for k, v in raw["driver_opts"].items()))
        if external:
            for name in ("driver", "driver_opts", "labels"):
                if name in raw:
                    ctx.error(
                        (*path, name),
                        f'an external volume is not created by pyapply, so "{name}" cannot be set',
                        key=True,
                    )
        self.volumes[key] = VolumeSpec(
            name=key,
            driver=driver if isinstance(driver, str) else "local",
            driver_opts=opts,
            labels=self.labels(raw, path),
            external=external,
            external_name=external_name,
            location=ctx.location(path, key=True),
        )

    def external(self, raw: dict[str, Any], path: Path) -> tuple[bool, str | None]:
        ext = raw.get("external", False)
        name = raw.get("name") if isinstance(raw.get("name"), str) else None
        if isinstance(ext, dict) and self.ctx.ok((*path, "external")):
            legacy = ext.get("name")
            return True, legacy if isinstance(legacy, str) else name
        return ext is True, name

    def labels(self, raw: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
        if "labels" not in raw or not self.ctx.ok((*path, "labels")):
            return ()
        return tuple(
            sorted(_list_or_dict(self.ctx, raw["labels"], (*path, "labels"), "label").items())
        )

    def file_object(self, section: str, key: str, raw: dict[str, Any], path: Path) -> None:
        ctx = self.ctx
        what = section[:-1]
        given = [k for k in ("file", "content", "environment") if raw.get(k) is not None]
        external = raw.get("external") not in (None, False)
        if external:
            given.append("external")
        if len(given) != 1:
            ctx.error(
                path,
                f'a {what} must set exactly one of "file", "content", "environment" or "external"',
                key=True,
            )
        file = content = variable = None
        if isinstance(raw.get("file"), str) and ctx.ok((*path, "file")):
            file, shown = ctx.resolve(raw["file"], (*path, "file"))
            if not os.path.isfile(file):
                ctx.error((*path, "file"), f"file {_show(shown)} does not exist")
        if isinstance(raw.get("content"), str):
            content = raw["content"]
        if isinstance(raw.get("environment"), str):
            variable = raw["environment"]
            if variable not in ctx.env:
                ctx.error((*path, "environment"), f'environment variable "{variable}" is not set')
        _ignored(ctx, raw, path, ("template_driver", "driver", "driver_opts"))
        cls = SecretSpec if section == "secrets" else ConfigSpec
        spec = cls(
            name=key,
            file=file,
            content=content,
            environment=variable,
            external=external,
            location=ctx.location(path, key=True),
        )
        if isinstance(spec, SecretSpec):
            self.secrets[key] = spec
        else:
            self.configs[key] = spec

    # -- checks across the stack

    def check_references(self) -> None:
        ctx = self.ctx
        top = "spec." if ctx.base else ""
        services = [s.spec.name for s in self.services]
        all_services = self.declared["services"]
        used_default = False
        for svc in self.services:
            for dep, path in svc.depends:
                if dep.service not in all_services:
                    message = f'depends on unknown service "{dep.service}"{_suggest(dep.service, services)}'
                    if dep.required:
                        ctx.error(path, message)
                    else:
                        ctx.warn(path, message + " (not required, so ignored)")
            for kind, refs in (
                ("network", svc.networks),
                ("volume", svc.volumes),
                ("config", svc.configs),
                ("secret", svc.secrets),
            ):
                declared = self.declared[kind + "s"]
                for name, path in refs:
                    if kind == "network" and name == "default" and name not in declared:
                        used_default = True
                    elif name not in declared:
                        ctx.error(
                            path,
                            f'{kind} "{name}" is not declared under "{top}{kind}s"'
                            f"{_suggest(name, sorted(declared))}",
                        )
            for net, address, path in svc.addresses:
                spec = self.networks.get(net)
                if spec is None or spec.subnet is None:
                    continue
                subnet = ipaddress.ip_network(spec.subnet)
                if address not in subnet:
                    ctx.error(path, f'{address} is outside the subnet {subnet} of network "{net}"')
        if used_default and "default" not in self.networks:
            self.networks["default"] = NetworkSpec(name="default")

    def check_cycles(self) -> None:
        graph: dict[str, list[str]] = {}
        edges: dict[tuple[str, str], Path] = {}
        for svc in self.services:
            graph[svc.spec.name] = []
            for dep, path in svc.depends:
                graph[svc.spec.name].append(dep.service)
                edges[(svc.spec.name, dep.service)] = path
        reported: set[tuple[str, ...]] = set()
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        for start in sorted(graph):
            if state.get(start):
                continue
            stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
            trail = [start]
            state[start] = 1
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    trail.pop()
                    state[node] = 2
                    continue
                if child not in graph:
                    continue
                if state.get(child) == 1:
                    cycle = trail[trail.index(child) :]
                    i = cycle.index(min(cycle))
                    cycle = cycle[i:] + cycle[:i]
                    if tuple(cycle) not in reported:
                        reported.add(tuple(cycle))
                        loop = " -> ".join([*cycle, cycle[0]])
                        target = cycle[1] if len(cycle) > 1 else cycle[0]
                        self.ctx.error(edges[(cycle[0], target)], f"dependency cycle: {loop}")
                elif not state.get(child):
                    state[child] = 1
                    trail.append(child)
                    stack.append((child, iter(sorted(graph[child]))))


def _ignored(ctx: _Ctx, raw: dict[str, Any], path: Path, names: Sequence[str]) -> None:
    for name in names:
        if name in raw:
            ctx.warn((*path, name), f'"{name}" is not supported and is ignored', key=True)


def _list_or_dict(ctx: _Ctx, raw: Any, path: Path, what: str) -> dict[str, str]:
    """labels: {k: v} or ["k=v"] -> {k: v} (values stringified like compose)."""
    out: dict[str, str] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            out[key] = _scalar_str(value)
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            key, _, value = item.partition("=")
            if not key:
                ctx.error((*path, i), f"{_show(item)} is not a {what} of the form KEY=value")
                continue
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Services

# Compose fields pyapply does not implement; using one is a warning, naming it.
_UNSUPPORTED = (
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "external_links",
    "gpus",
    "group_add",
    "ipc",
    "isolation",
    "label_file",
    "mac_address",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "provider",
    "runtime",
    "shm_size",
    "stdin_open",
    "stop_timeout",
    "storage_opt",
    "sysctls",
    "tty",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
)
_RESTART = re.compile(r"no|always|unless-stopped|on-failure(?::\d+)?")
_PROTOCOLS = ("tcp", "udp", "sctp")
_BIND_OPTIONS = {
    "ro",
    "rw",
    "z",
    "Z",
    "nocopy",
    "cached",
    "delegated",
    "consistent",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
}
_TMPFS_FLAGS = {"ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev"}


class _ServiceBuilder:
    """One service: raw compose mapping -> ServiceSpec, plus the names it refers to.

    Each field is read only where the schema found no error at or below it, so the code can
    trust the shapes the schema promises and still report every other problem.
    """

    def __init__(self, stack: _StackDraft, name: str, raw: dict[str, Any], path: Path) -> None:
        self.stack = stack
        self.ctx = stack.ctx
        self.name = name
        self.raw = raw
        self.path = path
        self.fields: dict[str, Any] = {"image": ""}
        self.draft = _ServiceDraft(
            ctx=self.ctx, path=path, spec=ServiceSpec(name=name, image=""), stack_name=stack.name
        )

    def at(self, *parts: str | int) -> Path:
        return (*self.path, *parts)

    def get(self, *parts: str | int) -> Any:
        """The value at `parts` below the service if present and well-shaped, else _MISSING."""
        value = _walk(self.raw, parts)
        return value if value is not _MISSING and self.ctx.ok(self.at(*parts)) else _MISSING

    def entries(self, *parts: str | int) -> list[tuple[Any, Any, Path]]:
        """(key or index, value, path) of the well-shaped entries of a list or mapping."""
        value = _walk(self.raw, parts)
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
        except _Bad as e:
            self.ctx.error(path, str(e))
            return _MISSING

    def build(self) -> _ServiceDraft:
        ctx = self.ctx
        self.image()
        for name in ("command", "entrypoint"):
            value = self.get(name)
            if value is not _MISSING:
                self.fields[name] = self.command(value, self.at(name))
        self.environment()
        self.ports()
        self.mounts()
        self.networks()
        self.depends_on()
        self.healthcheck()
        self.restart()
        self.deploy()
        self.simple()
        self.file_refs("configs", "/")
        self.file_refs("secrets", "/run/secrets/")
        self.security_opt()
        for name in _UNSUPPORTED:
            if name in self.raw:
                ctx.warn(self.at(name), f'"{name}" is not supported and is ignored', key=True)
        if "profiles" in self.raw:
            ctx.warn(
                self.at("profiles"),
                '"profiles" is not supported; the service is always deployed',
                key=True,
            )
        if "extends" in self.raw:
            ctx.error(self.at("extends"), '"extends" is not supported', key=True)
        if "links" in self.raw:
            ctx.warn(
                self.at("links"),
                '"links" is legacy: the linked services start first, as with "depends_on"; '
                "services reach each other by service name on the networks they share (link "
                'aliases are not created: use network "aliases")',
                key=True,
            )
        if "container_name" in self.raw:
            ctx.warn(
                self.at("container_name"),
                '"container_name" is not supported and is ignored: pyapply names containers '
                "<stack>-<service>-<n>",
                key=True,
            )
        self.draft.spec = ServiceSpec(
            name=self.name, location=ctx.location(self.path, key=True), **self.fields
        )
        return self.draft

    # -- fields

    def image(self) -> None:
        image = self.get("image")
        if "build" in self.raw:
            if isinstance(image, str):
                self.ctx.warn(
                    self.at("build"),
                    f'"build" is not supported; the image {_show(image)} is used as it is',
                    key=True,
                )
            elif "image" not in self.raw:
                # the name compose gives the image it builds
                image = f"{self.stack.name}-{self.name}"
                self.ctx.warn(
                    self.at("build"),
                    f'"build" is not supported; without "image" the service runs {_show(image)}, '
                    "which must already exist",
                    key=True,
                )
        elif "image" not in self.raw:
            self.ctx.error(self.path, 'missing required field "image"', key=True)
        if isinstance(image, str):
            self.fields["image"] = image

    def command(self, value: Any, path: Path) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as e:
                self.ctx.error(path, f"cannot split {_show(value)} into words: {str(e).lower()}")
                return None
        return tuple(_scalar_str(v) for v in value)

    def environment(self) -> None:
        env: dict[str, str] = {}
        files = self.get("env_file")
        if isinstance(files, str):
            env.update(self.env_file(files, True, self.at("env_file")))
        else:
            for _, entry, path in self.entries("env_file"):
                if isinstance(entry, str):
                    env.update(self.env_file(entry, True, path))
                else:
                    env.update(self.env_file(entry["path"], entry.get("required", True), path))
        for key, value, path in self.entries("environment"):
            if isinstance(key, int):  # the list form
                item = value
                key, eq, value = item.partition("=")
                if not key:
                    self.ctx.error(path, f"{_show(item)} is not of the form KEY=value")
                    continue
                value = value if eq else None
            if value is not None:
                env[key] = _scalar_str(value)
            elif key in self.ctx.env:  # a bare name takes its value from the environment
                env[key] = self.ctx.env[key]
        if env:
            self.fields["environment"] = tuple(sorted(env.items()))

    def env_file(self, given: str, required: bool, path: Path) -> dict[str, str]:
        absolute, shown = self.ctx.resolve(given, path)
        if not os.path.exists(absolute):
            if required:
                self.ctx.error(path, f"env file {_show(shown)} does not exist")
            return {}
        access = self.ctx.loader.access(absolute, self.ctx.directories(path))
        if access == "skip":
            return {}  # refused by the policy, which reports it
        try:
            text = _read_text(absolute)
        except _Unreadable as e:
            self.ctx.error(path, f"env file {_show(shown)}: {e}")
            return {}
        values, problems = parse_dotenv(text, self.ctx.env, self.ctx.loader.budget)
        self.ctx.loader.env_problems(problems, shown, access)
        return values

    def ports(self) -> None:
        ports: list[Port] = []
        for _, item, path in self.entries("ports"):
            if self.ctx.loader.ports > yamlpos.MAX_NODES:
                break  # reported once; ranges are not expanded any further
            try:
                if isinstance(item, dict):
                    got = [_long_port(item)]
                elif isinstance(item, int):
                    if not 1 <= item <= 65535:
                        raise _Bad(f"port {item} is out of range (1-65535)")
                    got = [Port(target=item)]
                else:
                    got = _short_ports(item)
            except _Bad as e:
                self.ctx.error(path, str(e))
                continue
            # a range is as many ports as it spans, and each is checked against every other:
            # counted against the loader's bound on values, like what aliases expand to
            self.ctx.loader.ports += len(got)
            if self.ctx.loader.ports > yamlpos.MAX_NODES:
                self.ctx.error(
                    path,
                    f"port ranges here bring the ports published by these manifests past "
                    f"{yamlpos.MAX_NODES}",
                )
                break
            for port in got:
                ports.append(port)
                self.draft.ports.append((port, path))
        if ports:
            self.fields["ports"] = tuple(ports)

    def mounts(self) -> None:
        mounts: list[Mount] = []
        for _, item, path in self.entries("volumes"):
            parse = self.long_volume if isinstance(item, dict) else self.short_volume
            mount = self.attempt(path, parse, item, path)
            if isinstance(mount, Mount):
                mounts.append(mount)
        tmpfs = self.get("tmpfs")
        items = [(0, tmpfs, self.at("tmpfs"))] if isinstance(tmpfs, str) else self.entries("tmpfs")
        for _, item, path in items:
            mount = self.attempt(path, _tmpfs, item)
            if isinstance(mount, Mount):
                mounts.append(mount)
        if mounts:
            self.fields["mounts"] = tuple(mounts)

    def short_volume(self, text: str, path: Path) -> Mount:
        parts = text.split(":")
        if len(parts) > 3 or not all(parts):
            raise _Bad(
                f"{_show(text)} is not a valid volume: expected SOURCE:TARGET[:MODE] or TARGET"
            )
        if len(parts) == 1:
            return Mount(type="volume", target=_target(parts[0], text, "volume"))
        source, target = parts[0], _target(parts[1], text, "volume")
        options = parts[2].split(",") if len(parts) == 3 else []
        unknown = [o for o in options if o not in _BIND_OPTIONS]
        if unknown:
            raise _Bad(f"{_show(text)} is not a valid volume: unknown option {_show(unknown[0])}")
        if "ro" in options and "rw" in options:
            raise _Bad(f'{_show(text)} is not a valid volume: it says both "ro" and "rw"')
        read_only = "ro" in options
        if source.startswith(("/", ".", "~")):
            absolute, _ = self.ctx.resolve(source, path)
            return Mount(type="bind", target=target, source=absolute, read_only=read_only)
        if not _OBJECT_NAME.fullmatch(source):
            raise _Bad(
                f"{_show(text)} is not a valid volume: {_show(source)} is not a volume name; "
                f'write "./{source}" for a path relative to the manifest'
            )
        self.draft.volumes.append((source, path))
        return Mount(type="volume", target=target, source=source, read_only=read_only)

    def long_volume(self, item: dict[str, Any], path: Path) -> Mount:
        kind = item["type"]
        target = _target(item["target"], item["target"])
        read_only = bool(item.get("read_only", False))
        source = item.get("source")
        _ignored(self.ctx, item, path, ("consistency",))
        if isinstance(item.get("volume"), dict):
            _ignored(self.ctx, item["volume"], (*path, "volume"), ("subpath",))
        if isinstance(item.get("bind"), dict):
            _ignored(self.ctx, item["bind"], (*path, "bind"), ("propagation", "selinux"))
        if kind == "bind":
            if not source:
                raise _Bad('a bind mount needs "source"')
            absolute, _ = self.ctx.resolve(source, (*path, "source"))
            return Mount(type="bind", target=target, source=absolute, read_only=read_only)
        if kind == "tmpfs":
            if source:
                raise _Bad('a tmpfs mount has no "source"')
            opts = item.get("tmpfs") or {}
            size = mode = None
            if "size" in opts:
                size = self.attempt((*path, "tmpfs", "size"), _parse_size, opts["size"])
            if "mode" in opts:
                mode = self.attempt((*path, "tmpfs", "mode"), _parse_mode, opts["mode"])
            return Mount(
                type="tmpfs",
                target=target,
                read_only=read_only,
                tmpfs_size=size if isinstance(size, int) else None,
                tmpfs_mode=mode if isinstance(mode, int) else None,
            )
        if source:
            self.draft.volumes.append((source, (*path, "source")))
        return Mount(type="volume", target=target, source=source or "", read_only=read_only)

    def networks(self) -> None:
        ctx = self.ctx
        nets: dict[str, ServiceNetwork] = {}
        for key, cfg, path in self.entries("networks"):
            if isinstance(key, int):  # the list form
                if cfg in nets:
                    ctx.error(path, f'network "{cfg}" is listed twice')
                nets[cfg] = ServiceNetwork(cfg)
                self.draft.networks.append((cfg, path))
                continue
            cfg = cfg or {}
            self.draft.networks.append((key, path))
            aliases = tuple(sorted(set(cfg.get("aliases") or ())))
            address = cfg.get("ipv4_address")
            if address is not None:
                try:
                    parsed = ipaddress.IPv4Address(address)
                    self.draft.addresses.append((key, parsed, (*path, "ipv4_address")))
                except ValueError:
                    ctx.error((*path, "ipv4_address"), f"{_show(address)} is not an IPv4 address")
                    address = None
            _ignored(
                ctx,
                cfg,
                path,
                ("ipv6_address", "link_local_ips", "mac_address", "driver_opts", "priority"),
            )
            _ignored(ctx, cfg, path, ("gw_priority",))
            nets[key] = ServiceNetwork(key, aliases, address)
        if "network_mode" in self.raw:
            mode = self.get("network_mode")
            if nets:
                ctx.error(
                    self.at("network_mode"),
                    '"network_mode" cannot be used together with "networks"',
                    key=True,
                )
            elif isinstance(mode, str) and mode != "none":
                ctx.warn(
                    self.at("network_mode"),
                    f'"network_mode: {mode}" is not supported; the service is not attached to '
                    "any network",
                    key=True,
                )
            return
        if not nets:
            nets["default"] = ServiceNetwork("default")
            self.draft.networks.append(("default", self.path))
        self.fields["networks"] = tuple(v for _, v in sorted(nets.items()))

    def depends_on(self) -> None:
        deps: dict[str, Dependency] = {}
        for key, cfg, path in self.entries("depends_on"):
            if isinstance(key, int):  # the list form
                if cfg in deps:
                    self.ctx.error(path, f'"{cfg}" is listed twice')
                dep = Dependency(cfg)
            else:
                dep = Dependency(
                    service=key,
                    condition=cast(Condition, cfg.get("condition", "service_started")),
                    required=cfg.get("required", True),
                    restart=cfg.get("restart", False),
                )
            deps[dep.service] = dep
            self.draft.depends.append((dep, path))
        # legacy links ("db" or "db:alias") order the start like depends_on, as in compose
        for _, item, path in self.entries("links"):
            service = str(item).split(":", 1)[0]
            if service and service not in deps:
                deps[service] = Dependency(service)
                self.draft.depends.append((deps[service], path))
        if deps:
            self.fields["depends_on"] = tuple(v for _, v in sorted(deps.items()))

    def healthcheck(self) -> None:
        raw = _walk(self.raw, ("healthcheck",))
        if not isinstance(raw, dict):
            return
        path = self.at("healthcheck")
        test: tuple[str, ...] = ()
        value = self.get("healthcheck", "test")
        if isinstance(value, str):
            if not value.strip():
                self.ctx.error((*path, "test"), "must not be empty")
            test = ("CMD-SHELL", value)
        elif isinstance(value, list):
            test = tuple(value)
            if not test:
                self.ctx.error((*path, "test"), "must not be empty")
            elif test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                self.ctx.error(
                    (*path, "test", 0), 'a test list must start with "CMD", "CMD-SHELL" or "NONE"'
                )
            elif test[0] == "CMD" and len(test) < 2:
                self.ctx.error((*path, "test"), 'needs a command after "CMD"')
            elif test[0] == "CMD-SHELL" and len(test) != 2:
                self.ctx.error((*path, "test"), 'takes exactly one command line after "CMD-SHELL"')
        _ignored(self.ctx, raw, path, ("start_interval",))
        if self.get("healthcheck", "disable") is True or test[:1] == ("NONE",):
            self.fields["healthcheck"] = Healthcheck(test=("NONE",), disable=True)
            return
        times = {"interval": 30.0, "timeout": 30.0, "start_period": 0.0}
        for name in times:
            value = self.get("healthcheck", name)
            if value is not _MISSING:
                got = self.attempt((*path, name), _parse_duration, value)
                if isinstance(got, float):
                    times[name] = got
        retries = self.get("healthcheck", "retries")
        self.fields["healthcheck"] = Healthcheck(
            test=test,
            interval=times["interval"],
            timeout=times["timeout"],
            start_period=times["start_period"],
            retries=3 if retries is _MISSING else retries,
        )

    def restart(self) -> None:
        value = self.get("restart")
        policy: str | None = None
        if value is False:
            policy = "no"
        elif isinstance(value, str) and _RESTART.fullmatch(value):
            policy = value
        elif value is not _MISSING:
            self.ctx.error(
                self.at("restart"),
                f'{_show(value)} is not a restart policy: use "no", "always", "on-failure", '
                '"on-failure:N" or "unless-stopped"',
            )
        rp = self.get("deploy", "restart_policy")
        if isinstance(rp, dict):
            rpath = self.at("deploy", "restart_policy")
            condition = rp.get("condition", "any")
            from_deploy = {"none": "no", "any": "always"}.get(condition, "on-failure")
            if from_deploy == "on-failure" and "max_attempts" in rp:
                from_deploy += f":{rp['max_attempts']}"
            _ignored(self.ctx, rp, rpath, ("delay", "window"))
            if policy is None:
                policy = from_deploy
            elif policy != from_deploy:
                self.ctx.warn(rpath, f'conflicts with "restart: {policy}", which is used', key=True)
        if policy is not None:
            self.fields["restart"] = policy

    def deploy(self) -> None:
        ctx = self.ctx
        dpath = self.at("deploy")
        deploy = _walk(self.raw, ("deploy",))
        if isinstance(deploy, dict) and ctx.ok(dpath):
            # the fields only a swarm acts on: kept in the model for the swarm runtime; the
            # runtimes of one host ignore them (said at each, once)
            self.fields["deploy"] = swarm_deploy.parse_deploy(
                deploy,
                dpath,
                ctx.error,
                duration=_parse_duration,
                size=_parse_size,
                cpus=_parse_cpus,
                bad=_Bad,
            )
            for parts, what in swarm_deploy.SWARM_ONLY.items():
                if _walk(deploy, parts) not in (_MISSING, "replicated"):
                    ctx.warn(
                        (*dpath, *parts),
                        f"{what} is used by the swarm runtime only; the runtimes of one host "
                        "ignore it",
                        key=True,
                    )
        # replicas: deploy.replicas, else the legacy scale
        replicas = self.get("deploy", "replicas")
        scale = self.get("scale")
        if scale is not _MISSING and replicas is not _MISSING and scale != replicas:
            ctx.warn(
                self.at("scale"),
                f"conflicts with deploy.replicas ({replicas}), which is used",
                key=True,
            )
        if replicas is _MISSING:
            replicas = scale
        if replicas is not _MISSING:
            self.fields["replicas"] = replicas
        # limits: deploy.resources.limits, else the legacy mem_limit / cpus / pids_limit
        limits: dict[str, Any] = {}
        for new, old, parse in (
            ("memory", "mem_limit", _parse_size),
            ("cpus", "cpus", _parse_cpus),
            ("pids", "pids_limit", _parse_pids),
        ):
            value = self.limit(("deploy", "resources", "limits", new), parse)
            legacy = self.limit((old,), parse)
            if new == "memory":  # docker's convention: 0 means "no limit"
                value, legacy = value or None, legacy or None
            if value is None:
                value = legacy
            elif legacy is not None and legacy != value:
                ctx.warn(
                    self.at(old),
                    f"conflicts with deploy.resources.limits.{new}, which is used",
                    key=True,
                )
            limits[new] = value
        self.fields["resources"] = Resources(**limits)
        # update_config
        upath = (*dpath, "update_config")
        delay = 0.0
        value = self.get("deploy", "update_config", "delay")
        if value is not _MISSING:
            got = self.attempt((*upath, "delay"), _parse_duration, value)
            delay = got if isinstance(got, float) else 0.0
        order = self.get("deploy", "update_config", "order")
        parallelism = self.get("deploy", "update_config", "parallelism")
        self.fields["update"] = UpdateConfig(
            order=cast(UpdateOrder, "stop-first" if order is _MISSING else order),
            parallelism=1 if parallelism is _MISSING else parallelism,
            delay=delay,
        )

    def limit(self, parts: tuple[str, ...], parse: Any) -> Any:
        value = self.get(*parts)
        if value is _MISSING or value is None:
            return None
        got = self.attempt(self.at(*parts), parse, value)
        return None if got is _MISSING else got

    def extra_hosts(self) -> None:
        """extra_hosts: ["host:ip"] / ["host=ip"] or {host: ip or [ip, ...]}."""
        pairs: list[tuple[str, str]] = []
        for key, value, path in self.entries("extra_hosts"):
            if isinstance(key, int):  # a list item: host:ip (ip may hold colons: IPv6)
                host, sep, ip = str(value).replace("=", ":", 1).partition(":")
                ips = [ip] if sep else []
            else:
                host, ips = str(key), [value] if isinstance(value, str) else list(value)
            for ip in ips or [""]:
                got = self.attempt(path, _parse_host_ip, host, ip)
                if isinstance(got, tuple):
                    pairs.append(got)
        if pairs:
            self.fields["extra_hosts"] = tuple(sorted(set(pairs)))

    def logging(self) -> None:
        """logging: json-file (or local, the same here) with max-size / max-file."""
        if self.get("logging") is _MISSING:
            return
        driver = self.get("logging", "driver")
        if driver not in (_MISSING, "json-file", "local"):
            self.ctx.warn(
                self.at("logging", "driver"),
                f'logging driver "{driver}" is not supported; json-file is used',
            )
        for name, value, path in self.entries("logging", "options"):
            if name == "max-size":
                got = self.attempt(path, _parse_size, value)
                if isinstance(got, int):
                    self.fields["log_max_size"] = got
            elif name == "max-file":
                got = self.attempt(path, _parse_count, value)
                if isinstance(got, int):
                    self.fields["log_max_files"] = got
            else:
                self.ctx.warn(path, f'logging option "{name}" is not supported', key=True)

    def simple(self) -> None:
        ctx = self.ctx
        labels = self.get("labels")
        if labels is not _MISSING:
            self.fields["labels"] = tuple(
                sorted(_list_or_dict(ctx, labels, self.at("labels"), "label").items())
            )
        for name in ("working_dir", "hostname", "stop_signal"):
            value = self.get(name)
            if isinstance(value, str):
                self.fields[name] = value
        user = self.get("user")
        if user is not _MISSING:
            self.fields["user"] = str(user)
        for name in ("read_only", "init"):
            value = self.get(name)
            if isinstance(value, bool):
                self.fields[name] = value
        for name in ("cap_add", "cap_drop"):
            value = self.get(name)
            if value is not _MISSING:
                caps = {c.strip().upper().removeprefix("CAP_") for c in value}
                self.fields[name] = tuple(sorted(caps))
        grace = self.get("stop_grace_period")
        if grace is not _MISSING:
            got = self.attempt(self.at("stop_grace_period"), _parse_duration, grace)
            if isinstance(got, float):
                self.fields["stop_grace_period"] = got
        ulimits: list[Ulimit] = []
        for name, value, path in sorted(self.entries("ulimits")):
            if isinstance(value, int):
                ulimits.append(Ulimit(name, value, value))
                continue
            soft, hard = value["soft"], value["hard"]
            if soft > hard:
                ctx.error(
                    path, f"the soft limit ({soft}) is above the hard limit ({hard})", key=True
                )
            ulimits.append(Ulimit(name, soft, hard))
        if ulimits:
            self.fields["ulimits"] = tuple(ulimits)
        self.logging()
        self.extra_hosts()
        policy = self.get("pull_policy")
        if policy is not _MISSING:
            self.fields["pull_policy"] = cast(
                PullPolicy, "missing" if policy == "if_not_present" else policy
            )

    def security_opt(self) -> None:
        """seccomp=unconfined|FILE and no-new-privileges (always on) are honoured, as Docker
        spells them ("=" or the older ":"); other options are warned about and ignored."""
        seen = False
        for _, item, path in self.entries("security_opt"):
            name, sep, value = item.partition("=")
            if not sep:
                name, sep, value = item.partition(":")
            if name == "no-new-privileges" and value in ("", "true"):
                continue
            if name != "seccomp":
                self.ctx.warn(
                    path, f"security option {_show(item)} is not supported and is ignored"
                )
                continue
            if not value:
                self.ctx.error(path, "seccomp needs a value: unconfined or a profile file")
                continue
            if seen:
                self.ctx.error(path, "seccomp is given more than once")
            elif value == "unconfined":
                self.fields["seccomp"] = value
            else:
                absolute, shown = self.ctx.resolve(value)
                try:
                    self.fields["seccomp"] = seccomp_file.read_profile(absolute, shown)
                    self.fields["seccomp_file"] = absolute
                except seccomp_file.ProfileError as e:
                    self.ctx.error(path, str(e))
            seen = True

    def file_refs(self, section: Literal["configs", "secrets"], prefix: str) -> None:
        refs: list[FileRef] = []
        registry = self.draft.configs if section == "configs" else self.draft.secrets
        for _, item, path in self.entries(section):
            if isinstance(item, str):
                registry.append((item, path))
                refs.append(FileRef(source=item, target=prefix + item))
                continue
            source = item["source"]
            target = item.get("target") or source
            if not target.startswith("/"):
                target = prefix + target
            mode = None
            if "mode" in item:
                got = self.attempt((*path, "mode"), _parse_mode, item["mode"])
                mode = got if isinstance(got, int) else None
            uid, gid = (
                None if item.get(k) is None else self.attempt((*path, k), _parse_id, item[k])
                for k in ("uid", "gid")
            )
            registry.append((source, (*path, "source")))
            refs.append(
                FileRef(
                    source=source,
                    target=target,
                    mode=mode,
                    uid=uid if isinstance(uid, str) else None,
                    gid=gid if isinstance(gid, str) else None,
                )
            )
        if refs:
            self.fields[section] = tuple(refs)


def _parse_cpus(value: Any) -> float:
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise _Bad(f'must be a number of CPUs such as 0.5 or "2", got {_show(value)}') from None
    if not math.isfinite(cpus):  # "nan" and "inf" are floats to Python
        raise _Bad(f'must be a number of CPUs such as 0.5 or "2", got {_show(value)}')
    if cpus <= 0:
        raise _Bad(f"must be more than 0, got {_show(value)}")
    return cpus


def _parse_pids(value: Any) -> int | None:
    # docker's convention: 0 or -1 mean "no limit"
    return value if isinstance(value, int) and value > 0 else None


def _target(target: str, whole: str, what: str = "") -> str:
    """A container path; `what` ("volume", "tmpfs") names the short syntax it came from."""
    if not target.startswith("/"):
        prefix = f"{_show(whole)} is not a valid {what}: " if what else ""
        raise _Bad(f'{prefix}the container path "{target}" must be absolute')
    return posixpath.normpath(target)


def _tmpfs(text: str) -> Mount:
    target, _, opts = text.partition(":")
    size = mode = None
    read_only = False
    for opt in filter(None, opts.split(",")):
        key, eq, value = opt.partition("=")
        if key == "size" and eq:
            size = _parse_size(value)
        elif key == "mode" and eq:
            mode = _parse_mode(value)
        elif key in ("uid", "gid") and eq:
            continue
        elif opt in _TMPFS_FLAGS:
            read_only = read_only or opt == "ro"
        else:
            raise _Bad(f"{_show(text)} is not a valid tmpfs: unknown option {_show(opt)}")
    return Mount(
        type="tmpfs",
        target=_target(target, text, "tmpfs"),
        read_only=read_only,
        tmpfs_size=size,
        tmpfs_mode=mode,
    )


_PORT_DIGITS = re.compile(r"[0-9]{1,6}")


def _port_range(text: str, whole: str, allow_zero: bool) -> list[int]:
    first, dash, last = text.partition("-")
    # ASCII digits only (str.isdigit() accepts "²"), and few of them (int() refuses 4,301)
    if not _PORT_DIGITS.fullmatch(first) or (dash and not _PORT_DIGITS.fullmatch(last)):
        raise _Bad(f"{_show(whole)} is not a valid port mapping")
    lo, hi = int(first), int(last) if dash else int(first)
    for n in (lo, hi):
        if not (0 if allow_zero else 1) <= n <= 65535:
            raise _Bad(
                f"{_show(whole)} is not a valid port mapping: port {n} is out of range (1-65535)"
            )
    if hi < lo:
        raise _Bad(f"{_show(whole)} is not a valid port mapping: the range {text} is backwards")
    return list(range(lo, hi + 1))


def _short_ports(item: str) -> list[Port]:
    """Short syntax "[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]", with ranges, IPv6 host IPs in brackets."""
    whole = item
    text = item.strip()
    protocol = "tcp"
    if "/" in text:
        text, protocol = text.rsplit("/", 1)
        protocol = protocol.lower()
        if protocol not in _PROTOCOLS:
            raise _Bad(
                f"{_show(whole)} is not a valid port mapping: the protocol must be tcp, udp or sctp"
            )
    host_ip = ""
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else ""
        parts = rest[1:].split(":") if rest.startswith(":") else []
        if len(parts) != 2:
            raise _Bad(f"{_show(whole)} is not a valid port mapping")
        host_ip = text[1:end]
        published, target = parts
    else:
        parts = text.split(":")
        if len(parts) == 1:
            published, target = "", parts[0]
        elif len(parts) == 2:
            published, target = parts
        elif len(parts) == 3:
            host_ip, published, target = parts
        else:
            raise _Bad(f"{_show(whole)} is not a valid port mapping")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise _Bad(f"{_show(whole)} is not a valid port mapping") from None
    targets = _port_range(target, whole, allow_zero=False)
    if not published:
        return [Port(t, None, host_ip, protocol) for t in targets]
    hosts = _port_range(published, whole, allow_zero=True)
    if len(hosts) != len(targets):
        raise _Bad(
            f"{_show(whole)} is not a valid port mapping: the host and container ranges "
            "must have the same length"
        )
    return [Port(t, h or None, host_ip, protocol) for h, t in zip(hosts, targets, strict=True)]


def _long_port(item: dict[str, Any]) -> Port:
    published = item.get("published")
    if isinstance(published, str):
        text = published.strip()
        if not text:
            published = None
        elif _PORT_DIGITS.fullmatch(text):
            published = int(text)
        else:
            raise _Bad(f"published port {_show(published)} is not a single port number")
    if published is not None and not 0 <= published <= 65535:
        raise _Bad(f"published port {published} is out of range (1-65535)")
    host_ip = item.get("host_ip", "")
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise _Bad(f"host_ip {_show(host_ip)} is not an IP address") from None
    protocol = str(item.get("protocol", "tcp")).lower()
    if protocol not in _PROTOCOLS:
        raise _Bad(f"protocol {_show(protocol)} is not one of tcp, udp or sctp")
    return Port(
        target=item["target"],
        published=published or None,
        host_ip=host_ip,
        protocol=protocol,
        mode="host" if item.get("mode") == "host" else "ingress",
    )
