"""Service features end to end, on each real runtime (docker, native), through the real
command line: start-first rolling updates, configs and secrets, `pyapply logs`, and the
limits a container runs under (tmpfs, read-only root, ulimits, memory/pids/cpu limits) as
seen from inside the container.

What a container sees is reported by its own command, into its log, and read back through
the Runtime protocol (or `pyapply logs`), so every runtime is asked the same way.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import PYAPPLY, Cli, RuntimeUnderTest

pytestmark = pytest.mark.e2e

T = TypeVar("T")

HEADER = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {stack}}}\nspec:\n"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception as exc:  # a probe racing a container being (re)created
            last = exc
        else:
            if got:
                return got
            last = got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def report(runtime: RuntimeUnderTest, name: str, marker: str = "report-done") -> dict[str, str]:
    """The `key=value` lines a container's command printed, once it printed `marker`."""

    def printed() -> str | None:
        text = runtime.observe.logs(name)
        return text if marker in text else None

    text = wait_for(f"{name} to print {marker}", printed)
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key] = value
    return out


def write_stack(tmp_path: Path, stack: str, services: str, tail: str = "") -> Path:
    path = tmp_path / "stack" / "stack.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(HEADER.format(stack=stack) + "  services:\n" + services + tail)
    return path


# ---------------------------------------------------------------------------------------------

START_FIRST = f"""\
    web:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "mkdir -p /srv && echo v$$V > /srv/index.html && exec httpd -f -p 80 -h /srv"]
      init: true
      stop_grace_period: 2s
      environment: {{V: "${{V:-1}}"}}
      healthcheck:
        test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
        interval: 1s
        timeout: 2s
        retries: 10
      deploy:
        replicas: 2
        update_config: {{order: start-first, parallelism: 1}}
    probe:
      image: {TEST_IMAGE}
      # a client that retries twice within 0.7 s (a replica's address may outlive its
      # process by a moment in the runtime's name resolution)
      command: ["sh", "-c", "while :; do $$GET || {{ sleep 0.2; $$GET; }} || {{ sleep 0.5; $$GET; }} || echo FAIL; sleep 0.1; done"]
      environment: {{GET: "timeout -s KILL 3 wget -q -O- http://web/"}}
      init: true
      stop_grace_period: 1s
      depends_on: {{web: {{condition: service_healthy}}}}
"""


