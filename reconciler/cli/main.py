"""The command line: `pyapply -f stack.yaml` and its friends.

It wires the pieces together -- load, revision, runtime, lock, plan, execute -- and decides
how things are shown: human text (rich on a terminal) or JSON with `-o json`. Exit codes:
0 success / no drift, 1 error (bad input, failed action), 2 drift found (`diff --exit-code`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.guard import ALLOW_HINT, at_risk, emptied
from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import NO_SECRETS, Redactor
from pyapply.reconciler.engine.lock import LockTimeout, host_lock
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    PassError,
    StackResult,
    apply_stack,
    desired_all,
    desired_for,
    observe,
    plan_down,
    plan_stack,
    redactor_for,
    state_root,
)
from pyapply.reconciler.manifest.loader import Loaded, load
from pyapply.reconciler.manifest.revision import identify
from pyapply.reconciler.version import __version__
from pyapply.reconciler.view.plan_text import outcome_summary, plan_text, plans_json, result_line
from pyapply.runtime.base import Runtime, RuntimeFailure
from pyapply.runtime.drivers import open_runtime

if TYPE_CHECKING:
    from pyapply.reconciler.engine.build import BuildListener
    from pyapply.reconciler.engine.execute import Executor, Reporter
    from pyapply.reconciler.manifest.policy import Finding, Policy
    from pyapply.runtime.base import BuildEvent

# The executor (tenacity) and the live progress table (rich) are imported only when there is
# something to do: a no-op apply or a diff never pays for them.

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


class Failure(Exception):
    """An error for the user: printed as one line on stderr, exit status 1."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


def err(message: str) -> None:
    """A line on stderr; URL passwords and credential `key=value` pairs are masked (the
    commands that know the stacks' secrets mask them before calling this)."""
    click.echo(NO_SECRETS.text(message), err=True)


# ---------------------------------------------------------------------------------------------
# Options shared by commands


def file_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "-f",
        "--file",
        "files",
        multiple=True,
        required=required,
        type=click.Path(),
        help="Manifest file or directory (every *.yaml/*.yml below); repeatable.",
    )


def runtime_options(fn: F) -> F:
    fn = click.option(
        "--runtime",
        "runtime_name",
        envvar="PYAPPLY_RUNTIME",
        default=None,
        help="Runtime to drive: native (the default, daemonless) or docker. Env: PYAPPLY_RUNTIME.",
    )(fn)
    fn = click.option(
        "--root",
        envvar="PYAPPLY_ROOT",
        default=None,
        help="State root (default /var/lib/pyapply). Env: PYAPPLY_ROOT.",
    )(fn)
    return fn


def profile_option(fn: F) -> F:
    return click.option(
        "--profile",
        "profiles",
        multiple=True,
        envvar="COMPOSE_PROFILES",
        help="Enable a compose profile (repeatable; '*' enables all). Env: COMPOSE_PROFILES.",
    )(fn)


def output_option(fn: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        help="Output format.",
    )(fn)


def policy_option(fn: F) -> F:
    return click.option(
        "--policy",
        "policy_arg",
        metavar="FILE",
        envvar="PYAPPLY_POLICY",
        default=None,
        help="What manifests may ask of the host: a policy file (YAML or JSON), or the "
        "built-in 'restricted' (every rule denies) or 'warn' (every rule warns). "
        "Default: warn (watch: restricted). Env: PYAPPLY_POLICY.",
    )(fn)


# Commands that live in their own modules, imported only when used: "name": "module:attr".
LAZY_COMMANDS: dict[str, str] = {
    # the agent (reconciler/cli/agent.py)
    "watch": "pyapply.reconciler.cli.agent:watch",
    "status": "pyapply.reconciler.cli.agent:status",
    "history": "pyapply.reconciler.cli.agent:history",
    "rollback": "pyapply.reconciler.cli.agent:rollback",
    "resume": "pyapply.reconciler.cli.agent:resume",
    "sync": "pyapply.reconciler.cli.agent:sync",
    # compose files (reconciler/cli/compose.py)
    "config": "pyapply.reconciler.cli.compose:config",
    "convert": "pyapply.reconciler.cli.compose:convert",
    # the native runtime's image store and state root (reconciler/cli/image.py, cli/system.py)
    "image": "pyapply.reconciler.cli.image:image",
    "system": "pyapply.reconciler.cli.system:system",
    # images of services with `build:` (reconciler/cli/build.py)
    "build": "pyapply.reconciler.cli.build:build",
    "push": "pyapply.reconciler.cli.build:push",
}


