"""How plans, outcomes and objects are shown: Terraform-like text, and JSON for machines.

Secret and secret-like values never reach the output: every function here takes the
`Redactor` of the stacks shown (`engine.reconcile.redactor_for`) and passes every string it prints
through it -- secret contents, URL passwords and credential-named variables (see
`reconciler.core.redact`). A value is redacted before it is shortened, so that a cut never
leaves part of a secret behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pyapply.reconciler.core.diff import Change, FieldDiff
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import HIDDEN, NO_SECRETS, Redactor

if TYPE_CHECKING:
    from pyapply.reconciler.engine.execute import ActionResult, Outcome

SYMBOLS = {
    "create": "+",
    "pull": "+",
    "build": "+",
    "recreate": "~",
    "start": ">",
    "restart": ">",
    "repair": "*",
    "remove": "-",
    "rename": "~",
    "update": "~",
}
REDACTED = HIDDEN  # what a credential-named variable's value is shown as
PLAN_SCHEMA = "https://pyapply.dev/schemas/v1/plan.schema.json"


def redact(fd: FieldDiff, redactor: Redactor = NO_SECRETS) -> FieldDiff:
    return FieldDiff(
        fd.field, redactor.env_field(fd.field, fd.old), redactor.env_field(fd.field, fd.new)
    )


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def change_lines(ch: Change, redactor: Redactor = NO_SECRETS) -> list[str]:
    sym = SYMBOLS.get(ch.kind, "?")
    lines = [redactor.text(f"  {sym} {ch.object} {ch.name}: {ch.kind} ({ch.reason})")]
    for fd in ch.fields:
        r = redact(fd, redactor)
        lines.append(f"      {redactor.text(r.field)}: {_short(r.old)} -> {_short(r.new)}")
    return lines


def plan_text(plan: Plan, redactor: Redactor = NO_SECRETS) -> str:
    lines = [f"stack {plan.stack} (revision {plan.revision or '-'}):"]
    if plan.empty:
        lines.append("  no changes: the live state matches the manifests")
    for ch in plan.changes:
        lines += change_lines(ch, redactor)
    for w in plan.warnings:
        lines.append(redactor.text(f"  ! warning: {w}"))
    for e in plan.errors:
        lines.append(redactor.text(f"  ! error: {e}"))
    if not plan.empty:
        counts = plan.counts()
        summary = ", ".join(f"{n} to {kind}" for kind, n in sorted(counts.items()))
        lines.append(f"  plan: {summary}")
    return "\n".join(lines)


def plan_json(plan: Plan, redactor: Redactor = NO_SECRETS) -> dict[str, Any]:
    text = redactor.text
    return {
        "stack": plan.stack,
        "revision": plan.revision,
        "drift": not plan.empty,
        "changes": [
            {
                "action": ch.kind,
                "object": ch.object,
                "name": text(ch.name),
                "reason": text(ch.reason),
                "service": ch.service,
                "replica": ch.replica,
                "fields": [
                    {"field": text(r.field), "old": r.old, "new": r.new}
                    for r in (redact(fd, redactor) for fd in ch.fields)
                ],
            }
            for ch in plan.changes
        ],
        "actions": [
            {"id": text(a.id), "op": a.op, "target": text(a.target), "deps": list(a.deps)}
            for a in plan.actions
        ],
        "warnings": [text(w) for w in plan.warnings],
        "errors": [text(e) for e in plan.errors],
    }


def plans_json(plans: Sequence[Plan], redactor: Redactor = NO_SECRETS) -> dict[str, Any]:
    return {
        "$schema": PLAN_SCHEMA,
        "drift": any(not p.empty for p in plans),
        "stacks": [plan_json(p, redactor) for p in plans],
    }


def result_line(r: ActionResult, redactor: Redactor = NO_SECRETS) -> str:
    a = r.action
    what = {
        "pull": "Pulled",
        "build": "Built",
        "write_file": "Written",
        "create_network": "Created",
        "repair_network": "Repaired",
        "remove_network": "Removed",
        "create_volume": "Created",
        "remove_volume": "Removed",
        "create": "Started",
        "start": "Started",
        "restart": "Restarted",
        "repair": "Repaired",
        "remove": "Removed",
        "rename": "Renamed",
        "wait": "Ready",
    }[a.op]
    kind = {
        "pull": "image",
        "build": "image",
        "write_file": "file",
        "create_network": "network",
        "repair_network": "network",
        "remove_network": "network",
        "create_volume": "volume",
        "remove_volume": "volume",
        "wait": "service",
    }.get(a.op, "container")
    target = f"{a.target} -> {a.new_name}" if a.new_name else a.target
    if r.status == "done":
        retry = f", {r.attempts} attempts" if r.attempts > 1 else ""
        note = f"; {r.note}" if r.note else ""
        return redactor.text(f"{kind} {target}: {what} ({r.seconds:.1f}s{retry}{note})")
    if r.status == "skipped":
        return redactor.text(f"{kind} {target}: skipped ({r.error})")
    return redactor.text(f"{kind} {target}: FAILED: {r.error}")


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


def results_json(outcomes: Sequence[Outcome], redactor: Redactor = NO_SECRETS) -> list[Any]:
    """Every action run, as `apply -o json` reports it: id, status, seconds, error."""
    return [
        {
            "id": redactor.text(r.action.id),
            "status": r.status,
            "seconds": round(r.seconds, 3),
            "error": redactor.value(r.error),
        }
        for o in outcomes
        for r in o.results
    ]
