"""seccomp profiles in Docker's format, turned into the OCI `linux.seccomp` section.

A profile is data: `default.json` beside this module is pyapply's default (a default-deny
allow list with Docker's semantics), and a user's `security_opt: [seccomp=FILE]` is a profile
in the same format. `compile_profile` resolves what depends on the container and the host —
groups included or excluded by capability, by architecture or by kernel version, and the
architectures the filter covers — and returns the section runc reads. It does no I/O, so
it is tested with plain data (tests/unit/runtime/test_seccomp_profile.py).

The rules are Docker's (moby's `setupSeccomp`): a group with `includes.caps` applies only
when the container has all of them (in its bounding set), one with `excludes.caps` only when
it has none of them; `arches` compare with Go's name of the host architecture; `archMap`
picks the host's native architecture and its sub-architectures.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pyapply.runtime.base import PermanentError

UNCONFINED = "unconfined"

# uname -m -> (Go's GOARCH, which profiles' `arches` use; libseccomp's name of the arch)
MACHINES: Mapping[str, tuple[str, str]] = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("386", "SCMP_ARCH_X86"),
    "i686": ("386", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)


@functools.cache
def _default_text() -> str:
    from importlib import resources  # tempfile, shutil ...: only when a spec is made

    return resources.files(__name__).joinpath("default.json").read_text(encoding="utf-8")


def default_profile() -> dict[str, Any]:
    """pyapply's default profile (a fresh copy: callers may not share it)."""
    profile: dict[str, Any] = json.loads(_default_text())
    return profile


def _kernel_at_least(release: str, wanted: str) -> bool:
    """`release` as uname -r prints it ("6.1.0-18-amd64"), `wanted` as "4.8"; an unknown
    release counts as new enough (the profile's groups with a minimum are the safe ones on
    any kernel a container runtime supports)."""

    def numbers(text: str) -> tuple[int, ...]:
        m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
        return tuple(int(g) for g in m.groups() if g is not None) if m else ()

    have, need = numbers(release), numbers(wanted)
    if not need:
        raise PermanentError(f"seccomp profile: minKernel {wanted!r} is not a kernel version")
    return not have or have >= need


def _applies(rule: Mapping[str, Any], caps: frozenset[str], goarch: str, kernel: str) -> bool:
    excludes = rule.get("excludes") or {}
    if goarch in (excludes.get("arches") or ()):
        return False
    if any(c in caps for c in excludes.get("caps") or ()):
        return False
    if excludes.get("minKernel") and _kernel_at_least(kernel, excludes["minKernel"]):
        return False
    includes = rule.get("includes") or {}
    arches = includes.get("arches") or ()
    if arches and goarch not in arches:
        return False
    if any(c not in caps for c in includes.get("caps") or ()):
        return False
    return not (includes.get("minKernel") and not _kernel_at_least(kernel, includes["minKernel"]))


def _architectures(profile: Mapping[str, Any], machine: str) -> list[str]:
    listed = list(profile.get("architectures") or ())
    arch_map = profile.get("archMap") or ()
    if listed and arch_map:
        raise PermanentError(
            "seccomp profile: both 'architectures' and 'archMap' are given; use one of them"
        )
    if listed:
        return [str(a) for a in listed]
    native = MACHINES.get(machine, ("", ""))[1]
    for entry in arch_map:
        if entry.get("architecture") == native:
            return [native, *(entry.get("subArchitectures") or ())]
    # No entry for this machine: libseccomp then filters the native architecture only.
    return []


def _action(value: Any, where: str) -> str:
    if value not in ACTIONS:
        raise PermanentError(f"seccomp profile: {where}: unknown action {value!r}")
    return str(value)


def _rule(rule: Mapping[str, Any], where: str) -> dict[str, Any]:
    names = list(rule.get("names") or ())
    if rule.get("name"):
        if names:
            raise PermanentError(f"seccomp profile: {where}: both 'name' and 'names' are given")
        names = [rule["name"]]
    if not names:
        raise PermanentError(f"seccomp profile: {where}: no syscall names")
    out: dict[str, Any] = {"names": names, "action": _action(rule.get("action"), where)}
    if rule.get("errnoRet") is not None:
        out["errnoRet"] = int(rule["errnoRet"])
    args = []
    for i, arg in enumerate(rule.get("args") or ()):
        op = arg.get("op") if isinstance(arg, Mapping) else None
        if op not in OPERATORS:
            raise PermanentError(f"seccomp profile: {where}.args[{i}]: unknown operator {op!r}")
        args.append(
            {
                "index": int(arg.get("index", 0)),
                "value": int(arg.get("value", 0)),
                "valueTwo": int(arg.get("valueTwo", 0)),
                "op": op,
            }
        )
    if args:
        out["args"] = args
    return out


def compile_profile(
    profile: Mapping[str, Any], caps: Sequence[str], machine: str, kernel: str = ""
) -> dict[str, Any]:
    """The OCI `linux.seccomp` section of `profile` (Docker's format) for a container with
    bounding capabilities `caps` ("CAP_..."), on a host whose `uname -m` is `machine` and
    whose `uname -r` is `kernel`. Raises PermanentError for a malformed profile."""
    goarch = MACHINES.get(machine, (machine, ""))[0]
    have = frozenset(caps)
    section: dict[str, Any] = {
        "defaultAction": _action(profile.get("defaultAction"), "defaultAction"),
        "architectures": _architectures(profile, machine),
    }
    if profile.get("defaultErrnoRet") is not None:
        section["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            section[key] = profile[key]
    rules = []
    for i, rule in enumerate(profile.get("syscalls") or ()):
        if not isinstance(rule, Mapping) or not all(
            isinstance(rule.get(k) or {}, Mapping) for k in ("includes", "excludes")
        ):
            raise PermanentError(f"seccomp profile: syscalls[{i}]: not a rule object")
        if _applies(rule, have, goarch, kernel):
            rules.append(_rule(rule, f"syscalls[{i}]"))
    section["syscalls"] = rules
    return section


def section_for(
    choice: str | None, caps: Sequence[str], machine: str, kernel: str = ""
) -> dict[str, Any] | None:
    """What a container's `seccomp` setting means: None is the default profile,
    "unconfined" no filter at all (None), anything else a profile's JSON text."""
    if choice is None:
        return compile_profile(default_profile(), caps, machine, kernel)
    if choice == UNCONFINED:
        return None
    try:
        profile = json.loads(choice)
    except ValueError as e:
        raise PermanentError(f"seccomp profile: not JSON: {e}") from e
    if not isinstance(profile, dict):
        raise PermanentError("seccomp profile: not a JSON object")
    return compile_profile(profile, caps, machine, kernel)
