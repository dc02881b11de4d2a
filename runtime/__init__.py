"""Container runtimes pyapply drives, behind the protocol in `runtime.base`."""

from __future__ import annotations

import os

from runtime.base import Runtime, Unavailable

RUNTIMES = ("docker",)


def open_runtime(name: str | None = None) -> Runtime:
    """Open the runtime called `name` (default: $PYAPPLY_RUNTIME, else docker).

    Drivers are imported lazily so that commands that need no runtime (validate, config)
    never import a driver's dependencies.
    """
    chosen = name or os.environ.get("PYAPPLY_RUNTIME") or "docker"
    if chosen == "docker":
        from runtime.docker.driver import DockerRuntime

        return DockerRuntime()
    raise Unavailable(f"unknown runtime {chosen!r}; known runtimes: {', '.join(RUNTIMES)}")
