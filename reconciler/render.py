"""How plans, outcomes and objects are shown: Terraform-like text, and JSON for machines.

Secret and secret-like values never reach the output: environment variables whose names
look like credentials, and the content of configs and secrets, are redacted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from reconciler.diff import Change, FieldDiff
from reconciler.plan import Plan

if TYPE_CHECKING:
    from reconciler.execute import ActionResult, Outcome

SYMBOLS = {
    "create": "+",
    "pull": "+",
    "recreate": "~",
    "start": ">",
    "restart": ">",
    "remove": "-",
}
SENSITIVE = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH|CERT)", re.I)
REDACTED = "(sensitive value)"
PLAN_SCHEMA = "https://pyapply.dev/schemas/v1/plan.schema.json"


def _redact_value(path: str, value: Any) -> Any:
    if value is None:
        return None
    if path.startswith("env.") and SENSITIVE.search(path[4:]):
        return REDACTED
    if path == "env" and isinstance(value, list):
        return [_redact_env_item(str(v)) for v in value]
    return value


def _redact_env_item(item: str) -> str:
    key, sep, _ = item.partition("=")
    return f"{key}={REDACTED}" if sep and SENSITIVE.search(key) else item


def redact(fd: FieldDiff) -> FieldDiff:
    return FieldDiff(fd.field, _redact_value(fd.field, fd.old), _redact_value(fd.field, fd.new))


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def change_lines(ch: Change) -> list[str]:
    sym = SYMBOLS.get(ch.kind, "?")
    lines = [f"  {sym} {ch.object} {ch.name}: {ch.kind} ({ch.reason})"]
    for fd in ch.fields:
        r = redact(fd)
        lines.append(f"      {r.field}: {_short(r.old)} -> {_short(r.new)}")
    return lines


def plan_text(plan: Plan) -> str:
    lines = [f"stack {plan.stack} (revision {plan.revision or '-'}):"]
    if plan.empty:
        lines.append("  no changes: the live state matches the manifests")
    for ch in plan.changes:
        lines += change_lines(ch)
    for w in plan.warnings:
        lines.append(f"  ! warning: {w}")
    for e in plan.errors:
        lines.append(f"  ! error: {e}")
    if not plan.empty:
        counts = plan.counts()
        summary = ", ".join(f"{n} to {kind}" for kind, n in sorted(counts.items()))
        lines.append(f"  plan: {summary}")
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "stack": plan.stack,
        "revision": plan.revision,
        "drift": not plan.empty,
        "changes": [
            {
                "action": ch.kind,
                "object": ch.object,
                "name": ch.name,
                "reason": ch.reason,
                "service": ch.service,
                "replica": ch.replica,
                "fields": [
                    {"field": r.field, "old": r.old, "new": r.new}
                    for r in (redact(fd) for fd in ch.fields)
                ],
            }
            for ch in plan.changes
        ],
        "actions": [
            {"id": a.id, "op": a.op, "target": a.target, "deps": list(a.deps)} for a in plan.actions
        ],
        "warnings": list(plan.warnings),
        "errors": list(plan.errors),
    }


def plans_json(plans: Sequence[Plan]) -> dict[str, Any]:
    return {
        "$schema": PLAN_SCHEMA,
        "drift": any(not p.empty for p in plans),
        "stacks": [plan_json(p) for p in plans],
    }


def result_line(r: ActionResult) -> str:
    a = r.action
    what = {
        "pull": "Pulled",
        "write_file": "Written",
        "create_network": "Created",
        "remove_network": "Removed",
        "create_volume": "Created",
        "remove_volume": "Removed",
        "create": "Started",
        "start": "Started",
        "restart": "Restarted",
        "remove": "Removed",
        "rename": "Renamed",
        "wait": "Ready",
    }[a.op]
    kind = {
        "pull": "image",
        "write_file": "file",
        "create_network": "network",
        "remove_network": "network",
        "create_volume": "volume",
        "remove_volume": "volume",
        "wait": "service",
    }.get(a.op, "container")
    target = f"{a.target} -> {a.new_name}" if a.new_name else a.target
    if r.status == "done":
        retry = f", {r.attempts} attempts" if r.attempts > 1 else ""
        return f"{kind} {target}: {what} ({r.seconds:.1f}s{retry})"
    if r.status == "skipped":
        return f"{kind} {target}: skipped ({r.error})"
    return f"{kind} {target}: FAILED: {r.error}"


def outcome_summary(outcome: Outcome) -> str:
    done = outcome.count("done")
    failed = outcome.count("failed")
    skipped = outcome.count("skipped")
    parts = [f"{done} done"]
    if failed:
        parts.append(f"{failed} failed")
    if skipped:
        parts.append(f"{skipped} skipped")
    return ", ".join(parts)
