"""Benchmark: the watch agent's reaction times and footprint, on the real dockerd and on the
native runtime (runc + conmon, netns and bridges: where pyroute2 forks children), side by
side.

Not part of the test suite. Run directly (as root for native):

    .venv/bin/python tests/bench/bench_agent.py [--runtime both] [--trials 20] [--services 50] [--json]

One agent (`pyapply watch --log-format json`) follows a git-sync style link
(`<root>/current -> .worktrees/<sha>`, flipped by an atomic rename) holding one stack of
`--services` sleeping containers (restart: always). Measured:

- flip -> apply start: from the rename of the link to the agent's first action for that
  revision (the "N change(s) at revision R" log line, which precedes the first action);
- flip -> converged: to the end of that pass (its "succeeded" log line), checked against
  the container's revision label. Each flip changes one service's environment, so one
  container is recreated;
- death -> restart: SIGKILL of a different container's process each trial (`docker kill`;
  on native, a signal to the container's process). Neither dockerd nor conmon restarts a
  container killed by hand; the agent does. From the kill to the container's next start
  time, as the runtime reports it;
- the agent's RSS (VmRSS) while idle with every container running.

The agent runs with `--poll 60`, so a flip seen late by a broken file watch shows (issue
18: on native the watch died after the first netns, and flips waited for the 10 s poll).
The trigger of each flip's pass is counted too (`file` for the watch, `poll` for the poll).

Targets (issue 4): flip -> apply start p95 <= 1 s, death -> restart p95 <= 2 s,
RSS <= 80 MB. Everything created is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
from common import REPO_ROOT, pct, proc_kb

HERE = Path(__file__).resolve()
IMAGE = "pyapply-test/busybox:latest"
sys.path.insert(0, str(REPO_ROOT))  # the runtime's own observer, as the tests use it
# no resync during the run, and a poll too slow to hide a dead file watch
AGENT_FLAGS = ("--interval", "300", "--poll", "60")


def stack_yaml(stack: str, services: int, value: int) -> str:
    out = [f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  services:"]
    for i in range(services):
        v = value if i == 0 else 0
        out.append(
            f"""    s{i}:
      image: {IMAGE}
      command: ["sleep", "1000000"]
      init: true
      stop_grace_period: 1s
      restart: always
      environment: {{V: "{v}"}}"""
        )
    return "\n".join(out) + "\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def docker_time(text: str) -> float:
    # 2026-11-28T07:51:15.123456789Z -> epoch seconds (microsecond precision is enough);
    # the native runtime reports the same form
    main, _, frac = text.rstrip("Z").partition(".")
    base = datetime.fromisoformat(main + "+00:00").timestamp()
    return base + float("0." + (frac or "0"))


class LogTail:
    """Reads the agent's JSON log lines as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.lines: list[dict[str, Any]] = []

    def poll(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.pos += end
        for raw in data[:end].splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                self.lines.append(doc)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for doc in self.lines:
                if pred(doc):
                    return doc
            if time.monotonic() > deadline:
                raise TimeoutError("no matching log line")
            time.sleep(0.02)
            self.poll()


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(pct(values, 0.5), 3),
        "p95_s": round(pct(values, 0.95), 3),
        "max_s": round(max(values), 3),
        "mean_s": round(statistics.fmean(values), 3),
    }


