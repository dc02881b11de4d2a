"""Benchmark: pyapply --runtime swarm vs `docker stack deploy` on one single-node swarm.

Not part of the test suite. Run directly (root, the main dockerd up, the local registry on
127.0.0.1:5000, no other swarm test running: the harness uses a fixed /30):

    .venv/bin/python tests/bench/bench_swarm.py [--runs 3] [--services 20] [--json]

One compose file of N services (each one replica of the test image from the local registry,
`sleep`, init, a 1 s stop grace, endpoint_mode dnsrr, no published port: this kernel has no
IPVS for the routing mesh; all on one overlay network). For each run and each tool (the
order alternates between runs) it measures:

- cold deploy: from nothing to every service's replica running
  (`pyapply --runtime swarm -f FILE` waits for convergence itself; `docker stack deploy
  --detach=true` returns at once, so its time runs until `docker service ls` shows every
  service N/N -- the same poll ends pyapply's measure, and costs it nothing more);
- no-op re-deploy: the same command again while everything runs (the command's time);
- change: every service's environment changed in the file, until every service's update
  completed and its replicas run (pyapply waits for each update; for docker stack deploy,
  polled as above plus each service's UpdateStatus).

Both tools deploy distinct stacks (names `<prefix>p` / `<prefix>d`), torn down between runs
(untimed). Medians and the ratios pyapply/docker are printed; the no-op target is <= 0.3x.
Beside them, in the same runs, the floor of any Python CLI: the interpreter starting and
exiting (`python -c pass`), and starting plus importing click, pyapply's command-line
library (`python -c "import click"`), each as a ratio to docker's no-op.
The swarm is initialised and left as tests/e2e/swarm.py does; everything made is removed,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.e2e.swarm import (  # noqa: E402 -- after the repository root is on sys.path
    TEST_REF,
    docker,
    new_prefix,
    single_node_swarm,
)

PYAPPLY = str(REPO_ROOT / ".venv" / "bin" / "pyapply")
TIMEOUT_S = 300.0
NOOP_TARGET = 0.3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compose_text(n: int, value: str) -> str:
    services = "".join(
        f"""  s{i:02d}:
    image: {TEST_REF}
    command: ["sleep", "3600"]
    init: true
    stop_grace_period: 1s
    environment:
      V: "{value}"
    networks: [net]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      update_config: {{parallelism: 0, monitor: 1s}}
