"""The stack builder: a compose-shaped spec -> a `Stack`, checked across its objects.

`StackDraft` builds the top-level objects (networks, volumes, configs, secrets), hands each
service to the service builder, then checks what no single field can say: that every name a
service refers to is declared, that no dependencies form a cycle, that static addresses lie
in their network's subnet. `check_duplicates`, `check_container_names` and `check_host_ports`
check across all the stacks of one load.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Sequence
from typing import Any

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import ConfigSpec, NetworkSpec, SecretSpec, Stack, VolumeSpec
from pyapply.reconciler.manifest.document import (
    SECTIONS,
    Context,
    Path,
    StackDocument,
    ignored,
    list_or_dict,
    walk,
)
from pyapply.reconciler.manifest.service import ServiceBuilder, ServiceDraft
from pyapply.reconciler.manifest.values import OBJECT_NAME, scalar_str, show, suggest


class StackDraft:
    """One stack being built from its document: the objects it declares, its services
    (built by `ServiceBuilder`), and the checks across them (references, cycles)."""

    def __init__(self, ctx: Context, name: str, name_path: Path) -> None:
        self.ctx = ctx
        self.name = name
        self.name_path = name_path
        self.services: list[ServiceDraft] = []
        self.networks: dict[str, NetworkSpec] = {}
        self.volumes: dict[str, VolumeSpec] = {}
        self.configs: dict[str, ConfigSpec] = {}
        self.secrets: dict[str, SecretSpec] = {}
        self.declared: dict[str, set[str]] = {s: set() for s in SECTIONS}
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
            dotenv=ctx.session.dotenv_paths.get(ctx.source.directory),
        )

    def build(self, spec: dict[str, Any]) -> None:
        ctx = self.ctx
        base = ctx.base
        sections: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            raw = spec.get(section)
            sections[section] = raw if isinstance(raw, dict) else {}
            if isinstance(raw, dict):
                self.declared[section] = set(raw)
                for key in raw:
                    if not OBJECT_NAME.fullmatch(key):
                        what = section[:-1]
                        ctx.error(
                            (*base, section, key),
                            f'invalid {what} name {show(key)}: use letters, digits, "_", "." '
                            'and "-", starting with a letter or digit',
                            key=True,
                        )
        if "include" in spec:
            ctx.error((*base, "include"), '"include" is not supported', key=True)
        for section in SECTIONS:
            for key, raw in sections[section].items():
                path = (*base, section, key)
                raw = {} if raw is None else raw
                if not isinstance(raw, dict):
                    continue  # the schema said so
                if section == "services":
                    self.services.append(ServiceBuilder(self, key, raw, path).build())
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
                f'network driver {show(driver)} is not supported; only "bridge" is',
                one_host=True,
            )
        enable_ipv6 = raw.get("enable_ipv6") is True
        # per address family (4, 6): the first `ipam.config` entry of that family
        chosen: dict[int, tuple[str | None, str | None]] = {}
        ipam = raw.get("ipam") or {}
        if ipam and ctx.ok((*path, "ipam")):
            if ipam.get("driver", "default") != "default":
                ctx.warn((*path, "ipam", "driver"), "only the default IPAM driver is supported")
            ignored(ctx, ipam, (*path, "ipam"), ("options",))
            for i, cfg in enumerate(ipam.get("config") or []):
                cpath = (*path, "ipam", "config", i)
                ignored(ctx, cfg, cpath, ("ip_range", "aux_addresses"))
                family, subnet_gateway = self.subnet(cfg, cpath)
                if family in chosen:
                    ctx.warn(cpath, f"only the first IPv{family} IPAM config is used")
                    continue
                if family == 6 and not enable_ipv6:
                    ctx.error(
                        (*cpath, "subnet"),
                        "an IPv6 subnet needs enable_ipv6: true on the network",
                    )
                chosen[family] = subnet_gateway
        subnet, gateway = chosen.get(4, (None, None))
        subnet6, gateway6 = chosen.get(6, (None, None))
        ignored(ctx, raw, path, ("driver_opts", "enable_ipv4"))
        if external:
            for name in ("driver", "internal", "ipam", "labels", "driver_opts", "attachable"):
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
            attachable=raw.get("attachable") is True,
            enable_ipv6=enable_ipv6,
            subnet6=subnet6,
            gateway6=gateway6,
            location=ctx.location(path, key=True),
        )

    def subnet(self, cfg: dict[str, Any], path: Path) -> tuple[int, tuple[str | None, str | None]]:
        """An `ipam.config` entry -> (its address family, (subnet, gateway)); the family is
        the subnet's, else the gateway's, else 4."""
        ctx = self.ctx
        subnet = cfg.get("subnet")
        gateway = cfg.get("gateway")
        network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
        family = 4
        if subnet is not None:
            try:
                network = ipaddress.ip_network(subnet)
                family = network.version
            except ValueError:
                ctx.error(
                    (*path, "subnet"),
                    f"{show(subnet)} is not a valid subnet such as 172.20.0.0/24 or fd00:1::/64",
                )
                subnet = None
        if gateway is not None:
            try:
                address = ipaddress.ip_address(gateway)
            except ValueError:
                ctx.error((*path, "gateway"), f"{show(gateway)} is not a valid IP address")
                return family, (subnet, None)
            if network is None:
                family = address.version
            elif address.version != network.version:
                ctx.error(
                    (*path, "gateway"),
                    f"gateway {gateway} is an IPv{address.version} address in an "
                    f"IPv{network.version} subnet",
                )
            elif address not in network:
                ctx.error((*path, "gateway"), f"gateway {gateway} is outside the subnet {subnet}")
        if family == 6 and network is not None and network.prefixlen > 120:
            ctx.error((*path, "subnet"), f"IPv6 subnet {subnet} is too small (at most /120)")
        return family, (subnet, gateway)

    def volume(self, key: str, raw: dict[str, Any], path: Path) -> None:
        ctx = self.ctx
        external, external_name = self.external(raw, path)
        driver = raw.get("driver", "local")
        if driver != "local":
            ctx.warn(
                (*path, "driver"),
                f'volume driver {show(driver)} is not supported; only "local" is',
            )
        opts: tuple[tuple[str, str], ...] = ()
        if isinstance(raw.get("driver_opts"), dict) and ctx.ok((*path, "driver_opts")):
            opts = tuple(sorted((k, scalar_str(v)) for k, v in raw["driver_opts"].items()))
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
            sorted(list_or_dict(self.ctx, raw["labels"], (*path, "labels"), "label").items())
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
                ctx.refuse((*path, "file"), f"file {show(shown)} does not exist")
        if isinstance(raw.get("content"), str):
            content = raw["content"]
        if isinstance(raw.get("environment"), str):
            variable = raw["environment"]
            if variable not in ctx.env:
                ctx.error((*path, "environment"), f'environment variable "{variable}" is not set')
        ignored(ctx, raw, path, ("template_driver", "driver", "driver_opts", "labels"))
        lookup = raw.get("name") if isinstance(raw.get("name"), str) else None
        if lookup is not None and not external:
            # a config or secret pyapply makes is named by the stack and its content
            ctx.warn(
                (*path, "name"),
                f'"name" is only used to find an external {what}; pyapply names the {what}s '
                "it makes <stack>_<key>_<digest>, and this one is ignored",
                key=True,
            )
            lookup = None
        cls = SecretSpec if section == "secrets" else ConfigSpec
        spec = cls(
            name=key,
            file=file,
            content=content,
            environment=variable,
            external=external,
            external_name=lookup,
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
                    message = f'depends on unknown service "{dep.service}"{suggest(dep.service, services)}'
                    if dep.required:
                        ctx.error(path, message)
                    else:
                        ctx.warn(path, message + " (not required, so ignored)")
            if svc.peer is not None and svc.peer[0] not in all_services:
                peer, path = svc.peer
                ctx.error(
                    path,
                    f'"network_mode: service:{peer}" names an unknown service'
                    f"{suggest(peer, services)}",
                )
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
                            f"{suggest(name, sorted(declared))}",
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
            if svc.peer is not None:  # joining a namespace is starting after its owner
                peer, path = svc.peer
                graph[svc.spec.name].append(peer)
                edges.setdefault((svc.spec.name, peer), path)
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


def stack_name(ctx: Context, data: dict[str, Any]) -> tuple[str | None, Path]:
    """The stack's name and where it was written: `metadata.name`, or for a compose file,
    in compose's order, `-p/--project-name` or COMPOSE_PROJECT_NAME (`ctx.project_name`),
    else its `name:`, else its directory's name."""
    rule = 'use lower-case letters, digits, "_" and "-", starting with a letter or digit'
    if not ctx.compose:
        path: Path = ("metadata", "name")
        name = walk(data, path)
        if not isinstance(name, str) or not ctx.ok(path):
            return None, path  # already reported
        if not identity.valid_stack_name(name):
            ctx.error(path, f"invalid stack name {show(name)}: {rule}")
        return name, path
    given = ctx.project_name
    if given is not None:
        if not identity.valid_stack_name(given):
            what = "--project-name" if ctx.session.project_name else "COMPOSE_PROJECT_NAME"
            ctx.error((), f"{what} {show(given)} is not a valid stack name: {rule}")
        return given, ()
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not ctx.ok(("name",)):
            return None, ("name",)
        if not identity.valid_stack_name(name):
            ctx.error(("name",), f"invalid stack name {show(name)}: {rule}")
        return name, ("name",)
    directory = os.path.basename(ctx.source.directory)
    name = identity.normalise_stack_name(directory)
    if not identity.valid_stack_name(name):
        ctx.error(
            (),
            f'cannot name the stack after its directory {show(directory)}: add a top-level "name:"',
        )
    return name, ()


