"""`pyapply build -f X [SERVICE...]` and `pyapply push -f X [SERVICE...]`: the images of a
stack's services that have `build:`, made and shipped as `docker compose build` / `push` do.

`build` builds each (all of them, or the services named), in name order, with per-step
progress (a live view on a terminal, reconciler.view.build_live; lines otherwise,
reconciler.view.build_progress), stopping at the first failure with its
step, exit code and last lines; `-o json` prints the results (or the error) as JSON on
stdout and the progress on stderr. `push` pushes the image of each service that has
`build:` and an image name with a registry host, and the build's `tags` that have one
(the others cannot be pushed anywhere: they are named and skipped).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from pyapply.reconciler.cli.common import connect, enforce, load_or_fail, policy_or_fail
from pyapply.reconciler.cli.image import build_display, one_line, push_each
from pyapply.reconciler.cli.main import (
    err,
    fail,
    file_option,
    policy_option,
    profile_option,
    runtime_options,
)
from pyapply.reconciler.core.model import ServiceSpec, Stack
from pyapply.reconciler.engine.build import (
    BuildError,
    BuildOptions,
    build_service,
    check_contexts,
    select,
)
from pyapply.reconciler.view import build_progress as view
from pyapply.runtime.base import BuildEvent, RuntimeFailure


def chosen(stacks: Sequence[Stack], names: Sequence[str]) -> list[tuple[Stack, ServiceSpec]]:
    """The (stack, service) pairs the command acts on: the services named (all when none
    are) that have `build:`; a name that is no service of any stack fails the command."""
    out: list[tuple[Stack, ServiceSpec]] = []
    unknown = set(names)
    for stack in stacks:
        services, missing = select(stack.services, names)
        unknown &= set(missing)
        out += [(stack, s) for s in services]
    if unknown:
        fail(f"no such service: {', '.join(sorted(unknown))}")
    return out


def registry_host(ref: str) -> str | None:
    """The registry a reference names, docker's rule: a first path component with a "."
    or a ":" in it, or "localhost"; None for a name on no registry (docker.io's
    library names are not pushed by accident)."""
    first, slash, _ = ref.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def push_refs(service: ServiceSpec) -> list[str]:
    """What `push` pushes for a service: its image and its build's tags, those that name a
    registry."""
    tags = service.build.tags if service.build is not None else ()
    refs = dict.fromkeys((service.image, *tags))
    return [r for r in refs if registry_host(r) is not None]


@click.command("build")
@file_option()
@click.argument("services", nargs=-1)
@profile_option
@runtime_options
@policy_option
@click.option("--no-cache", is_flag=True, help="Do not use the layer cache.")
@click.option("--pull", is_flag=True, help="Pull the base images even if present.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: progress on stderr, the results (or the error) as JSON on stdout.",
)
def build(
    files: tuple[str, ...],
    services: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    policy_arg: str | None,
    no_cache: bool,
    pull: bool,
    output: str,
) -> None:
    """Build the images of the services that have `build:` (all, or those named)."""
    # the policy as apply has it: a context or Dockerfile from outside the manifest's
    # directory reads host files into an image
    policy = policy_or_fail(policy_arg, "warn", root)
    loaded = load_or_fail(files, profiles, policy=policy)
    enforce(loaded, policy, output)
    todo = chosen(loaded.stacks, services)
    as_json = output == "json"
    if not todo:
        if as_json:
            click.echo("[]")
        else:
            click.echo("no service to build: none has a build section")
        return
    try:
        check_contexts(s for _, s in todo)
    except BuildError as e:
        fail(str(e))
    rt = connect(runtime_name, root)
    options = BuildOptions(no_cache=no_cache, pull=pull)
    results: list[dict[str, Any]] = []

    def show(event: BuildEvent) -> None:
        click.echo(view.event_line(event), err=as_json)

    live = not as_json and sys.stdout.isatty()
    try:
        for stack, service in todo:
            title = f"building {service.name} ({service.image})"
            if not live:
                click.echo(title, err=as_json)
            doc: dict[str, Any] = {"stack": stack.name, "service": service.name}
            try:
                with build_display(as_json, title, show) as progress:
                    result = build_service(rt, service, options, lambda _, e: progress(e))
            except BuildError as e:
                if as_json:
                    doc.update(view.failure_json(e.failure) if e.failure else {"error": str(e)})
                    results.append(doc)
                    click.echo(json.dumps(results, indent=2))
                if e.failure is not None:
                    for line in view.failure_lines(e.failure):
                        err(line)
                fail(one_line(str(e)))
            except RuntimeFailure as e:
                fail(f"build of service {service.name}: {one_line(e.message)}")
            except OSError as e:
                fail(f"build of service {service.name}: {one_line(str(e))}")
            results.append({**doc, **view.result_json(result)})
            if not as_json:
                for line in view.result_lines(result):
                    click.echo(line)
    finally:
        with contextlib.suppress(Exception):
            rt.close()
    if as_json:
        click.echo(json.dumps(results, indent=2))


@click.command("push")
@file_option()
@click.argument("services", nargs=-1)
@profile_option
@runtime_options
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Progress lines, or one JSON document at the end.",
)
def push(
    files: tuple[str, ...],
    services: tuple[str, ...],
    profiles: tuple[str, ...],
    runtime_name: str | None,
    root: str | None,
    output: str,
) -> None:
    """Push the images of the services that have `build:` and a registry in their image
    name (all, or those named): every blob first, the manifest last."""
    loaded = load_or_fail(files, profiles)
    todo = chosen(loaded.stacks, services)
    as_json = output == "json"
    refs: list[str] = []
    for _, service in todo:
        pushable = push_refs(service)
        if not pushable:
            err(
                f"skipped {service.name}: its image {service.image} names no registry "
                "(name it registry-host/repository:tag to push it)"
            )
        refs += [r for r in pushable if r not in refs]
    if not refs:
        click.echo("[]" if as_json else "nothing to push")
        return
    rt = connect(runtime_name, root)
    try:
        docs, failed = push_each(rt, refs, show=not as_json)
    finally:
        with contextlib.suppress(Exception):
            rt.close()
    if as_json:
        click.echo(json.dumps(docs, indent=2))
    if failed:
        sys.exit(1)
