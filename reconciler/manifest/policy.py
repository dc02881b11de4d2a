"""What a manifest may ask of the host, and the one check that says whether it does.

A manifest can ask for things that give its containers the host: `privileged`, the host's
namespaces, devices, capabilities, a bind of `/` or of the Docker socket, a secret read from
`/etc/shadow`. Whoever can push to the repository the agent watches would then have root on
the host. A `Policy` says, per rule, whether such an ask is allowed, reported (warn) or refused
(deny), with lists of what is allowed anyway (capabilities, path prefixes, namespaces ...) and
of services a rule does not apply to.

The rules are data (`RULES`): each is a function from a loaded stack, as written and with
positions (`manifest.StackDocument`), to the asks it finds; `check` applies a policy's
settings to them and returns `Finding`s located as `file:line:col: path: sentence`. Fields
pyapply does not run yet (`privileged`, `pid`, `devices` ...) are read from the document,
so a policy holds before they land. This module reads no runtime; it only resolves paths
(symlinks included) to compare them, and reads policy files (`load_policy`).

Two policies are built in: `restricted` (every rule denies; the agent's default) and `warn`
(every rule warns; the default by hand), except `unpinned_images`, which is opt-in: allowed
unless a policy file sets it.
"""

from __future__ import annotations

import contextvars
import difflib
import fnmatch
import functools
import importlib.resources
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.model import Location, Problem
from pyapply.reconciler.manifest import yamlpos
from pyapply.reconciler.manifest.loader import (
    FileAccess,
    FileGuard,
    Loaded,
    StackDocument,
    explain,
    format_path,
)

__all__ = [
    "BUILTIN",
    "RULES",
    "Finding",
    "Policy",
    "PolicyError",
    "RuleSetting",
    "builtin",
    "check",
    "load_policy",
    "resolve",
    "schema",
]

Action = Literal["allow", "warn", "deny"]
Path = tuple[str | int, ...]

# Host paths a bind mount must never expose, with what they are: through them a container
# drives the host's container engines (and so the host).
PROTECTED: dict[str, str] = {
    "/var/run/docker.sock": "the Docker socket",
    "/run/docker.sock": "the Docker socket",
    "/run/docker": "Docker's run directory",
    "/var/lib/docker": "Docker's state root",
    "/run/containerd": "containerd's socket directory",
    "/var/lib/containerd": "containerd's state root",
    "/run/podman": "Podman's socket directory",
    "/var/lib/containers": "the state root of Podman and CRI-O",
    "/run/pyapply": "the pyapply agent's socket directory",
    "/run/pyapply/agent.sock": "the pyapply agent's socket",
    "/var/lib/pyapply": "pyapply's state root",
}

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# Policies


@dataclass(frozen=True)
class RuleSetting:
    """One rule of a policy: its action, what it allows anyway, and the services (as
    STACK/SERVICE patterns) it does not apply to."""

    action: Action
    allow: tuple[str, ...] = ()
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    name: str  # "restricted", "warn", or the policy file as given
    rules: Mapping[str, RuleSetting]
    # host paths no bind may expose: PROTECTED's, the policy file's, and what the command
    # adds (its state root, its agent socket, DOCKER_HOST's socket)
    protected: Mapping[str, str] = field(default_factory=lambda: dict(PROTECTED))

    def setting(self, rule: str) -> RuleSetting:
        return self.rules.get(rule, RuleSetting("allow"))

    def protecting(self, paths: Mapping[str, str]) -> Policy:
        """This policy, also protecting `paths` (path -> what it is)."""
        return replace(self, protected={**self.protected, **paths})

    def file_guard(self) -> FileGuard:
        """For `manifest.load`: may an env file be read? One from outside the manifest's
        directory is not read at all when this policy denies it (its content never reaches
        a message, a log or a container), and is read without ever quoting a line of it in
        a message when the policy only warns (`env_file: /proc/self/environ` in a pull
        request must not print a CI runner's tokens)."""
        setting = self.setting("outside_files")

        def access(path: str, directories: Sequence[str]) -> FileAccess:
            if setting.action == "allow" or _inside(resolve(path), [*directories, *setting.allow]):
                return "read"
            return "skip" if setting.action == "deny" else "quiet"

        return access


