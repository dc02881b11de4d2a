"""`deploy:` -> `model.Deploy`: the fields of a compose `deploy` section only a swarm acts on.

One host's runtimes read replicas, limits and the update order from `deploy` (the loader does
that); placement, the endpoint mode, reservations, the restart policy's timing, the failure
action and the rollback policy have no meaning there. They are parsed here, once, into the
model, so the swarm runtime can use them and the others can say they are ignored
(`SWARM_ONLY`), each at the place it was written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from pyapply.reconciler.core.model import Deploy, RollPolicy

__all__ = ["SWARM_ONLY", "parse_deploy"]

Path = tuple[str | int, ...]
Report = Callable[[Path, str], None]

# deploy fields (and sub-fields) a single host ignores, with what a swarm does with them
SWARM_ONLY: Mapping[tuple[str, ...], str] = {
    ("mode",): "the deploy mode",
    ("placement",): "placement",
    ("endpoint_mode",): "the endpoint mode",
    ("rollback_config",): "the rollback policy",
    ("labels",): "service labels",
    ("resources", "reservations"): "reservations",
    ("restart_policy", "delay"): "the restart delay",
    ("restart_policy", "window"): "the restart window",
    ("update_config", "failure_action"): "the update's failure action",
    ("update_config", "monitor"): "the update's monitor period",
    ("update_config", "max_failure_ratio"): "the update's failure ratio",
}


def _roll(
    raw: Any,
    path: Path,
    error: Report,
    duration: Callable[[Any], float],
    bad: type[Exception],
    rollback: bool,
) -> RollPolicy:
    if not isinstance(raw, dict):
        return RollPolicy()
    out: dict[str, Any] = {}
    for name in ("delay", "monitor"):
        if name in raw:
            try:
                out[name] = duration(raw[name])
            except bad as e:
                error((*path, name), str(e))
    if isinstance(raw.get("parallelism"), int):
        out["parallelism"] = raw["parallelism"]
    if raw.get("order") in ("stop-first", "start-first"):
        out["order"] = raw["order"]
    action = raw.get("failure_action")
    allowed = ("pause", "continue") if rollback else ("pause", "continue", "rollback")
    if action is not None:
        if action in allowed:
            out["failure_action"] = action
        else:
            error(
                (*path, "failure_action"),
                f"{action!r} is not a failure action here: use " + ", ".join(allowed),
            )
    ratio = raw.get("max_failure_ratio")
    if isinstance(ratio, int | float) and not isinstance(ratio, bool):
        if 0 <= ratio <= 1:
            out["max_failure_ratio"] = float(ratio)
        else:
            error((*path, "max_failure_ratio"), f"{ratio} is not a ratio between 0 and 1")
    return RollPolicy(**out)


def parse_deploy(
    raw: Any,
    path: Path,
    error: Report,
    *,
    duration: Callable[[Any], float],
    size: Callable[[Any], int],
    cpus: Callable[[Any], float],
    bad: type[Exception] = ValueError,
) -> Deploy:
    """The swarm-only fields of `raw` (a service's `deploy` mapping, already checked against
    the schema). `duration`/`size`/`cpus` are the loader's parsers; they raise `bad` on a
    bad value, which is reported at its path."""
    if not isinstance(raw, dict):
        return Deploy()
    out: dict[str, Any] = {}
    if raw.get("mode") in ("replicated", "global"):
        out["mode"] = raw["mode"]
    placement = raw.get("placement")
    if isinstance(placement, dict):
        ppath = (*path, "placement")
        constraints = placement.get("constraints", [])
        if isinstance(constraints, list) and all(isinstance(c, str) for c in constraints):
            out["constraints"] = tuple(constraints)
        else:
            error((*ppath, "constraints"), "must be a list of strings (node.role==manager)")
        prefs = placement.get("preferences", [])
        spreads: list[str] = []
        for i, pref in enumerate(prefs if isinstance(prefs, list) else [prefs]):
            spread = pref.get("spread") if isinstance(pref, dict) else None
            if isinstance(spread, str):
                spreads.append(spread)
            else:
                error((*ppath, "preferences", i), "must be {spread: node.labels.NAME}")
        out["preferences"] = tuple(spreads)
        most = placement.get("max_replicas_per_node")
        if most is not None:
            if isinstance(most, int) and not isinstance(most, bool) and most >= 0:
                out["max_replicas_per_node"] = most
            else:
                error((*ppath, "max_replicas_per_node"), "must be a whole number >= 0")
    mode = raw.get("endpoint_mode")
    if mode is not None:
        if mode in ("vip", "dnsrr"):
            out["endpoint_mode"] = mode
        else:
            error((*path, "endpoint_mode"), f"{mode!r} is not an endpoint mode: use vip or dnsrr")
    reservations = (raw.get("resources") or {}).get("reservations")
    if isinstance(reservations, dict):
        rpath = (*path, "resources", "reservations")
        for key, parse, field in (
            ("cpus", cpus, "reserve_cpus"),
            ("memory", size, "reserve_memory"),
        ):
            if reservations.get(key) is not None:
                try:
                    out[field] = parse(reservations[key])
                except bad as e:
                    error((*rpath, key), str(e))
    policy = raw.get("restart_policy")
    if isinstance(policy, dict):
        if policy.get("condition") in ("none", "on-failure", "any"):
            out["restart_condition"] = policy["condition"]
        if isinstance(policy.get("max_attempts"), int):
            out["restart_max_attempts"] = policy["max_attempts"]
        for key in ("delay", "window"):
            if key in policy:
                try:
                    out[f"restart_{key}"] = duration(policy[key])
                except bad as e:
                    error((*path, "restart_policy", key), str(e))
    update = _roll(raw.get("update_config"), (*path, "update_config"), error, duration, bad, False)
    # parallelism, delay and order are one host's too: the model keeps them in `update`
    out["update"] = msgspec.structs.replace(update, parallelism=None, delay=None, order=None)
    out["rollback"] = _roll(
        raw.get("rollback_config"), (*path, "rollback_config"), error, duration, bad, True
    )
    labels = raw.get("labels")
    if isinstance(labels, dict):
        out["labels"] = tuple(sorted((str(k), _text(v)) for k, v in labels.items()))
    elif isinstance(labels, list):
        pairs = (str(item).partition("=") for item in labels)
        out["labels"] = tuple(sorted((k, v) for k, _, v in pairs if k))
    return Deploy(**out)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def dump_deploy(d: Deploy, deploy: dict[str, Any], seconds: Callable[[float], str]) -> None:
    """Write the swarm-only fields of `d` into `deploy` (a service's `deploy` mapping being
    dumped), so that `convert` round-trips them; `seconds` renders a duration."""
    if d.mode != "replicated":
        deploy["mode"] = d.mode
    placement: dict[str, Any] = {}
    if d.constraints:
        placement["constraints"] = list(d.constraints)
    if d.preferences:
        placement["preferences"] = [{"spread": p} for p in d.preferences]
    if d.max_replicas_per_node is not None:
        placement["max_replicas_per_node"] = d.max_replicas_per_node
    if placement:
        deploy["placement"] = placement
    if d.endpoint_mode is not None:
        deploy["endpoint_mode"] = d.endpoint_mode
    reservations: dict[str, Any] = {}
    if d.reserve_cpus is not None:
        reservations["cpus"] = d.reserve_cpus
    if d.reserve_memory is not None:
        reservations["memory"] = d.reserve_memory
    if reservations:
        deploy.setdefault("resources", {})["reservations"] = reservations
    policy: dict[str, Any] = {}
    if d.restart_condition is not None:
        policy["condition"] = d.restart_condition
    if d.restart_max_attempts is not None:
        policy["max_attempts"] = d.restart_max_attempts
    if d.restart_delay is not None:
        policy["delay"] = seconds(d.restart_delay)
    if d.restart_window is not None:
        policy["window"] = seconds(d.restart_window)
    if policy:
        deploy["restart_policy"] = policy
    for key, roll in (("update_config", d.update), ("rollback_config", d.rollback)):
        out: dict[str, Any] = {}
        for name in ("parallelism", "order", "failure_action", "max_failure_ratio"):
            if getattr(roll, name) is not None:
                out[name] = getattr(roll, name)
        for name in ("delay", "monitor"):
            if getattr(roll, name) is not None:
                out[name] = seconds(getattr(roll, name))
        if out:
            # the update fields one host uses are written by the caller; theirs win
            deploy[key] = {**out, **deploy.get(key, {})}
    if d.labels:
        deploy["labels"] = dict(d.labels)