def _lazy(name: str) -> click.Command | None:
    target = LAZY_COMMANDS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    command = getattr(importlib.import_module(module_name), attr, None)
    return command if isinstance(command, click.Command) else None


class DefaultApply(click.Group):
    """`pyapply -f x` means `pyapply apply -f x`; some commands are loaded on first use."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0].startswith("-") and args[0] not in ("--help", "-h", "--version"):
            args = ["apply", *args]
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n in LAZY_COMMANDS if _lazy(n) is not None]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or _lazy(cmd_name)


# ---------------------------------------------------------------------------------------------
# Helpers


def load_or_fail(
    files: Sequence[str],
    profiles: Sequence[str] = (),
    *,
    acting: bool = True,
    policy: Policy | None = None,
) -> Loaded:
    """Load the manifests, or print every problem and fail (`acting`: the command would have
    changed something, so say that nothing was). With a `policy`, env files it denies are
    not read (`enforce` reports them)."""
    guard = policy.file_guard() if policy is not None else None
    try:
        loaded = load(list(files), profiles=profiles, file_guard=guard)
    except ManifestError as exc:
        for problem in exc.problems:
            err(str(problem))
        n = len(exc.problems)
        tail = "; nothing was changed" if acting else ""
        fail(f"{n} error{'s' if n != 1 else ''} in the manifests{tail}")
    for warning in loaded.warnings:
        err(str(warning))
    return loaded


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


def connect(runtime_name: str | None, root: str | None = None) -> Runtime:
    try:
        return open_runtime(runtime_name, root=state_root(root))
    except RuntimeFailure as exc:
        fail(exc.message)


def guard_emptying(rt: Runtime, loaded: Loaded, *, allow_empty: bool, dry_run: bool) -> None:
    """The guard against emptying a stack by accident (`reconciler.core.guard` decides): a
    warning for a dry run, a diff or `--allow-empty`; a question on a terminal; otherwise
    a refusal before anything is done."""
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
    return host_lock(root, timeout_s=timeout, on_wait=err)


def _reporter(
    live: bool, redactor: Redactor = NO_SECRETS
) -> tuple[Reporter | None, AbstractContextManager[Any]]:
    if live:
        from pyapply.reconciler.view.progress import LiveReporter

        reporter = LiveReporter(redactor=redactor)
        return reporter, reporter
    from pyapply.reconciler.view.progress import PlainReporter

    plain = PlainReporter(sys.stdout, redactor)
    return plain, nullcontext(plain)


def build_lines(output: str) -> BuildListener:
    """The steps of the builds an apply makes, one line each (reconciler.view.build_progress):
    on stdout with the plan, on stderr when stdout is JSON."""
    from pyapply.reconciler.view.build_progress import image_event_line

    def listen(image: str, event: BuildEvent) -> None:
        click.echo(image_event_line(image, event), err=output != "text")

    return listen


def plain_executor(runtime: Runtime) -> Executor:
    from pyapply.reconciler.engine.execute import Executor
    from pyapply.reconciler.view.progress import PlainReporter

    return Executor(runtime, reporter=PlainReporter(sys.stdout))


# ---------------------------------------------------------------------------------------------
# Commands


@click.group(cls=DefaultApply, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyapply")
def main() -> None:
    """Declarative, GitOps-style reconciler for containers, networks and volumes.

    `pyapply -f stack.yaml` converges the live state to the manifests.
    """


@main.command()
@file_option()
@profile_option
@runtime_options
@output_option
@policy_option
@click.option("--dry-run", is_flag=True, help="Show the plan, change nothing.")
@click.option("--prune-volumes", is_flag=True, help="Also remove volumes no longer declared.")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Apply even when a stack that has containers would be left with none.",
)
@click.option("--parallel", default=8, show_default=True, help="Actions run at once.")
@click.option("--lock-timeout", default=300.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--wait-timeout",
    default=120.0,
    show_default=True,
    help="Seconds to wait for a dependency to become healthy or complete.",
)
@click.option(
    "--build",
    "rebuild",
    is_flag=True,
    help="Build the images of services with `build:` first, even those present.",
)
def apply(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
    policy_arg: str | None,
    dry_run: bool,
    prune_volumes: bool,
    allow_empty: bool,
    parallel: int,
    lock_timeout: float,
    wait_timeout: float,
    rebuild: bool,
) -> None:
    """Converge the live state to the manifests."""
    policy = policy_or_fail(policy_arg, "warn", root)
    loaded = load_or_fail(files, profiles, policy=policy)
    findings = enforce(loaded, policy, output)
    revision = identify(loaded.files, loaded.content_digest)
    rt = connect(runtime_name, root)
    root_dir = state_root(root)
    live = output == "text" and sys.stdout.isatty()
    options = ApplyOptions(
        prune_volumes=prune_volumes,
        dry_run=dry_run,
        parallelism=parallel,
        wait_timeout_s=wait_timeout,
        build=rebuild,
        on_build=build_lines(output),
    )
    results: list[StackResult] = []
    wanted = desired_all(loaded, revision=revision.id, root=root_dir)
    redactor = redactor_for(wanted)
    guard_emptying(rt, loaded, allow_empty=allow_empty, dry_run=dry_run)

    def show(plan: Plan) -> AbstractContextManager[Any] | None:
        if output != "text":
            return None
        click.echo(plan_text(plan, redactor))
        return ctx

    guard = nullcontext() if dry_run else locked(root_dir, lock_timeout)
    with guard:
        for desired in wanted:
            reporter, ctx = _reporter(live, redactor) if output == "text" else (None, nullcontext())
            result = apply_stack(rt, desired, options, reporter=reporter, on_plan=show)
            results.append(result)
            if result.plan.errors:
                fail(
                    redactor.text(
                        f"stack {desired.stack}: cannot apply: " + "; ".join(result.plan.errors)
                    )
                )
            if result.outcome is not None and output == "text":
                # the live table shows a failure cut short and is gone once the pass ends:
                # say it again, whole; plain progress has already printed each line once
                if live:
                    for r in result.outcome.failed:
                        err(result_line(r, redactor))
                click.echo(f"stack {desired.stack}: {outcome_summary(result.outcome)}")
    plans = [r.plan for r in results]
    outcomes = [r.outcome for r in results if r.outcome is not None]
    if output == "json":
        doc = plans_json(plans, redactor)
        doc["revision"] = revision.id
        doc["applied"] = not dry_run
        doc["findings"] = [f.to_json() for f in findings]
        doc["results"] = [
            {
                "id": redactor.text(r.action.id),
                "status": r.status,
                "seconds": round(r.seconds, 3),
                "error": redactor.value(r.error),
            }
            for o in outcomes
            for r in o.results
        ]
        click.echo(json.dumps(doc, indent=2))
    if any(not o.ok for o in outcomes):
        fail("some actions failed; run `pyapply diff` to see what is left, or apply again")


@main.command("diff")
@file_option()
@profile_option
@runtime_options
@output_option
@policy_option
@click.option("--exit-code", is_flag=True, help="Exit 2 when there is drift.")
@click.option("--prune-volumes", is_flag=True, help="Count undeclared volumes as drift.")
def diff_cmd(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
    policy_arg: str | None,
    exit_code: bool,
    prune_volumes: bool,
) -> None:
    """Show what apply would change (0 no drift, 2 drift with --exit-code, 1 error)."""
    policy = policy_or_fail(policy_arg, "warn", root)
    loaded = load_or_fail(files, profiles, policy=policy)
    findings = enforce(loaded, policy, output, acting=False)
    revision = identify(loaded.files, loaded.content_digest)
    rt = connect(runtime_name, root)
    root_dir = state_root(root)
    wanted = desired_all(loaded, revision=revision.id, root=root_dir)
    redactor = redactor_for(wanted)
    guard_emptying(rt, loaded, allow_empty=False, dry_run=True)
    plans = [plan_stack(rt, d, prune_volumes=prune_volumes) for d in wanted]
    if output == "json":
        click.echo(
            json.dumps(
                {**plans_json(plans, redactor), "findings": [f.to_json() for f in findings]},
                indent=2,
            )
        )
    else:
        for plan in plans:
            click.echo(plan_text(plan, redactor))
    if any(p.errors for p in plans):
        sys.exit(EXIT_ERROR)
    if exit_code and any(not p.empty for p in plans):
        sys.exit(EXIT_DRIFT)


@main.command("down")
@file_option(required=False)
@profile_option
@runtime_options
@click.option("--stack", "stacks", multiple=True, help="Stack name (instead of -f); repeatable.")
@click.option("--volumes", "-v", "remove_volumes", is_flag=True, help="Remove named volumes too.")
@click.option("--lock-timeout", default=300.0, show_default=True)
def down(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    stacks: tuple[str, ...],
    remove_volumes: bool,
    lock_timeout: float,
) -> None:
    """Remove everything the stacks own (named volumes only with --volumes). Alias: delete."""
    _down(files, runtime_name, root, stacks, remove_volumes, lock_timeout, profiles)


# `delete` is the same command under kubectl's name.
main.add_command(down, name="delete")


def _stack_names(
    files: tuple[str, ...], stacks: tuple[str, ...], profiles: Sequence[str] = ()
) -> list[str]:
    names = list(stacks)
    if files:
        names += [s.name for s in load_or_fail(files, profiles).stacks]
    if not names:
        fail("name the stacks with -f FILE or --stack NAME")
    for name in names:
        if not identity.valid_stack_name(name):
            fail(f"{name!r} is not a valid stack name")
    return sorted(set(names))


def _down(
    files: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    stacks: tuple[str, ...],
    remove_volumes: bool,
    lock_timeout: float,
    profiles: Sequence[str] = (),
) -> None:
    names = _stack_names(files, stacks, profiles)
    rt = connect(runtime_name, root)
    root_dir = state_root(root)
    ok = True
    with locked(root_dir, lock_timeout):
        for name in names:
            plan = plan_down(rt, name, volumes=remove_volumes)
            click.echo(plan_text(plan))
            if plan.empty:
                continue
            outcome = plain_executor(rt).run(plan)
            click.echo(f"stack {name}: {outcome_summary(outcome)}")
            ok = ok and outcome.ok
            if outcome.ok:
                shutil.rmtree(os.path.join(root_dir, "files", name), ignore_errors=True)
    if not ok:
        fail("some objects could not be removed; run down again")


@main.command()
@file_option(required=False)
@profile_option
@runtime_options
@output_option
@click.option("--stack", "stacks", multiple=True, help="Stack name (instead of -f); repeatable.")
def get(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
    stacks: tuple[str, ...],
) -> None:
    """List the objects of the stacks with their state and health."""
    names = _stack_names((), stacks) if stacks else []
    redactor = NO_SECRETS
    if files:  # the stacks' secrets are known only from their manifests
        loaded = load_or_fail(files, profiles, acting=False)
        names = sorted({*names, *(s.name for s in loaded.stacks)})
        wanted = []
        for stack in loaded.stacks:
            try:
                wanted.append(
                    desired_for(
                        stack,
                        revision="",
                        root=state_root(root),
                        environ=loaded.environments.get(stack.name),
                    )
                )
            except PassError:
                continue  # an unreadable secret cannot be shown either
        redactor = redactor_for(wanted)
    if not names:
        fail("name the stacks with -f FILE or --stack NAME")
    rt = connect(runtime_name, root)
    docs: list[dict[str, Any]] = []
    for name in names:
        obs = observe(rt, name)
        docs.append(
            {
                "stack": name,
                "containers": [
                    {
                        "name": c.name,
                        "service": c.labels.get(identity.SERVICE),
                        "replica": c.labels.get(identity.REPLICA),
                        "status": c.status,
                        "exit_code": c.exit_code if c.status == "exited" else None,
                        "health": c.health,
                        "image": c.image,
                        "revision": c.labels.get(identity.REVISION),
                        "ports": [
                            f"{p.host_ip + ':' if p.host_ip else ''}"
                            f"{str(p.host_port) + ':' if p.host_port else ''}"
                            f"{p.container_port}/{p.protocol}"
                            for p in c.ports
                        ],
                    }
                    for c in sorted(obs.containers, key=lambda c: c.name)
                ],
                "networks": [
                    {"name": n.name, "driver": n.driver, "internal": n.internal}
                    for n in sorted(obs.networks, key=lambda n: n.name)
                ],
                "volumes": [
                    {"name": v.name, "driver": v.driver}
                    for v in sorted(obs.volumes, key=lambda v: v.name)
                ],
            }
        )
    docs = redactor.value(docs)
    if output == "json":
        click.echo(json.dumps(docs, indent=2))
        return
    for doc in docs:
        click.echo(f"stack {doc['stack']}")
        rows = [("NAME", "SERVICE", "STATE", "HEALTH", "IMAGE", "PORTS")]
        for c in doc["containers"]:
            state = c["status"] + (f" ({c['exit_code']})" if c["exit_code"] is not None else "")
            rows.append(
                (
                    c["name"],
                    c["service"] or "",
                    state,
                    c["health"] or "-",
                    c["image"],
                    ", ".join(c["ports"]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            click.echo(
                "  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip()
            )
        for n in doc["networks"]:
            click.echo(
                f"  network {n['name']} ({n['driver']}{', internal' if n['internal'] else ''})"
            )
        for v in doc["volumes"]:
            click.echo(f"  volume {v['name']}")


@main.command()
@click.argument("service")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(),
    help="Manifest file or directory naming the stack (-f is --follow here, as in compose).",
)
@runtime_options
@click.option("--stack", "stacks", multiple=True, help="Stack name (instead of --file).")
@click.option("--follow", "-f", "follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=int, default=None, help="Only the last N lines of each replica.")
def logs(
    service: str,
    files: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    stacks: tuple[str, ...],
    follow: bool,
    tail: int | None,
) -> None:
    """Print the output of a service's containers (each line prefixed with the replica)."""
    names = _stack_names(files, stacks)
    rt = connect(runtime_name, root)
    containers = [
        c
        for name in names
        for c in rt.list_containers({identity.STACK: name, identity.SERVICE: service})
    ]
    if not containers:
        fail(f"no containers of service {service} in stack {', '.join(names)}")
    containers.sort(key=lambda c: c.name)
    width = max(len(c.name) for c in containers)

    def lines(name: str) -> Iterator[str]:
        for chunk in rt.logs(name, follow=follow, tail=tail):
            yield from chunk.decode(errors="replace").splitlines()

    if not follow or len(containers) == 1:
        for c in containers:
            for line in lines(c.name):
                click.echo(f"{c.name.ljust(width)} | {line}" if len(containers) > 1 else line)
        return
    import threading

    out_lock = threading.Lock()

    def pump(name: str) -> None:
        for line in lines(name):
            with out_lock:
                click.echo(f"{name.ljust(width)} | {line}")

    threads = [threading.Thread(target=pump, args=(c.name,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@main.command()
@file_option()
@profile_option
@output_option
@policy_option
@click.option("--root", envvar="PYAPPLY_ROOT", default=None, help="State root (protected).")
def validate(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    output: str,
    policy_arg: str | None,
    root: str | None,
) -> None:
    """Check manifests offline (schema, references and policy); no runtime needed."""
    policy = policy_or_fail(policy_arg, "warn", root)
    try:
        loaded = load(list(files), profiles=profiles, file_guard=policy.file_guard())
    except ManifestError as exc:
        if output == "json":
            click.echo(
                json.dumps(
                    {"valid": False, "problems": [_problem_json(p) for p in exc.problems]},
                    indent=2,
                )
            )
        else:
            for problem in exc.problems:
                err(str(problem))
        sys.exit(EXIT_ERROR)
    from pyapply.reconciler.manifest.policy import check

    findings = check(loaded, policy)
    denied = any(f.action == "deny" for f in findings)
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "valid": not denied,
                    "stacks": [s.name for s in loaded.stacks],
                    "problems": [_problem_json(p) for p in loaded.warnings],
                    "policy": policy.name,
                    "findings": [f.to_json() for f in findings],
                },
                indent=2,
            )
        )
        if denied:
            sys.exit(EXIT_ERROR)
        return
    for warning in loaded.warnings:
        err(str(warning))
    for finding in findings:
        err(str(finding))
    if denied:
        n = sum(f.action == "deny" for f in findings)
        fail(f"{n} ask{'s' if n != 1 else ''} denied by the policy {policy.name}")
    services = sum(len(s.services) for s in loaded.stacks)
    click.echo(
        f"valid: {len(loaded.stacks)} stack(s), {services} service(s) in {len(loaded.files)} file(s)"
    )


def _problem_json(p: Any) -> dict[str, Any]:
    loc = p.location
    return {
        "severity": p.severity,
        "message": NO_SECRETS.text(p.message),  # a quoted value may hold a URL password
        "path": p.path,
        "file": loc.file if loc else None,
        "line": loc.line if loc else None,
        "column": loc.column if loc else None,
    }


def run() -> int:
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        err("aborted")
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    except Failure as exc:
        err(f"error: {exc}")
        return EXIT_ERROR
    except (PassError, LockTimeout) as exc:
        err(f"error: {exc}")
        return EXIT_ERROR
    except RuntimeFailure as exc:
        err(f"error: {exc.message}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    return EXIT_OK


def entry() -> None:
    sys.exit(run())