def bench(runtime: str, args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """One agent on `runtime` with a private state root: the figures of the module doc."""
    from pyapply.runtime.drivers import open_runtime

    pyapply = str(Path(sys.executable).parent / "pyapply")
    stack = "bench" + secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"pyapply-bench-agent-{runtime}-"))
    upstream, sync_root = tmp / "upstream", tmp / "git"
    (sync_root / ".worktrees").mkdir(parents=True)
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "config", "user.email", "bench@example.invalid")
    git(upstream, "config", "user.name", "bench")
    link = sync_root / "current"
    log_path = tmp / "agent.log"
    state = tmp / "state"
    env = {
        **os.environ,
        "PYAPPLY_ROOT": str(state),
        "PYAPPLY_RUNTIME": runtime,
        "PYAPPLY_SOCKET": str(tmp / "agent.sock"),
    }
    if runtime == "native":
        from tests.e2e.runtimes import import_test_image, save_docker_image

        state.mkdir(mode=0o700)
        import_test_image(state, save_docker_image(client, IMAGE, tmp / "image.tar"), IMAGE)
    rt = open_runtime(runtime, root=str(state))

    def commit(value: int) -> str:
        (upstream / "stack.yaml").write_text(stack_yaml(stack, args.services, value))
        git(upstream, "add", "-A")
        git(upstream, "commit", "-q", "-m", f"value {value}")
        sha = git(upstream, "rev-parse", "HEAD")
        git(upstream, "worktree", "add", "-q", "--detach", str(sync_root / ".worktrees" / sha), sha)
        return sha

    def flip(sha: str) -> float:
        tmp_link = sync_root / "current.tmp"
        os.symlink(f".worktrees/{sha}", tmp_link)
        t0 = time.time()
        os.replace(tmp_link, link)
        return t0

    def kill(name: str) -> None:
        if runtime == "docker":
            client.containers.get(name).kill()
        else:
            pid = rt.container_pid(name)  # type: ignore[attr-defined]
            assert pid is not None, f"{name} has no process"
            os.kill(pid, signal.SIGKILL)

    agent: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"runtime": runtime, "services": args.services}
    try:
        flip(commit(0))
        with open(log_path, "wb") as out:
            agent = subprocess.Popen(
                [pyapply, "watch", str(link), "--log-format", "json", *AGENT_FLAGS],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        tail = LogTail(log_path)
        t_start = time.time()
        tail.wait(lambda d: "succeeded in" in d.get("msg", ""), timeout=600)
        results["initial_converge_s"] = round(time.time() - t_start, 2)
        names = [f"{stack}-s{i}-1" for i in range(args.services)]
        up = [c for c in rt.list_containers({"io.pyapply.stack": stack}) if c.running]
        assert len(up) == args.services, f"{len(up)} of {args.services} running"

        # idle RSS with every container running
        time.sleep(5)
        results["rss_idle_mb"] = round((proc_kb(agent.pid) or 0) / 1024, 1)

        # flips
        to_start: list[float] = []
        to_converge: list[float] = []
        triggers: dict[str, int] = {}
        for i in range(1, args.trials + 1):
            sha = commit(i)
            rev = sha[:12]
            tail.poll()
            t0 = flip(sha)
            start = tail.wait(
                lambda d, r=rev: d.get("revision") == r and "change(s)" in d.get("msg", ""),  # type: ignore[misc]
                timeout=120,
            )
            end = tail.wait(
                lambda d, r=rev: d.get("revision") == r and d.get("outcome") == "succeeded",  # type: ignore[misc]
                timeout=120,
            )
            c = rt.get_container(names[0])
            assert c is not None and c.labels.get("io.pyapply.revision") == rev, "not converged"
            to_start.append(float(start["ts"]) - t0)
            to_converge.append(float(end["ts"]) - t0)
            trigger = str(end.get("trigger"))
            triggers[trigger] = triggers.get(trigger, 0) + 1
            time.sleep(0.3)

        # deaths: one container each, so the crash back-off never applies
        restarts: list[float] = []
        for i in range(1, args.trials + 1):
            before = rt.get_container(names[i])
            assert before is not None and before.running
            t0 = time.time()
            kill(names[i])
            deadline = time.monotonic() + 30
            while True:
                now = rt.get_container(names[i])
                if now is not None and now.running and now.started_at != before.started_at:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{names[i]} was not restarted within 30s")
                time.sleep(0.05)
            assert now.started_at is not None
            restarts.append(docker_time(now.started_at) - t0)
            time.sleep(0.2)

        end_kb = proc_kb(agent.pid)
        if end_kb is not None:
            results["rss_end_mb"] = round(end_kb / 1024, 1)
        logs = log_path.read_text(errors="replace")
        results["spurious_sigterm_lines"] = logs.count("signal SIGTERM")
        results["flip_to_apply_start"] = summary(to_start)
        results["flip_to_converged"] = summary(to_converge)
        results["flip_triggers"] = triggers
        results["death_to_restart"] = summary(restarts)
        results["targets_met"] = {
            "flip_to_apply_start_p95<=1s": results["flip_to_apply_start"]["p95_s"] <= 1.0,
            "death_to_restart_p95<=2s": results["death_to_restart"]["p95_s"] <= 2.0,
            "rss<=80MB": results["rss_idle_mb"] <= 80,
        }
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                results["sigterm_exit"] = agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        subprocess.run(
            [pyapply, "down", "--stack", stack],
            env=env,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if runtime == "native":
            subprocess.run(
                [pyapply, "system", "reset", "--force"],
                env=env,
                capture_output=True,
                timeout=600,
                check=False,
            )
        with contextlib.suppress(Exception):
            rt.close()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runtime", choices=["docker", "native", "both"], default="both")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.trials > args.services - 1:
        p.error("--trials must be below --services (each kill trial uses its own container)")
    runtimes = ["docker", "native"] if args.runtime == "both" else [args.runtime]
    client = docker.from_env(timeout=120)
    try:
        results = {name: bench(name, args, client) for name in runtimes}
    finally:
        client.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"agent benchmark: {args.services} containers, {args.trials} trials each")
    print(f"  {'':<24}" + "".join(f"{name:>34}" for name in runtimes))

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> None:
        print(f"  {label:<24}" + "".join(f"{cell(results[name]):>34}" for name in runtimes))

    row("initial converge", lambda r: f"{r['initial_converge_s']:.2f} s")
    for key, label in (
        ("flip_to_apply_start", "flip -> apply start"),
        ("flip_to_converged", "flip -> converged"),
        ("death_to_restart", "death -> restart"),
    ):
        row(
            label,
            lambda r, k=key: (
                f"p50 {r[k]['p50_s']:.3f}  p95 {r[k]['p95_s']:.3f}  max {r[k]['max_s']:.3f}"
            ),  # type: ignore[misc]
        )
    row("flip seen by", lambda r: ", ".join(f"{k} x{v}" for k, v in r["flip_triggers"].items()))
    row("'signal SIGTERM' lines", lambda r: str(r["spurious_sigterm_lines"]))
    row("RSS idle (end)", lambda r: f"{r['rss_idle_mb']:.1f} MB ({r.get('rss_end_mb')} MB)")
    for name in runtimes:
        print(f"  targets met ({name}): {results[name]['targets_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
