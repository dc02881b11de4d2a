"""The service builder: one compose service mapping -> a `ServiceSpec`.

Each field is read only where the schema found no error at or below it, so the code can trust
the shapes the schema promises and still report every other problem: value syntax through
`reconciler.manifest.values`, host paths resolved against the manifest's directory, env files
read through the policy's guard. The names a service refers to (networks, volumes, configs,
secrets, dependencies) are kept on its `ServiceDraft` for the stack builder to check.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from typing import TYPE_CHECKING, Any, Literal, cast

import msgspec

from pyapply.reconciler.core.model import (
    Dependency,
    FileRef,
    Mount,
    Port,
    PullPolicy,
    ServiceNetwork,
    ServiceSpec,
    Ulimit,
)
from pyapply.reconciler.manifest import isolation, lifecycle, seccomp_file, yamlpos
from pyapply.reconciler.manifest.discovery import Unreadable, read_text
from pyapply.reconciler.manifest.document import (
    MISSING,
    Context,
    Fields,
    Path,
    ignored,
    list_or_dict,
)
from pyapply.reconciler.manifest.interpolate import DotenvProblem, parse_dotenv
from pyapply.reconciler.manifest.values import (
    Bad,
    container_path,
    long_port,
    parse_count,
    parse_duration,
    parse_host_ip,
    parse_id,
    parse_mode,
    parse_size,
    parse_tmpfs,
    scalar_str,
    short_ports,
    short_volume,
    show,
)

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.stack import StackDraft


class ServiceDraft(msgspec.Struct):
    """A service built, with where it names other objects and publishes ports (for the
    checks across the stack and across stacks)."""

    ctx: Context
    path: Path
    spec: ServiceSpec
    stack_name: str
    ports: list[tuple[Port, Path]] = msgspec.field(default_factory=list)
    networks: list[tuple[str, Path]] = msgspec.field(default_factory=list)
    addresses: list[tuple[str, ipaddress.IPv4Address, Path]] = msgspec.field(default_factory=list)
    volumes: list[tuple[str, Path]] = msgspec.field(default_factory=list)
    configs: list[tuple[str, Path]] = msgspec.field(default_factory=list)
    secrets: list[tuple[str, Path]] = msgspec.field(default_factory=list)
    depends: list[tuple[Dependency, Path]] = msgspec.field(default_factory=list)
    # network_mode service:NAME: the service whose namespace it joins, and where it says so
    peer: tuple[str, Path] | None = None
    container_name: tuple[str, Path] | None = None


_PULL_POLICIES = ("missing", "always", "never", "build", "if_not_present")
# Docker's rule for container names; 120 at most, so that the name of a start-first update's
# new container (NAME--next) is still a valid one for both runtimes
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,119}")
_EXPOSE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?(?:/([a-zA-Z]+))?")
_EVERY = re.compile(r"every_([0-9]+(ns|us|ms|s|m|h|d|w))+")

# Compose fields pyapply does not implement; using one is a warning, naming it.
_UNSUPPORTED = tuple(
    [
        "annotations",
        "attach",
        "blkio_config",
        "cgroup",
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
        "domainname",
        "external_links",
        "gpus",
        "isolation",
        "label_file",
        "mem_reservation",
        "mem_swappiness",
        "memswap_limit",
        "models",
        "oom_kill_disable",
        "pre_start",
        "provider",
        "stop_timeout",
        "storage_opt",
        "use_api_socket",
        "userns_mode",
        "uts",
        "volumes_from",
    ]
)


def parse_raw_env(text: str) -> tuple[dict[str, str], list[DotenvProblem]]:
    """An env file of `format: raw`: KEY=VALUE lines taken as written (no quotes removed,
    no `${}` interpolation, no inline comments); blank lines and `#` lines are skipped."""
    values: dict[str, str] = {}
    problems: list[DotenvProblem] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq or not key.strip():
            problems.append(DotenvProblem(n, 1, f"{show(line)} is not of the form KEY=VALUE"))
            continue
        values[key.strip()] = value
    return values, problems


class ServiceBuilder(Fields):
    """One service: raw compose mapping -> ServiceSpec, plus the names it refers to.

    Each field is read only where the schema found no error at or below it, so the code can
    trust the shapes the schema promises and still report every other problem.
    """

    def __init__(self, stack: StackDraft, name: str, raw: dict[str, Any], path: Path) -> None:
        super().__init__(stack.ctx, raw, path)
        self.stack = stack
        self.name = name
        self.fields: dict[str, Any] = {"image": ""}
        self.draft = ServiceDraft(
            ctx=self.ctx, path=path, spec=ServiceSpec(name=name, image=""), stack_name=stack.name
        )

    def build(self) -> ServiceDraft:
        ctx = self.ctx
        self.image()
        for name in ("command", "entrypoint"):
            value = self.get(name)
            if value is not MISSING:
                self.fields[name] = self.command(value, self.at(name))
        self.environment()
        self.ports()
        self.mounts()
        self.networks()
        lifecycle.depends_on(self)
        lifecycle.healthcheck(self)
        lifecycle.restart(self)
        lifecycle.deploy(self)
        self.simple()
        self.file_refs("configs", "/")
        self.file_refs("secrets", "/run/secrets/")
        self.security_opt()
        isolation.read(self)
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
        self.container_name()
        self.expose()
        self.draft.spec = ServiceSpec(
            name=self.name, location=ctx.location(self.path, key=True), **self.fields
        )
        return self.draft

    # -- fields

    def image(self) -> None:
        image = self.get("image")
        spec = None
        if "build" in self.raw:  # only a service that builds loads the build rules (startup)
            from pyapply.reconciler.manifest import build

            spec = build.read(self)
        if spec is not None:
            self.fields["build"] = spec
            image = build.image_name(self, image)
        elif "image" not in self.raw and "build" not in self.raw:
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
                self.ctx.error(path, f"cannot split {show(value)} into words: {str(e).lower()}")
                return None
        return tuple(scalar_str(v) for v in value)

    def environment(self) -> None:
        env: dict[str, str] = {}
        files = self.get("env_file")
        if isinstance(files, str):
            env.update(self.env_file(files, True, self.at("env_file")))
        else:
            for _, entry, path in self.entries("env_file"):
                if isinstance(entry, str):
                    env.update(self.env_file(entry, True, path))
                    continue
                fmt = entry.get("format")
                if fmt not in (None, "dotenv", "raw"):
                    self.ctx.error(
                        (*path, "format"),
                        f'env file format {show(fmt)} is not supported: "dotenv" or "raw"',
                    )
                    continue
                env.update(
                    self.env_file(entry["path"], entry.get("required", True), path, fmt == "raw")
                )
        for key, value, path in self.entries("environment"):
            if isinstance(key, int):  # the list form
                item = value
                key, eq, value = item.partition("=")
                if not key:
                    self.ctx.error(path, f"{show(item)} is not of the form KEY=value")
                    continue
                value = value if eq else None
            if value is not None:
                env[key] = scalar_str(value)
            elif key in self.ctx.env:  # a bare name takes its value from the environment
                env[key] = self.ctx.env[key]
        if env:
            self.fields["environment"] = tuple(sorted(env.items()))

    def env_file(self, given: str, required: bool, path: Path, raw: bool = False) -> dict[str, str]:
        absolute, shown = self.ctx.resolve(given, path)
        if not os.path.exists(absolute):
            if required:
                self.ctx.refuse(path, f"env file {show(shown)} does not exist")
            return {}
        access = self.ctx.session.access(absolute, self.ctx.directories(path))
        if access == "skip":
            return {}  # refused by the policy, which reports it
        try:
            text = read_text(absolute)
        except Unreadable as e:
            self.ctx.error(path, f"env file {show(shown)}: {e}")
            return {}
        if raw:
            values, problems = parse_raw_env(text)
        else:
            values, problems = parse_dotenv(text, self.ctx.env, self.ctx.session.budget)
        self.ctx.session.env_problems(problems, shown, access)
        return values

    def ports(self) -> None:
        ports: list[Port] = []
        for _, item, path in self.entries("ports"):
            if self.ctx.session.ports > yamlpos.MAX_NODES:
                break  # reported once; ranges are not expanded any further
            try:
                if isinstance(item, dict):
                    got = [long_port(item)]
                    for name in ("name", "app_protocol"):  # labels for people and proxies
                        if name in item:
                            self.ctx.warn(
                                (*path, name),
                                f'port "{name}" is metadata no runtime here records; it is ignored',
                                key=True,
                            )
                elif isinstance(item, int):
                    if not 1 <= item <= 65535:
                        raise Bad(f"port {item} is out of range (1-65535)")
                    got = [Port(target=item)]
                else:
                    got = short_ports(item)
            except Bad as e:
                self.ctx.error(path, str(e))
                continue
            # a range is as many ports as it spans, and each is checked against every other:
            # counted against the loader's bound on values, like what aliases expand to
            self.ctx.session.ports += len(got)
            if self.ctx.session.ports > yamlpos.MAX_NODES:
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
            mount = self.attempt(path, parse_tmpfs, item)
            if isinstance(mount, Mount):
                mounts.append(mount)
        if mounts:
            self.fields["mounts"] = tuple(mounts)

    def short_volume(self, text: str, path: Path) -> Mount:
        mount = short_volume(text)
        parts = text.split(":")
        options = parts[2].split(",") if len(parts) == 3 else []
        for option in options:
            self.mount_option(option, path)
        if "nocopy" in options:
            if mount.type != "volume":
                raise Bad(f'{show(text)} is not a valid volume: "nocopy" is for a volume')
            mount = msgspec.structs.replace(mount, nocopy=True)
        if mount.type == "bind":
            absolute, _ = self.ctx.resolve(mount.source, path)
            return msgspec.structs.replace(mount, source=absolute)
        if mount.source:
            self.draft.volumes.append((mount.source, path))
        return mount

    def mount_option(self, option: str, path: Path) -> None:
        """Warn about a short-syntax option that one Linux host does not act on."""
        if option in ("z", "Z"):
            self.ctx.warn(
                path,
                f'SELinux relabelling ("{option}") is not supported and is ignored: the '
                "files keep their labels",
            )
        elif option in ("cached", "delegated", "consistent"):
            self.ctx.warn(
                path,
                f'consistency "{option}" is for Docker Desktop\'s shared folders: it has no '
                "effect on Linux and is ignored",
            )
        elif option in ("shared", "rshared", "slave", "rslave", "private", "rprivate"):
            self.ctx.warn(
                path,
                f'bind propagation "{option}" is not supported and is ignored: mounts are rprivate',
            )

    def long_volume(self, item: dict[str, Any], path: Path) -> Mount | None:
        kind = item["type"]
        if kind == "image":  # newer than pyapply: an image's content mounted
            self.ctx.warn(
                (*path, "type"), 'a mount of type "image" is not supported and is ignored'
            )
            return None
        target = container_path(item["target"], item["target"])
        read_only = bool(item.get("read_only", False))
        source = item.get("source")
        if isinstance(item.get("consistency"), str):
            self.mount_option(item["consistency"], (*path, "consistency"))
        nocopy = False
        if isinstance(item.get("volume"), dict):
            ignored(self.ctx, item["volume"], (*path, "volume"), ("subpath",))
            nocopy = item["volume"].get("nocopy") is True
            if nocopy and kind != "volume":
                raise Bad('"volume.nocopy" is for a volume mount')
        create = False
        if isinstance(item.get("bind"), dict):
            ignored(self.ctx, item["bind"], (*path, "bind"), ("propagation", "selinux"))
            create = item["bind"].get("create_host_path") is True
        if kind == "bind":
            if not source:
                raise Bad('a bind mount needs "source"')
            absolute, shown = self.ctx.resolve(source, (*path, "source"))
            if not create and not os.path.lexists(absolute):
                # the container cannot be made until it exists (the runtime says so then);
                # the file may be made before the apply, so this is not an error yet
                self.ctx.warn(
                    (*path, "source"),
                    f"bind source {show(shown)} does not exist, and the container cannot be "
                    "created without it (bind.create_host_path: true makes it)",
                )
            return Mount(
                type="bind",
                target=target,
                source=absolute,
                read_only=read_only,
                create_host_path=create,
            )
        if kind == "tmpfs":
            if source:
                raise Bad('a tmpfs mount has no "source"')
            opts = item.get("tmpfs") or {}
            size = mode = None
            if "size" in opts:
                size = self.attempt((*path, "tmpfs", "size"), parse_size, opts["size"])
            if "mode" in opts:
                mode = self.attempt((*path, "tmpfs", "mode"), parse_mode, opts["mode"])
            return Mount(
                type="tmpfs",
                target=target,
                read_only=read_only,
                tmpfs_size=size if isinstance(size, int) else None,
                tmpfs_mode=mode if isinstance(mode, int) else None,
            )
        if source:
            self.draft.volumes.append((source, (*path, "source")))
        return Mount(
            type="volume", target=target, source=source or "", read_only=read_only, nocopy=nocopy
        )

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
                    ctx.error((*path, "ipv4_address"), f"{show(address)} is not an IPv4 address")
                    address = None
            ignored(
                ctx,
                cfg,
                path,
                (
                    "ipv6_address",
                    "link_local_ips",
                    "mac_address",
                    "driver_opts",
                    "priority",
                    "interface_name",
                ),
            )
            ignored(ctx, cfg, path, ("gw_priority",))
            nets[key] = ServiceNetwork(key, aliases, address)
        if "network_mode" in self.raw:
            mode = self.get("network_mode")
            if nets:
                ctx.error(
                    self.at("network_mode"),
                    '"network_mode" cannot be used together with "networks"',
                    key=True,
                )
            elif isinstance(mode, str):
                self.network_mode(mode)
            return
        if not nets:
            nets["default"] = ServiceNetwork("default")
            self.draft.networks.append(("default", self.path))
        self.fields["networks"] = tuple(v for _, v in sorted(nets.items()))

    def network_mode(self, mode: str) -> None:
        """none, host, service:NAME or container:NAME, as compose has them. A namespace the
        container does not own has no ports of its own to publish."""
        ctx = self.ctx
        at = self.at("network_mode")
        kind, colon, target = mode.partition(":")
        if mode in ("none", "host") or (kind in ("service", "container") and colon and target):
            self.fields["network_mode"] = mode
        elif kind in ("service", "container"):
            ctx.error(at, f'"network_mode: {mode}" needs a name after "{kind}:"')
            return
        else:
            ctx.warn(
                at,
                f'"network_mode: {mode}" is not supported; the service is not attached to '
                "any network",
                key=True,
            )
            self.fields["network_mode"] = "none"
            return
        if kind == "service":
            if target == self.name:
                ctx.error(at, f'service "{self.name}" cannot join its own network namespace')
            else:
                self.draft.peer = (target, at)
        if self.draft.ports:
            ports_at = self.draft.ports[0][1]
            why = {
                "none": "a container without a network has no port to publish",
                "host": "the container listens on the host's ports directly",
            }.get(
                mode,
                f"the ports are those of {'service' if kind == 'service' else 'container'} "
                f'"{target}": publish them there',
            )
            ctx.error(ports_at, f'"ports" conflicts with "network_mode: {mode}": {why}')
        if kind in ("service", "container"):
            # as Docker refuses them: the joined namespace's own are used
            for name in ("hostname", "extra_hosts"):
                if name in self.raw:
                    ctx.error(
                        self.at(name),
                        f'"{name}" conflicts with "network_mode: {mode}": the container has '
                        "the host name and /etc/hosts of the namespace it joins",
                        key=True,
                    )

    def container_name(self) -> None:
        """compose's container_name: the one container of a one-replica service."""
        name = self.get("container_name")
        if not isinstance(name, str):
            return
        at = self.at("container_name")
        if not _CONTAINER_NAME.fullmatch(name):
            self.ctx.error(
                at,
                f'invalid container name {show(name)}: use letters, digits, "_", "." and '
                '"-", starting with a letter or digit, at most 120 characters',
            )
            return
        replicas = self.fields.get("replicas", 1)
        if replicas != 1:
            self.ctx.error(
                at,
                f'"container_name" names one container, but the service runs {replicas} '
                "replicas: leave it out or run one replica",
            )
            return
        self.fields["container_name"] = name
        self.draft.container_name = (name, at)

    def expose(self) -> None:
        """expose: container ports ("3000", "8000-8010", "53/udp"); kept as written."""
        out: list[str] = []
        for _, item, path in self.entries("expose"):
            text = str(item).strip()
            found = _EXPOSE.fullmatch(text)
            first, last = (int(found[1]), int(found[2] or found[1])) if found else (0, 0)
            if found is None or (found[3] and found[3].lower() not in ("tcp", "udp", "sctp")):
                self.ctx.error(
                    path, f"{show(item)} is not a port, a range or either with /tcp, /udp or /sctp"
                )
            elif not (1 <= first <= last <= 65535):
                self.ctx.error(path, f"{show(item)} is not a port range within 1-65535")
            else:
                out.append(text)
        if out:
            self.fields["expose"] = tuple(out)

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
                got = self.attempt(path, parse_host_ip, host, ip)
                if isinstance(got, tuple):
                    pairs.append(got)
        if pairs:
            self.fields["extra_hosts"] = tuple(sorted(set(pairs)))

    def logging(self) -> None:
        """logging: json-file (or local, the same here) with max-size / max-file."""
        if self.get("logging") is MISSING:
            return
        driver = self.get("logging", "driver")
        if driver not in (MISSING, "json-file", "local"):
            self.ctx.warn(
                self.at("logging", "driver"),
                f'logging driver "{driver}" is not supported; json-file is used',
            )
        for name, value, path in self.entries("logging", "options"):
            if name == "max-size":
                got = self.attempt(path, parse_size, value)
                if isinstance(got, int):
                    self.fields["log_max_size"] = got
            elif name == "max-file":
                got = self.attempt(path, parse_count, value)
                if isinstance(got, int):
                    self.fields["log_max_files"] = got
            else:
                self.ctx.warn(path, f'logging option "{name}" is not supported', key=True)

    def simple(self) -> None:
        ctx = self.ctx
        labels = self.get("labels")
        if labels is not MISSING:
            self.fields["labels"] = tuple(
                sorted(list_or_dict(ctx, labels, self.at("labels"), "label").items())
            )
        for name in ("working_dir", "hostname", "stop_signal"):
            value = self.get(name)
            if isinstance(value, str):
                self.fields[name] = value
        user = self.get("user")
        if user is not MISSING:
            self.fields["user"] = str(user)
        for name in ("read_only", "init"):
            value = self.get(name)
            if isinstance(value, bool):
                self.fields[name] = value
        for name in ("cap_add", "cap_drop"):
            value = self.get(name)
            if value is not MISSING:
                caps = {c.strip().upper().removeprefix("CAP_") for c in value}
                self.fields[name] = tuple(sorted(caps))
        grace = self.get("stop_grace_period")
        if grace is not MISSING:
            got = self.attempt(self.at("stop_grace_period"), parse_duration, grace)
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
        if isinstance(policy, str) and policy not in _PULL_POLICIES:
            if policy in ("daily", "weekly") or _EVERY.fullmatch(policy):
                # newer than pyapply: pull again after a while
                self.ctx.warn(
                    self.at("pull_policy"),
                    f'pull_policy "{policy}" is not supported; "missing" is used',
                )
                policy = "missing"
            else:
                self.ctx.error(
                    self.at("pull_policy"),
                    'must be one of "missing", "always", "never", "build" or "if_not_present" '
                    f'(or "daily", "weekly", "every_<duration>"), got {show(policy)}',
                )
                policy = MISSING
        if policy is not MISSING:
            self.fields["pull_policy"] = cast(
                PullPolicy, "missing" if policy == "if_not_present" else policy
            )
            if policy == "build" and "build" not in self.raw:
                self.ctx.error(
                    self.at("pull_policy"), '"pull_policy: build" needs a "build" section'
                )

    def security_opt(self) -> None:
        """seccomp=unconfined|FILE, no-new-privileges[=true|false] and apparmor=PROFILE are
        honoured, as Docker spells them ("=" or the older ":"); label (SELinux) and
        systempaths are warned about and ignored."""
        seen = False
        for _, item, path in self.entries("security_opt"):
            name, sep, value = item.partition("=")
            if not sep:
                name, sep, value = item.partition(":")
            if name == "no-new-privileges":
                if value in ("", "true"):
                    self.fields["no_new_privileges"] = True
                elif value != "false":
                    self.ctx.error(
                        path, f"no-new-privileges takes true or false, got {show(value)}"
                    )
                continue
            if name == "apparmor":
                if not value:
                    self.ctx.error(path, "apparmor needs a profile name (or unconfined)")
                else:
                    self.fields["apparmor"] = value
                continue
            if name != "seccomp":
                self.ctx.warn(path, f"security option {show(item)} is not supported and is ignored")
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
                got = self.attempt((*path, "mode"), parse_mode, item["mode"])
                mode = got if isinstance(got, int) else None
            uid, gid = (
                None if item.get(k) is None else self.attempt((*path, k), parse_id, item[k])
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
