"""The agent as people read it: `pyapply status` and the `pyapply history` table, from the
documents of the agent's API (or of its sqlite record, when no agent runs)."""

from __future__ import annotations

import time
from typing import Any


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def status_lines(doc: dict[str, Any]) -> list[str]:
    """The agent's status document (`GET /v1/status`) as `pyapply status` prints it."""
    out: list[str] = []
    rev = doc["revision"]
    last = doc["last_result"]
    pinned = ""
    if rev.get("pinned"):
        pinned = (
            " (pinned by an automatic rollback until a newer revision arrives)"
            if rev.get("pin_reason") == "auto"
            else f" (pinned by rollback: {rev['pinned']}, until `pyapply resume`)"
        )
    out.append(f"source:    {doc['agent']['source']} ({doc['agent']['source_kind']})")
    out.append(
        f"revision:  {rev.get('applied') or '-'} {rev.get('subject') or ''}{pinned}".rstrip()
    )
    if rev.get("source") and rev.get("source") != rev.get("applied"):
        out.append(f"source at: {rev['source']}")
    out.append(
        f"sync:      {doc['sync']}" + ("  (reconciling)" if doc["agent"]["reconciling"] else "")
    )
    git = doc.get("git")
    if git:
        out.extend(git_lines(git))
    out.extend(rollback_lines(doc.get("rollback")))
    rejected = doc.get("rejected")
    if rejected:
        out.append(f"source {rejected['revision']}: {rejected['outcome']}, not applied")
        for e in rejected.get("errors") or []:
            out.append(f"  error: {e}")
    reset = doc.get("history_reset")
    if reset:
        out.append(
            f"history:   WARNING: {reset['path']} was damaged ({reset['reason']}); moved to "
            f"{reset['moved_to']} at {when(reset['at'])}"
        )
    failures = (doc.get("history") or {}).get("write_failures")
    if failures:
        out.append(
            f"history:   WARNING: {failures} record(s) could not be written "
            f"({doc['history'].get('last_failure')})"
        )
    if last.get("outcome"):
        out.append(
            f"last pass: {last['outcome']} ({last['trigger']}) at {when(last['ended'])}"
            + (f", pass #{last['pass']}" if last.get("pass") else "")
        )
        for e in last.get("errors") or []:
            out.append(f"  error: {e}")
    out.extend(hook_lines(doc))
    for stack in doc["stacks"]:
        out.append(f"stack {stack['name']}: {stack['health']}")
        for svc in stack.get("services", []):
            out.append(
                f"  {svc['name']}: {svc['health']} ({svc['running']}/{svc['replicas']} running)"
                + (f"; update {svc['update']}" if svc.get("update") else "")
                + (f"; failing: {svc['failing']}" if svc.get("failing") else "")
            )
    for node in doc.get("nodes") or []:  # on a swarm: a node not ready is worth a line
        out.append(
            f"node {node['hostname']} ({node['role']}): {node['state']}, {node['availability']}"
        )
    return out


def rollback_lines(roll: dict[str, Any] | None) -> list[str]:
    """`--progress-deadline`: the revision on probation and the last automatic rollback."""
    if not roll or roll.get("progress_deadline") is None:
        return []
    out = [
        f"rollback:  automatic, progress deadline {roll['progress_deadline']:g}s; last healthy "
        f"{roll.get('last_healthy') or '-'}"
    ]
    probation = roll.get("probation")
    if probation:
        left = max(0.0, probation["deadline"] - time.time())
        out.append(f"  {probation['revision']}: not Healthy yet, {left:.0f}s left")
    last = roll.get("last")
    if last:
        out.append(
            f"  {last['revision']} rolled back to {last['to']} at {when(last['at'])}: "
            f"{last['reason']}"
        )
    return out


def hook_lines(doc: dict[str, Any]) -> list[str]:
    """The webhook listener and the notification targets of the status, when on."""
    out: list[str] = []
    hook = doc.get("webhook")
    if hook:
        counts = hook.get("requests") or {}
        refused = sum(n for k, n in counts.items() if k not in ("triggered", "ignored"))
        line = f"webhook:   http://{hook['address']}{hook['path']}, {counts.get('triggered', 0)} push(es)"
        last = hook.get("last")
        if last:
            line += f"; last {last['outcome']} at {when(last['at'])}"
        if refused:
            line += f"; {refused} request(s) refused"
        out.append(line)
    notes = doc.get("notifications")
    for target in (notes or {}).get("targets", []):
        line = (
            f"notify:    {target['url']} ({target['format']}): {target['sent']} sent, "
            f"{target['failed']} failed, {target['dropped']} dropped, {target['queued']} queued"
        )
        if target.get("last_error") and target["failed"]:
            line += f" (last error: {target['last_error']})"
        out.append(line)
    return out


def history_lines(records: list[dict[str, Any]]) -> list[str]:
    """Recorded passes (`GET /v1/history`, `PassRecord.to_json`) as the table `pyapply
    history` prints."""
    out: list[str] = []
    rows = [("PASS", "REVISION", "OUTCOME", "TRIGGER", "STARTED", "SECONDS", "SUBJECT / ERRORS")]
    for rec in records:
        errors: list[str] = list(rec["errors"])
        took = f"{rec['ended'] - rec['started']:.2f}" if rec["ended"] else "-"
        note = str(rec["subject"])
        if errors:
            note = (
                (note + ": " if note else "")
                + errors[0]
                + (f" (+{len(errors) - 1})" if len(errors) > 1 else "")
            )
        trigger = str(rec["trigger"])
        trig = trigger if len(trigger) <= 24 else trigger[:21] + "..."
        rows.append(
            (
                str(rec["id"]),
                str(rec["revision"]),
                str(rec["outcome"]),
                trig,
                when(rec["started"]),
                took,
                note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = zip(row[:-1], widths, strict=True)
        out.append("  ".join(c.ljust(w) for c, w in cells) + "  " + row[-1])
    return out


def git_lines(git: dict[str, Any]) -> list[str]:
    """The git source's part of `pyapply status`: what is in use, the last fetch, its error."""
    out = [
        f"git:       {git['ref']} at {(git.get('commit') or 'nothing fetched yet')[:12]}"
        + (f" (path {git['path']})" if git.get("path") else "")
    ]
    if git.get("last_fetch"):
        state = "ok" if not git.get("last_error") else f"FAILED ({git.get('error_kind')})"
        line = f"fetch:     {state} at {when(git['last_fetch'])}"
        if git.get("last_error") and git.get("last_success"):
            line += f", last success at {when(git['last_success'])}"
        out.append(line)
    if git.get("last_error"):
        out.append(f"  error: {git['last_error']} ({git.get('failures')} in a row)")
    return out
