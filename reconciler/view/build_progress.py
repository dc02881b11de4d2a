"""Build progress as text lines, one per event, the way `docker build --progress=plain`
reads: `[3/10] RUN make` when a step starts, `  | ...` for what it prints, then
`[3/10] CACHED`, `[3/10] DONE 0.4s` or `[3/10] ERROR`. Pure: events in, lines out."""

from __future__ import annotations

from typing import Any

import msgspec

from pyapply.runtime.base import BuildEvent, BuildFailed, BuildResult


def event_line(event: BuildEvent) -> str:
    head = f"[{event.step}/{event.total}]"
    if event.state == "running":
        return f"{head} {event.instruction}"
    if event.state == "output":
        return f"  | {event.line}"
    if event.state == "cached":
        return f"{head} CACHED"
    if event.state == "failed":
        return f"{head} ERROR after {event.seconds:.1f}s"
    return f"{head} DONE {event.seconds:.1f}s"


def image_event_line(image: str, event: BuildEvent) -> str:
    """A step of one of several builds (an apply's): the line, prefixed by the image."""
    return f"build {image}: {event_line(event)}"


def result_lines(result: BuildResult) -> list[str]:
    short = result.image_id.partition(":")[2][:12]
    tags = ", ".join(result.tags) or "(untagged)"
    return [f"built {short} ({result.steps} steps, {result.cached} cached): {tags}"]


def failure_lines(e: BuildFailed) -> list[str]:
    """The lines shown before the error itself: the failed step and its last output."""
    out = []
    if e.step and e.exit_code is not None:
        out.append(f"step: {e.step}")
    if e.tail:
        out.append(f"last {len(e.tail)} lines of its output:")
        out += [f"  | {line}" for line in e.tail]
    return out


def result_json(result: BuildResult) -> dict[str, Any]:
    return msgspec.structs.asdict(result)


def failure_json(e: BuildFailed) -> dict[str, Any]:
    return {
        "error": str(e),
        "where": e.where,
        "step": e.step,
        "exit_code": e.exit_code,
        "tail": list(e.tail),
    }
