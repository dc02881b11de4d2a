"""`pyapply system reset`: remove everything pyapply made under a native state root and in
the kernel (runtime/native/system.py does the work; this module asks and reports).

It is the one command that destroys volumes and images without naming them, so it asks on
a terminal and, with no terminal to ask on (a script, CI), refuses unless given --force.

`pyapply system start`: at boot, bring back the containers whose restart policy says so
(runtime/native/boot.py does the work; contrib/pyapply-native.service runs it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import click

from pyapply.reconciler.cli.common import locked
from pyapply.reconciler.cli.image import lock_timeout_option, refusal
from pyapply.reconciler.cli.main import err, fail, runtime_options
from pyapply.reconciler.engine.reconcile import state_root

# What the user asked to remove first, then what was swept up after it.
_OBJECTS = ("container", "network", "volume", "image")
_PLURALS = {"process": "processes", "netns": "netns", "firewall rules": "firewall rules"}


def plural(kind: str, n: int) -> str:
    if n == 1:
        return kind
    return _PLURALS.get(kind) or ("root entries" if kind == "root entry" else kind + "s")


def reset_lines(root: str, removed: Mapping[str, Sequence[str]], kept: Sequence[str]) -> list[str]:
    """What a reset did, for people: one line per object, then a summary."""
    lines: list[str] = []
    others = [k for k in removed if k not in _OBJECTS]
    for kind in [*_OBJECTS, *others]:
        verb = "removed" if kind in _OBJECTS else "cleaned up"
        lines += [f"{verb} {kind} {item}" for item in removed.get(kind, ())]
    if kept:
        lines.append(f"kept in {root} (not made by pyapply): {', '.join(kept)}")
    counts = [f"{len(removed[k])} {plural(k, len(removed[k]))}" for k in _OBJECTS if removed.get(k)]
    swept = [f"{len(removed[k])} {plural(k, len(removed[k]))}" for k in others if removed[k]]
    summary = (
        ", ".join(counts) + " removed" if counts else "no containers, networks, volumes or images"
    )
    if swept:
        summary += "; cleaned up " + ", ".join(swept)
    lines.append(f"reset {root}: {summary}")
    return lines


@click.group("system")
def system() -> None:
    """Operations on the whole native state root."""


@system.command("reset")
@click.option("--force", "-y", is_flag=True, help="Do not ask for confirmation.")
@runtime_options
@lock_timeout_option
def reset(force: bool, runtime_name: str | None, root: str | None, lock_timeout: float) -> None:
    """Remove every container, network, volume and image of the state root, what they left
    in the kernel (mounts, namespaces, interfaces, firewall rules, cgroups, processes) and
    the root's contents. Works on a half-broken state too; running it again is harmless."""
    problem = refusal(runtime_name, "system reset", "pyapply down and docker system prune")
    if problem is not None:
        fail(problem)
    root_dir = os.path.abspath(state_root(root))
    if root_dir == "/":
        fail("refusing to use / as the state root")
    what = (
        f"everything pyapply made under {root_dir} and in the kernel for it: containers, "
        "networks, volumes (with their data) and images"
    )
    if not force:
        if not sys.stdin.isatty():
            fail(f"system reset removes {what}; not asking without a terminal: add --force")
        click.confirm(f"Remove {what}?", abort=True)

    from pyapply.runtime.native import system as native_system

    # a root that does not exist gets no lock file (the reset makes nothing there either)
    guard = locked(root_dir, lock_timeout) if os.path.isdir(root_dir) else nullcontext()
    with guard:
        report = native_system.reset(root_dir)
    for line in reset_lines(report.root, report.removed, report.kept):
        click.echo(line)
    for damaged in report.damaged:
        err(f"warning: {damaged.partition(';')[0]}: swept by name instead")
    for problem in report.errors:
        err(f"error: {problem}")
    if report.errors:
        fail("the reset is incomplete; run it again, or remove what is named above by hand")


@system.command("start")
@runtime_options
@lock_timeout_option
def start(runtime_name: str | None, root: str | None, lock_timeout: float) -> None:
    """Bring back, after a boot, every container of the state root whose restart policy
    says so, as dockerd does when it starts (always; unless-stopped unless stopped on
    purpose; on-failure after a failure, unless it gave up), with what the reboot took:
    network namespaces, veths, bridges, firewall rules, mounts, cgroups, the keeper. No
    manifest and no agent needed; what runs is left running. Run at boot by
    contrib/pyapply-native.service."""
    if runtime_name == "docker":
        fail(
            "`pyapply system start` brings back the native runtime's containers; dockerd "
            "starts its own at its start, by their restart policies"
        )
    problem = refusal(runtime_name, "system start", "")
    if problem is not None:
        fail(problem)
    root_dir = os.path.abspath(state_root(root))
    if not os.path.isdir(os.path.join(root_dir, "containers")):
        click.echo(f"start {root_dir}: no containers")
        return

    from pyapply.runtime.native import boot

    with locked(root_dir, lock_timeout):
        report = boot.start(root_dir)
    for name in report.started:
        click.echo(f"started container {name}")
    for name, why in report.left:
        click.echo(f"left container {name} stopped ({why})")
    for problem in report.errors:
        err(f"error: {problem}")
    click.echo(
        f"start {report.root}: {len(report.started)} started, {len(report.running)} "
        f"already running, {len(report.left)} left stopped, {len(report.networks)} "
        f"{plural('network', len(report.networks))} made sure of"
    )
    if report.errors:
        fail("the start is incomplete; see the errors above")
