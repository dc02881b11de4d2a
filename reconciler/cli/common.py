"""What the commands share beyond their options: load the manifests or fail located, the
policy and its check, the runtime, the host lock, the guard against emptying a stack, and
the stack names a command acts on.

The manifest loader, the guard and the plan view are imported by the functions that use
them: commands that only open a runtime (`image build`, `image push`, `logs`) import
this module too, and a user waits for every import at each command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import click

from pyapply.reconciler.cli.main import err, fail, project_files_here, project_name
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.drivers import (
    SERVICE_RUNTIMES,
    chosen_runtime,
    open_container_runtime,
    open_runtime,
)
from pyapply.runtime.statefs import state_root

if TYPE_CHECKING:
    from pyapply.reconciler.core.model import Problem
    from pyapply.reconciler.manifest.loader import Loaded
    from pyapply.reconciler.manifest.policy import Finding, Policy
    from pyapply.runtime.services import ServiceRuntime


def load_or_fail(
    files: Sequence[str],
    profiles: Sequence[str] = (),
    *,
    acting: bool = True,
    policy: Policy | None = None,
    strict: bool = True,
    runtime_name: str | None = None,
    for_runtime: bool = False,
) -> Loaded:
    """Load the manifests, or print every problem and fail (`acting`: the command would have
    changed something, so say that nothing was). With a `policy`, env files it denies are
    not read (`enforce` reports them). `strict` off: see `load`. On a swarm (`runtime_name`,
    as `--runtime` gives it) the warnings about the runtimes of one host are not said.
    `for_runtime`: the stacks go to that runtime now (apply, diff), so what it cannot do is
    said too (IPv6: docker's isolation gap, a warning)."""
    from pyapply.reconciler.core.model import ManifestError
    from pyapply.reconciler.manifest.loader import load

    guard = policy.file_guard() if policy is not None else None
    try:
        loaded = load(
            list(files),
            profiles=profiles,
            file_guard=guard,
            project_name=project_name(),
            strict=strict,
        )
    except ManifestError as exc:
        for problem in exc.problems:
            err(str(problem))
        n = len(exc.problems)
        tail = "; nothing was changed" if acting else ""
        fail(f"{n} error{'s' if n != 1 else ''} in the manifests{tail}")
    chosen = chosen_runtime(runtime_name)
    on_swarm = chosen in SERVICE_RUNTIMES
    for warning in loaded.warnings:
        if not (on_swarm and warning.one_host):
            err(str(warning))
    if for_runtime and chosen == "docker":
        for warning in docker_ipv6_warnings(loaded):
            err(str(warning))
    return loaded


def docker_ipv6_warnings(loaded: Loaded) -> list[Problem]:
    """A warning at each network with enable_ipv6, on docker, unless dockerd is seen to
    isolate IPv6 itself (runtime/docker/ipv6.py says why)."""
    from pyapply.reconciler.core.model import Problem

    wanted = [
        (stack, n)
        for stack in loaded.stacks
        for n in stack.networks
        if n.enable_ipv6 and not n.external
    ]
    if not wanted:
        return []
    from pyapply.runtime.docker.ipv6 import GAP, dockerd_isolates_ipv6

    if dockerd_isolates_ipv6():
        return []
    return [
        Problem(GAP, n.location, f"networks.{n.name}", severity="warning") for _stack, n in wanted
    ]


def protected_paths(root: str | None, socket: str | None = None) -> dict[str, str]:
    """The host paths of this pyapply that a bind mount must not expose: its state root,
    its agent's socket, and the Docker socket it talks to."""
    paths = {os.path.abspath(state_root(root)): "pyapply's state root"}
    agent_socket = socket or os.environ.get("PYAPPLY_SOCKET")
    if agent_socket:
        paths[os.path.abspath(agent_socket)] = "the pyapply agent's socket"
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host.startswith("unix://"):
        paths[docker_host.removeprefix("unix://")] = "the Docker socket"
    return paths


def policy_or_fail(
    arg: str | None, default: str, root: str | None = None, socket: str | None = None
) -> Policy:
    """The policy named by --policy (a built-in name or a file), else the built-in
    `default`; a policy file's mistakes are printed located, and the command fails."""
    from pyapply.reconciler.manifest import policy as pol

    name = default if arg is None else arg
    if name in pol.BUILTIN:
        chosen = pol.builtin(name)
    else:
        try:
            chosen = pol.load_policy(name)
        except pol.PolicyError as exc:
            for problem in exc.problems:
                err(str(problem))
            n = len(exc.problems)
            fail(f"{n} error{'s' if n != 1 else ''} in the policy {name}; nothing was changed")
    return chosen.protecting(protected_paths(root, socket))


def enforce(loaded: Loaded, policy: Policy, output: str, *, acting: bool = True) -> list[Finding]:
    """Check the loaded manifests against the policy before anything is touched: warnings
    are printed to stderr and returned; denials are printed and the command fails (with a
    JSON document of them on stdout for `-o json`)."""
    from pyapply.reconciler.manifest.policy import check
    from pyapply.reconciler.view.plan_text import plans_json

    findings = check(loaded, policy)
    denied = [f for f in findings if f.action == "deny"]
    for finding in findings:
        err(str(finding))
    if denied:
        if output == "json":
            # the plan document (schemas/v1/plan.schema.json) of a command that planned nothing
            doc = {**plans_json([]), "denied": True, "findings": [f.to_json() for f in findings]}
            click.echo(json.dumps(doc, indent=2))
        n = len(denied)
        tail = "; nothing was changed" if acting else ""
        fail(f"{n} ask{'s' if n != 1 else ''} denied by the policy {policy.name}{tail}")
    return findings


def connect(runtime_name: str | None, root: str | None = None, *, swarm: str = "") -> Runtime:
    """The runtime, for commands that work on containers. The swarm runtime is refused with
    `swarm`, the sentence saying why the command has no meaning there."""
    try:
        return open_container_runtime(runtime_name, root=state_root(root), why=swarm)
    except RuntimeFailure as exc:
        fail(exc.message)


def connect_any(runtime_name: str | None, root: str | None = None) -> Runtime | ServiceRuntime:
    """The runtime, for the commands that also run on a swarm (apply, diff, down, get)."""
    try:
        return open_runtime(runtime_name, root=state_root(root))
    except RuntimeFailure as exc:
        fail(exc.message)


def guard_emptying(rt: Runtime, loaded: Loaded, *, allow_empty: bool, dry_run: bool) -> None:
    """The guard against emptying a stack by accident (`reconciler.core.guard` decides): a
    warning for a dry run, a diff or `--allow-empty`; a question on a terminal; otherwise
    a refusal before anything is done."""
    from pyapply.reconciler.core import identity
    from pyapply.reconciler.core.guard import ALLOW_HINT, at_risk, emptied

    risky = at_risk(loaded.stacks)
    if not risky:
        return
    try:
        observed = [c for name in risky for c in rt.list_containers({identity.STACK: name})]
    except RuntimeFailure as exc:
        fail(exc.message)
    found = emptied(loaded.stacks, observed)
    if not found:
        return
    if allow_empty or dry_run or sys.stdin.isatty():
        for e in found:
            err(f"warning: {e}")
    if allow_empty or dry_run:
        return
    if sys.stdin.isatty():
        if click.confirm("Remove them all?", default=False, err=True):
            return
        fail("not confirmed; nothing was changed")
    fail(f"{'; '.join(str(e) for e in found)}: {ALLOW_HINT}; nothing was changed")


def locked(root: str, timeout: float) -> AbstractContextManager[None]:
    """The host-wide lock of every command that changes something (a diff never takes it,
    nor imports it)."""
    from pyapply.reconciler.engine.lock import host_lock

    return host_lock(root, timeout_s=timeout, on_wait=err)


def stack_names(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: Sequence[str] = (),
    runtime_name: str | None = None,
) -> list[str]:
    from pyapply.reconciler.core import identity

    names = list(stacks)
    if not files and not stacks:
        files = project_files_here()
    if files:
        names += [s.name for s in load_or_fail(files, profiles, runtime_name=runtime_name).stacks]
    if not names:
        fail(
            "name the stacks with -f FILE or --stack NAME (no compose file here or in a "
            "parent directory)"
        )
    for name in names:
        if not identity.valid_stack_name(name):
            fail(f"{name!r} is not a valid stack name")
    return sorted(set(names))
