"""One reconcile pass: desired state -> observe -> diff -> plan (-> execute).

The functions here are the glue between the pure core (translate, diff, plan) and the
effects (the runtime, the files of configs and secrets, the executor). The CLI and the watch
agent both go through them, so a pass means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import msgspec

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import Observed, diff, named_containers, teardown
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.model import Stack
from pyapply.reconciler.core.plan import Plan, build, build_teardown
from pyapply.reconciler.core.redact import Redactor
from pyapply.reconciler.core.translate import Desired, FileKind, desired_state, file_sources
from pyapply.reconciler.manifest import sealed
from pyapply.runtime.base import Runtime
from pyapply.runtime.statefs import state_root as state_root  # the rule lives in runtime/

if TYPE_CHECKING:
    from pyapply.reconciler.engine.build import BuildListener
    from pyapply.reconciler.engine.execute import Executor, Outcome, Reporter
    from pyapply.reconciler.manifest.loader import Loaded


class PassError(PyapplyError):
    """A pass cannot go on (a config file unreadable, an external object missing ...)."""


def read_file_objects(
    stack: Stack, environ: Mapping[str, str]
) -> dict[tuple[FileKind, str], bytes]:
    """The bytes of every config and secret the stack defines; a file kept encrypted in
    git (SOPS or age, `reconciler.manifest.sops`) is decrypted here, in memory."""
    out: dict[tuple[FileKind, str], bytes] = {}
    for kind, spec in file_sources(stack):
        if spec.file is not None:
            try:
                with open(spec.file, "rb") as fh:
                    content = fh.read()
            except OSError as exc:
                raise PassError(
                    f"{kind} {spec.name}: cannot read {spec.file}: {exc.strerror}"
                ) from exc
            if not sealed.may_be_sealed(content):
                out[(kind, spec.name)] = content
                continue
            from pyapply.reconciler.manifest import sops  # only for a sealed file (startup)

            try:
                out[(kind, spec.name)] = sops.decrypt(content, os.path.basename(spec.file))
            except sops.SopsError as exc:
                raise PassError(f"{kind} {spec.name}: {exc.located(spec.file)}") from None
        elif spec.environment is not None:
            if spec.environment not in environ:
                raise PassError(
                    f"{kind} {spec.name}: environment variable {spec.environment} is not set"
                )
            out[(kind, spec.name)] = environ[spec.environment].encode()
        else:
            out[(kind, spec.name)] = (spec.content or "").encode()
    return out


def desired_for(
    stack: Stack, *, revision: str, root: str, environ: Mapping[str, str] | None = None
) -> Desired:
    env = os.environ if environ is None else environ
    return desired_state(
        stack,
        revision=revision,
        file_contents=read_file_objects(stack, env),
        files_root=os.path.join(root, "files"),
    )


def desired_all(loaded: Loaded, *, revision: str, root: str) -> list[Desired]:
    """Every loaded stack's desired state, made before any stack is touched: a secret that
    cannot be read stops the run first, and the secrets of all stacks are hidden in the
    output of each."""
    return [
        desired_for(
            stack, revision=revision, root=root, environ=loaded.environments.get(stack.name)
        )
        for stack in loaded.stacks
    ]


def redactor_for(desired: Iterable[Desired]) -> Redactor:
    """What must be hidden in the output about these stacks: the content of each of their
    secrets (configs are not secret), as the desired model already holds it, and every
    value this process decrypted."""
    secrets: list[str | bytes] = [f.content for d in desired for f in d.files if f.kind == "secret"]
    # and every value decrypted from a file kept encrypted in git (env files, manifests)
    return Redactor([*secrets, *sealed.revealed()])


def observe(runtime: Runtime, stack: str, desired: Desired | None = None) -> Observed:
    """What the runtime shows for one stack: one listing call per object kind."""
    labels = {identity.STACK: stack}
    containers = runtime.list_containers(labels)
    networks = runtime.list_networks(labels)
    volumes = runtime.list_volumes(labels)
    if desired is None:
        return Observed(tuple(containers), tuple(networks), tuple(volumes))
    refs = sorted({dc.config.image for dc in desired.containers})
    return Observed(
        containers=tuple(sorted(containers, key=lambda c: c.name)),
        networks=tuple(sorted(networks, key=lambda n: n.name)),
        volumes=tuple(sorted(volumes, key=lambda v: v.name)),
        images=runtime.images(refs),
        external_networks={
            n.config.name: runtime.get_network(n.config.name)
            for n in desired.networks
            if n.external
        },
        external_volumes={
            v.config.name: runtime.get_volume(v.config.name) for v in desired.volumes if v.external
        },
        named={name: runtime.get_container(name) for name in named_containers(desired)},
    )


def pull_always(runtime: Runtime, desired: Desired, options: ApplyOptions) -> list[str]:
    """Pull the images of services with `pull_policy: always` (before observing, so that a
    tag that moved shows up as a changed image id), with the executor's retries."""
    refs = sorted({s.image for s in desired.services if s.pull_policy == "always"})
    if not refs:
        return refs
    from pyapply.reconciler.core.plan import Action
    from pyapply.reconciler.engine.execute import Executor, Settings

    pulls = Plan(
        desired.stack,
        desired.revision,
        (),
        tuple(Action(f"image:{r}:pull", "pull", r, "pull_policy: always") for r in refs),
    )
    outcome = Executor(runtime, Settings(parallelism=options.parallelism)).run(pulls)
    if not outcome.ok:
        raise PassError("; ".join(f"pull {r.action.target}: {r.error}" for r in outcome.failed))
    return refs


