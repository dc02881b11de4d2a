"""A dockerd of a test's own: its own data root, exec root (and so its own containerd), socket
and pid file, started, restarted and stopped by the test, by its pid.

Two uses:
- in a network namespace the test made (`netns=`): a daemon free to manage iptables there,
  as the between-runtimes isolation test needs;
- in the host's namespace (`netns=None`): a daemon a test may restart, for a test that can
  leave dockerd in a state only a restart clears (dockerd 20.10 can keep a stale endpoint
  count after a killed client, see the kill test). It must then keep its hands off what the
  host's own dockerd manages: no iptables rules (`--iptables=false`, published ports go
  through docker-proxy), no masquerading, no ip_forward sysctl, and its default bridge is one
  the test makes and removes (`--bridge=pyapd...`). Not `--bridge=none`: with that, dockerd
  deletes the host's `docker0` at start ("remove the default bridge interface").
  And `--live-restore`: dockerd 20.10 also deletes the interface named `docker0`, whatever
  `--bridge` says, when it starts with default address pools and finds its default network
  of an earlier run in its store, that is at every restart, unless live restore is on. So
  the daemon runs with live restore, and its stop stops its containers first, as a stop
  without live restore does (a restart must find none running, or it keeps their network
  state, which is what a restart is for).
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from pyroute2 import IPRoute  # type: ignore[import-untyped]

# What keeps a daemon in the host's namespace away from the host dockerd's objects (and its
# own bridge, see the module doc).
# Its networks come from a pool of their own: a daemon's bridge left by a killed run must
# never hold a range the host's dockerd uses (one that held 172.17.0.0/16 once took the
# route of the host's docker0).
HOST_NAMESPACE_ARGS = (
    "--iptables=false",
    "--ip-masq=false",
    "--ip-forward=false",
    "--default-address-pool=base=10.213.0.0/16,size=24",
    # with the pool above, the only thing that keeps a restart off the host's docker0
    "--live-restore",
)


class PrivateDockerd:
    """A dockerd of the test's own (see the module doc). `base` holds its roots, socket, pid
    file and log; None makes a short temporary directory (a UNIX socket path is limited to
    107 bytes), removed by `remove()`."""

    def __init__(self, base: Path | None = None, netns: str | None = None) -> None:
        self.made_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="pyapd-")) if base is None else base
        self.base.chmod(0o700)
        self.netns = f"/run/netns/{netns}" if netns else None
        self.url = f"unix://{self.base}/docker.sock"
        self.sock = self.url  # the name the isolation test uses
        self.log = self.base / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        # the default bridge of a daemon in the host's namespace: made on the first start
        self.bridge = f"pyapd{uuid.uuid4().hex[:8]}" if netns is None else None
        self.bridge_made = False

    def argv(self) -> list[str]:
        daemon = [
            "dockerd",
            f"--data-root={self.base}/data",
            f"--exec-root={self.base}/exec",
            f"--pidfile={self.base}/dockerd.pid",
            f"--host={self.url}",
            "--log-level=warn",
        ]
        if self.netns is None:
            return [*daemon, *HOST_NAMESPACE_ARGS, f"--bridge={self.bridge}"]
        # nsenter execs dockerd: the pid is dockerd's
        return ["nsenter", f"--net={self.netns}", *daemon, "--iptables=true"]

    def start(self, timeout_s: float = 60) -> None:
        if self.bridge is not None and not self.bridge_made:
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.bridge, kind="bridge")
                self.bridge_made = True
                ipr.link("set", index=ipr.link_lookup(ifname=self.bridge)[0], state="up")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"dockerd exited:\n{self.log_tail()}"
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"dockerd did not answer in {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Its containers stopped (see the module doc: live restore would leave them
        running), then SIGTERM (dockerd stops containerd), then SIGKILL after 60 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        running = self.docker("ps", "-q", check=False).stdout.split()
        if running:
            self.docker("stop", "--time", "10", *running, check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def remove(self) -> None:
        """Stop the daemon, remove its bridge and the directory this object made (its data
        root too)."""
        self.stop()
        if self.bridge_made:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.bridge)
                if found:
                    ipr.link("del", index=found[0])
            self.bridge_made = False
        if self.made_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return "(no log)"

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", "-H", self.url, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"docker {shlex.join(args)}: {proc.stderr}"
        return proc

    def load(self, archive: Path) -> None:
        """Load an image archive made by `docker save`."""
        self.docker("load", "-i", str(archive))

    def inspect(self, container: str, template: str) -> str:
        return self.docker("inspect", "-f", template, container).stdout.strip()
