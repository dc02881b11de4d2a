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
    pinned = f" (pinned by rollback: {rev['pinned']})" if rev.get("pinned") else ""
    out.append(f"source:    {doc['agent']['source']} ({doc['agent']['source_kind']})")
    out.append(
        f"revision:  {rev.get('applied') or '-'} {rev.get('subject') or ''}{pinned}".rstrip()
    )
    if rev.get("source") and rev.get("source") != rev.get("applied"):
        out.append(f"source at: {rev['source']}")
    out.append(
        f"sync:      {doc['sync']}" + ("  (reconciling)" if doc["agent"]["reconciling"] else "")
    )
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
