"""What `pyapply get` shows of a stack: its objects as a document (the `-o json` output)
and as the text table, from what the runtime observed."""

from __future__ import annotations

from typing import Any

from pyapply.reconciler.core import identity
from pyapply.reconciler.core.diff import Observed
from pyapply.runtime.base import PortBinding


def port_text(p: PortBinding) -> str:
    """`[ip:][host[-last]:]container/protocol`, as configured."""
    host = f"{p.host_ip}:" if p.host_ip else ""
    if p.host_port:
        host += f"{p.host_port}-{p.host_port_last}:" if p.host_port_last else f"{p.host_port}:"
    return f"{host}{p.container_port}/{p.protocol}"


def stack_doc(stack: str, observed: Observed) -> dict[str, Any]:
    """One stack's containers (state, restarts made by their restart policy and whether
    it gave up, health, image, revision, ports), networks and volumes, each sorted by
    name."""
    return {
        "stack": stack,
        "containers": [
            {
                "name": c.name,
                "service": c.labels.get(identity.SERVICE),
                "replica": c.labels.get(identity.REPLICA),
                "status": c.status,
                "exit_code": c.exit_code if c.status == "exited" else None,
                "restarts": c.restart_count,
                "gave_up": c.restart_gave_up,
                "health": c.health,
                "image": c.image,
                "revision": c.labels.get(identity.REVISION),
                "ports": [port_text(p) for p in c.ports],
            }
            for c in sorted(observed.containers, key=lambda c: c.name)
        ],
        "networks": [
            {"name": n.name, "driver": n.driver, "internal": n.internal}
            for n in sorted(observed.networks, key=lambda n: n.name)
        ],
        "volumes": [
            {"name": v.name, "driver": v.driver}
            for v in sorted(observed.volumes, key=lambda v: v.name)
        ],
    }


def restarts_text(count: int, gave_up: bool) -> str:
    """What a container's restart policy did, after its state: `, gave up after 2
    restarts`, `, 1 restart`, or nothing."""
    if gave_up:
        return f", gave up after {count} restart{'' if count == 1 else 's'}"
    if count:
        return f", {count} restart{'' if count == 1 else 's'}"
    return ""


def stack_lines(doc: dict[str, Any]) -> list[str]:
    """A stack's document as text: a header, a table of its containers, then a line per
    network and volume."""
    lines = [f"stack {doc['stack']}"]
    rows = [("NAME", "SERVICE", "STATE", "HEALTH", "IMAGE", "PORTS")]
    for c in doc["containers"]:
        state = c["status"] + (f" ({c['exit_code']})" if c["exit_code"] is not None else "")
        state += restarts_text(c.get("restarts") or 0, bool(c.get("gave_up")))
        rows.append(
            (
                c["name"],
                c["service"] or "",
                state,
                c["health"] or "-",
                c["image"],
                ", ".join(c["ports"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append(
            "  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip()
        )
    for n in doc["networks"]:
        lines.append(
            f"  network {n['name']} ({n['driver']}{', internal' if n['internal'] else ''})"
        )
    for v in doc["volumes"]:
        lines.append(f"  volume {v['name']}")
    return lines


def process_lines(container: str, titles: list[str], rows: list[list[str]]) -> list[str]:
    """`pyapply top`: a container's name, then its processes as a table (the last column,
    the command, left unpadded)."""
    table = [titles, *rows]
    ncols = max(len(r) for r in table)
    widths = [max((len(r[i]) for r in table if i < len(r)), default=0) for i in range(ncols)]
    out = [container]
    for r in table:
        out.append(
            "  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=False)).rstrip()
        )
    return out
