"""How a service runs over time: its dependencies, healthcheck, restart policy and
deployment (replicas, resource limits, update order), for the service builder.

Compose says several of these twice, in a legacy field and under `deploy` (`scale` and
`deploy.replicas`, `mem_limit` and `deploy.resources.limits.memory`, `restart` and
`deploy.restart_policy`); each function reads both, uses the one compose uses, and warns
when they disagree.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

from pyapply.reconciler.core.model import (
    Condition,
    Dependency,
    Healthcheck,
    Resources,
    UpdateConfig,
    UpdateOrder,
)
from pyapply.reconciler.manifest import swarm_deploy
from pyapply.reconciler.manifest.document import MISSING, ignored, walk
from pyapply.reconciler.manifest.values import (
    Bad,
    parse_cpus,
    parse_duration,
    parse_pids,
    parse_size,
    show,
)

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.service import ServiceBuilder

_RESTART = re.compile(r"no|always|unless-stopped|on-failure(?::\d+)?")


def depends_on(b: ServiceBuilder) -> None:
    deps: dict[str, Dependency] = {}
    for key, cfg, path in b.entries("depends_on"):
        if isinstance(key, int):  # the list form
            if cfg in deps:
                b.ctx.error(path, f'"{cfg}" is listed twice')
            dep = Dependency(cfg)
        else:
            dep = Dependency(
                service=key,
                condition=cast(Condition, cfg.get("condition", "service_started")),
                required=cfg.get("required", True),
                restart=cfg.get("restart", False),
            )
        deps[dep.service] = dep
        b.draft.depends.append((dep, path))
    # legacy links ("db" or "db:alias") order the start like depends_on, as in compose
    for _, item, path in b.entries("links"):
        service = str(item).split(":", 1)[0]
        if service and service not in deps:
            deps[service] = Dependency(service)
            b.draft.depends.append((deps[service], path))
    if deps:
        b.fields["depends_on"] = tuple(v for _, v in sorted(deps.items()))


def healthcheck(b: ServiceBuilder) -> None:
    raw = walk(b.raw, ("healthcheck",))
    if not isinstance(raw, dict):
        return
    path = b.at("healthcheck")
    test: tuple[str, ...] = ()
    value = b.get("healthcheck", "test")
    if isinstance(value, str):
        if not value.strip():
            b.ctx.error((*path, "test"), "must not be empty")
        test = ("CMD-SHELL", value)
    elif isinstance(value, list):
        test = tuple(value)
        if not test:
            b.ctx.error((*path, "test"), "must not be empty")
        elif test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            b.ctx.error(
                (*path, "test", 0), 'a test list must start with "CMD", "CMD-SHELL" or "NONE"'
            )
        elif test[0] == "CMD" and len(test) < 2:
            b.ctx.error((*path, "test"), 'needs a command after "CMD"')
        elif test[0] == "CMD-SHELL" and len(test) != 2:
            b.ctx.error((*path, "test"), 'takes exactly one command line after "CMD-SHELL"')
    ignored(b.ctx, raw, path, ("start_interval",))
    if b.get("healthcheck", "disable") is True or test[:1] == ("NONE",):
        b.fields["healthcheck"] = Healthcheck(test=("NONE",), disable=True)
        return
    times = {"interval": 30.0, "timeout": 30.0, "start_period": 0.0}
    for name in times:
        value = b.get("healthcheck", name)
        if value is not MISSING:
            got = b.attempt((*path, name), parse_duration, value)
            if isinstance(got, float):
                times[name] = got
    retries = b.get("healthcheck", "retries")
    b.fields["healthcheck"] = Healthcheck(
        test=test,
        interval=times["interval"],
        timeout=times["timeout"],
        start_period=times["start_period"],
        retries=3 if retries is MISSING else retries,
    )


def restart(b: ServiceBuilder) -> None:
    value = b.get("restart")
    policy: str | None = None
    if value is False:
        policy = "no"
    elif isinstance(value, str) and _RESTART.fullmatch(value):
        policy = value
    elif value is not MISSING:
        b.ctx.error(
            b.at("restart"),
            f'{show(value)} is not a restart policy: use "no", "always", "on-failure", '
            '"on-failure:N" or "unless-stopped"',
        )
    rp = b.get("deploy", "restart_policy")
    if isinstance(rp, dict):
        rpath = b.at("deploy", "restart_policy")
        condition = rp.get("condition", "any")
        from_deploy = {"none": "no", "any": "always"}.get(condition, "on-failure")
        if from_deploy == "on-failure" and "max_attempts" in rp:
            from_deploy += f":{rp['max_attempts']}"
        ignored(b.ctx, rp, rpath, ("delay", "window"))
        if policy is None:
            policy = from_deploy
        elif policy != from_deploy:
            b.ctx.warn(rpath, f'conflicts with "restart: {policy}", which is used', key=True)
    if policy is not None:
        b.fields["restart"] = policy


def deploy(b: ServiceBuilder) -> None:
    ctx = b.ctx
    dpath = b.at("deploy")
    deploy = walk(b.raw, ("deploy",))
    if isinstance(deploy, dict) and ctx.ok(dpath):
        # the fields only a swarm acts on: kept in the model for the swarm runtime; the
        # runtimes of one host ignore them (said at each, once)
        b.fields["deploy"] = swarm_deploy.parse_deploy(
            deploy,
            dpath,
            ctx.error,
            duration=parse_duration,
            size=parse_size,
            cpus=parse_cpus,
            bad=Bad,
        )
        for parts, what in swarm_deploy.SWARM_ONLY.items():
            if walk(deploy, parts) not in (MISSING, "replicated"):
                ctx.warn(
                    (*dpath, *parts),
                    f"{what} is used by the swarm runtime only; the runtimes of one host ignore it",
                    key=True,
                    one_host=True,
                )
    # replicas: deploy.replicas, else the legacy scale
    replicas = b.get("deploy", "replicas")
    scale = b.get("scale")
    if scale is not MISSING and replicas is not MISSING and scale != replicas:
        ctx.warn(
            b.at("scale"),
            f"conflicts with deploy.replicas ({replicas}), which is used",
            key=True,
        )
    if replicas is MISSING:
        replicas = scale
    if replicas is not MISSING:
        b.fields["replicas"] = replicas
    # limits: deploy.resources.limits, else the legacy mem_limit / cpus / pids_limit
    limits: dict[str, Any] = {}
    for new, old, parse in (
        ("memory", "mem_limit", parse_size),
        ("cpus", "cpus", parse_cpus),
        ("pids", "pids_limit", parse_pids),
    ):
        value = limit(b, ("deploy", "resources", "limits", new), parse)
        legacy = limit(b, (old,), parse)
        if new == "memory":  # docker's convention: 0 means "no limit"
            value, legacy = value or None, legacy or None
        if value is None:
            value = legacy
        elif legacy is not None and legacy != value:
            ctx.warn(
                b.at(old),
                f"conflicts with deploy.resources.limits.{new}, which is used",
                key=True,
            )
        limits[new] = value
    b.fields["resources"] = Resources(**limits)
    # update_config
    upath = (*dpath, "update_config")
    delay = 0.0
    value = b.get("deploy", "update_config", "delay")
    if value is not MISSING:
        got = b.attempt((*upath, "delay"), parse_duration, value)
        delay = got if isinstance(got, float) else 0.0
    order = b.get("deploy", "update_config", "order")
    parallelism = b.get("deploy", "update_config", "parallelism")
    b.fields["update"] = UpdateConfig(
        order=cast(UpdateOrder, "stop-first" if order is MISSING else order),
        parallelism=1 if parallelism is MISSING else parallelism,
        delay=delay,
    )


def limit(b: ServiceBuilder, parts: tuple[str, ...], parse: Any) -> Any:
    value = b.get(*parts)
    if value is MISSING or value is None:
        return None
    got = b.attempt(b.at(*parts), parse, value)
    return None if got is MISSING else got
