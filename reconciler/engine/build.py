"""The images a pass builds from the services' `build:` sections, before anything else.

Three cases, as `docker compose up` has them:

- an image that is missing is built by the plan: a "build" action that every other action
  of the stack waits for (reconciler.core.plan), so a failed build touches nothing;
- `pyapply apply --build` and `pull_policy: build` build before the stack is observed
  (`build_first`), so that a build whose inputs changed shows up in the diff as a changed
  image id, and the service's containers are recreated on it;
- otherwise an image that exists is used as it is.

Before any of it, every image that will be built has its context checked: a missing one is
an error located where the manifest names it (`file:line:col: path: ...`), and nothing is
done. `pyapply build` and `pyapply push` (reconciler/cli/build.py) use the same pieces.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import msgspec

from pyapply.reconciler.core.model import ServiceSpec
from pyapply.reconciler.core.translate import Desired, build_config, builders
from pyapply.reconciler.engine.reconcile import PassError
from pyapply.runtime.base import BuildEvent, BuildFailed, BuildResult, Runtime

# the progress of one build among several: (the image being built, an event of its build)
BuildListener = Callable[[str, BuildEvent], None]


class BuildError(PassError):
    """A build of the pass failed (or cannot start): nothing of the stack was touched.
    `failure` holds the builder's details when there are some."""

    def __init__(self, message: str, failure: BuildFailed | None = None) -> None:
        super().__init__(message)
        self.failure = failure


class BuildOptions(msgspec.Struct, frozen=True):
    """What the command line adds to what the manifests ask of a build."""

    no_cache: bool = False
    pull: bool = False


def forced(desired: Desired, *, rebuild: bool) -> list[ServiceSpec]:
    """The services whose image is built before observing: all that have `build:` with
    --build, else those with `pull_policy: build` (one service per image)."""
    return [s for s in builders(desired).values() if rebuild or s.pull_policy == "build"]


def missing_context(service: ServiceSpec) -> str | None:
    """Why the service's image cannot be built here (its context is not a directory), as
    a located line (`file:line:col: path: sentence`); None when it can."""
    b = service.build
    if b is None or os.path.isdir(b.context):
        return None
    what = "is not a directory" if os.path.exists(b.context) else "does not exist"
    where = f"{b.location}: " if b.location is not None else ""
    path = f"{b.path}: " if b.path else ""
    return f"{where}{path}the build context {b.context} {what}: cannot build {service.image}"


def check_contexts(services: Iterable[ServiceSpec]) -> None:
    """Every context of these services must be a directory; else one BuildError naming
    each that is not, located, before anything is done."""
    problems = [p for s in services if (p := missing_context(s)) is not None]
    if problems:
        raise BuildError("\n".join(problems) + "; nothing was changed")


def to_build(runtime: Runtime, desired: Desired, *, rebuild: bool) -> list[ServiceSpec]:
    """The services whose image this pass builds: the forced ones, and those whose image
    is not present (one images() call)."""
    every = builders(desired)
    if not every:
        return []
    present = runtime.images(sorted(every))
    force = {s.image for s in forced(desired, rebuild=rebuild)}
    return [s for ref, s in sorted(every.items()) if ref in force or present.get(ref) is None]


def build_service(
    runtime: Runtime,
    service: ServiceSpec,
    options: BuildOptions = BuildOptions(),
    listener: BuildListener | None = None,
) -> BuildResult:
    """Build one service's image (tagged `image` and its `tags`); BuildError says which
    service failed, with the builder's details."""
    config = build_config(service, no_cache=options.no_cache, pull=options.pull)
    progress = None if listener is None else (lambda e: listener(service.image, e))
    try:
        return runtime.build_image(config, progress)
    except BuildFailed as e:
        from pyapply.reconciler.engine.execute import failure_text

        raise BuildError(f"build of service {service.name} failed: {failure_text(e)}", e) from e


def build_first(
    runtime: Runtime,
    desired: Desired,
    *,
    rebuild: bool,
    listener: BuildListener | None = None,
) -> list[BuildResult]:
    """Check the context of every image this pass builds (the plan's missing ones too:
    a missing context is found before anything is done), then build the forced ones."""
    check_contexts(to_build(runtime, desired, rebuild=rebuild))
    return [build_service(runtime, s, listener=listener) for s in forced(desired, rebuild=rebuild)]


def select(
    services: Sequence[ServiceSpec], names: Sequence[str]
) -> tuple[list[ServiceSpec], list[str]]:
    """The services named (all when none are) that have `build:`, and the names that are
    not services of the stack."""
    known = {s.name for s in services}
    unknown = [n for n in names if n not in known]
    chosen = [s for s in services if s.build is not None and (not names or s.name in names)]
    return chosen, unknown