def check_duplicates(drafts: Sequence[StackDraft]) -> None:
    """A stack name is declared once, across every document loaded."""
    first: dict[str, StackDraft] = {}
    for draft in drafts:
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


def check_container_names(drafts: Sequence[StackDraft]) -> None:
    """A `container_name` names one container of the host, across every stack loaded: not
    given twice, and not the name another service's replica gets (`<stack>-<service>-<n>`)."""
    first: dict[str, tuple[ServiceDraft, Path]] = {}
    by_stack = {draft.name: draft for draft in drafts if draft.name}
    for draft in drafts:
        for svc in draft.services:
            if svc.container_name is None:
                continue
            name, path = svc.container_name
            replica = _replica_named(by_stack, name)
            if replica is not None:
                svc.ctx.error(
                    path,
                    f'container name "{name}" is the name of replica {replica[1]} of service '
                    f'"{replica[0]}"',
                )
            elif name in first:
                other, where = first[name]
                svc.ctx.error(
                    path,
                    f'container name "{name}" is also given to service "{other.spec.name}" '
                    f"at {other.ctx.location(where)}",
                )
            else:
                first[name] = (svc, path)


def _replica_named(by_stack: dict[str, StackDraft], name: str) -> tuple[str, int] | None:
    """(service, replica) of a stack loaded whose container would be called `name`."""
    rest, dash, number = name.rpartition("-")
    if not dash or not number.isdigit():
        return None
    for stack_name, draft in by_stack.items():
        if not rest.startswith(stack_name + "-"):
            continue
        service = rest[len(stack_name) + 1 :]
        for svc in draft.services:
            spec = svc.spec
            named = svc.container_name is not None
            if spec.name == service and not named and 1 <= int(number) <= spec.replicas:
                return service, int(number)
    return None


