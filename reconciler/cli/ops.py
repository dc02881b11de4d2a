"""The everyday commands on a stack's running containers, by their compose names: `exec`
(a command in a replica, on this terminal), `run` (a one-off container with a service's
config), `restart` (rolling, as `update_config` says), `stop` and `start` (on purpose:
restart policies wait for the next start), `events` and `top`. On the swarm runtime
`restart` and `events` are the services' (`cli.swarm`); `exec`, `run`, `top`, `stop` and
`start` refuse with the reason: they need a container of this host, which a swarm's tasks
are not."""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click
import msgspec

from pyapply.reconciler.cli.common import connect, connect_any, load_or_fail, stack_names
from pyapply.reconciler.cli.main import (
    age_key_option,
    err,
    fail,
    output_option,
    profile_option,
    runtime_options,
)
from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import UpdateConfig
from pyapply.runtime.base import (
    Attachment,
    ContainerConfig,
    ContainerState,
    Event,
    Runtime,
    RuntimeFailure,
)
from pyapply.runtime.drivers import runs_services
from pyapply.runtime.services import ServiceEvent

F = TypeVar("F", bound=Callable[..., Any])

# the label of a one-off container of `run`: it carries no stack label, so no diff, apply,
# get or down of the stack counts it as a replica
RUN_OF = identity.PREFIX + "run-of"

# why exec and top refuse the swarm runtime
_ON_A_NODE = (
    "{what} works on a container of this host, and a swarm service's tasks run on any node: "
    "use `docker {what}` on the node that runs the task (`pyapply get` lists the nodes)"
)

# options after SERVICE belong to the command run in the container (`exec web ls -l`)
PASS_THROUGH = {"allow_interspersed_args": False, "ignore_unknown_options": True}


def command_words(command: tuple[str, ...]) -> tuple[str, ...]:
    """The command after SERVICE, without a leading `--` (kubectl's way of ending options:
    `pyapply exec web -- ls -l`)."""
    return command[1:] if command[:1] == ("--",) else command


def stack_options(fn: F) -> F:
    """-f/--file or --stack naming the stacks, with the options loading them needs."""
    fn = click.option("--stack", "stacks", multiple=True, help="Stack name (instead of -f).")(fn)
    fn = click.option(
        "-f",
        "--file",
        "files",
        multiple=True,
        type=click.Path(),
        help="Manifest file or directory naming the stack; repeatable.",
    )(fn)
    return age_key_option(runtime_options(profile_option(fn)))


def replicas(rt: Runtime, names: Sequence[str], service: str) -> list[ContainerState]:
    """The service's containers in the stacks, by replica number; none is an error."""
    found = [
        c
        for name in names
        for c in rt.list_containers({identity.STACK: name, identity.SERVICE: service})
    ]
    if not found:
        fail(f"no containers of service {service} in stack {', '.join(names)}")
    return sorted(found, key=lambda c: (_replica(c), c.name))


def _replica(c: ContainerState) -> int:
    try:
        return int(c.labels.get(identity.REPLICA, "0"))
    except ValueError:
        return 0


def _exit(code: int) -> None:
    """End the command with the container's exit code (run() passes it through)."""
    sys.stdout.flush()
    raise SystemExit(code)


# ---------------------------------------------------------------------------------------------
# exec


