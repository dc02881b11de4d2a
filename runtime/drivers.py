"""Choosing and opening a runtime by name (the drivers are imported lazily)."""

from __future__ import annotations

import os

from pyapply.runtime.base import Runtime, Unavailable

RUNTIMES = ("native", "docker")
DEFAULT_RUNTIME = "native"


def open_runtime(name: str | None = None, *, root: str | None = None) -> Runtime:
    """Open the runtime called `name` (default: $PYAPPLY_RUNTIME, else native). `root` is
    the state root of the native runtime (default: $PYAPPLY_ROOT, else /var/lib/pyapply);
    docker ignores it.

    Drivers are imported lazily so that commands that need no runtime (validate, config)
    never import a driver's dependencies.
    """
    chosen = name or os.environ.get("PYAPPLY_RUNTIME") or DEFAULT_RUNTIME
    if chosen == "docker":
        from pyapply.runtime.docker.driver import DockerRuntime

        return DockerRuntime()
    if chosen == "native":
        from pyapply.runtime.native.driver import NativeRuntime

        return NativeRuntime(root)
    raise Unavailable(f"unknown runtime {chosen!r}; known runtimes: {', '.join(RUNTIMES)}")