def check_host_ports(drafts: Sequence[StackDraft]) -> None:
    """Two containers cannot publish the same host port, whatever stack they are in."""
    wildcard = {"", "0.0.0.0", "::"}
    # per (port, protocol): the first claim of all and the first on a wildcard address,
    # and the first claim per address; looked up, not scanned, so that many claims of one
    # port stay linear. A claim: (order, service, where)
    Claim = tuple[int, ServiceDraft, str]
    taken: dict[tuple[int, str], tuple[list[Claim | None], dict[str, Claim]]] = {}
    claimed: list[Claim] = []
    for stack in drafts:
        for svc in stack.services:
            replicas_reported: set[Path] = set()
            for port, path in svc.ports:
                if port.published is None:
                    continue
                last = f"-{port.published_last}" if port.published_last else ""
                shown = f"{port.published}{last}/{port.protocol}"
                if port.host_ip:
                    shown = f"{port.host_ip}:{shown}"
                # a host range for one container port gives each replica a port of it
                span = (port.published_last or port.published) - port.published + 1
                if svc.spec.replicas > span and path not in replicas_reported:
                    replicas_reported.add(path)
                    svc.ctx.refuse(
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
                    svc.ctx.refuse(
                        path,
                        f"host port {shown} is already published by {whose} at {where}",
                    )
                claim = (len(claimed), svc, str(svc.ctx.location(path)))
                claimed.append(claim)
                firsts[0] = firsts[0] or claim
                if port.host_ip in wildcard:
                    firsts[1] = firsts[1] or claim
                by_ip.setdefault(port.host_ip, claim)
