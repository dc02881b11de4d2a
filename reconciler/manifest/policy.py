"""What a manifest may ask of the host, and the one check that says whether it does.

A manifest can ask for things that give its containers the host: `privileged`, the host's
namespaces, devices, capabilities, a bind of `/` or of the Docker socket, a secret read from
`/etc/shadow`. Whoever can push to the repository the agent watches would then have root on
the host. A `Policy` says, per rule, whether such an ask is allowed, reported (warn) or refused
(deny), with lists of what is allowed anyway (capabilities, path prefixes, namespaces ...) and
of services a rule does not apply to.

The rules are data (`RULES`, in `policy_rules`): each is a function from a loaded stack,
as written and with positions (`manifest.StackDocument`), to the asks it finds; `check`
applies a policy's settings to them and returns `Finding`s located as
`file:line:col: path: sentence`. The fields are read from the document as written (so a
field pyapply only warns about is checked too). This module reads no runtime; it only
resolves paths (symlinks included) to compare them, and reads policy files (`load_policy`).

Two policies are built in: `restricted` (every rule denies; the agent's default) and `warn`
(every rule warns; the default by hand), except `unpinned_images`, which is opt-in: allowed
unless a policy file sets it.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.model import Location, Problem
from pyapply.reconciler.manifest import yamlpos
from pyapply.reconciler.manifest.document import FileAccess, FileGuard, StackDocument, format_path
from pyapply.reconciler.manifest.policy_rules import (
    RULES,
    Action,
    Ask,
    Path,
    cap_name,
    inside,
    resolve,
    resolving,
)
from pyapply.reconciler.manifest.schema import explain
from pyapply.reconciler.manifest.values import suggest
from pyapply.runtime.statefs import DEFAULT_ROOT

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.loader import Loaded

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
    DEFAULT_ROOT: "pyapply's state root",
}


# ---------------------------------------------------------------------------------------------
# Policies


class RuleSetting(msgspec.Struct, frozen=True):
    """One rule of a policy: its action, what it allows anyway, and the services (as
    STACK/SERVICE patterns) it does not apply to."""

    action: Action
    allow: tuple[str, ...] = ()
    services: tuple[str, ...] = ()


class Policy(msgspec.Struct, frozen=True):
    name: str  # "restricted", "warn", or the policy file as given
    rules: Mapping[str, RuleSetting]
    # host paths no bind may expose: PROTECTED's, the policy file's, and what the command
    # adds (its state root, its agent socket, DOCKER_HOST's socket)
    protected: Mapping[str, str] = msgspec.field(default_factory=lambda: dict(PROTECTED))

    def setting(self, rule: str) -> RuleSetting:
        return self.rules.get(rule, RuleSetting("allow"))

    def protecting(self, paths: Mapping[str, str]) -> Policy:
        """This policy, also protecting `paths` (path -> what it is)."""
        return msgspec.structs.replace(self, protected={**self.protected, **paths})

    def file_guard(self) -> FileGuard:
        """For `manifest.load`: may an env file be read? One from outside the manifest's
        directory is not read at all when this policy denies it (its content never reaches
        a message, a log or a container), and is read without ever quoting a line of it in
        a message when the policy only warns (`env_file: /proc/self/environ` in a pull
        request must not print a CI runner's tokens)."""
        setting = self.setting("outside_files")

        def access(path: str, directories: Sequence[str]) -> FileAccess:
            if setting.action == "allow" or inside(resolve(path), [*directories, *setting.allow]):
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


class Finding(msgspec.Struct, frozen=True):
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


def check(loaded: Loaded, policy: Policy) -> list[Finding]:
    """Every ask of the loaded stacks that `policy` warns about or denies, in file order."""
    findings: list[Finding] = []
    with resolving():
        for stack in loaded.stacks:
            doc = loaded.documents.get(stack.name)
            if doc is not None and isinstance(doc.spec, dict):
                findings += _check_stack(stack.name, doc, policy)
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


def _finding(rule: str, action: Action, ask: Ask, stack: str, doc: StackDocument) -> Finding:
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
# Built-in policies and policy files


def _all(action: Action) -> Policy:
    return Policy(
        action,
        {r.name: RuleSetting(action if r.default != "allow" else "allow") for r in RULES},
    )


BUILTIN: dict[str, Policy] = {
    "restricted": msgspec.structs.replace(_all("deny"), name="restricted"),
    "warn": _all("warn"),
}


def builtin(name: str) -> Policy:
    return BUILTIN[name]


@functools.cache
def _schema() -> dict[str, Any]:
    from pyapply.schemas import load_v1

    return cast(dict[str, Any], load_v1("policy.schema.json"))


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
            if isinstance(cap, str) and cap_name(cap) not in _CAPS:
                p: Path = ("rules", "cap_add", "allow", i)
                hint = suggest(cap_name(cap), sorted(_CAPS))
                out.append(
                    Problem(
                        f"{json.dumps(cap)} is not a Linux capability{hint}",
                        doc.location(p),
                        format_path(p),
                    )
                )
    return out
