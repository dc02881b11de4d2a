"""The everyday commands through the real CLI, on both runtimes: global options before the
command name, `ps`, `exec` (output, exit code passed through, and `-it` on a pseudo-terminal
driven like a person at a keyboard), `run` (a one-off with the service's env, no drift,
removed afterwards), `top`, `events` (a stop shows up) and `restart` (rolling, one replica at
a time, as update_config says)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.runtimes import PYAPPLY, RuntimeUnderTest

pytestmark = pytest.mark.e2e

STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    web:
      image: pyapply-test/busybox:latest
      init: true
      stop_grace_period: 1s
      command: ["sleep", "1000"]
      environment: {GREETING: hello-from-env}
      deploy:
        replicas: 2
        update_config: {parallelism: 1, delay: 300ms}
      networks: [front]
  networks: {front: {}}
"""


def _manifest(tmp_path: Path) -> str:
    path = tmp_path / "stack.yaml"
    path.write_text(STACK)
    return str(path)


def _when(stamp: str | None) -> datetime:
    """An ISO start time, docker's nanoseconds cut to Python's microseconds."""
    assert stamp, "no start time"
    m = re.fullmatch(r"(.*?T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", stamp)
    assert m, stamp
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) in (None, "Z") else m.group(3)
    return datetime.fromisoformat(m.group(1) + frac + zone).astimezone(UTC)


def test_exec_run_top_ps_events_restart(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    cli = runtime.cli()
    cli.ok("-f", m)
    s = runtime.stack
    web1, web2 = f"{s}-web-1", f"{s}-web-2"

    # global options before the command name (the example), and ps as get
    out = cli.ok("--runtime", runtime.name, "--root", str(runtime.root), "ps", "-f", m)
    assert web1 in out and web2 in out and "running" in out, out
    out = cli.ok("--runtime", runtime.name, "diff", "-f", m, "--exit-code")

    # exec: stdout, the service's env, the exit code passed through, --index
    res = cli.run("exec", "-f", m, "web", "sh", "-c", "echo out-$GREETING; exit 3")
    assert res.returncode == 3, res
    assert res.stdout == "out-hello-from-env\n", res
    res = cli.run("exec", "--index", "2", "-f", m, "web", "sh", "-c", "cat /proc/1/cmdline")
    assert res.returncode == 0 and "sleep" in res.stdout, res
    piped = subprocess.run(  # -i: stdin passed on, its end seen as the end of input
        [PYAPPLY, "exec", "-i", "-f", m, "web", "sh", "-c", "cat; echo; echo end"],
        input="typed in\n",
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and piped.stdout == "typed in\n\nend\n", piped
    res = cli.run("exec", "--index", "3", "-f", m, "web", "true")
    assert res.returncode == 1 and "has no replica 3" in res.stderr, res

    # top: the known process of each replica
    out = cli.ok("top", "-f", m, "web")
    assert len(re.findall(r"\d\s+sleep 1000$", out, re.M)) == 2, out  # the CMD column
    assert web1 in out and web2 in out, out

    # run: a one-off with the service's env, its exit code, removed afterwards
    res = cli.run("run", "-f", m, "web", "sh", "-c", "echo run-$GREETING; exit 4")
    assert res.returncode == 4, res
    assert "run-hello-from-env" in res.stdout, res
    assert runtime.observe.all_container_names(f"{s}-web-run-") == []
    # kept with --no-rm: on the stack's network, yet no replica and no drift
    res = cli.run("run", "--no-rm", "-f", m, "web", "true")
    assert res.returncode == 0, res
    kept = runtime.observe.all_container_names(f"{s}-web-run-")
    assert len(kept) == 1, kept
    assert runtime.observe.must(kept[0]).networks == (f"{s}_front",)
    res = cli.run("diff", "-f", m, "--exit-code")
    assert res.returncode == 0, res
    runtime.rt.remove_container(kept[0])

    # events: a stop done by hand shows up in the stream
    events = subprocess.Popen(
        [PYAPPLY, "events", "-f", m, "-o", "json"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.5)  # subscribed (the native stream polls from its start)
        runtime.by_hand.stop(web2, timeout=1)
        seen = _read_until(events, lambda doc: doc["name"] == web2, timeout=15)
        assert seen["action"] in ("die", "stop", "kill"), seen
        assert seen["service"] == "web" and seen["stack"] == s, seen
    finally:
        events.send_signal(signal.SIGINT)
        try:
            events.wait(timeout=10)
        except subprocess.TimeoutExpired:
            events.kill()
            events.wait()

    # restart: both replicas start again, one after the other, `delay` apart
    before = {n: _when(runtime.observe.must(n).started_at) for n in (web1,)}
    out = cli.ok("restart", "-f", m, "web")
    assert out.splitlines() == [f"restarted {web1}", f"restarted {web2}"], out
    after = {n: _when(runtime.observe.must(n).started_at) for n in (web1, web2)}
    assert after[web1] > before[web1]
    assert runtime.observe.running(web1) and runtime.observe.running(web2)
    gap = (after[web2] - after[web1]).total_seconds()
    assert gap >= 0.25, f"web-2 started {gap:.3f}s after web-1: not one at a time"
    res = cli.run("diff", "-f", m, "--exit-code")
    assert res.returncode == 0, res


def _read_until(proc: subprocess.Popen[bytes], want: object, timeout: float) -> dict[str, str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            doc = json.loads(line)
            if want(doc):  # type: ignore[operator]
                return doc  # type: ignore[no-any-return]
    err = proc.stderr.read1() if proc.stderr is not None and proc.poll() is not None else b""
    pytest.fail(f"no matching event within {timeout}s; stderr: {err!r}")


def test_exec_it_on_a_pseudo_terminal(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    cli = runtime.cli()
    cli.ok("-f", m)
    pid, fd = pty.fork()
    if pid == 0:  # the child: pyapply on the pty's slave, as in a terminal
        os.execve(PYAPPLY, [PYAPPLY, "exec", "-it", "-f", m, "web", "sh"], cli.env)
    try:
        out = _pty_until(fd, b"# ", timeout=30)  # busybox sh's prompt, as root
        os.write(fd, b"tty; echo marker-$((40+2))\r")
        out += _pty_until(fd, b"marker-42", timeout=15)
        os.write(fd, b"exit 5\r")
        out += _pty_until(fd, None, timeout=15)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    text = out.decode(errors="replace")
    assert "tty; echo marker-$((40+2))" in text, text  # the typed line echoed back
    assert re.search(r"/dev/pts/\d+", text), text  # the command ran on a terminal
    assert os.waitstatus_to_exitcode(status) == 5, text

    # -t alone, with no terminal here: the command still gets one; a missing command fails
    res = cli.run("exec", "-t", "-f", m, "web", "sh", "-c", "tty; exit 7")
    assert res.returncode == 7 and re.search(r"/dev/pts/\d+", res.stdout), res
    res = cli.run("exec", "-t", "-f", m, "web", "no-such-command")
    assert res.returncode == 126 and "no-such-command" in res.stderr + res.stdout, res


def _pty_until(fd: int, want: bytes | None, timeout: float) -> bytes:
    """Read the pty master until `want` appears (None: until it closes)."""
    deadline = time.monotonic() + timeout
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed its terminal
            chunk = b""
        if not chunk:
            if want is None:
                return out
            break
        out += chunk
        if want is not None and want in out:
            return out
    pytest.fail(f"timed out waiting for {want!r} on the terminal; got {out!r}")
