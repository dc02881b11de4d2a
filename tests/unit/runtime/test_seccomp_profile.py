"""The native runtime's seccomp profile (runtime/native/seccomp) and its compiler.

Two kinds of test:
- the profile compared with Docker's published default (moby/profiles v0.2.3, read from
  `../shared/corpus/seccomp/docker-default.json` or `$PYAPPLY_CORPUS/seccomp/...`): every
  rule of either profile is reduced to facts "syscall X gets action A, with these argument
  tests, when these capabilities/arches/kernels", and every fact held by one and not the other
  must be listed below with a reason. Then both are compiled for a range of capability sets
  and machines, and what each allows must match up to the listed differences;
- `compile_profile` on small profiles: Docker's includes/excludes rules, archMap, errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from pyapply.runtime.base import PermanentError
from pyapply.runtime.native import oci, seccomp
from tests import corpus as test_corpus

# Facts of Docker's profile that ours lacks, and facts of ours that Docker's lacks, each with
# the reason. A difference not listed here fails the test.
ONLY_DOCKER: Mapping[str, str] = {
    "arch SCMP_ARCH_MIPS64: SCMP_ARCH_MIPS SCMP_ARCH_MIPS64N32": (
        "MIPS hosts are not supported by the native runtime (seccomp.MACHINES has no MIPS "
        "entry), so these archMap entries could never be chosen"
    ),
    "arch SCMP_ARCH_MIPS64N32: SCMP_ARCH_MIPS SCMP_ARCH_MIPS64": "MIPS: as above",
    "arch SCMP_ARCH_MIPSEL64: SCMP_ARCH_MIPSEL SCMP_ARCH_MIPSEL64N32": "MIPS: as above",
    "arch SCMP_ARCH_MIPSEL64N32: SCMP_ARCH_MIPSEL SCMP_ARCH_MIPSEL64": "MIPS: as above",
}
ONLY_OURS: Mapping[str, str] = {}


def corpus_profile() -> dict[str, Any]:
    path = test_corpus.need("seccomp", "docker-default.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _cond(block: Mapping[str, Any] | None) -> str:
    block = block or {}
    parts = []
    if block.get("caps"):
        parts.append("caps=" + ",".join(sorted(block["caps"])))
    if block.get("arches"):
        parts.append("arches=" + ",".join(sorted(block["arches"])))
    if block.get("minKernel"):
        parts.append("kernel>=" + block["minKernel"])
    return " ".join(parts)


def facts(profile: Mapping[str, Any]) -> set[str]:
    """One line per (syscall, rule), plus the defaults and the archMap."""
    out = {f"default {profile['defaultAction']} errno={profile.get('defaultErrnoRet')}"}
    for entry in profile.get("archMap") or ():
        subs = " ".join(entry.get("subArchitectures") or ())
        out.add(f"arch {entry['architecture']}: {subs}".rstrip())
    for rule in profile["syscalls"]:
        names = rule.get("names") or [rule["name"]]
        action = rule["action"]
        if rule.get("errnoRet") is not None:
            action += f"({rule['errnoRet']})"
        args = " ".join(
            f"arg{a['index']} {a['op'].removeprefix('SCMP_CMP_')} {a.get('value', 0)}"
            + (f"/{a['valueTwo']}" if a.get("valueTwo") else "")
            for a in rule.get("args") or ()
        )
        line = action + (f" [{args}]" if args else "")
        if _cond(rule.get("includes")):
            line += " if " + _cond(rule.get("includes"))
        if _cond(rule.get("excludes")):
            line += " unless " + _cond(rule.get("excludes"))
        out.update(f"{name} {line}" for name in names)
    return out


def test_every_difference_from_dockers_default_profile_is_listed_with_a_reason() -> None:
    ours, docker = facts(seccomp.default_profile()), facts(corpus_profile())
    assert len(docker) > 400  # the corpus file is the real one, not an empty stand-in
    only_docker, only_ours = docker - ours, ours - docker
    assert sorted(only_docker - ONLY_DOCKER.keys()) == [], "not listed in ONLY_DOCKER"
    assert sorted(only_ours - ONLY_OURS.keys()) == [], "not listed in ONLY_OURS"
    # and no stale entries: a listed difference that no longer exists is removed from the list
    assert sorted(ONLY_DOCKER.keys() - only_docker) == []
    assert sorted(ONLY_OURS.keys() - only_ours) == []
    assert all(ONLY_DOCKER.values()) and all(ONLY_OURS.values())


def _effective(section: Mapping[str, Any]) -> dict[str, set[str]]:
    """syscall -> the set of "action [args]" it gets in a compiled section."""
    out: dict[str, set[str]] = {}
    for rule in section["syscalls"]:
        desc = rule["action"] + str(rule.get("errnoRet", "")) + json.dumps(rule.get("args"))
        for name in rule["names"]:
            out.setdefault(name, set()).add(desc)
    return out


def _cap_sets() -> Iterator[tuple[str, ...]]:
    default = tuple(oci.capabilities((), ()))
    yield default
    yield ()
    yield tuple(oci.ALL_CAPABILITIES)
    for cap in oci.ALL_CAPABILITIES:
        yield (*default, cap)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "s390x", "riscv64", "ppc64le"])
def test_compiled_for_every_capability_it_allows_what_dockers_allows(machine: str) -> None:
    docker = corpus_profile()
    for caps in _cap_sets():
        for kernel in ("6.1.0-18-amd64", "4.4.0"):
            a = seccomp.compile_profile(seccomp.default_profile(), caps, machine, kernel)
            b = seccomp.compile_profile(docker, caps, machine, kernel)
            assert _effective(a) == _effective(b), (machine, caps, kernel)
            assert a["architectures"] == b["architectures"]
            assert (a["defaultAction"], a["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)


# ---------------------------------------------------------------------------------------------
# What the default profile says, in the cases the issue names


def _allowed(section: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    return [
        r for r in section["syscalls"] if name in r["names"] and r["action"] == "SCMP_ACT_ALLOW"
    ]


def test_default_profile_denies_by_default_and_gates_by_capability() -> None:
    caps = oci.capabilities((), ())
    section = seccomp.compile_profile(seccomp.default_profile(), caps, "x86_64", "6.1.0")
    assert section["defaultAction"] == "SCMP_ACT_ERRNO" and section["defaultErrnoRet"] == 1
    assert section["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for name in ("read", "openat", "execve", "arch_prctl", "ptrace", "chroot", "modify_ldt"):
        assert _allowed(section, name), name
    for name in (
        "mount", "unshare", "setns", "keyctl", "add_key", "kcmp", "get_mempolicy",
        "io_uring_setup", "io_uring_enter", "pidfd_getfd", "process_madvise", "mount_setattr",
        "quotactl_fd", "vhangup", "migrate_pages", "syslog", "init_module", "finit_module",
        "bpf", "userfaultfd", "reboot", "open_by_handle_at", "s390_runtime_instr",
    ):  # fmt: skip
        assert not _allowed(section, name), name
    # clone: only without namespace flags; clone3 answers ENOSYS so that libc uses clone
    (clone,) = _allowed(section, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    (clone3,) = [r for r in section["syscalls"] if "clone3" in r["names"]]
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    # personality: the five harmless values only (not ADDR_NO_RANDOMIZE = 0x0040000)
    values = {r["args"][0]["value"] for r in _allowed(section, "personality")}
    assert values == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    # socket: every family but AF_ALG (38) and AF_VSOCK (40)
    tests = {(r["args"][0]["op"], r["args"][0]["value"]) for r in _allowed(section, "socket")}
    assert tests == {("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40)}


def test_capabilities_open_their_groups() -> None:
    def allowed(caps: list[str]) -> set[str]:
        section = seccomp.compile_profile(seccomp.default_profile(), caps, "x86_64", "6.1.0")
        return {
            n for r in section["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]
        }

    base = oci.capabilities((), ())
    assert {"mount", "unshare", "setns", "clone3", "sethostname"} <= allowed(
        oci.capabilities(("SYS_ADMIN",), ())
    )
    admin = seccomp.compile_profile(
        seccomp.default_profile(), oci.capabilities(("SYS_ADMIN",), ()), "x86_64"
    )
    assert [r.get("args") for r in _allowed(admin, "clone")] == [None]  # unfiltered
    assert not [r for r in admin["syscalls"] if r["action"] == "SCMP_ACT_ERRNO"]
    assert {"kcmp", "pidfd_getfd"} <= allowed([*base, "CAP_SYS_PTRACE"])
    assert {"init_module", "finit_module"} <= allowed([*base, "CAP_SYS_MODULE"])
    assert "get_mempolicy" in allowed([*base, "CAP_SYS_NICE"])
    assert "chroot" not in allowed([c for c in base if c != "CAP_SYS_CHROOT"])
    # an old kernel keeps ptrace denied (it could bypass seccomp before 4.8)
    old = seccomp.compile_profile(seccomp.default_profile(), base, "x86_64", "4.4.0")
    assert not _allowed(old, "ptrace")


# ---------------------------------------------------------------------------------------------
# The compiler on small profiles


def test_compile_follows_dockers_rules() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["a"], "action": "SCMP_ACT_LOG", "includes": {"caps": ["CAP_X", "CAP_Y"]}},
            {"names": ["b"], "action": "SCMP_ACT_LOG", "excludes": {"caps": ["CAP_X"]}},
            {"names": ["c"], "action": "SCMP_ACT_LOG", "includes": {"arches": ["arm64"]}},
            {"names": ["d"], "action": "SCMP_ACT_LOG", "excludes": {"minKernel": "5.0"}},
            {"names": ["e"], "action": "SCMP_ACT_LOG", "args": [{"index": 1, "op": "SCMP_CMP_GE"}]},
        ],
    }

    def names(caps: list[str], machine: str = "x86_64", kernel: str = "6.1") -> list[str]:
        section = seccomp.compile_profile(profile, caps, machine, kernel)
        return [n for r in section["syscalls"] for n in r["names"]]

    assert names([]) == ["mkdir", "b", "e"]
    assert names(["CAP_X"]) == ["mkdir", "e"]
    assert names(["CAP_X", "CAP_Y"]) == ["mkdir", "a", "e"]
    assert names([], "aarch64", "4.19.0") == ["mkdir", "b", "c", "d", "e"]
    section = seccomp.compile_profile(profile, [], "x86_64")
    assert section["architectures"] == ["SCMP_ARCH_X86_64"] and "defaultErrnoRet" not in section
    assert section["syscalls"][0] == {
        "names": ["mkdir"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 13,
    }
    assert section["syscalls"][-1]["args"] == [
        {"index": 1, "value": 0, "valueTwo": 0, "op": "SCMP_CMP_GE"}
    ]
    # an archMap with no entry for the machine: libseccomp's native arch only
    assert seccomp.compile_profile(seccomp.default_profile(), [], "ppc64le")["architectures"] == []


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown action"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["A"], "archMap": [{}]},
            "both 'architectures' and 'archMap'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"]}]},
            "both 'name' and 'names'",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_LOG"}]},
            "no syscall",
        ),
        ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": ["x"]}, "not a rule"),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["a"], "action": "SCMP_ACT_LOG", "args": [{"op": "LT"}]}],
            },
            "unknown operator",
        ),
    ],
)
def test_compile_refuses_a_malformed_profile(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        seccomp.compile_profile(profile, [], "x86_64")


def test_section_for_a_config_choice() -> None:
    caps = oci.capabilities((), ())
    assert seccomp.section_for("unconfined", caps, "x86_64") is None
    default = seccomp.section_for(None, caps, "x86_64", "6.1.0")
    assert default == seccomp.compile_profile(seccomp.default_profile(), caps, "x86_64", "6.1.0")
    custom = seccomp.section_for(
        '{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}',
        caps,
        "x86_64",
    )
    assert custom == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [],
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}],
    }
    with pytest.raises(PermanentError, match="not JSON"):
        seccomp.section_for("{", caps, "x86_64")
