"""The native runtime's daemonless image builder (Dockerfile -> OCI image in the native
store). Modules, each one concept:

    parse.py        the Dockerfile, parsed by BuildKit's own parser (the `dockerfile` wheel),
                    its parser directives and heredoc flags
    words.py        quote removal and $VAR expansion of instruction arguments
    dockerignore.py .dockerignore matching with Docker's rules
    state.py        a stage's config and the metadata instructions (pure)
    context.py      the build context and the sources a COPY names, and their digest
    fsops.py        file operations confined to a mounted root file system
    copying.py      COPY and ADD (heredoc sources included)
    mounts.py       RUN --mount: bind, cache and tmpfs mounts of a RUN step
    layertar.py     an overlay upper dir as a reproducible layer tar (whiteouts included)
    cache.py        the layer cache: step keys and the cache file
    builder.py      the build: stages, steps, RUN containers, commit and tag
"""

from __future__ import annotations

from pathlib import Path

from pyapply.runtime.base import BuildConfig, BuildProgress, BuildResult
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.native.images import ImageStore


def build(
    store: ImageStore,
    containers: ContainerManager,
    root: Path,
    config: BuildConfig,
    progress: BuildProgress | None = None,
) -> BuildResult:
    """Build `config` into `store` (see builder.py); raises BuildFailed."""
    from pyapply.runtime.native.build.builder import Builder

    return Builder(store, containers, root, config, progress).run()
