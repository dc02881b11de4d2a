"""The newcomer's path: the README's `make demo` on a fresh Debian 12 system.

scripts/fresh-machine.sh makes one (a debootstrap'd base with only python3, python3-venv, git,
make, curl and ca-certificates; cached between runs), enters it as a plain chroot as
../shared/tools/fresh-machine does, and runs the command below in a copy of this checkout
there. Any install step that passes on this machine only because an earlier
run installed a package fails here: that is how the missing init binary (tini) went unseen.

The fresh system shares this host's kernel and network, under its own state root
(/var/lib/pyapply-fresh), so its page answers on the host's loopback and what it leaves in
the kernel can be looked for from here afterwards.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyapply.runtime.native import firewall, root_tag
from pyapply.runtime.native.network import NetworkManager
from tests.e2e.helpers import REPO_ROOT
from tests.e2e.runtimes import free_port, links_of

pytestmark = pytest.mark.e2e

INNER_ROOT = "/var/lib/pyapply-fresh"
SCRIPT = REPO_ROOT / "scripts" / "fresh-machine.sh"

# What runs inside, in the project directory. Each step prints a marker the test reads.
STEPS = r"""
set -u
fresh=yes
for p in runc conmon tini iptables busybox-static docker.io; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' && fresh="no ($p)"
done
echo "FRESH: $fresh"
make demo || { echo "DEMO1: failed"; exit 1; }
echo "DEMO1: ok"
echo "PAGE: $(curl -fsS --max-time 5 "http://127.0.0.1:$DEMO_PORT/")"
make demo || { echo "DEMO2: failed"; exit 1; }
echo "DEMO2: ok"
.venv/bin/pyapply diff -f manifests/demo/ --exit-code >/dev/null
echo "DRIFT: $?"
echo "ROOT: $(.venv/bin/pyapply exec -f manifests/demo/ worker ls / | tr '\n' ' ')"
"""


def _leftovers() -> list[str]:
    """What of the fresh system's state root is still in the kernel or running."""
    nm = NetworkManager(INNER_ROOT)
    out = links_of(nm)
    comment = firewall.network_comment(nm.bridge_name("demo_private"))
    rules = subprocess.run(
        ["iptables-save"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    out += [f"rule: {line}" for line in rules.splitlines() if comment in line]
    tag = root_tag(INNER_ROOT)
    out += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"**/pyapply/{tag}")]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if INNER_ROOT in args or "/var/tmp/pyapply-fresh." in args:
                out.append(f"process {proc.name}: {args[:160]}")
    return out


def test_make_demo_on_a_fresh_debian_12() -> None:
    assert os.geteuid() == 0, "the fresh-machine check needs root (mounts, pivot_root)"
    assert not Path(INNER_ROOT).exists(), f"{INNER_ROOT} is used on this host: pick another"
    before = _leftovers()
    port = free_port()
    proc = subprocess.run(
        [str(SCRIPT), "bash", "-c", STEPS],
        env={**os.environ, "DEMO_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    said = proc.stdout + proc.stderr
    tail = said[-4000:]
    keys = ("FRESH", "DEMO1", "PAGE", "DEMO2", "DRIFT", "ROOT")
    marks = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(keys))
    assert marks.get("FRESH") == "yes", tail  # the base system really lacked them
    assert marks.get("DEMO1") == "ok", tail
    assert "hello from pyapply" in marks.get("PAGE", ""), tail
    assert marks.get("DEMO2") == "ok", tail
    second = said.split("DEMO1: ok", 1)[1]
    assert "no changes: the live state matches the manifests" in second, tail
    assert "imported" in second  # the image import is idempotent too: same id
    assert marks.get("DRIFT") == "0", tail
    # entered as a plain chroot ("/" not a mount point), an exec still joins the container's
    # own root: busybox's, with the demo's volume, not the fresh system's or the host's
    root = marks.get("ROOT", "").split()
    assert "site" in root and "bin" in root and "root" in root, tail
    assert not {"project", "boot", "srv", "work"} & set(root), tail
    assert proc.returncode == 0, tail
    # nothing of the fresh system's root is left, and the check itself left nothing
    assert _leftovers() == before == []
    assert not Path(INNER_ROOT).exists()
