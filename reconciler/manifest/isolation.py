"""How a service's container is isolated from the host, for the service builder.

The compose fields that loosen or tune the container's confinement (`privileged`,
`devices`, `sysctls`, `security_opt`, `pid`, `ipc`, `cgroup_parent`, `group_add` ...), its
resolver (`dns`, `dns_search`, `dns_opt`), its terminal (`tty`, `stdin_open`), the
platform and OCI runtime it asks for, and its lifecycle hooks (`post_start`, `pre_stop`).
Each is checked here as far as a manifest can be (a sysctl that is not namespaced would
change the whole host and is refused; a platform that is not the host's cannot run), so
that what reaches a runtime can be honoured.
"""

from __future__ import annotations

import ipaddress
import os
import platform as host_platform
import re
import shlex
import stat
from typing import TYPE_CHECKING, Any

from pyapply.reconciler.core.model import Dependency, Device, Hook
from pyapply.reconciler.manifest.document import MISSING, Path, list_or_dict
from pyapply.reconciler.manifest.values import parse_size, scalar_str, show

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.service import ServiceBuilder

# Sysctls the kernel keeps per namespace (what Docker and runc accept): the IPC ones follow
# the container's IPC namespace, net.* its network namespace.
_IPC_SYSCTLS = {
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
}
_SYSCTL_NAME = re.compile(r"[a-z0-9_]+(?:[./][a-zA-Z0-9_*-]+)+")
_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_PERMISSIONS = re.compile(r"[rwm]{1,3}")
_CGROUP_PARENT = re.compile(r"/?[A-Za-z0-9_.@-]+(?:/[A-Za-z0-9_.@-]+)*/?")
_RUNTIME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# `uname -m` -> the OCI architecture (what `platform:` names)
_ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_platform_name() -> str:
    """This host's platform as OCI images name it: "linux/amd64"."""
    machine = host_platform.machine()
    return f"linux/{_ARCHES.get(machine, machine)}"


def read(b: ServiceBuilder) -> None:
    """Every field of this module, into the builder's fields."""
    for name in ("privileged", "tty", "stdin_open"):
        value = b.get(name)
        if isinstance(value, bool) and value:
            b.fields[name] = True
    devices(b)
    sysctls(b)
    dns(b)
    shm = b.get("shm_size")
    if shm is not MISSING:
        got = b.attempt(b.at("shm_size"), parse_size, shm)
        if isinstance(got, int):
            if got == 0:
                b.ctx.error(b.at("shm_size"), "must be more than 0 bytes")
            else:
                b.fields["shm_size"] = got
    namespaces(b)
    cgroup_parent(b)
    oom = b.get("oom_score_adj")
    if oom is not MISSING:
        if isinstance(oom, bool) or not re.fullmatch(r"[+-]?[0-9]{1,4}", str(oom).strip()):
            b.ctx.error(b.at("oom_score_adj"), f"must be a whole number, got {show(oom)}")
        elif not -1000 <= int(str(oom).strip()) <= 1000:
            b.ctx.error(b.at("oom_score_adj"), f"must be between -1000 and 1000, got {oom}")
        else:
            b.fields["oom_score_adj"] = int(str(oom).strip())
    groups: list[str] = []
    for _, item, path in b.entries("group_add"):
        text = scalar_str(item).strip()
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text):
            b.ctx.error(path, f"{show(item)} is not a group name or id")
            continue
        groups.append(text)
    if groups:
        b.fields["group_add"] = tuple(dict.fromkeys(groups))
    mac = b.get("mac_address")
    if mac is not MISSING:
        if b.fields.get("replicas", 1) > 1:
            b.ctx.error(
                b.at("mac_address"),
                "one MAC address cannot be given to more than one replica",
                key=True,
            )
        elif isinstance(mac, str) and _MAC.fullmatch(mac.strip()):
            b.fields["mac_address"] = mac.strip().lower()
        else:
            b.ctx.error(
                b.at("mac_address"),
                f"must be a MAC address such as 02:42:ac:11:00:02, got {show(mac)}",
            )
    platform(b)
    runtime = b.get("runtime")
    if runtime is not MISSING:
        if isinstance(runtime, str) and _RUNTIME_NAME.fullmatch(runtime):
            b.fields["runtime"] = runtime
        else:
            b.ctx.error(b.at("runtime"), f"{show(runtime)} is not an OCI runtime's name")
    for name in ("post_start", "pre_stop"):
        hooks = [h for _, item, path in b.entries(name) if (h := hook(b, item, path))]
        if hooks:
            b.fields[name] = tuple(hooks)