@click.command("exec", context_settings=PASS_THROUGH)
@stack_options
@click.option("--index", default=1, show_default=True, help="Replica to run in (from 1).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and pass it on.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    index: int,
    interactive: bool,
    tty: bool,
    service: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a running replica of SERVICE; its exit code is pyapply's."""
    command = command_words(command)
    if not command:
        fail(f"exec {service}: name the command to run (pyapply exec {service} CMD...)")
    if index < 1:
        fail(f"--index {index}: replicas are numbered from 1")
    names = stack_names(files, stacks, profiles)
    rt = connect(runtime_name, root, swarm=_ON_A_NODE.format(what="exec"))
    containers = replicas(rt, names, service)
    chosen = [c for c in containers if _replica(c) == index]
    if not chosen:
        have = ", ".join(str(_replica(c)) for c in containers)
        fail(f"service {service} has no replica {index} (replicas: {have})")
    if not chosen[0].running:
        fail(f"container {chosen[0].name} is not running ({chosen[0].status})")
    _exit(rt.exec_attached(chosen[0].name, command, stdin=interactive, tty=tty))


# ---------------------------------------------------------------------------------------------
# run


@click.command("run", context_settings=PASS_THROUGH)
@stack_options
@click.option(
    "--rm/--no-rm", "remove", default=True, show_default=True, help="Remove it when it ends."
)
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE added to its environment.")
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_cmd(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    remove: bool,
    env: tuple[str, ...],
    service: str,
    command: tuple[str, ...],
) -> None:
    """Run a one-off container of SERVICE (its image, env, mounts, networks; COMMAND instead
    of its command) and print its output; its exit code is pyapply's. It is named
    <stack>-<service>-run-<id>, publishes no ports and is no replica."""
    from pyapply.reconciler.engine.reconcile import desired_for, state_root

    command = command_words(command)
    if stacks:
        fail("run needs the manifests (-f FILE): the service's config is read from them")
    if not files:
        fail("name the stack with -f FILE")
    for item in env:
        if "=" not in item or item.startswith("="):
            fail(f"--env {item!r}: expected KEY=VALUE")
    loaded = load_or_fail(files, profiles, acting=False)
    stack = next((s for s in loaded.stacks if any(v.name == service for v in s.services)), None)
    if stack is None:
        fail(f"no service {service} in {', '.join(s.name for s in loaded.stacks)}")
    desired = desired_for(
        stack, revision="", root=state_root(root), environ=loaded.environments.get(stack.name)
    )
    template = next((d.config for d in desired.containers if d.service == service), None)
    if template is None:  # scaled to zero: its config is still the service's
        fail(f"service {service} has no container config (replicas: 0?)")
    config = one_off(template, stack.name, service, command, env)
    rt = connect(
        runtime_name,
        root,
        swarm="run makes a one-off container on this host, which a swarm service is not: "
        "use `docker run` with the service's image, or --runtime docker on the manager",
    )
    for att in config.networks:
        if rt.get_network(att.network) is None:
            fail(f"network {att.network} does not exist: apply the stack first")
    if rt.images([config.image]).get(config.image) is None:
        rt.pull_image(config.image)
    rt.create_container(config)
    try:
        rt.start_container(config.name)
        for chunk in rt.logs(config.name, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        code = _wait_exit(rt, config.name)
    finally:
        if remove:
            try:
                rt.remove_container(config.name)
            except RuntimeFailure as exc:
                err(f"error: could not remove {config.name}: {exc.message}")
        else:
            err(f"kept {config.name} (--no-rm)")
    _exit(code)


def one_off(
    template: ContainerConfig,
    stack: str,
    service: str,
    command: Sequence[str],
    env: Sequence[str],
) -> ContainerConfig:
    """A replica's config made into a one-off's: its own name and labels (no stack label,
    so it is no replica), no published ports (the replicas hold them), no restart policy
    or healthcheck, no service aliases; `command` and `env` as asked."""
    labels = {k: v for k, v in template.labels.items() if not k.startswith(identity.PREFIX)}
    labels[RUN_OF] = f"{stack}/{service}"
    keys = {e.split("=", 1)[0] for e in env}
    return msgspec.structs.replace(
        template,
        name=f"{stack}-{service}-run-{secrets.token_hex(4)}",
        labels=labels,
        command=tuple(command) if command else template.command,
        env=tuple(e for e in template.env if e.split("=", 1)[0] not in keys) + tuple(env),
        ports=(),
        networks=tuple(Attachment(network=a.network) for a in template.networks),
        restart_policy="no",
        restart_max_retries=0,
        health=None,
        hostname=None,
    )


def _wait_exit(rt: Runtime, name: str, timeout_s: float = 30.0) -> int:
    """The exit code, once the runtime records it (the log stream can end just before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = rt.get_container(name)
        if state is None:
            fail(f"container {name} vanished before it ended")
        if not state.running and state.exit_code is not None:
            return state.exit_code
        if time.monotonic() > deadline:
            fail(f"container {name} still runs after its output ended")
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# restart


@click.command("restart")
@stack_options
@click.option("--timeout", "stop_timeout", type=float, default=None, help="Seconds to stop.")
@click.option(
    "--wait-timeout",
    default=120.0,
    show_default=True,
    help="Seconds a batch may take to run (and be healthy) again.",
)
@click.argument("services", nargs=-1, required=True)
def restart(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    stop_timeout: float | None,
    wait_timeout: float,
    services: tuple[str, ...],
) -> None:
    """Restart the containers of SERVICES, rolling as their `deploy.update_config` says:
    `parallelism` at a time, `delay` between batches, and each batch running (and healthy,
    with a healthcheck) before the next. A container restarts in place, so `order` changes
    nothing here but the wait: start-first and stop-first alike wait for the batch."""
    updates: dict[str, UpdateConfig] = {}
    if files:
        for stack in load_or_fail(files, profiles, acting=False, runtime_name=runtime_name).stacks:
            for svc in stack.services:
                updates[svc.name] = svc.update
    names = stack_names(files, stacks, profiles, runtime_name)
    any_rt = connect_any(runtime_name, root)
    if runs_services(any_rt):  # the swarm replaces the tasks, as update_config says
        from pyapply.reconciler.cli import swarm

        if stop_timeout is not None:
            fail("--timeout: on swarm a task stops as its service's stop_grace_period says")
        swarm.restart(any_rt, names, services, wait_timeout=wait_timeout)
        return
    rt = any_rt
    for service in services:
        update = updates.get(service, UpdateConfig())
        containers = replicas(rt, names, service)
        size = update.parallelism or len(containers)
        batches = [containers[i : i + size] for i in range(0, len(containers), size)]
        for n, batch in enumerate(batches):
            if n and update.delay:
                time.sleep(update.delay)
            for c in batch:
                rt.stop_container(c.name, timeout_s=stop_timeout)
                rt.start_container(c.name)
            _wait_ready(rt, [c.name for c in batch], wait_timeout)
            for c in batch:
                click.echo(f"restarted {c.name}")


def _wait_ready(rt: Runtime, names: Sequence[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending:
        states = {n: rt.get_container(n) for n in pending}
        pending = [
            n
            for n, s in states.items()
            if s is None or not s.running or s.health not in (None, "healthy")
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            fail(f"{', '.join(pending)} not running and healthy after {timeout_s:.0f}s")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# stop and start


def _chosen(rt: Runtime, names: Sequence[str], services: Sequence[str]) -> list[ContainerState]:
    """The containers of SERVICES in the stacks (every service's when none is named)."""
    if services:
        return [c for service in services for c in replicas(rt, names, service)]
    found = [c for name in names for c in rt.list_containers({identity.STACK: name})]
    if not found:
        fail(f"no containers in stack {', '.join(names)}")
    return sorted(found, key=lambda c: c.name)


@click.command("stop")
@stack_options
@click.option("--timeout", "stop_timeout", type=float, default=None, help="Seconds to stop.")
@click.argument("services", nargs=-1)
def stop(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    stop_timeout: float | None,
    services: tuple[str, ...],
) -> None:
    """Stop the containers of SERVICES (of every service when none is named), on purpose:
    no restart policy starts them again until `pyapply start` or `pyapply -f` does (but
    `restart: always` does at boot, as dockerd does)."""
    names = stack_names(files, stacks, profiles)
    rt = connect(runtime_name, root)
    for c in _chosen(rt, names, services):
        rt.stop_container(c.name, timeout_s=stop_timeout)
        click.echo(f"stopped {c.name}")


@click.command("start")
@stack_options
@click.argument("services", nargs=-1)
def start(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    services: tuple[str, ...],
) -> None:
    """Start the containers of SERVICES (of every service when none is named) as they
    are; their restart policies apply again."""
    names = stack_names(files, stacks, profiles)
    rt = connect(runtime_name, root)
    for c in _chosen(rt, names, services):
        rt.start_container(c.name)
        click.echo(f"started {c.name}")


# ---------------------------------------------------------------------------------------------
# events and top


def print_events(stream: Iterable[Event | ServiceEvent], names: Sequence[str], output: str) -> None:
    """Print the events of `stream` about the stacks `names` until it ends or is
    interrupted: a line each, or a JSON object per line (`output` json); a swarm's events
    carry a detail (an update's state change), said when there is one. The runtimes of
    one host and the swarm (cli.swarm) both print with this."""
    try:
        for ev in stream:
            stack = ev.labels.get(identity.STACK, "")
            if stack not in names:
                continue
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            detail = ev.detail if isinstance(ev, ServiceEvent) else None
            if output == "json":
                doc = {
                    "time": now,
                    "stack": stack,
                    "service": ev.labels.get(identity.SERVICE),
                    "kind": ev.kind,
                    "action": ev.action,
                    "name": ev.name,
                }
                if detail is not None:
                    doc["detail"] = detail or None
                click.echo(json.dumps(doc))
            else:
                tail = f" ({detail})" if detail else ""
                click.echo(f"{now} {ev.kind} {ev.action} {ev.name}{tail}")
            sys.stdout.flush()
    except KeyboardInterrupt:  # the way to end a stream: not an error
        return


@click.command("events")
@stack_options
@output_option
def events(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
) -> None:
    """Stream the events of the stacks' containers, networks and volumes until interrupted:
    a line each, or a JSON object per line with -o json."""
    names = stack_names(files, stacks, profiles, runtime_name)
    any_rt = connect_any(runtime_name, root)
    if runs_services(any_rt):  # the services, their tasks' containers, networks, ...
        from pyapply.reconciler.cli import swarm

        swarm.events(any_rt, names, output=output)
        return
    print_events(
        any_rt.events({identity.STACK: names[0] if len(names) == 1 else ""}), names, output
    )


@click.command("top")
@stack_options
@output_option
@click.argument("service")
def top(
    files: tuple[str, ...],
    stacks: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
    service: str,
) -> None:
    """The processes of each running replica of SERVICE."""
    from pyapply.reconciler.view.objects import process_lines

    names = stack_names(files, stacks, profiles)
    rt = connect(runtime_name, root, swarm=_ON_A_NODE.format(what="top"))
    tables = [(c.name, *rt.top(c.name)) for c in replicas(rt, names, service) if c.running]
    if not tables:
        fail(f"no running containers of service {service}")
    if output == "json":
        docs = [
            {"container": name, "processes": [dict(zip(titles, row, strict=False)) for row in rows]}
            for name, titles, rows in tables
        ]
        click.echo(json.dumps(docs, indent=2))
        return
    for name, titles, rows in tables:
        for line in process_lines(name, titles, rows):
            click.echo(line)
