"""Benchmark: the watch agent's reaction times and footprint on the real dockerd.

Not part of the test suite. Run directly:

    .venv/bin/python tests/bench/bench_agent.py [--trials 20] [--services 50] [--json]

One agent (`pyapply watch --log-format json`) follows a git-sync style link
(`<root>/current -> .worktrees/<sha>`, flipped by an atomic rename) holding one stack of
`--services` sleeping containers (restart: always). Measured:

- flip -> apply start: from the rename of the link to the agent's first action for that
  revision (the "N change(s) at revision R" log line, which precedes the first action);
- flip -> converged: to the end of that pass (its "succeeded" log line), checked against
  the container's revision label. Each flip changes one service's environment, so one
  container is recreated;
- death -> restart: `docker kill` of a different container each trial (dockerd does not
  restart a container killed by hand, whatever its restart policy; the agent does), from
  the container's FinishedAt to its next StartedAt, as dockerd reports them;
- the agent's RSS (VmRSS) while idle with every container running.

Targets (issue 4): flip -> apply start p95 <= 1 s, death -> restart p95 <= 2 s,
RSS <= 80 MB. Everything created is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
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
from common import pct, proc_kb

HERE = Path(__file__).resolve()
IMAGE = "pyapply-test/busybox:latest"


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
    # 2026-11-28T07:51:15.123456789Z -> epoch seconds (microsecond precision is enough)
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.trials > args.services - 1:
        p.error("--trials must be below --services (each kill trial uses its own container)")

    pyapply = str(Path(sys.executable).parent / "pyapply")
    client = docker.from_env(timeout=120)
    stack = "bench" + secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix="pyapply-bench-agent-"))
    upstream, sync_root = tmp / "upstream", tmp / "git"
    (sync_root / ".worktrees").mkdir(parents=True)
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    git(upstream, "config", "user.email", "bench@example.invalid")
    git(upstream, "config", "user.name", "bench")
    link = sync_root / "current"
    log_path = tmp / "agent.log"
    env = {
        **os.environ,
        "PYAPPLY_ROOT": str(tmp / "state"),
        "PYAPPLY_RUNTIME": "docker",
        "PYAPPLY_SOCKET": str(tmp / "agent.sock"),
    }

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

    agent: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {}
    try:
        flip(commit(0))
        with open(log_path, "wb") as out:
            agent = subprocess.Popen(
                [pyapply, "watch", str(link), "--log-format", "json", "--interval", "300"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        tail = LogTail(log_path)
        t_start = time.time()
        tail.wait(lambda d: "succeeded in" in d.get("msg", ""), timeout=300)
        results["initial_converge_s"] = round(time.time() - t_start, 2)
        names = [f"{stack}-s{i}-1" for i in range(args.services)]
        running = client.containers.list(filters={"label": f"io.pyapply.stack={stack}"})
        assert len(running) == args.services, f"{len(running)} of {args.services} running"

        # idle RSS with every container running
        time.sleep(5)
        results["rss_idle_mb"] = round((proc_kb(agent.pid) or 0) / 1024, 1)

        # flips
        to_start: list[float] = []
        to_converge: list[float] = []
        for i in range(1, args.trials + 1):
            sha = commit(i)
            rev = sha[:12]
            tail.poll()
            t0 = flip(sha)
            start = tail.wait(
                lambda d, r=rev: d.get("revision") == r and "change(s)" in d.get("msg", ""),  # type: ignore[misc]
                timeout=60,
            )
            end = tail.wait(
                lambda d, r=rev: d.get("revision") == r and d.get("outcome") == "succeeded",  # type: ignore[misc]
                timeout=120,
            )
            c = client.containers.get(names[0])
            assert c.labels.get("io.pyapply.revision") == rev, "not converged"
            to_start.append(float(start["ts"]) - t0)
            to_converge.append(float(end["ts"]) - t0)
            time.sleep(0.3)

        # deaths: one container each, so the crash back-off never applies
        restarts: list[float] = []
        for i in range(1, args.trials + 1):
            c = client.containers.get(names[i])
            before = c.attrs["State"]["StartedAt"]
            c.kill()
            deadline = time.monotonic() + 30
            while True:
                c.reload()
                state = c.attrs["State"]
                if state["Running"] and state["StartedAt"] != before:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{c.name} was not restarted within 30s")
                time.sleep(0.05)
            restarts.append(docker_time(state["StartedAt"]) - docker_time(state["FinishedAt"]))
            time.sleep(0.2)

        end_kb = proc_kb(agent.pid)
        if end_kb is not None:
            results["rss_end_mb"] = round(end_kb / 1024, 1)

        def summary(values: list[float]) -> dict[str, float]:
            return {
                "n": len(values),
                "p50_s": round(pct(values, 0.5), 3),
                "p95_s": round(pct(values, 0.95), 3),
                "max_s": round(max(values), 3),
                "mean_s": round(statistics.fmean(values), 3),
            }

        results["flip_to_apply_start"] = summary(to_start)
        results["flip_to_converged"] = summary(to_converge)
        results["death_to_restart"] = summary(restarts)
        results["services"] = args.services
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
            timeout=300,
            check=False,
        )
        client.close()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"agent benchmark: {args.services} containers, {args.trials} trials each")
    print(f"  initial converge        {results['initial_converge_s']:.2f} s")
    for key, label in (
        ("flip_to_apply_start", "flip -> apply start"),
        ("flip_to_converged", "flip -> converged"),
        ("death_to_restart", "death -> restart"),
    ):
        s = results[key]
        print(
            f"  {label:<22}  p50 {s['p50_s']:.3f} s  p95 {s['p95_s']:.3f} s  max {s['max_s']:.3f} s"
        )
    print(
        f"  RSS idle                {results['rss_idle_mb']:.1f} MB (end {results.get('rss_end_mb')} MB)"
    )
    print(f"  targets met: {results['targets_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