def test_start_first_update_keeps_the_service_answering(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    """Two replicas, no host ports, `order: start-first`: each new container runs (and is
    healthy) before its old one goes, a client on the network is answered all along, and
    afterwards the replicas have their plain names with no `--next` container left."""
    cli = runtime.cli()
    s = cli.stack
    obs = runtime.observe
    manifest = write_stack(tmp_path, s, START_FIRST)
    try:
        cli.ok("-f", str(manifest))
        web = [f"{s}-web-1", f"{s}-web-2"]
        old = {n: obs.must(n).id for n in web}
        probe = f"{s}-probe-1"
        probe_id = obs.must(probe).id
        wait_for("the probe's first answers", lambda: "v1" in obs.logs(probe))

        samples: list[set[str]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    found = obs.containers(s).values()
                except Exception:  # a listing racing a removal; the next one will do
                    continue
                samples.append({c.name for c in found if c.running})
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            plan = cli.run("diff", "-f", str(manifest), "--exit-code", V="2")
            assert plan.returncode == 2, plan.stdout + plan.stderr
            cli.ok("-f", str(manifest), V="2")
        finally:
            done.set()
            sampler.join(timeout=10)

        # start-first: a new replica ran beside both old ones, one replica at a time
        both = [x for x in samples if f"{s}-web-1--next" in x and set(web) <= x]
        assert both, f"never saw web-1--next running beside the old replicas: {samples}"
        assert not any(f"{s}-web-1--next" in x and f"{s}-web-2--next" in x for x in samples), (
            "parallelism 1: two replicas were replaced at once"
        )
        assert any(f"{s}-web-2--next" in x for x in samples), samples

        assert obs.all_container_names(s) == sorted([probe, *web])
        for n in web:
            state = obs.must(n)
            assert state.running and state.id != old[n], n
            assert obs.env(n)["V"] == "2"
            assert state.labels["io.pyapply.replica"] == n[-1]
        assert obs.must(probe).id == probe_id  # the probe's spec did not change
        d = cli.run("diff", "-f", str(manifest), "--exit-code", V="2")
        assert d.returncode == 0, d.stdout + d.stderr

        # the probe asks a few more times, of the new replicas only: within a bound, since
        # dockerd's embedded DNS can hand out an old replica's record for a moment after it
        # is gone (seen once in a CI run; an old replica still answering would stay v1)
        deadline = time.monotonic() + 10
        while True:
            time.sleep(0.5)
            lines = obs.logs(probe).split()
            if lines[-5:] == ["v2"] * 5 or time.monotonic() > deadline:
                break
        assert "FAIL" not in lines, f"the service stopped answering during the update: {lines}"
        assert "v1" in lines and "v2" in lines
        assert lines[-5:] == ["v2"] * 5, lines[-20:]
        # the renamed containers answer by their own (final) names too
        for n in web:
            got = runtime.exec(
                probe, "timeout", "-s", "KILL", "5", "wget", "-q", "-O-", f"http://{n}/"
            )
            if got != (0, "v2\n"):
                hosts = runtime.exec(probe, "cat", "/etc/hosts")[1]
                addrs = {w: runtime.exec(w, "ip", "-o", "addr", "show", "eth0")[1] for w in web}
                neigh = runtime.exec(probe, "ip", "neigh")[1]
                raise AssertionError(
                    f"{n} from {probe}: {got}; its /etc/hosts:\n{hosts}\nits neighbours:\n"
                    f"{neigh}\naddresses: {addrs}"
                )
        # the network lists its containers by their (final) names
        network = obs.network(f"{s}_default")
        assert network is not None and network.containers == tuple(sorted([probe, *web]))
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")


# ---------------------------------------------------------------------------------------------

FILES = f"""\
    app:
      image: {TEST_IMAGE}
      command:
        - sh
        - -c
        - |
          exec 2>/dev/null  # the report is stdout only (stream merging is test_logs' business)
          echo secret-mode=$$(stat -c %a /run/secrets/db-password)
          echo secret=$$(cat /run/secrets/db-password)
          echo config=$$(cat /etc/app.conf)
          echo x >> /etc/app.conf 2>/dev/null && echo config-write=yes || echo config-write=no
          echo x >> /run/secrets/db-password 2>/dev/null && echo secret-write=yes || echo secret-write=no
          echo report-done
          exec sleep 100000
      init: true
      stop_grace_period: 1s
      configs: [{{source: app-conf, target: /etc/app.conf}}]
      secrets: [db-password]
"""
FILES_TAIL = """\
  configs:
    app-conf: {content: "greeting=hello"}
  secrets:
    db-password: {file: ./db-password.txt}
"""


def test_configs_and_secrets_are_mounted(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    """A secret at /run/secrets/NAME, mode 0400, read-only; a config readable at its target,
    read-only; neither printed by pyapply; a changed secret recreates its users."""
    cli = runtime.cli()
    s = cli.stack
    manifest = write_stack(tmp_path, s, FILES, FILES_TAIL)
    (manifest.parent / "db-password.txt").write_text("hunter2\n")
    try:
        out = cli.ok("-f", str(manifest))
        app = f"{s}-app-1"
        got = report(runtime, app)
        assert got["secret"] == "hunter2"
        assert got["config"] == "greeting=hello"
        assert got["config-write"] == "no" and got["secret-write"] == "no"
        modes = [got["secret-mode"]]
        assert "hunter2" not in out
        assert not any("hunter2" in e for e in runtime.observe.must(app).env)
        shown = cli.ok("get", "-f", str(manifest), "-o", "json")
        assert "hunter2" not in shown

        # a new secret value is drift, and the container that uses it is recreated
        before = runtime.observe.must(app).id
        (manifest.parent / "db-password.txt").write_text("swordfish\n")
        d = cli.run("diff", "-f", str(manifest), "--exit-code")
        assert d.returncode == 2, d.stdout + d.stderr
        assert "swordfish" not in d.stdout + d.stderr
        cli.ok("-f", str(manifest))
        assert runtime.observe.must(app).id != before
        got = report(runtime, app)
        assert got["secret"] == "swordfish", got
        modes.append(got["secret-mode"])
        assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0
        assert modes == ["400", "400"], f"mode of /run/secrets/db-password: {modes}"
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")


# ---------------------------------------------------------------------------------------------

LOGS = f"""\
    talk:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "for i in 1 2 3 4 5; do echo out-$$i; done; sleep 0.3; echo err-6 >&2; exec sleep 100000"]
      init: true
      stop_grace_period: 1s
      deploy: {{replicas: 2}}
    solo:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "echo solo-1; echo solo-2; echo solo-3; exec sleep 100000"]
      init: true
      stop_grace_period: 1s
    split:
      image: {TEST_IMAGE}
      # a stderr line written in two pieces, with a stdout line in between
      command: ["sh", "-c", "printf half- >&2; sleep 0.2; echo out-line; sleep 0.2; echo err-end >&2; exec sleep 100000"]
      init: true
      stop_grace_period: 1s
    ticker:
      image: {TEST_IMAGE}
      command: ["sh", "-c", "i=0; while :; do i=$$((i+1)); echo tick-$$i; sleep 0.5; done"]
      init: true
      stop_grace_period: 1s
"""


def _logs(cli: Cli, manifest: Path, *args: str) -> list[str]:
    return cli.ok("logs", *args, "--file", str(manifest)).splitlines()


def test_logs_command_and_tail(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    """`pyapply logs SERVICE` (stdout and stderr; replicas prefixed with their names),
    `--tail N` (per replica), `-f` (follows new output), and an unknown service."""
    cli = runtime.cli()
    s = cli.stack
    manifest = write_stack(tmp_path, s, LOGS)
    try:
        cli.ok("-f", str(manifest))
        talk = [f"{s}-talk-1", f"{s}-talk-2"]
        lines = [f"out-{i}" for i in range(1, 6)] + ["err-6"]

        def printed(name: str, line: str) -> Callable[[], bool]:
            return lambda: line in runtime.observe.logs(name)

        for name in talk:
            wait_for(f"{name}'s output", printed(name, "err-6"))
        assert _logs(cli, manifest, "talk") == [f"{n} | {line}" for n in talk for line in lines]
        assert _logs(cli, manifest, "talk", "--tail", "2") == [
            f"{n} | {line}" for n in talk for line in lines[-2:]
        ]
        wait_for("solo's output", printed(f"{s}-solo-1", "solo-3"))
        assert _logs(cli, manifest, "solo") == ["solo-1", "solo-2", "solo-3"]
        assert _logs(cli, manifest, "solo", "--tail", "1") == ["solo-3"]
        assert runtime.observe.logs(f"{s}-solo-1", tail=2).split() == ["solo-2", "solo-3"]

        # each stream's lines stay whole, even when written in pieces between the other's
        wait_for("split's output", printed(f"{s}-split-1", "err-end"))
        assert sorted(_logs(cli, manifest, "split")) == ["half-err-end", "out-line"]

        missing = cli.run("logs", "nope", "--file", str(manifest))
        assert missing.returncode == 1
        assert "no containers of service nope" in missing.stderr + missing.stdout

        # -f: lines written after the command started arrive while it runs
        proc = subprocess.Popen(
            [PYAPPLY, "logs", "ticker", "--file", str(manifest), "-f", "--tail", "1"],
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        got: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                got.put(line.rstrip("\n"))

        threading.Thread(target=pump, daemon=True).start()
        try:
            seen: list[str] = []
            deadline = time.monotonic() + 20
            while len(seen) < 4 and time.monotonic() < deadline:
                try:
                    seen.append(got.get(timeout=1))
                except queue.Empty:
                    assert proc.poll() is None, f"logs -f exited: {seen}"
            assert len(seen) >= 4, seen
            numbers = [int(line.removeprefix("tick-")) for line in seen]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), seen
            assert proc.poll() is None  # still following
        finally:
            proc.kill()
            proc.wait(timeout=10)
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")


# ---------------------------------------------------------------------------------------------

LIMITS = f"""\
    box:
      image: {TEST_IMAGE}
      command:
        - sh
        - -c
        - |
          echo nofile-soft=$$(ulimit -n)
          echo nofile-hard=$$(ulimit -Hn)
          echo memory=$$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)
          echo pids=$$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)
          q=$$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null) && echo cpu=$$q/$$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us) || echo cpu=$$(cat /sys/fs/cgroup/cpu.max | tr ' ' /)
          touch /rootfs-probe 2>/dev/null && echo rootfs=rw || echo rootfs=ro
          echo hi > /scratch/f && echo scratch=$$(cat /scratch/f) || echo scratch=failed
          echo scratch-mount=$$(grep ' /scratch ' /proc/mounts)
          echo report-done
          exec sleep 100000
      init: true
      stop_grace_period: 1s
      read_only: true
      tmpfs: ["/scratch:size=1m"]
      ulimits: {{nofile: {{soft: 1024, hard: 2048}}}}
      deploy: {{resources: {{limits: {{memory: 48m, pids: 50, cpus: "0.25"}}}}}}
"""


def test_tmpfs_read_only_ulimits_and_limits_inside(
    runtime: RuntimeUnderTest, tmp_path: Path
) -> None:
    cli = runtime.cli()
    s = cli.stack
    manifest = write_stack(tmp_path, s, LIMITS)
    try:
        cli.ok("-f", str(manifest))
        box = f"{s}-box-1"
        got = report(runtime, box)
        assert (got["nofile-soft"], got["nofile-hard"]) == ("1024", "2048"), got
        assert got["memory"] == str(48 * 1024 * 1024), got
        assert got["pids"] == "50", got
        quota, period = (int(x) for x in got["cpu"].split("/"))
        assert quota * 4 == period, got  # cpus: 0.25
        assert got["rootfs"] == "ro", got
        assert got["scratch"] == "hi", got
        mount = got["scratch-mount"].split()
        assert mount[:3] == ["tmpfs", "/scratch", "tmpfs"], got
        assert "size=1024k" in mount[3].split(","), got
        assert runtime.observe.must(box).memory_bytes == 48 * 1024 * 1024
        assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0
    finally:
        cli.run("down", "-f", str(manifest), "--volumes")


# ---------------------------------------------------------------------------------------------

EXTRA_HOSTS = f"""\
    box:
      image: {TEST_IMAGE}
      command: ["sleep", "1000"]
      init: true
      stop_grace_period: 1s
      extra_hosts: ["db.example:10.1.2.3", "gw:host-gateway"]
"""


def test_extra_hosts_are_in_etc_hosts(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    """extra_hosts lines (and docker's host-gateway, the host's address as the container
    sees it) land in /etc/hosts on both runtimes."""
    manifest = write_stack(tmp_path, runtime.stack, EXTRA_HOSTS)
    cli = runtime.cli()
    try:
        cli.ok("-f", str(manifest))
        code, hosts = runtime.exec(f"{runtime.stack}-box-1", "cat", "/etc/hosts")
        assert code == 0, hosts
        entries = {}
        for line in hosts.splitlines():
            fields = line.split()
            if len(fields) >= 2 and not line.startswith("#"):
                for name in fields[1:]:
                    entries.setdefault(name, fields[0])
        assert entries.get("db.example") == "10.1.2.3", hosts
        gateway = entries.get("gw", "")
        assert gateway.count(".") == 3 and gateway != "host-gateway", hosts
        code, out = runtime.exec(f"{runtime.stack}-box-1", "ping", "-c1", "-W2", "gw")
        assert code == 0, out  # the host answers on that address
    finally:
        cli.run("down", "-f", str(manifest))