"""
        for i in range(n)
    )
    return f"services:\n{services}networks:\n  net:\n    driver: overlay\n"


# pyapply as installed: its bytecode cached (this shell may say PYTHONDONTWRITEBYTECODE, which
# would make every pyapply start compile ~100 modules and time that instead)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(*argv: str) -> float:
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=ENV)
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return took


FLOORS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import click'": [sys.executable, "-c", "import click"],
}


def services_of(stack: str) -> list[dict[str, Any]]:
    ids = docker("service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}")
    if not ids:
        return []
    doc: list[dict[str, Any]] = json.loads(docker("service", "inspect", *ids.split()))
    return doc


def converged(stack: str, n: int, value: str | None = None) -> bool:
    """Every one of the stack's n services runs its replica; with `value`, every service's
    spec has V=value and its update (if any) completed."""
    rows = docker(
        "service",
        "ls",
        "--filter",
        f"label=com.docker.stack.namespace={stack}",
        "--format",
        "{{.Replicas}}",
    ).split()
    if len(rows) != n or any(r != "1/1" for r in rows):
        return False
    if value is None:
        return True
    for s in services_of(stack):
        env = s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []
        # the change is each service's first update (a cold deploy creates them): present
        # and completed, never "not started yet"
        state = (s.get("UpdateStatus") or {}).get("State")
        if f"V={value}" not in env or state != "completed":
            return False
    return True


def until(predicate: Callable[[], bool], start: float, what: str) -> float:
    while not predicate():
        if time.monotonic() - start > TIMEOUT_S:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


class Tool:
    def __init__(self, name: str, stack: str, directory: Path, n: int) -> None:
        self.name, self.stack, self.dir, self.n = name, stack, directory, n
        self.file = directory / "compose.yaml"
        directory.mkdir(parents=True)

    def write(self, value: str) -> None:
        self.file.write_text(compose_text(self.n, value))

    def deploy(self) -> float:
        if self.name == "pyapply":
            return run(PYAPPLY, "--runtime", "swarm", "-f", str(self.file), "--wait-timeout", "240")
        return run("docker", "stack", "deploy", "--detach=true", "-c", str(self.file), self.stack)

    def cold(self) -> float:
        self.write("one")
        start = time.monotonic()
        self.deploy()
        return until(lambda: converged(self.stack, self.n), start, f"{self.name} cold")

    def noop(self) -> float:
        took = self.deploy()
        if not converged(self.stack, self.n):
            raise SystemExit(f"{self.name}: not converged after the no-op")
        return took

    def pass_in_process(self) -> float:
        """pyapply's no-op pass without starting a process, as the agent makes it on each
        resync: load the file, pin the image, observe, diff, plan (empty, asserted)."""
        from pyapply.reconciler.engine.swarm import desired_for_swarm, plan_swarm
        from pyapply.reconciler.manifest.loader import load
        from pyapply.reconciler.manifest.revision import of_directory
        from pyapply.runtime.swarm.driver import SwarmRuntime

        rt = SwarmRuntime()
        try:
            start = time.monotonic()
            loaded = load([str(self.file)])
            revision = of_directory(str(self.file)).id
            plans = [
                plan_swarm(rt, desired_for_swarm(rt, s, revision=revision)) for s in loaded.stacks
            ]
            took = time.monotonic() - start
        finally:
            rt.close()
        if not all(p.empty for p in plans):
            raise SystemExit(f"pyapply in-process no-op: a plan is not empty: {plans}")
        return took

    def change(self, value: str) -> float:
        self.write(value)
        start = time.monotonic()
        self.deploy()
        return until(lambda: converged(self.stack, self.n, value), start, f"{self.name} change")

    def down(self) -> None:
        if self.name == "pyapply":
            r = subprocess.run(
                [PYAPPLY, "down", "--runtime", "swarm", "--stack", self.stack],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            if r.returncode != 0:
                raise SystemExit(f"pyapply down failed:\n{r.stdout}{r.stderr}")
        else:
            subprocess.run(
                ["docker", "stack", "rm", self.stack], capture_output=True, timeout=TIMEOUT_S
            )
        label = f"label=com.docker.stack.namespace={self.stack}"
        start = time.monotonic()
        until(
            lambda: (
                not docker("service", "ls", "-q", "--filter", label)
                and not docker("network", "ls", "-q", "--filter", label)
            ),
            start,
            f"{self.name} down",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the harness makes a veth and a network namespace)")
    prefix = new_prefix()
    results: dict[str, dict[str, list[float]]] = {
        t: {"cold": [], "noop": [], "change": []} for t in ("pyapply", "docker")
    }
    in_process: list[float] = []
    floors: dict[str, list[float]] = {k: [] for k in FLOORS}
    run(PYAPPLY, "--version")  # its bytecode written once, untimed
    with tempfile.TemporaryDirectory(prefix="pyasw-bench-") as tmp, single_node_swarm(prefix):
        tools = [
            Tool("pyapply", f"{prefix}p", Path(tmp) / f"{prefix}p", args.services),
            Tool("docker", f"{prefix}d", Path(tmp) / f"{prefix}d", args.services),
        ]
        try:
            for i in range(args.runs):
                order = tools if i % 2 == 0 else tools[::-1]
                for tool in order:
                    r = results[tool.name]
                    r["cold"].append(tool.cold())
                    r["noop"].append(tool.noop())
                    if tool.name == "pyapply":
                        in_process.append(tool.pass_in_process())
                        for k, argv in FLOORS.items():
                            floors[k].append(run(*argv))
                    r["change"].append(tool.change(f"run{i}"))
                    log(
                        f"run {i + 1} {tool.name:7}: cold {r['cold'][-1]:.2f}s  "
                        f"no-op {r['noop'][-1]:.2f}s  change {r['change'][-1]:.2f}s"
                    )
                    tool.down()
        finally:
            for tool in tools:
                tool.down()
    med = {t: {k: statistics.median(v) for k, v in m.items()} for t, m in results.items()}
    ratios = {k: med["pyapply"][k] / med["docker"][k] for k in ("cold", "noop", "change")}
    ratios["noop_pass"] = statistics.median(in_process) / med["docker"]["noop"]
    floor = {k: statistics.median(v) for k, v in floors.items()}
    if args.json:
        doc = {
            "runs": results,
            "noop_pass": in_process,
            "floor": floors,
            "median": med,
            "ratio": ratios,
            "floor_ratio": {k: v / med["docker"]["noop"] for k, v in floor.items()},
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.services} services, {args.runs} runs, medians (pyapply / docker stack):")
        for k, label in (
            ("cold", "cold deploy"),
            ("noop", "no-op re-deploy"),
            ("change", "change -> all updated"),
        ):
            print(
                f"  {label:22} {med['pyapply'][k]:7.2f}s  {med['docker'][k]:7.2f}s  "
                f"ratio {ratios[k]:.2f}x"
            )
        print(
            f"  {'no-op pass, in-process':22} {statistics.median(in_process):7.2f}s  "
            f"{med['docker']['noop']:7.2f}s  ratio {ratios['noop_pass']:.2f}x  "
            "(the agent's resync: no interpreter start)"
        )
        for k, v in floor.items():
            print(
                f"  {'floor: ' + k:22} {v:7.2f}s  {med['docker']['noop']:7.2f}s  "
                f"ratio {v / med['docker']['noop']:.2f}x"
            )
        for k, what in (("noop", "CLI"), ("noop_pass", "in-process pass")):
            verdict = "met" if ratios[k] <= NOOP_TARGET else "NOT met"
            print(f"  no-op target <= {NOOP_TARGET}x ({what}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
