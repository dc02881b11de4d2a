"""`pyapply apply` (also `pyapply -f`), `diff` and `down` (alias `delete`): load, check
the policy, then one pass of the engine (`engine.apply.apply_all`, `engine.down.down_stack`)
shown as plan text, progress, or JSON with `-o json`."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import click

from pyapply.reconciler.cli.common import (
    connect_any,
    enforce,
    guard_emptying,
    load_or_fail,
    locked,
    policy_or_fail,
    stack_names,
)
from pyapply.reconciler.cli.main import (
    EXIT_DRIFT,
    EXIT_ERROR,
    age_key_option,
    err,
    fail,
    file_option,
    output_option,
    policy_option,
    profile_option,
    runtime_options,
)
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import Redactor
from pyapply.reconciler.engine.reconcile import (
    ApplyOptions,
    StackResult,
    desired_all,
    plan_stack,
    redactor_for,
    state_root,
)
from pyapply.reconciler.manifest.revision import identify
from pyapply.reconciler.view.plan_text import (
    outcome_summary,
    plan_text,
    plans_json,
    result_line,
    results_json,
)
from pyapply.runtime.drivers import runs_services

if TYPE_CHECKING:
    from pyapply.reconciler.engine.build import BuildListener
    from pyapply.reconciler.engine.execute import Reporter
    from pyapply.runtime.base import BuildEvent

# The executor (tenacity) and the progress display (rich on a terminal) are imported only
# when there is something to do: a no-op apply or a diff never pays for them.


@click.command()
@file_option()
@profile_option
@runtime_options
@output_option
@policy_option
@age_key_option
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
    from pyapply.reconciler.engine.apply import Hooks, apply_all  # not for a diff

    policy = policy_or_fail(policy_arg, "warn", root)
    loaded = load_or_fail(
        files, profiles, policy=policy, runtime_name=runtime_name, for_runtime=True
    )
    findings = enforce(loaded, policy, output)
    revision = identify(loaded.files, loaded.content_digest)
    rt = connect_any(runtime_name, root)
    if runs_services(rt):  # a swarm: services, not containers
        from pyapply.reconciler.cli import swarm

        swarm.apply(
            rt, loaded, revision.id, output=output, dry_run=dry_run, wait_timeout=wait_timeout
        )
        return
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
    wanted = desired_all(loaded, revision=revision.id, root=root_dir)
    redactor = redactor_for(wanted)
    guard_emptying(rt, loaded, allow_empty=allow_empty, dry_run=dry_run)
    reporters: dict[str, Reporter] = {}

    def show(plan: Plan) -> AbstractContextManager[Any] | None:
        if output != "text":
            return None
        click.echo(plan_text(plan, redactor))
        if plan.empty or plan.errors or dry_run:
            return None
        # the progress display, made (and imported) only when there is something to do
        reporter, ctx = progress(live, redactor)
        reporters[plan.stack] = reporter
        return ctx

    def shown(result: StackResult) -> None:
        if result.plan.errors:
            fail(
                redactor.text(
                    f"stack {result.stack}: cannot apply: " + "; ".join(result.plan.errors)
                )
            )
        if result.outcome is not None and output == "text":
            # the live table shows a failure cut short and is gone once the pass ends:
            # say it again, whole; plain progress has already printed each line once
            if live:
                for r in result.outcome.failed:
                    err(result_line(r, redactor))
            click.echo(f"stack {result.stack}: {outcome_summary(result.outcome)}")

    done = apply_all(
        rt,
        wanted,
        options,
        root=root_dir,
        lock=nullcontext() if dry_run else locked(root_dir, lock_timeout),
        hooks=Hooks(reporter=reporters.get, on_plan=show, on_result=shown),
    )
    plans = [r.plan for r in done.results]
    outcomes = [r.outcome for r in done.results if r.outcome is not None]
    if output == "json":
        doc = plans_json(plans, redactor)
        doc["revision"] = revision.id
        doc["applied"] = not dry_run
        doc["findings"] = [f.to_json() for f in findings]
        doc["results"] = results_json(outcomes, redactor)
        click.echo(json.dumps(doc, indent=2))
    if any(not o.ok for o in outcomes):
        fail("some actions failed; run `pyapply diff` to see what is left, or apply again")


@click.command("diff")
@file_option()
@profile_option
@runtime_options
@output_option
@policy_option
@age_key_option
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
    loaded = load_or_fail(
        files, profiles, policy=policy, runtime_name=runtime_name, for_runtime=True
    )
    findings = enforce(loaded, policy, output, acting=False)
    revision = identify(loaded.files, loaded.content_digest)
    rt = connect_any(runtime_name, root)
    if runs_services(rt):  # a swarm: services, not containers
        from pyapply.reconciler.cli import swarm

        swarm.diff(rt, loaded, revision.id, output=output, exit_code=exit_code)
        return
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


@click.command("down")
@file_option(required=False)
@profile_option
@runtime_options
@age_key_option
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
    from pyapply.reconciler.engine.down import down_stack

    names = stack_names(files, stacks, profiles, runtime_name)
    rt = connect_any(runtime_name, root)
    if runs_services(rt):  # a swarm: services, not containers
        from pyapply.reconciler.cli import swarm

        swarm.down(rt, names, volumes=remove_volumes)
        return
    root_dir = state_root(root)
    ok = True
    with locked(root_dir, lock_timeout):
        for name in names:
            result = down_stack(
                rt,
                name,
                root_dir,
                volumes=remove_volumes,
                reporter=plain_reporter,
                on_plan=lambda plan: click.echo(plan_text(plan)),
            )
            if result.outcome is not None:
                click.echo(f"stack {name}: {outcome_summary(result.outcome)}")
            ok = ok and result.ok
    if not ok:
        fail("some objects could not be removed; run down again")


def build_lines(output: str) -> BuildListener:
    """The steps of the builds an apply makes, one line each (reconciler.view.build_progress):
    on stdout with the plan, on stderr when stdout is JSON."""

    def listen(image: str, event: BuildEvent) -> None:
        # imported at the first build event: an apply that builds nothing never loads it
        from pyapply.reconciler.view.build_progress import image_event_line

        click.echo(image_event_line(image, event), err=output != "text")

    return listen


def progress(live: bool, redactor: Redactor) -> tuple[Reporter, AbstractContextManager[Any]]:
    """The executor's reporter and the context it runs in: a live table on a terminal,
    else a line per action."""
    if live:
        from pyapply.reconciler.view.progress import LiveReporter

        reporter = LiveReporter(redactor=redactor)
        return reporter, reporter
    from pyapply.reconciler.view.progress import PlainReporter

    plain = PlainReporter(sys.stdout, redactor)
    return plain, nullcontext(plain)


def plain_reporter() -> Reporter:
    from pyapply.reconciler.view.progress import PlainReporter

    return PlainReporter(sys.stdout)