def plan_stack(runtime: Runtime, desired: Desired, *, prune_volumes: bool = False) -> Plan:
    observed = observe(runtime, desired.stack, desired)
    return build(desired, diff(desired, observed, prune_volumes=prune_volumes))


def plan_down(runtime: Runtime, stack: str, *, volumes: bool) -> Plan:
    return build_teardown(stack, teardown(observe(runtime, stack), volumes=volumes))


class ApplyOptions(msgspec.Struct, frozen=True):
    prune_volumes: bool = False
    dry_run: bool = False
    parallelism: int = 8
    wait_timeout_s: float = 120.0
    # images from `build:` (reconciler.engine.build): rebuild them all first (--build), and
    # who hears of the builds' steps
    build: bool = False
    on_build: BuildListener | None = None


class StackResult(msgspec.Struct, frozen=True):
    """One stack's pass: the plan, and what executing it did (None when nothing ran: a dry
    run, an empty plan, or a plan with errors)."""

    stack: str
    plan: Plan
    outcome: Outcome | None = None

    @property
    def ok(self) -> bool:
        return not self.plan.errors and (self.outcome is None or self.outcome.ok)


def apply_stack(
    runtime: Runtime,
    desired: Desired,
    options: ApplyOptions,
    *,
    reporter: Callable[[], Reporter | None] | None = None,
    on_plan: Callable[[Plan], AbstractContextManager[Any] | None] | None = None,
    on_executor: Callable[[Executor], None] | None = None,
) -> StackResult:
    """Pull what must be pulled, plan, and (unless a dry run) execute one stack.

    `on_plan` sees the plan before anything runs (to print it); the context manager it may
    return wraps the execution (a live progress display). `reporter` makes the executor's
    reporter, only when there is work (a no-op pass never imports a progress display).
    `on_executor` is handed the executor before it runs (the watch agent keeps it, to
    `cancel()` it on SIGTERM)."""
    if not options.dry_run:
        if any(s.build is not None for s in desired.services):
            # only a stack that builds images pays for the build machinery (startup)
            from pyapply.reconciler.engine.build import build_first

            build_first(runtime, desired, rebuild=options.build, listener=options.on_build)
        pull_always(runtime, desired, options)
    plan = plan_stack(runtime, desired, prune_volumes=options.prune_volumes)
    ctx = on_plan(plan) if on_plan is not None else None
    if plan.errors or options.dry_run or plan.empty:
        return StackResult(desired.stack, plan)
    from pyapply.reconciler.engine.execute import (  # only when there is work to do
        Executor,
        Settings,
    )

    executor = Executor(
        runtime,
        Settings(
            parallelism=options.parallelism,
            wait_timeout_s=options.wait_timeout_s,
            on_build=options.on_build,
        ),
        reporter() if reporter is not None else None,
    )
    if on_executor is not None:
        on_executor(executor)
    with ctx or nullcontext():
        outcome = executor.run(plan)
    return StackResult(desired.stack, plan, outcome)
