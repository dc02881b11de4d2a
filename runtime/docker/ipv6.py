"""What dockerd does for IPv6 networks that pyapply cannot do for it.

dockerd (20.10) makes a dual-stack network from the Engine API alone (EnableIPv6 and an
IPv6 IPAM pool) and publishes ports on IPv6 through its userland proxy, but it writes
ip6tables rules (its isolation between networks, its NAT) only when it runs with
`--ip6tables` (experimental in 20.10, a daemon setting). Without them the host forwards
IPv6 between docker's networks: a container of one network reaches the containers of
another over IPv6. pyapply never changes dockerd's settings or rules, so it says so when a
stack asks for IPv6 on docker (reconciler/cli/common.py), unless it can see that dockerd
has its ip6tables rules.

dockerd 20.10 has no IPv6 pool of its own to choose from (unless its daemon.json gives
`default-address-pools` with one), so a network with `enable_ipv6` and no IPv6 subnet gets
a unique local /64 (RFC 4193) hashed from its name, as the native runtime gives one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from ipaddress import IPv6Network

GAP = (
    "on docker, networks are isolated from each other over IPv6 only when dockerd runs "
    'with ip6tables on (`--ip6tables`, or "ip6tables": true in daemon.json; experimental '
    "in 20.10); without it, containers of other networks reach this one's IPv6 addresses"
)


def dockerd_isolates_ipv6() -> bool | None:
    """Whether the local dockerd keeps ip6tables rules (its DOCKER chain is in ip6tables);
    None when that cannot be seen (a remote DOCKER_HOST, no ip6tables, not root)."""
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return None
    tool = shutil.which("ip6tables")
    if tool is None or os.geteuid() != 0:
        return None
    try:
        proc = subprocess.run(
            [tool, "-w", "-S", "DOCKER"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.returncode == 0


def ula_subnet(name: str) -> IPv6Network:
    """The unique local /64 of network `name` (fd00::/8, a 40-bit global ID hashed from the
    name, subnet ID 0)."""
    global_id = hashlib.sha256(f"docker\0{name}".encode()).digest()[:5]
    return IPv6Network((int.from_bytes(b"\xfd" + global_id + b"\0\0", "big") << 64, 64))
