"""Fault: `pyapply -f` SIGKILLed at each step of a start-first update, then applied again.

A start-first update of `<stack>-app-1` makes `<stack>-app-1--next`, starts it, waits for
it to be healthy, stops and removes the old container and renames the new one. The test
watches the runtime (through the Runtime protocol: both containers, every 10 ms) and SIGKILLs the
apply when the state of a step shows; then it applies again and checks, while that pass
runs, that the service always has a running container, and afterwards that the stack is
converged (the plan is empty; `diff --exit-code` 0 at the end) and that no `--next`
container is left. The data in the service's volume stays intact: each new container's
healthcheck needs the file written at the start, and it is read at the end. The runtime fixture checks that nothing leaks.

The steps of an update follow each other in milliseconds at some points (old removed ->
renamed), so a kill lands at the step seen or a little after it; the state it left is
recorded and printed, and the rounds must leave at least three different states. Every
state, hit or not here, has a golden plan in tests/unit/test_plan_interrupted.py.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.engine.reconcile import desired_for, plan_stack
from pyapply.reconciler.manifest.loader import load
from pyapply.runtime.base import ContainerState, Runtime
from tests.e2e.runtimes import PYAPPLY, Cli, RuntimeUnderTest

pytestmark = pytest.mark.e2e

# No init: the shell (pid 1) ignores SIGTERM, so stopping the old container takes its grace
# period -- a step long enough to be caught.
MANIFEST = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    app:
      image: pyapply-test/busybox:latest
      command: ["sh", "-c", "while true; do sleep 1; done"]
      stop_grace_period: 1s
      environment:
        ROUND: "${ROUND}"
      volumes: ["data:/data"]
      healthcheck:
        test: ["CMD", "test", "-f", "/data/keep.txt"]
        interval: 300ms
        timeout: 2s
        retries: 30
      deploy:
        update_config: {order: start-first}
  volumes:
    data: {}
"""

Seen = dict[str, ContainerState]
Step = Callable[[Seen, str, str, str], bool]  # (containers, old name, next name, round)


def _new(c: ContainerState | None, round_: str) -> bool:
    return c is not None and f"ROUND={round_}" in c.env


# The steps of the update, in order, each as the state that shows it has happened.
STEPS: dict[str, Step] = {
    "next created": lambda s, old, nxt, r: nxt in s,
    "next started": lambda s, old, nxt, r: nxt in s and s[nxt].running,
    "next healthy": lambda s, old, nxt, r: nxt in s and s[nxt].health == "healthy",
    "old stopped": lambda s, old, nxt, r: old in s and not _new(s[old], r) and not s[old].running,
    "old removed": lambda s, old, nxt, r: old not in s or _new(s[old], r),
}
# A kill after the rename leaves what a finished update leaves: the state every round's
# re-apply must end in, and the next round starts from.


def _seen(rt: Runtime, *names: str) -> Seen:
    """The containers of these names that exist, read one at a time (see _Watch)."""
    seen = {n: rt.get_container(n) for n in names}
    return {n: c for n, c in seen.items() if c is not None}


def _describe(seen: Seen, old: str, nxt: str, round_: str) -> str:
    parts = []
    for label, name in (("old", old), ("next", nxt)):
        c = seen.get(name)
        if c is None:
            continue
        what = "new" if _new(c, round_) else "old spec"
        parts.append(f"{label}({what}, {c.status}{', ' + c.health if c.health else ''})")
    return " + ".join(parts) or "nothing"


def _kill_at(proc: subprocess.Popen[bytes], rt: Runtime, step: Step, *names: str) -> bool:
    """SIGKILL `proc` as soon as `step` holds; False if the apply ended first."""
    deadline = time.monotonic() + 60
    old, nxt, round_ = names
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return step(_seen(rt, nxt, old), old, nxt, round_)
        if step(_seen(rt, nxt, old), old, nxt, round_):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError("the update never reached the step in 60 s")


class _Watch:
    """The fewest running containers of the replica seen while a pass runs.

    Each look reads `--next` first, then the replica's own name, one container at a time:
    the rename happens only after the old container is gone, so a look can never miss both.
    (A listing would be one read, but on native `runc list` fails as a whole while another
    container is being deleted, which shows every container as exited for that instant.)"""

    def __init__(self, rt: Runtime, *names: str) -> None:
        self.rt, self.names = rt, names
        self.low = 1_000
        self.low_state = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            seen = {n: self.rt.get_container(n) for n in self.names}
            running = sum(1 for c in seen.values() if c is not None and c.running)
            if running < self.low:
                self.low = running
                self.low_state = ", ".join(
                    f"{n}: {c.status if c else 'missing'}" for n, c in seen.items()
                )
            time.sleep(0.01)

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)


def test_update_killed_at_each_step_recovers(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(MANIFEST)
    cli: Cli = runtime.cli()
    s = cli.stack
    old, nxt = f"{s}-app-1", f"{s}-app-1--next"
    cli.ok("-f", str(manifest), ROUND="0")
    # the healthcheck reads the file, so the first apply waits for nothing; write it now
    assert runtime.exec(old, "sh", "-c", "echo precious > /data/keep.txt")[0] == 0
    rt = runtime.open()
    left: dict[str, str] = {}
    try:
        for i, (step_name, step) in enumerate(STEPS.items(), start=1):
            round_ = str(i)
            proc = subprocess.Popen(
                [PYAPPLY, "-f", str(manifest)],
                env={**cli.env, "ROUND": round_},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            hit = _kill_at(proc, rt, step, old, nxt, round_)
            assert hit, f"{step_name}: the apply ended without reaching the step"
            before = _seen(rt, nxt, old)
            left[step_name] = _describe(before, old, nxt, round_)
            if not any(c.running for c in before.values()):
                time.sleep(1)
                again_seen = _describe(_seen(rt, nxt, old), old, nxt, round_)
                raise AssertionError(
                    f"killed at {step_name!r}: nothing runs ({left[step_name]}; "
                    f"a second later: {again_seen})"
                )

            with _Watch(rt, nxt, old) as watch:
                again = cli.run("-f", str(manifest), ROUND=round_)
            assert again.returncode == 0, (step_name, left[step_name], again.stdout, again.stderr)
            assert watch.low >= 1, (
                f"killed at {step_name!r} ({left[step_name]}): the re-apply left the service "
                f"with no running container ({watch.low_state})\n{again.stdout}"
            )
            # converged: what `diff` computes, in-process (the CLI's diff runs at the end)
            plan = _plan(rt, manifest, {**cli.env, "ROUND": round_}, runtime.root)
            assert plan.empty, (step_name, left[step_name], plan.changes)
            assert runtime.observe.all_container_names(f"{s}-") == [old], step_name
            assert _new(runtime.observe.must(old), round_)
            # (the new container became healthy: its healthcheck found the volume's file)
    finally:
        rt.close()
    print(f"\n{runtime.name}: states left by the kills: {left}")
    assert len(set(left.values())) >= 3, left
    d = cli.run("diff", "-f", str(manifest), "--exit-code", ROUND=str(len(STEPS)))
    assert d.returncode == 0, (d.stdout, d.stderr)
    assert runtime.exec(old, "cat", "/data/keep.txt") == (0, "precious\n")
    cli.ok("down", "-f", str(manifest), "--volumes", ROUND="0")


def _plan(rt: Runtime, manifest: Path, environ: dict[str, str], root: Path) -> Plan:
    loaded = load([str(manifest)], environ=environ)
    [stack] = loaded.stacks
    desired = desired_for(stack, revision="check", root=str(root), environ=environ)
    return plan_stack(rt, desired)
