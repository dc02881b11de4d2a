"""Benchmark: from a signed push webhook to the agent's apply start.

Not part of the test suite. Run directly (as root for native):

    .venv/bin/python tests/bench/bench_webhook.py [--runtime native] [--trials 20] [--json]

One agent (`pyapply watch --log-format json --webhook 127.0.0.1:PORT`) on a git work tree
holding one stack of one sleeping container. The file watch is slowed right down
(`--debounce 60 --poll 600 --interval 600`), so only the webhook can start a pass within
the measurement. Each trial commits a new revision (one environment value changed, so one
container is recreated), then sends a GitHub-signed push (`X-Hub-Signature-256`) over
loopback TCP and measures:

- send -> answer: the webhook's 202 round trip;
- send -> apply start: to the agent's "N change(s) at revision R" log line for that commit
  (logged when the pass has loaded the revision and planned it, before its first action);
- send -> converged: to that pass's "succeeded" log line; the container's revision label
  is checked too.

With a git source the agent fetches before the pass; that fetch's time is not in these
figures (a directory source has nothing to fetch). Target (issue 12): send -> apply start
p95 <= 1 s. Everything created is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import docker
from bench_agent import LogTail, git, summary
from common import REPO_ROOT, free_ports

IMAGE = "pyapply-test/busybox:latest"
sys.path.insert(0, str(REPO_ROOT))  # tests.e2e.runtimes, for the native image import
AGENT_FLAGS = ("--debounce", "60", "--poll", "600", "--interval", "600", "--no-events")


def stack_yaml(stack: str, value: int) -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app:
      image: {IMAGE}
      command: ["sleep", "1000000"]
      init: true
      stop_grace_period: 1s
      environment: {{V: "{value}"}}
"""


def send(port: int, secret: bytes, sha: str) -> int:
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/webhook",
            body=body,
            headers={
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": f"sha256={mac}",
                "Content-Type": "application/json",
            },
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from pyapply.runtime.drivers import open_runtime

    runtime = args.runtime
    pyapply = str(Path(sys.executable).parent / "pyapply")
    stack = "benchwh" + secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"pyapply-bench-webhook-{runtime}-"))
    repo, state, log_path = tmp / "repo", tmp / "state", tmp / "agent.log"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@example.invalid")
    git(repo, "config", "user.name", "bench")
    secret = secrets.token_hex(32).encode()
    secret_path = tmp / "webhook.secret"
    secret_path.touch(mode=0o600)
    secret_path.write_bytes(secret)
    (port,) = free_ports(1, set())
    env = {
        **os.environ,
        "PYAPPLY_ROOT": str(state),
        "PYAPPLY_RUNTIME": runtime,
        "PYAPPLY_SOCKET": str(tmp / "agent.sock"),
    }
    client = docker.from_env()
    if runtime == "native":
        from tests.e2e.runtimes import import_test_image, save_docker_image

        state.mkdir(mode=0o700)
        import_test_image(state, save_docker_image(client, IMAGE, tmp / "image.tar"), IMAGE)
    rt = open_runtime(runtime, root=str(state))

    def commit(value: int) -> str:
        (repo / "stack.yaml").write_text(stack_yaml(stack, value))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"value {value}")
        return git(repo, "rev-parse", "HEAD")

    agent: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"runtime": runtime, "trials": args.trials}
    try:
        commit(0)
        with open(log_path, "wb") as out:
            agent = subprocess.Popen(
                [pyapply, "watch", str(repo), "--log-format", "json", *AGENT_FLAGS,
                 "--webhook", f"127.0.0.1:{port}", "--webhook-secret-file", str(secret_path)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        tail = LogTail(log_path)
        tail.wait(lambda d: "succeeded in" in d.get("msg", ""), timeout=600)
        answers: list[float] = []
        to_start: list[float] = []
        to_converge: list[float] = []
        name = f"{stack}-app-1"
        for i in range(1, args.trials + 1):
            rev = commit(i)[:12]
            tail.poll()
            t0 = time.time()
            status = send(port, secret, rev)
            answers.append(time.time() - t0)
            if status != 202:
                raise RuntimeError(f"the webhook answered {status}")
            start = tail.wait(
                lambda d, r=rev: d.get("revision") == r and "change(s)" in d.get("msg", ""),  # type: ignore[misc]
                timeout=120,
            )
            end = tail.wait(
                lambda d, r=rev: d.get("revision") == r and d.get("outcome") == "succeeded",  # type: ignore[misc]
                timeout=120,
            )
            if end.get("trigger") != "webhook":
                raise RuntimeError(f"trial {i}: the pass was started by {end.get('trigger')}")
            c = rt.get_container(name)
            assert c is not None and c.labels.get("io.pyapply.revision") == rev, "not converged"
            to_start.append(float(start["ts"]) - t0)
            to_converge.append(float(end["ts"]) - t0)
            time.sleep(0.2)
        results["send_to_answer"] = summary(answers)
        results["send_to_apply_start"] = summary(to_start)
        results["send_to_converged"] = summary(to_converge)
        results["target_met"] = {
            "send_to_apply_start_p95<=1s": results["send_to_apply_start"]["p95_s"] <= 1.0
        }
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        subprocess.run(
            [pyapply, "down", "--stack", stack], env=env, capture_output=True, timeout=600,
            check=False,
        )  # fmt: skip
        if runtime == "native":
            subprocess.run(
                [pyapply, "system", "reset", "--force"], env=env, capture_output=True,
                timeout=600, check=False,
            )  # fmt: skip
        with contextlib.suppress(Exception):
            rt.close()
        client.close()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", choices=["docker", "native"], default="native")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    results = bench(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"push webhook -> apply, {args.runtime} runtime, N={args.trials}")
    for key in ("send_to_answer", "send_to_apply_start", "send_to_converged"):
        s = results[key]
        print(f"  {key:<22} p50 {s['p50_s']:.3f} s  p95 {s['p95_s']:.3f} s  max {s['max_s']:.3f} s")
    met = results["target_met"]["send_to_apply_start_p95<=1s"]
    print(f"  target send -> apply start p95 <= 1 s: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
