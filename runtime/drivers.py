"""Choosing and opening a runtime by name (the drivers are imported lazily)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyapply.runtime.base import PermanentError, Runtime, Unavailable

if TYPE_CHECKING:  # not imported at run time: a no-op apply on one host never needs it
    from typing_extensions import TypeIs

    from pyapply.runtime.services import ServiceRuntime

RUNTIMES = ("native", "docker", "swarm")
DEFAULT_RUNTIME = "native"
SERVICE_RUNTIMES = ("swarm",)  # the runtimes that run services (ServiceRuntime), not containers


def runs_services(rt: Runtime | ServiceRuntime) -> TypeIs[ServiceRuntime]:
    """Whether `rt` is a ServiceRuntime (a swarm), decided by its name, so that telling the
    two kinds apart does not import the service vocabulary."""
    return rt.name in SERVICE_RUNTIMES


def chosen_runtime(name: str | None = None) -> str:
    """The runtime `name` means: itself, else $PYAPPLY_RUNTIME, else native."""
    return name or os.environ.get("PYAPPLY_RUNTIME") or DEFAULT_RUNTIME


def open_runtime(name: str | None = None, *, root: str | None = None) -> Runtime | ServiceRuntime:
    """Open the runtime called `name` (default: $PYAPPLY_RUNTIME, else native). `root` is
    the state root of the native runtime (default: $PYAPPLY_ROOT, else /var/lib/pyapply);
    docker and swarm ignore it. `swarm` is a `ServiceRuntime` (services on a swarm
    manager, $DOCKER_HOST respected); the others run containers on one host (`Runtime`):
    callers tell them apart with `runs_services(rt)`.

    Drivers are imported lazily so that commands that need no runtime (validate, config)
    never import a driver's dependencies.
    """
    chosen = chosen_runtime(name)
    if chosen == "docker":
        from pyapply.runtime.docker.driver import DockerRuntime

        return DockerRuntime()
    if chosen == "native":
        from pyapply.runtime.native.driver import NativeRuntime

        return NativeRuntime(root)
    if chosen == "swarm":
        from pyapply.runtime.swarm.driver import SwarmRuntime

        return SwarmRuntime()
    raise Unavailable(f"unknown runtime {chosen!r}; known runtimes: {', '.join(RUNTIMES)}")


def open_container_runtime(
    name: str | None = None, *, root: str | None = None, why: str = ""
) -> Runtime:
    """`open_runtime` for callers that work on containers only (exec, run, top, images): the
    swarm runtime is refused with `why`, the caller's sentence saying why."""
    rt = open_runtime(name, root=root)
    if runs_services(rt):
        rt.close()
        raise PermanentError(
            why
            or "this command works on the containers and images of one host, not on swarm services"
        )
    return rt