class PolicyError(PyapplyError):
    """A policy file is wrong; `problems` are located like manifest errors."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# ---------------------------------------------------------------------------------------------
# Findings


@dataclass(frozen=True)
class Finding:
    """An ask the policy warns about or denies, where it was written."""

    rule: str
    action: Literal["warn", "deny"]
    message: str
    stack: str
    service: str | None
    location: Location | None
    path: str  # JSON path of the field, e.g. spec.services.web.privileged

    @property
    def severity(self) -> Literal["error", "warning"]:
        return "error" if self.action == "deny" else "warning"

    def problem(self) -> Problem:
        return Problem(self.message, self.location, self.path, self.severity)

    def __str__(self) -> str:
        return str(self.problem())

    def to_json(self) -> dict[str, Any]:
        loc = self.location
        return {
            "rule": self.rule,
            "action": self.action,
            "severity": self.severity,
            "stack": self.stack,
            "service": self.service,
            "message": self.message,
            "path": self.path,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
            "column": loc.column if loc else None,
        }


@dataclass(frozen=True)
class _Ask:
    """Something a manifest asks for: at `path` (full document path), `value` is what an
    allow list is matched against, `sentence` says what it gives the container."""

    path: Path
    value: str
    sentence: str
    service: str | None = None
    key: bool = False  # locate at the field's key (a whole field) rather than its value


def check(loaded: Loaded, policy: Policy) -> list[Finding]:
    """Every ask of the loaded stacks that `policy` warns about or denies, in file order."""
    findings: list[Finding] = []
    token = _resolved.set({})
    try:
        for stack in loaded.stacks:
            doc = loaded.documents.get(stack.name)
            if doc is not None and isinstance(doc.spec, dict):
                findings += _check_stack(stack.name, doc, policy)
    finally:
        _resolved.reset(token)
    findings.sort(key=_order)
    return findings


def _check_stack(stack: str, doc: StackDocument, policy: Policy) -> Iterator[Finding]:
    for rule in RULES:
        setting = policy.setting(rule.name)
        if setting.action == "allow":
            continue
        for ask in rule.asks(doc, policy):
            if _exempt(stack, ask.service, setting.services):
                continue
            if not rule.allowed(ask, setting.allow):
                yield _finding(rule.name, setting.action, ask, stack, doc)


def _exempt(stack: str, service: str | None, patterns: Sequence[str]) -> bool:
    """Is the ask of this service (None: of the stack itself, a secret's file, a volume)
    one the rule skips? A stack's own asks are skipped by a `STACK/*` pattern."""
    if service is None:
        return any(
            p.endswith("/*") and fnmatch.fnmatchcase(stack, p.removesuffix("/*")) for p in patterns
        )
    return any(fnmatch.fnmatchcase(f"{stack}/{service}", p) for p in patterns)


def _finding(rule: str, action: Action, ask: _Ask, stack: str, doc: StackDocument) -> Finding:
    if action == "deny":
        message = f'{ask.sentence}; the policy denies this (rule "{rule}")'
    else:
        message = f'{ask.sentence} (policy rule "{rule}")'
    return Finding(
        rule=rule,
        action="deny" if action == "deny" else "warn",
        message=message,
        stack=stack,
        service=ask.service,
        location=doc.location(ask.path, key=ask.key),
        path=format_path(ask.path),
    )


def _order(f: Finding) -> tuple[str, int, int, str, str]:
    loc = f.location
    if loc is None:
        return ("", 0, 0, f.path, f.message)
    return (loc.file, loc.line, loc.column, f.path, f.message)


# ---------------------------------------------------------------------------------------------
# Paths


# Paths resolved during one `check` (the same prefixes and protected paths are compared with
# every bind); never kept across checks, where a symlink may have changed.
_resolved: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "_resolved", default=None
)


def resolve(path: str) -> str:
    """The real path: symlinks resolved as far as the path exists, `..` folded."""
    memo = _resolved.get()
    if memo is None:
        return os.path.realpath(path)
    if path not in memo:
        memo[path] = os.path.realpath(path)
    return memo[path]


def _inside(path: str, prefixes: Sequence[str]) -> bool:
    """Is the real `path` at or below one of `prefixes` (resolved too)?"""
    return any(_under(path, resolve(p)) for p in prefixes)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _shown(given: str, real: str) -> str:
    return json.dumps(given) if given == real else f"{json.dumps(given)} (resolved: {real})"