def devices(b: ServiceBuilder) -> None:
    """`devices`: "HOST[:CONTAINER[:PERMISSIONS]]" or {source, target, permissions}."""
    out: list[Device] = []
    for _, item, path in b.entries("devices"):
        if isinstance(item, dict):
            source = str(item.get("source", ""))
            target = str(item.get("target") or source)
            perms = str(item.get("permissions") or "rwm")
        else:
            parts = str(item).split(":")
            if len(parts) > 3 or not all(parts):
                b.ctx.error(
                    path,
                    f"{show(item)} is not a device: expected HOST_PATH[:CONTAINER_PATH"
                    "[:PERMISSIONS]]",
                )
                continue
            source = parts[0]
            target = source
            perms = "rwm"
            if len(parts) == 2 and _PERMISSIONS.fullmatch(parts[1]):
                perms = parts[1]  # "/dev/x:rw": docker reads a second part of rwm as such
            elif len(parts) >= 2:
                target = parts[1]
            if len(parts) == 3:
                perms = parts[2]
        if not source.startswith("/") or not target.startswith("/"):
            b.ctx.error(path, f"device {show(item)}: both paths must be absolute")
            continue
        if not _PERMISSIONS.fullmatch(perms) or len(set(perms)) != len(perms):
            b.ctx.error(
                path, f'device permissions {show(perms)} must be letters of "rwm", each once'
            )
            continue
        try:
            mode = os.stat(source).st_mode
        except OSError:
            b.ctx.refuse(path, f"device {show(source)} does not exist on this host")
        else:
            if not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode)):
                b.ctx.refuse(path, f"{show(source)} is not a device (nor a directory of them)")
        out.append(Device(source=source, target=target, permissions=perms))
    if out:
        b.fields["devices"] = tuple(out)


def sysctls(b: ServiceBuilder) -> None:
    """Only namespaced sysctls: a container cannot be given its own value of another one,
    and setting it would change the whole host."""
    if b.get("sysctls") is MISSING:
        return
    ipc_host = b.get("ipc") == "host"
    net_host = b.get("network_mode") == "host"
    good: dict[str, str] = {}
    for key, value, at in b.entries("sysctls"):
        as_key = not isinstance(key, int)
        if not as_key:  # the list form: "name=value"
            key, eq, value = str(value).partition("=")
            if not eq:
                b.ctx.error(at, f"{show(key)} is not of the form NAME=value")
                continue
        name = key.replace("/", ".")
        if not _SYSCTL_NAME.fullmatch(name):
            b.ctx.error(at, f"{show(key)} is not a sysctl name", key=as_key)
            continue
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if ipc_host:
                b.ctx.error(
                    at,
                    f'sysctl {name} would change the host\'s, since "ipc: host" shares its IPC '
                    "namespace",
                    key=as_key,
                )
                continue
        elif name.startswith("net."):
            if net_host:
                b.ctx.error(
                    at,
                    f'sysctl {name} would change the host\'s, since "network_mode: host" '
                    "shares its network namespace",
                    key=as_key,
                )
                continue
        else:
            b.ctx.error(
                at,
                f"sysctl {name} is not namespaced: a container cannot have its own value, and "
                "setting it would change the whole host (namespaced: net.*, fs.mqueue.*, "
                "kernel.msg*, kernel.sem, kernel.shm*)",
                key=as_key,
            )
            continue
        good[name] = scalar_str(value).strip()
    if good:
        b.fields["sysctls"] = tuple(sorted(good.items()))


def dns(b: ServiceBuilder) -> None:
    """dns, dns_search, dns_opt: a string or a list each, written to /etc/resolv.conf."""
    for name in ("dns", "dns_search", "dns_opt"):
        value = b.get(name)
        if value is MISSING:
            continue
        items = (
            [(value, b.at(name))]
            if isinstance(value, str)
            else [(v, p) for _, v, p in b.entries(name)]
        )
        out: list[str] = []
        for item, path in items:
            text = scalar_str(item).strip()
            if name == "dns":
                try:
                    text = str(ipaddress.ip_address(text))
                except ValueError:
                    b.ctx.error(path, f"{show(item)} is not an IP address of a name server")
                    continue
            elif not text or any(c.isspace() for c in text):
                b.ctx.error(path, f"{show(item)} must be one word")
                continue
            out.append(text)
        if out:
            b.fields[name] = tuple(out)


