"""Benchmark: what the dashboard costs the agent -- its memory and the duration of its passes,
with and without five dashboards open.

Not part of the test suite. Run directly (as root for native):

    .venv/bin/python tests/bench/bench_dashboard.py [--runtime native] [--services 50] [--trials 10] [--json]

One agent (`pyapply watch DIR --http 127.0.0.1:PORT`) on a directory holding one stack of
`--services` sleeping containers. The passes measured are flips: the manifest changes one
service's environment, so each pass observes and plans every container and recreates one;
its duration is the history record's (ended - started).

"Dashboard open" is five clients of the --http listener, each doing what a browser's page
does (reconciler/view/static/dashboard.js): logged in with a session cookie, an event stream
on /events, and on every `change` event a fetch of the overview's and the stack page's
fragments; plus a whole overview page every 5 s. They are Python threads, not five
Chromiums: five browsers would cost this 2-core host more CPU than the agent, which would
measure the browsers, not the agent. The figures (RSS with and without; pass duration with
and without, in alternating blocks so that drift of the host affects both) are printed side
by side. Passes come `--gap` seconds apart (default 1 s: what a page fetches after a pass
has that long before the next change; `--gap 0` is the worst case, passes back to back, the
fetches after one pass overlapping the next). Targets (issue 13): RSS <= 80 MB with the dashboards open, passes <= 5 % slower.

Everything created is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from common import REPO_ROOT, proc_kb

IMAGE = "pyapply-test/busybox:latest"
TOKEN = "bench-operator-" + secrets.token_hex(16)
sys.path.insert(0, str(REPO_ROOT))


def stack_yaml(stack: str, services: int, value: int) -> str:
    out = [f"apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n  services:"]
    for i in range(services):
        out.append(
            f"""    s{i}:
      image: {IMAGE}
      command: ["sleep", "1000000"]
      init: true
      stop_grace_period: 1s
      restart: always
      environment: {{V: "{value if i == 0 else 0}"}}"""
        )
    return "\n".join(out) + "\n"


def request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Dashboard(threading.Thread):
    """One open dashboard: an event stream and the fetches its page makes."""

    def __init__(self, port: int, stack: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stack = stack
        self.stop_event = stop
        self.fetches = 0
        self.fetch_s: list[float] = []
        self.changes = 0
        self.errors: list[str] = []
        status, headers, _ = request(
            port,
            "POST",
            "/login",
            {"Content-Type": "application/x-www-form-urlencoded"},
            urlencode({"token": TOKEN}).encode(),
        )
        assert status == 303, status
        self.cookie = headers["set-cookie"].split(";")[0]

    def fetch(self, path: str) -> None:
        t0 = time.monotonic()
        status, _, _ = request(self.port, "GET", path, {"Cookie": self.cookie})
        self.fetch_s.append(time.monotonic() - t0)
        if status != 200:
            self.errors.append(f"{path}: {status}")
        self.fetches += 1

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/events", headers={"Cookie": self.cookie})
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            last_page = time.monotonic()
            while not self.stop_event.is_set():
                line = resp.fp.readline()
                if not line:
                    break
                if line.startswith(b"event: change"):
                    self.changes += 1
                    self.fetch("/?fragment=1")
                    self.fetch(f"/stacks/{self.stack}?fragment=1")
                if time.monotonic() - last_page >= 5:
                    self.fetch("/")
                    last_page = time.monotonic()
        except Exception as exc:  # reported, not raised: the figures say what happened
            if not self.stop_event.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            kb = proc_kb(self.pid)
            if kb is not None:
                self.samples.append(kb / 1024)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import docker

    from pyapply.runtime.drivers import open_runtime

    pyapply = str(Path(sys.executable).parent / "pyapply")
    runtime = args.runtime
    stack = "dash" + secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix="pyapply-bench-dashboard-"))
    watched, state = tmp / "stack", tmp / "state"
    watched.mkdir()
    tokens = tmp / "tokens"
    tokens.touch(mode=0o600)
    tokens.write_text(f"operator {TOKEN}\n")
    env = {
        **os.environ,
        "PYAPPLY_ROOT": str(state),
        "PYAPPLY_RUNTIME": runtime,
        "PYAPPLY_SOCKET": str(tmp / "agent.sock"),
    }
    if runtime == "native":
        from tests.e2e.runtimes import import_test_image, save_docker_image

        state.mkdir(mode=0o700)
        client = docker.from_env()
        import_test_image(state, save_docker_image(client, IMAGE, tmp / "image.tar"), IMAGE)
        client.close()
    rt = open_runtime(runtime, root=str(state))
    port = _free_port()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    agent: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"runtime": runtime, "services": args.services, "gap_s": args.gap}
    value = 0

    def history_ids() -> set[int]:
        _, _, body = request(port, "GET", "/v1/history?limit=200", bearer)
        return {int(p["id"]) for p in json.loads(body)["passes"]}

    def flip() -> float:
        """One pass that recreates one container; its duration, from its record."""
        nonlocal value
        value += 1
        time.sleep(args.gap)  # the dashboards' fetches after the last pass had this long
        before = history_ids()
        (watched / "stack.yaml").write_text(stack_yaml(stack, args.services, value))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            _, _, body = request(port, "GET", "/v1/history?limit=5", bearer)
            for p in json.loads(body)["passes"]:
                if p["id"] not in before and p["ended"] is not None:
                    assert p["outcome"] == "succeeded", p
                    c = rt.get_container(f"{stack}-s0-1")
                    assert c is not None and f"V={value}" in c.env, "not converged"
                    return float(p["ended"]) - float(p["started"])
            time.sleep(0.05)
        raise TimeoutError("the flip's pass did not end")

    try:
        (watched / "stack.yaml").write_text(stack_yaml(stack, args.services, value))
        with open(tmp / "agent.log", "wb") as out:
            agent = subprocess.Popen(
                [
                    pyapply, "watch", str(watched), "--interval", "600", "--poll", "60",
                    "--debounce", "0.2", "--http", f"127.0.0.1:{port}",
                    "--http-token-file", str(tokens), "--log-format", "json",
                ],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 900
        while True:
            with contextlib.suppress(OSError):
                _, _, body = request(port, "GET", "/v1/status", bearer)
                if json.loads(body)["last_result"]["outcome"] == "succeeded":
                    break
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not converge: {(tmp / 'agent.log').read_text()}")
            time.sleep(0.5)
        up = [c for c in rt.list_containers({"io.pyapply.stack": stack}) if c.running]
        assert len(up) == args.services, f"{len(up)} of {args.services} running"

        flip()  # warm: the first pages and passes load what they load once
        time.sleep(3)
        results["rss_idle_without_mb"] = round((proc_kb(agent.pid) or 0) / 1024, 1)
        without: list[float] = []
        with_open: list[float] = []
        peaks = {"without": 0.0, "with": 0.0}
        clients: list[Dashboard] = []
        client_stats: dict[str, Any] = {"fetches": 0, "changes": 0, "errors": []}
        fetch_s: list[float] = []
        block = max(1, args.block)
        for _round in range(max(1, args.trials // block)):
            sampler = RssSampler(agent.pid)
            sampler.start()
            without += [flip() for _ in range(block)]
            sampler.stop_event.set()
            sampler.join()
            peaks["without"] = max([peaks["without"], *sampler.samples])

            stop = threading.Event()
            clients = [Dashboard(port, stack, stop) for _ in range(5)]
            for c in clients:
                c.start()
            time.sleep(2)
            sampler = RssSampler(agent.pid)
            sampler.start()
            with_open += [flip() for _ in range(block)]
            time.sleep(6)  # a whole-page reload of every client too
            results["rss_idle_with_mb"] = round((proc_kb(agent.pid) or 0) / 1024, 1)
            sampler.stop_event.set()
            sampler.join()
            peaks["with"] = max([peaks["with"], *sampler.samples])
            stop.set()
            for c in clients:
                c.join(timeout=40)
                client_stats["fetches"] += c.fetches
                client_stats["changes"] += c.changes
                client_stats["errors"] += c.errors
                fetch_s += c.fetch_s
        if fetch_s:
            client_stats["fetch_median_s"] = round(statistics.median(fetch_s), 3)
            client_stats["fetch_max_s"] = round(max(fetch_s), 3)
        med_without = statistics.median(without)
        med_with = statistics.median(with_open)
        results.update(
            {
                "rss_peak_without_mb": round(peaks["without"], 1),
                "rss_peak_with_mb": round(peaks["with"], 1),
                "pass_without_s": [round(v, 3) for v in without],
                "pass_with_s": [round(v, 3) for v in with_open],
                "pass_median_without_s": round(med_without, 3),
                "pass_median_with_s": round(med_with, 3),
                "pass_slower_pct": round((med_with / med_without - 1) * 100, 1),
                "clients": client_stats,
            }
        )
        results["targets_met"] = {
            "rss_with_dashboards<=80MB": results["rss_peak_with_mb"] <= 80,
            "pass<=5%_slower": results["pass_slower_pct"] <= 5.0,
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
            [pyapply, "down", "--stack", stack], env=env, capture_output=True, timeout=900,
            check=False,
        )  # fmt: skip
        if runtime == "native":
            subprocess.run(
                [pyapply, "system", "reset", "--force"], env=env, capture_output=True,
                timeout=600, check=False,
            )  # fmt: skip
        with contextlib.suppress(Exception):
            rt.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=["native", "docker"], default="native")
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--trials", type=int, default=20, help="passes per condition")
    parser.add_argument(
        "--block", type=int, default=5, help="passes in a row per condition (they alternate)"
    )
    parser.add_argument(
        "--gap",
        type=float,
        default=1.0,
        help="seconds from one pass's end to the next change (0: back to back, the worst "
        "case: the dashboards' fetches after a pass overlap the next one)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = bench(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"\ndashboard cost, {args.runtime}, {args.services} containers, {args.trials} passes "
        f"each, {args.gap:g} s between passes"
    )
    print(f"{'':34}{'without':>12}{'5 dashboards':>16}")
    print(
        f"{'agent RSS, idle (MB)':34}{results['rss_idle_without_mb']:>12}"
        f"{results['rss_idle_with_mb']:>16}"
    )
    print(
        f"{'agent RSS, peak in passes (MB)':34}{results['rss_peak_without_mb']:>12}"
        f"{results['rss_peak_with_mb']:>16}"
    )
    print(
        f"{'pass duration, median (s)':34}{results['pass_median_without_s']:>12}"
        f"{results['pass_median_with_s']:>16}"
    )
    print(f"pass slower with dashboards: {results['pass_slower_pct']} %")
    print(f"clients: {json.dumps(results['clients'])}")
    print(f"targets met: {json.dumps(results['targets_met'])}")
    return 0 if all(results["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