# ---------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str  # what it finds, in a few words (the README's table says more)
    asks: Callable[[StackDocument, Policy], Iterator[_Ask]]
    # is this ask allowed by the setting's allow list?
    allowed: Callable[[_Ask, Sequence[str]], bool]
    default: Action = "deny"  # its action in the restricted policy ("allow": opt-in)


def _services(doc: StackDocument) -> Iterator[tuple[str, dict[str, Any], Path]]:
    services = doc.spec.get("services")
    if isinstance(services, dict):
        for name, raw in services.items():
            if isinstance(raw, dict):
                yield name, raw, (*doc.base, "services", name)


def _items(raw: dict[str, Any], name: str, path: Path) -> Iterator[tuple[Any, Path]]:
    """The entries of a list field (a lone string counts as one)."""
    value = raw.get(name)
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield item, (*path, name, i)
    elif isinstance(value, str):
        yield value, (*path, name)


def _never(ask: _Ask, allow: Sequence[str]) -> bool:
    return False


def _listed(ask: _Ask, allow: Sequence[str]) -> bool:
    return ask.value in allow


def _privileged(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        if raw.get("privileged") is True:
            yield _Ask(
                (*path, "privileged"),
                "privileged",
                "a privileged container has every capability and the host's devices",
                name,
                key=True,
            )


_NAMESPACES = {
    "network_mode": ("network", "network"),
    "pid": ("pid", "process"),
    "ipc": ("ipc", "IPC"),
    "uts": ("uts", "host name (UTS)"),
    "userns_mode": ("userns", "user"),
    "cgroup": ("cgroup", "cgroup"),
}


def _host_namespaces(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        for fieldname, (ns, what) in _NAMESPACES.items():
            value = raw.get(fieldname)
            if value == "host":
                yield _Ask(
                    (*path, fieldname),
                    ns,
                    f'"{fieldname}: host" shares the host\'s {what} namespace with the container',
                    name,
                )
            elif isinstance(value, str) and value.startswith("container:"):
                # any container of the host, a privileged one outside the stack included
                yield _Ask(
                    (*path, fieldname),
                    "container",
                    f'"{fieldname}: {value}" joins the {what} namespace of a container that '
                    "may be outside the stack",
                    name,
                )


def _devices(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "devices", path):
            if isinstance(item, dict):
                source = str(item.get("source", ""))
            else:
                source = str(item).split(":", 1)[0]
            yield _Ask(
                ipath,
                source,
                f"device {json.dumps(source)} gives the container a host device",
                name,
            )
        for item, ipath in _items(raw, "device_cgroup_rules", path):
            yield _Ask(
                ipath,
                str(item),
                f"device cgroup rule {json.dumps(str(item))} lets the container use host devices",
                name,
            )
        if "gpus" in raw:
            yield _Ask(
                (*path, "gpus"), "gpus", '"gpus" gives the container the host\'s GPUs', name, True
            )


def _cap_name(text: str) -> str:
    return text.strip().upper().removeprefix("CAP_")


def _cap_add(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "cap_add", path):
            cap = _cap_name(str(item))
            sentence = (
                'cap_add "ALL" gives the container every capability'
                if cap == "ALL"
                else f"cap_add gives the container capability {cap}"
            )
            yield _Ask(ipath, cap, sentence, name)


def _caps_allowed(ask: _Ask, allow: Sequence[str]) -> bool:
    return ask.value in {_cap_name(a) for a in allow}


def _binds(doc: StackDocument) -> Iterator[tuple[Path, str, str, str | None]]:
    """(path, as written, absolute, service) of every bind mount: services' binds (as the
    loader resolved them) and local volumes that bind a host directory (driver_opts o=bind)."""
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "volumes", path):
            for at in (ipath, (*ipath, "source")):
                if at in doc.resolved:
                    given = item.split(":", 1)[0] if isinstance(item, str) else item.get("source")
                    yield at, str(given), doc.resolved[at], name
    volumes = doc.spec.get("volumes")
    if isinstance(volumes, dict):
        for vname, raw in volumes.items():
            opts = raw.get("driver_opts") if isinstance(raw, dict) else None
            if not isinstance(opts, dict) or not isinstance(opts.get("device"), str):
                continue
            options = str(opts.get("o", "")).split(",")
            if "bind" not in options and "rbind" not in options:
                continue
            at = (*doc.base, "volumes", vname, "driver_opts", "device")
            device = str(opts["device"])
            absolute = os.path.normpath(os.path.join(doc.directory_of(at), device))
            yield at, device, absolute, None


def _bind_mounts(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "volumes_from", path):
            if isinstance(item, str) and item.startswith("container:"):
                yield _Ask(
                    ipath,
                    item,
                    f'"volumes_from: {item}" mounts what another container of the host mounts',
                    name,
                )
    for at, given, absolute, service in _binds(doc):
        real = resolve(absolute)
        dirs = (doc.directory, doc.directory_of(at))
        if _inside(real, dirs):
            continue
        yield _Ask(
            at,
            real,
            f"bind mount of {_shown(given, real)} is outside the manifest's directory",
            service,
        )


def _prefix_allowed(ask: _Ask, allow: Sequence[str]) -> bool:
    return _inside(ask.value, allow)


def _exposed(real: str, protected: Mapping[str, str], inside: Sequence[str]) -> str | None:
    """What protected path a bind of `real` exposes (it, below it, or a directory holding
    it), as a phrase; None if none. A path inside the manifest's own directory is not
    exposing a protected directory that holds the manifest (the agent's copy of a rolled
    back revision lives under the state root)."""
    homes = [resolve(d) for d in inside]
    for path, what in protected.items():
        for candidate in dict.fromkeys((path, resolve(path))):
            if real == candidate:
                return f"{what} ({candidate})"
            if _under(candidate, real):
                return f"a directory holding {what} ({candidate})"
            if _under(real, candidate) and not any(
                _under(home, candidate) and _under(real, home) for home in homes
            ):
                return f"a path inside {what} ({candidate})"
    return None


def _sensitive_paths(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for at, given, absolute, service in _binds(doc):
        real = resolve(absolute)
        exposed = _exposed(real, policy.protected, (doc.directory, doc.directory_of(at)))
        if exposed:
            yield _Ask(at, real, f"bind mount of {_shown(given, real)} exposes {exposed}", service)
    for name, raw, path in _services(doc):
        if raw.get("use_api_socket") is True:
            yield _Ask(
                (*path, "use_api_socket"),
                "use_api_socket",
                '"use_api_socket" gives the container the Docker socket',
                name,
                key=True,
            )


def _exact_path_allowed(ask: _Ask, allow: Sequence[str]) -> bool:
    return ask.value in {resolve(a) for a in allow}


def _host_files(doc: StackDocument) -> Iterator[tuple[Path, str, str, str, str | None]]:
    """(path, what, as written, absolute, service) of every host file the stack reads."""
    for section in ("configs", "secrets"):
        objs = doc.spec.get(section)
        if isinstance(objs, dict):
            for key, raw in objs.items():
                at = (*doc.base, section, key, "file")
                if at in doc.resolved and isinstance(raw, dict):
                    yield at, f"{section[:-1]} file", str(raw["file"]), doc.resolved[at], None
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "env_file", path):
            if ipath in doc.resolved:
                given = item["path"] if isinstance(item, dict) else item
                yield ipath, "env file", str(given), doc.resolved[ipath], name
        for item, ipath in _items(raw, "security_opt", path):
            kind, value = _security_opt(str(item))
            if kind == "seccomp" and value not in ("unconfined", "default", "builtin"):
                absolute = os.path.normpath(os.path.join(doc.directory_of(ipath), value))
                yield ipath, "seccomp profile", value, absolute, name


def _outside_files(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for at, what, given, absolute, service in _host_files(doc):
        real = resolve(absolute)
        dirs = (doc.directory, doc.directory_of(at))
        if _inside(real, dirs):
            continue
        yield _Ask(
            at,
            real,
            f"{what} {_shown(given, real)} is outside the manifest's directory",
            service,
        )
    if doc.dotenv is not None:
        real = resolve(doc.dotenv)
        if not _inside(real, [doc.directory]):
            yield _Ask(
                (),
                real,
                f'the ".env" beside the manifest resolves to {json.dumps(real)}, outside the '
                "manifest's directory",
            )


def _unpinned_images(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        image = raw.get("image")
        if isinstance(image, str) and not _DIGEST.search(image):
            yield _Ask(
                (*path, "image"),
                image,
                f"image {json.dumps(image)} is not pinned by digest (NAME@sha256:...)",
                name,
            )


def _image_allowed(ask: _Ask, allow: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(ask.value, p) for p in allow)


def _security_opt(text: str) -> tuple[str, str]:
    """`seccomp:unconfined` / `seccomp=unconfined` -> ("seccomp", "unconfined")."""
    m = re.match(r"([A-Za-z-]+)[:=](.*)", text.strip())
    return (m.group(1).lower(), m.group(2)) if m else (text.strip().lower(), "")


def _loosens(kind: str, value: str) -> str | None:
    """What a security_opt entry takes away, or None if it does not loosen anything."""
    low = value.lower()
    if kind == "seccomp":
        if low == "unconfined":
            return "turns the seccomp filter off"
        if low not in ("default", "builtin"):
            return "replaces the default seccomp profile (a profile can allow every syscall)"
    if kind == "apparmor" and low == "unconfined":
        return "turns AppArmor off"
    if kind == "label" and (low == "disable" or low.startswith("type:")):
        return "turns SELinux confinement off" if low == "disable" else "sets an SELinux type"
    if kind == "systempaths" and low == "unconfined":
        return "unmasks the host's /proc and /sys paths"
    if kind == "no-new-privileges" and low == "false":
        return "lets setuid programs gain privileges"
    return None


def _security_opts(doc: StackDocument, policy: Policy) -> Iterator[_Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "security_opt", path):
            kind, value = _security_opt(str(item))
            why = _loosens(kind, value)
            if why:
                yield _Ask(ipath, f"{kind}={value}", f"{json.dumps(str(item))} {why}", name)


def _opt_allowed(ask: _Ask, allow: Sequence[str]) -> bool:
    return ask.value in {"=".join(_security_opt(a)) for a in allow}


RULES: tuple[Rule, ...] = (
    Rule("privileged", "privileged: true", _privileged, _never),
    Rule(
        "host_namespaces",
        "network_mode, pid, ipc, uts, userns_mode or cgroup: host",
        _host_namespaces,
        _listed,
    ),
    Rule("devices", "devices, device_cgroup_rules and gpus", _devices, _listed),
    Rule("cap_add", "capabilities added with cap_add", _cap_add, _caps_allowed),
    Rule(
        "bind_mounts",
        "bind mounts from outside the manifest's directory (and the allowed prefixes)",
        _bind_mounts,
        _prefix_allowed,
    ),
    Rule(
        "sensitive_paths",
        "bind mounts exposing the Docker, containerd or pyapply sockets or state roots",
        _sensitive_paths,
        _exact_path_allowed,
    ),
    Rule(
        "outside_files",
        "config, secret, env and seccomp files outside the manifest's directory",
        _outside_files,
        _prefix_allowed,
    ),
    Rule(
        "security_opt",
        "security_opt entries that loosen confinement (seccomp=unconfined ...)",
        _security_opts,
        _opt_allowed,
    ),
    Rule(
        "unpinned_images",
        "images not pinned by digest (opt-in)",
        _unpinned_images,
        _image_allowed,
        "allow",
    ),
)
_BY_NAME = {r.name: r for r in RULES}


# ---------------------------------------------------------------------------------------------
# Built-in policies and policy files


def _all(action: Action) -> Policy:
    return Policy(
        action,
        {r.name: RuleSetting(action if r.default != "allow" else "allow") for r in RULES},
    )


BUILTIN: dict[str, Policy] = {
    "restricted": replace(_all("deny"), name="restricted"),
    "warn": _all("warn"),
}


def builtin(name: str) -> Policy:
    return BUILTIN[name]


@functools.cache
def _schema() -> dict[str, Any]:
    text = (importlib.resources.files("pyapply.schemas") / "v1" / "policy.schema.json").read_text(
        encoding="utf-8"
    )
    return cast(dict[str, Any], json.loads(text))


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy file."""
    return cast(dict[str, Any], json.loads(json.dumps(_schema())))


# Linux capabilities (capabilities(7)), to catch a misspelt name in an allow list.
_CAPS = frozenset(
    [
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYSLOG",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "WAKE_ALARM",
        "ALL",
    ]
)


_MAX_BYTES = 1 << 20


def load_policy(path: str) -> Policy:
    """A policy from a YAML or JSON file; raises PolicyError with located problems."""
    display = os.path.normpath(path)
    try:
        # never blocks: a FIFO or a device is refused before anything is read
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PolicyError([Problem(f"{display}: a policy must be a regular file")])
            content = f.read(_MAX_BYTES + 1)
    except OSError as e:
        raise PolicyError([Problem(f"{display}: cannot read the policy: {e.strerror}")]) from None
    if len(content) > _MAX_BYTES:
        raise PolicyError([Problem(f"{display}: a policy file is at most 1 MiB")])
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PolicyError([Problem(f"{display}: the policy is not UTF-8 text")]) from None
    try:
        docs = list(yamlpos.parse(text))
    except yamlpos.YamlSyntaxError as e:
        raise PolicyError([Problem(e.message, Location(display, e.line, e.column))]) from None
    except RecursionError:
        raise PolicyError([Problem(f"{display}: the policy is nested too deeply")]) from None
    if len(docs) != 1:
        where = Location(display, *docs[1].start) if docs else None
        raise PolicyError([Problem("a policy file holds exactly one document", where)])
    positions = docs[0]
    doc = StackDocument(
        data=positions.data,
        base=(),
        display=display,
        directory=os.path.dirname(os.path.abspath(path)),
        positions=positions,
    )
    problems = [Problem(m, Location(display, *pos)) for pos, m in positions.errors]
    problems += _schema_problems(doc)
    data: Any = positions.data
    if isinstance(data, dict):
        problems += _value_problems(doc, data)
    if problems:
        raise PolicyError(sorted(problems, key=_problem_order))
    enforcement: Action = data.get("enforcement", "deny")
    rules: dict[str, RuleSetting] = {}
    given = data.get("rules") or {}
    for rule in RULES:
        raw = given.get(rule.name)
        default: Action = enforcement if rule.default != "allow" else "allow"
        if isinstance(raw, str):
            rules[rule.name] = RuleSetting(cast(Action, raw))
        elif isinstance(raw, dict):
            rules[rule.name] = RuleSetting(
                cast(Action, raw.get("action", enforcement)),
                tuple(raw.get("allow", ())),
                tuple(raw.get("services", ())),
            )
        else:
            rules[rule.name] = RuleSetting(default)
    protected = {
        p: "a path the policy protects"
        for p in data.get("protected_paths", ())
        if p not in PROTECTED
    }
    return Policy(path, rules, {**PROTECTED, **protected})


def _problem_order(p: Problem) -> tuple[int, int, str]:
    loc = p.location
    return (loc.line, loc.column, p.message) if loc else (0, 0, p.message)


def _schema_problems(doc: StackDocument) -> list[Problem]:
    from jsonschema import Draft202012Validator

    out: list[Problem] = []
    validator = Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.path)))
    # a value of the wrong type: say that alone ("must be a string or a mapping"), not also
    # what a branch of the rule's schema wanted of it
    types: dict[Path, Any] = {}
    for e in errors:
        if e.validator == "type":
            at = tuple(e.absolute_path)
            if at not in types or isinstance(e.validator_value, list):
                types[at] = e
    for err in errors:
        if tuple(err.absolute_path) in types and types[tuple(err.absolute_path)] is not err:
            continue
        if err.validator == "pattern":
            path: Path = tuple(err.absolute_path)
            what = "an absolute path" if err.validator_value == "^/" else "STACK/SERVICE"
            items = [(path, f"must be {what}, got {json.dumps(err.instance)}", False)]
        elif err.validator in ("if", "then", "else"):
            continue  # the branch's own errors say it
        else:
            items = list(explain(err))
        for p, message, key in items:
            out.append(Problem(message, doc.location(p, key=key), format_path(p)))
    return out


def _value_problems(doc: StackDocument, data: dict[str, Any]) -> list[Problem]:
    """What the schema cannot say: capability names."""
    out: list[Problem] = []
    rules = data.get("rules")
    caps = rules.get("cap_add") if isinstance(rules, dict) else None
    allow = caps.get("allow") if isinstance(caps, dict) else None
    if isinstance(allow, list):
        for i, cap in enumerate(allow):
            if isinstance(cap, str) and _cap_name(cap) not in _CAPS:
                p: Path = ("rules", "cap_add", "allow", i)
                close = difflib.get_close_matches(_cap_name(cap), sorted(_CAPS), n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                out.append(
                    Problem(
                        f"{json.dumps(cap)} is not a Linux capability{hint}",
                        doc.location(p),
                        format_path(p),
                    )
                )
    return out