def _service_ref(b: ServiceBuilder, name: str, value: str) -> str | None:
    """`service:<name>` -> "service:<name>", with the dependency it makes; None if bad."""
    target = value.removeprefix("service:")
    if not target:
        b.ctx.error(b.at(name), f'"{name}: service:" needs a service name')
        return None
    if target == b.name:
        b.ctx.error(b.at(name), f'"{name}: {value}" names the service itself')
        return None
    # it runs in the other's namespace, so it starts after it, as compose orders it
    deps = {d.service: d for d in b.fields.get("depends_on", ())}
    if target not in deps:
        deps[target] = Dependency(target)
        b.draft.depends.append((deps[target], b.at(name)))
        b.fields["depends_on"] = tuple(deps[k] for k in sorted(deps))
    return value


def namespaces(b: ServiceBuilder) -> None:
    """pid: host | service:NAME | container:NAME; ipc: host | private | shareable |
    service:NAME | container:NAME."""
    choices = {"pid": ("host",), "ipc": ("host", "private", "shareable")}
    for name, plain in choices.items():
        value = b.get(name)
        if value is MISSING or value is None:
            continue
        if not isinstance(value, str):
            b.ctx.error(b.at(name), f"must be a string, got {show(value)}")
            continue
        if value in plain:
            b.fields[name] = value
        elif value.startswith("service:"):
            got = _service_ref(b, name, value)
            if got:
                b.fields[name] = got
        elif value.startswith("container:") and len(value) > len("container:"):
            b.fields[name] = value  # a container of the host by name (the policy's to judge)
        else:
            words = ", ".join(f'"{p}"' for p in plain)
            b.ctx.error(
                b.at(name),
                f'must be {words}, "service:<name>" or "container:<name>", got {show(value)}',
            )


def cgroup_parent(b: ServiceBuilder) -> None:
    value = b.get("cgroup_parent")
    if value is MISSING:
        return
    if not isinstance(value, str) or not _CGROUP_PARENT.fullmatch(value) or ".." in value:
        b.ctx.error(b.at("cgroup_parent"), f"{show(value)} is not a cgroup path")
        return
    b.fields["cgroup_parent"] = value


def platform(b: ServiceBuilder) -> None:
    """The host's platform is accepted (the image is pulled for it anyway); another one
    cannot run here, unless the service names an OCI runtime made for it (wasi/wasm)."""
    value = b.get("platform")
    if value is MISSING:
        return
    host = host_platform_name()
    text = str(value).strip().lower()
    parts = text.split("/")
    # "linux/amd64", "amd64", "linux/arm64/v8": os and architecture must be the host's
    if len(parts) == 1:
        parts = ["linux", *parts]
    if "/".join(parts[:2]) != host:
        runtime = b.get("runtime")
        if not isinstance(runtime, str):
            b.ctx.refuse(
                b.at("platform"),
                f"platform {show(value)} cannot run on this host, which is {host}",
            )
            return
        # another platform's image (wasi/wasm) runs only under a runtime made for it
        b.ctx.warn(
            b.at("platform"),
            f"platform {show(value)} is not this host's ({host}): only the runtime "
            f"{show(runtime)} can run it (on docker, if dockerd knows it)",
        )
    b.fields["platform"] = text


def hook(b: ServiceBuilder, item: Any, path: Path) -> Hook | None:
    """One lifecycle hook: {command, user, privileged, working_dir, environment}."""
    if not isinstance(item, dict):
        b.ctx.error(path, f"a hook must be a mapping with a command, got {show(item)}")
        return None
    command = item.get("command")
    if isinstance(command, str):
        try:
            argv = tuple(shlex.split(command))
        except ValueError as e:
            b.ctx.error((*path, "command"), f"cannot split {show(command)}: {str(e).lower()}")
            return None
    elif isinstance(command, list):
        argv = tuple(scalar_str(c) for c in command)
    else:
        b.ctx.error(path, 'a hook needs a "command"', key=True)
        return None
    if not argv:
        b.ctx.error((*path, "command"), "the hook's command is empty")
        return None
    env: dict[str, str] = {}
    if "environment" in item:
        env = list_or_dict(b.ctx, item["environment"], (*path, "environment"), "variable")
    user = item.get("user")
    workdir = item.get("working_dir")
    if workdir is not None and not str(workdir).startswith("/"):
        b.ctx.error((*path, "working_dir"), f"{show(workdir)} must be an absolute path")
        return None
    privileged = item.get("privileged", False)
    if not isinstance(privileged, bool):
        b.ctx.error((*path, "privileged"), f"must be true or false, got {show(privileged)}")
        return None
    return Hook(
        command=argv,
        user=None if user is None else scalar_str(user),
        privileged=privileged,
        working_dir=None if workdir is None else str(workdir),
        environment=tuple(sorted(env.items())),
    )
