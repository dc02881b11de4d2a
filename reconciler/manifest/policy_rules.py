"""The rules of a policy: what in a manifest asks for the host, each found by one function.

A rule reads a loaded stack as written, with positions (`StackDocument`), and yields the
asks it finds (`Ask`): where, what an allow list is matched against, and what it gives the
container. Whether an ask is then allowed, warned about or denied is the policy's business
(`reconciler.manifest.policy.check`). Host paths are compared resolved (symlinks included),
each resolved once per check (`resolving`).
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from pyapply.reconciler.manifest.document import StackDocument

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.policy import Policy

Action = Literal["allow", "warn", "deny"]
Path = tuple[str | int, ...]

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


class Ask(msgspec.Struct, frozen=True):
    """Something a manifest asks for: at `path` (full document path), `value` is what an
    allow list is matched against, `sentence` says what it gives the container."""

    path: Path
    value: str
    sentence: str
    service: str | None = None
    key: bool = False  # locate at the field's key (a whole field) rather than its value


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


@contextlib.contextmanager
def resolving() -> Iterator[None]:
    """Within: each path is resolved once (one `check` compares the same prefixes and
    protected paths with every bind)."""
    token = _resolved.set({})
    try:
        yield
    finally:
        _resolved.reset(token)


def inside(path: str, prefixes: Sequence[str]) -> bool:
    """Is the real `path` at or below one of `prefixes` (resolved too)?"""
    return any(_under(path, resolve(p)) for p in prefixes)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _shown(given: str, real: str) -> str:
    return json.dumps(given) if given == real else f"{json.dumps(given)} (resolved: {real})"


# ---------------------------------------------------------------------------------------------
# The rules


class Rule(msgspec.Struct, frozen=True):
    name: str
    summary: str  # what it finds, in a few words (the README's table says more)
    asks: Callable[[StackDocument, Policy], Iterator[Ask]]
    # is this ask allowed by the setting's allow list?
    allowed: Callable[[Ask, Sequence[str]], bool]
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


def _never(ask: Ask, allow: Sequence[str]) -> bool:
    return False


def _listed(ask: Ask, allow: Sequence[str]) -> bool:
    return ask.value in allow


def _privileged(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        if raw.get("privileged") is True:
            yield Ask(
                (*path, "privileged"),
                "privileged",
                "a privileged container has every capability and the host's devices",
                name,
                key=True,
            )
        for hook in ("post_start", "pre_stop"):
            for item, ipath in _items(raw, hook, path):
                if isinstance(item, dict) and item.get("privileged") is True:
                    yield Ask(
                        (*ipath, "privileged"),
                        "privileged",
                        f"a privileged {hook} hook runs with every capability",
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


def _host_namespaces(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        for fieldname, (ns, what) in _NAMESPACES.items():
            value = raw.get(fieldname)
            if value == "host":
                yield Ask(
                    (*path, fieldname),
                    ns,
                    f'"{fieldname}: host" shares the host\'s {what} namespace with the container',
                    name,
                )
            elif isinstance(value, str) and value.startswith("container:"):
                # any container of the host, a privileged one outside the stack included
                yield Ask(
                    (*path, fieldname),
                    "container",
                    f'"{fieldname}: {value}" joins the {what} namespace of a container that '
                    "may be outside the stack",
                    name,
                )


def _devices(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "devices", path):
            if isinstance(item, dict):
                source = str(item.get("source", ""))
            else:
                source = str(item).split(":", 1)[0]
            yield Ask(
                ipath,
                source,
                f"device {json.dumps(source)} gives the container a host device",
                name,
            )
        for item, ipath in _items(raw, "device_cgroup_rules", path):
            yield Ask(
                ipath,
                str(item),
                f"device cgroup rule {json.dumps(str(item))} lets the container use host devices",
                name,
            )
        if "gpus" in raw:
            yield Ask(
                (*path, "gpus"), "gpus", '"gpus" gives the container the host\'s GPUs', name, True
            )


def cap_name(text: str) -> str:
    return text.strip().upper().removeprefix("CAP_")


def _cap_add(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "cap_add", path):
            cap = cap_name(str(item))
            sentence = (
                'cap_add "ALL" gives the container every capability'
                if cap == "ALL"
                else f"cap_add gives the container capability {cap}"
            )
            yield Ask(ipath, cap, sentence, name)


def _caps_allowed(ask: Ask, allow: Sequence[str]) -> bool:
    return ask.value in {cap_name(a) for a in allow}


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


def _bind_mounts(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "volumes_from", path):
            if isinstance(item, str) and item.startswith("container:"):
                yield Ask(
                    ipath,
                    item,
                    f'"volumes_from: {item}" mounts what another container of the host mounts',
                    name,
                )
    for at, given, absolute, service in _binds(doc):
        real = resolve(absolute)
        dirs = (doc.directory, doc.directory_of(at))
        if inside(real, dirs):
            continue
        yield Ask(
            at,
            real,
            f"bind mount of {_shown(given, real)} is outside the manifest's directory",
            service,
        )


def _prefix_allowed(ask: Ask, allow: Sequence[str]) -> bool:
    return inside(ask.value, allow)


def _exposed(real: str, protected: Mapping[str, str], own: Sequence[str]) -> str | None:
    """What protected path a bind of `real` exposes (it, below it, or a directory holding
    it), as a phrase; None if none. A path inside the manifest's own directory is not
    exposing a protected directory that holds the manifest (the agent's copy of a rolled
    back revision lives under the state root)."""
    homes = [resolve(d) for d in own]
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


def _sensitive_paths(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for at, given, absolute, service in _binds(doc):
        real = resolve(absolute)
        exposed = _exposed(real, policy.protected, (doc.directory, doc.directory_of(at)))
        if exposed:
            yield Ask(at, real, f"bind mount of {_shown(given, real)} exposes {exposed}", service)
    for name, raw, path in _services(doc):
        if raw.get("use_api_socket") is True:
            yield Ask(
                (*path, "use_api_socket"),
                "use_api_socket",
                '"use_api_socket" gives the container the Docker socket',
                name,
                key=True,
            )


def _exact_path_allowed(ask: Ask, allow: Sequence[str]) -> bool:
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
        # a build reads the files of its context into an image the stack runs
        build = raw.get("build")
        bpath = (*path, "build", "context") if isinstance(build, dict) else (*path, "build")
        if bpath in doc.resolved:
            given = build.get("context", ".") if isinstance(build, dict) else build
            yield bpath, "build context", str(given), doc.resolved[bpath], name
        dpath = (*path, "build", "dockerfile")
        if dpath in doc.resolved and isinstance(build, dict):
            yield dpath, "Dockerfile", str(build["dockerfile"]), doc.resolved[dpath], name
        for item, ipath in _items(raw, "security_opt", path):
            kind, value = _security_opt(str(item))
            if kind == "seccomp" and value not in ("unconfined", "default", "builtin"):
                absolute = os.path.normpath(os.path.join(doc.directory_of(ipath), value))
                yield ipath, "seccomp profile", value, absolute, name


def _outside_files(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for at, what, given, absolute, service in _host_files(doc):
        real = resolve(absolute)
        dirs = (doc.directory, doc.directory_of(at))
        if inside(real, dirs):
            continue
        yield Ask(
            at,
            real,
            f"{what} {_shown(given, real)} is outside the manifest's directory",
            service,
        )
    if doc.dotenv is not None:
        real = resolve(doc.dotenv)
        if not inside(real, [doc.directory]):
            yield Ask(
                (),
                real,
                f'the ".env" beside the manifest resolves to {json.dumps(real)}, outside the '
                "manifest's directory",
            )


def _unpinned_images(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        image = raw.get("image")
        if isinstance(image, str) and not _DIGEST.search(image):
            yield Ask(
                (*path, "image"),
                image,
                f"image {json.dumps(image)} is not pinned by digest (NAME@sha256:...)",
                name,
            )


def _image_allowed(ask: Ask, allow: Sequence[str]) -> bool:
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


def _security_opts(doc: StackDocument, policy: Policy) -> Iterator[Ask]:
    for name, raw, path in _services(doc):
        for item, ipath in _items(raw, "security_opt", path):
            kind, value = _security_opt(str(item))
            why = _loosens(kind, value)
            if why:
                yield Ask(ipath, f"{kind}={value}", f"{json.dumps(str(item))} {why}", name)


def _opt_allowed(ask: Ask, allow: Sequence[str]) -> bool:
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
        "config, secret, env and seccomp files and build contexts outside the manifest's directory",
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
