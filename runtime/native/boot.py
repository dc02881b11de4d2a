"""`pyapply system start`: after a boot, bring back the containers of a native state root
whose restart policy says so, as dockerd does when it starts.

A reboot leaves the state root on disk and takes everything else: container processes and
their conmons, the keeper, overlay mounts, network namespaces, veths, bridges, firewall
rules, cgroups. This puts back, from the root alone:

1. every network's bridge, address and rules (NetworkManager.ensure), so that a network
   whose containers stay stopped is whole too, and a following `pyapply -f` finds
   nothing to repair;
2. every container that is not running and whose policy restarts it at boot
   (runtime/restarts.py: `always`, even if stopped on purpose; `unless-stopped` unless
   stopped on purpose; `on-failure` after a failure -- a run the machine cut short counts
   as one -- unless it had given up), through the driver's `start_by_policy`: its netns
   and endpoints made again with the addresses it had, its overlay mounted, runc under a
   new conmon, its cgroups, and the keeper, which enforces the policies from then on.

It needs no manifest and no agent. Running it again, or on a root that was not rebooted,
changes nothing: what runs is left running. Containers whose policy does not start them
are left as they are, and reported so.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from pyapply.runtime.base import RuntimeFailure
from pyapply.runtime.native import health
from pyapply.runtime.native.container_state import restart_policy
from pyapply.runtime.native.driver import Names, NativeRuntime


class BootReport(msgspec.Struct):
    """What a start did: the networks made sure of, the containers started, those left
    stopped (with the policy that left them), and what failed."""

    root: str
    networks: list[str] = msgspec.field(default_factory=list)
    started: list[str] = msgspec.field(default_factory=list)
    running: list[str] = msgspec.field(default_factory=list)
    left: list[tuple[str, str]] = msgspec.field(default_factory=list)
    errors: list[str] = msgspec.field(default_factory=list)


def start(root: str | os.PathLike[str]) -> BootReport:
    """Bring back what the restart policies of the root's containers say runs (see the
    module doc); a failure of one object is reported and the rest goes on."""
    rt = NativeRuntime(Path(root))
    report = BootReport(str(rt.root))
    for net in rt.networks.list():
        try:
            rt.networks.ensure(net.name)
            report.networks.append(net.name)
        except RuntimeFailure as e:
            report.errors.append(f"network {net.name}: {e.message}")
    names = rt.names.load()
    for state in rt.containers.list():  # under their keys
        key = state.name
        name = Names.name_of(names, key)
        if state.status in ("running", "paused", "created", "dead"):
            # running: nothing was lost; never started or a create cut short: the pass's
            if state.status in ("running", "paused"):
                report.running.append(name)
            else:
                report.left.append((name, f"{state.status}, not started by a policy"))
            continue
        try:
            if rt.start_by_policy(key, boot=True):
                report.started.append(name)
                continue
        except RuntimeFailure as e:
            report.errors.append(f"container {name}: {e.message}")
            continue
        doc = rt.containers.peek(key) or {}
        policy = restart_policy(doc)
        why = f"restart: {policy.name}"
        if policy.name != "no" and (doc.get("restart") or {}).get("stopped"):
            why += ", stopped on purpose"
        elif policy.name == "on-failure":
            why += f", exited with code {state.exit_code}"
        report.left.append((name, why))
    if report.running:
        # what runs has its keeper (healthchecks, log rotation, restart policies)
        health.ensure_checker(rt.root, rt.containers.supervisor.runc)
    return report
