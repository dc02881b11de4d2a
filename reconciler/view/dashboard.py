"""The agent's web dashboard as HTML: pure rendering of the documents the API serves.

Input is only what `GET /v1/status`, `/v1/history`, `/v1/stacks/<name>` and the plan text
give (already passed through the agent's `Redactor` by the caller); output is a string of
HTML. Nothing here touches the runtime, the agent or the network.

Templates are Jinja2 (a long-lived, well-kept library of the Pallets project) with
autoescape on for every template: a service name, a plan line or a log line is always text,
never markup. The pages are server-rendered; `static/dashboard.js` (no build step, nothing
fetched from elsewhere) only swaps a page's `<main>` for a fresh fragment when the agent says
something changed, and appends log lines. States are always written in words (a symbol and
a colour are extras), every control is a real link or button, and the CSS is plain and
narrows to a phone's width.

A page is rendered whole (`page`) or as the inside of its `<main>` only (`fragment`), which
is what the live updates fetch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import jinja2
import msgspec

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")
STATIC = os.path.join(HERE, "static")
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}

# the word for each state and a symbol beside it (the word is what counts: no colour alone)
_SYMBOLS = {
    "Synced": "\u2713",
    "Healthy": "\u2713",
    "succeeded": "\u2713",
    "running": "\u2713",
    "healthy": "\u2713",
    "OutOfSync": "\u2260",
    "Progressing": "\u2026",
    "starting": "\u2026",
    "restarting": "\u2026",
    "Degraded": "\u2717",
    "failed": "\u2717",
    "refused": "\u2717",
    "exited": "\u2717",
    "unhealthy": "\u2717",
    "missing": "\u2717",
}
_GOOD = {"Synced", "Healthy", "succeeded", "running", "healthy"}
_BAD = {"Degraded", "failed", "refused", "exited", "unhealthy", "missing", "dead", "interrupted"}


class Viewer(msgspec.Struct, frozen=True):
    """Who looks: what the page may offer (`operator` and not read-only: actions), the
    CSRF token its forms carry, and whether the page has a log-out button."""

    role: str = "viewer"
    read_only: bool = True
    csrf: str = ""
    session: bool = False

    @property
    def can_act(self) -> bool:
        return self.role == "operator" and not self.read_only


def state_class(state: Any) -> str:
    """The CSS class of a state word: good, bad or neutral (only a colour hint)."""
    text = str(state)
    if text in _GOOD:
        return "st-good"
    if text in _BAD:
        return "st-bad"
    return "st-other"


def state_symbol(state: Any) -> str:
    return _SYMBOLS.get(str(state), "\u2022")


def when(ts: Any, now: float) -> str:
    """A Unix time as UTC and how long ago ("2026-12-02 06:10:03 UTC (12 s ago)")."""
    if not isinstance(ts, int | float) or ts <= 0:
        return "never"
    at = datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{at} ({span(now - ts)} ago)"


def span(seconds: Any) -> str:
    """A duration in words: 0.4 s, 12 s, 3 min 2 s, 5 h 1 min, 2 d 3 h."""
    if not isinstance(seconds, int | float):
        return "-"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    whole = int(s)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def uptime(started_at: Any, now: float) -> str:
    """How long a container has run, from the runtime's ISO 8601 start time."""
    if not isinstance(started_at, str) or not started_at:
        return "-"
    text = started_at.strip().replace("Z", "+00:00")
    if "." in text:  # Docker gives nanoseconds, which fromisoformat does not take
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        at = datetime.datetime.fromisoformat(text)
    except ValueError:
        return "-"
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    if at.year < 2000:  # Docker's zero time for a container never started
        return "-"
    return span(now - at.timestamp())


def short(revision: Any, n: int = 12) -> str:
    return str(revision)[:n] if revision else "-"


def ports(items: Any) -> str:
    out = []
    for p in items or []:
        host = f"{p.get('host_ip') or ''}:{p.get('host_port')}" if p.get("host_port") else ""
        out.append(f"{host + '->' if host else ''}{p.get('container_port')}/{p.get('protocol')}")
    return ", ".join(out) or "-"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name
        # a field a document leaves out (older agents, other runtimes) renders empty
        undefined=jinja2.Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        state_class=state_class,
        symbol=state_symbol,
        short=short,
        span=span,
        ports=ports,
    )
    return env


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV


def page(name: str, viewer: Viewer, now: float, **context: Any) -> str:
    """A whole page: the template `<name>.html` in the layout."""
    template = environment().get_template(f"{name}.html")
    return template.render(_context(viewer, now, context))


def fragment(name: str, viewer: Viewer, now: float, **context: Any) -> str:
    """Only the inside of the page's `<main>`: what the live update swaps in."""
    template = environment().get_template(f"{name}.html")
    ctx = template.new_context(_context(viewer, now, context))
    return "".join(template.blocks["content"](ctx))


def _context(viewer: Viewer, now: float, context: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "viewer": viewer,
        "now": now,
        "when": lambda ts: when(ts, now),
        "uptime": lambda started: uptime(started, now),
        "title": context.get("title", "pyapply"),
        "events": context.get("events", "/events"),
        "live": context.get("live", "page"),
        # the agent's change count the documents shown were computed at (live updates)
        "seq": context.get("seq", ""),
        **context,
    }


# ---------------------------------------------------------------------------------------------
# What the pages show, from the API's documents


def overview_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per stack of the status document: its sync, health and counts of services
    by health, with the revision and last pass the whole agent shares."""
    rows = []
    for stack in status.get("stacks") or []:
        counts: dict[str, int] = {}
        for service in stack.get("services") or []:
            word = str(service.get("health", "Unknown"))
            counts[word] = counts.get(word, 0) + 1
        rows.append(
            {
                "name": str(stack.get("name", "")),
                "sync": str(stack.get("sync") or status.get("sync") or "Unknown"),
                "health": str(stack.get("health", "Unknown")),
                "error": stack.get("error"),
                "counts": sorted(counts.items()),
                "services": len(stack.get("services") or []),
            }
        )
    return rows


def pass_duration(record: Mapping[str, Any]) -> str:
    started, ended = record.get("started"), record.get("ended")
    if isinstance(started, int | float) and isinstance(ended, int | float):
        return span(ended - started)
    return "running" if record.get("outcome") == "running" else "-"
