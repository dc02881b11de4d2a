"""`pyapply get` and `pyapply logs`: what runs of the stacks, as a table (`view.objects`)
or JSON, and the output of a service's containers."""

from __future__ import annotations

import json
from collections.abc import Iterator

import click

from pyapply.reconciler.cli.common import connect_any, load_or_fail, stack_names
from pyapply.reconciler.cli.main import (
    age_key_option,
    fail,
    file_option,
    output_option,
    profile_option,
    project_files_here,
    runtime_options,
)
from pyapply.reconciler.core import identity
from pyapply.reconciler.core.redact import NO_SECRETS
from pyapply.reconciler.engine.reconcile import (
    PassError,
    desired_for,
    observe,
    redactor_for,
    state_root,
)
from pyapply.reconciler.view.objects import stack_doc, stack_lines
from pyapply.runtime.drivers import runs_services


@click.command()
@file_option(required=False)
@profile_option
@runtime_options
@output_option
@age_key_option
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
    names = stack_names((), stacks) if stacks else []
    if not files and not stacks:  # the project here, as compose finds it (else every stack)
        files = project_files_here()
    redactor = NO_SECRETS
    if files:  # the stacks' secrets are known only from their manifests
        loaded = load_or_fail(files, profiles, acting=False, runtime_name=runtime_name)
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
    rt = connect_any(runtime_name, root)
    if runs_services(rt):  # a swarm: services, not containers
        from pyapply.reconciler.cli import swarm

        swarm.get(rt, names, output=output)
        return
    docs = redactor.value([stack_doc(name, observe(rt, name)) for name in names])
    if output == "json":
        click.echo(json.dumps(docs, indent=2))
        return
    for doc in docs:
        for line in stack_lines(doc):
            click.echo(line)


@click.command()
@click.argument("service")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(),
    help="Manifest file or directory naming the stack (-f is --follow here, as in compose).",
)
@runtime_options
@age_key_option
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
    """Print the output of a service's containers (each line prefixed with the replica; on a
    swarm, with the task: <stack>_<service>.<slot>)."""
    names = stack_names(files, stacks, runtime_name=runtime_name)
    any_rt = connect_any(runtime_name, root)
    if runs_services(any_rt):  # a swarm: the service's tasks on every node
        from pyapply.reconciler.cli import swarm

        swarm.logs(any_rt, names, service, follow=follow, tail=tail)
        return
    rt = any_rt
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
