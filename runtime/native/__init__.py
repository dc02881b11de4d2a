"""The native, daemonless runtime: OCI images, overlayfs, runc, netlink networking.

Built in parts (issue 3), each usable and tested on its own:
- images.py, registry.py, layers.py: the content-addressed image store, the OCI distribution
  client (anonymous, basic, bearer token; manifest lists) and safe layer unpacking;
- oci.py (the pure OCI spec builder), rootfs.py (overlayfs), supervise.py (runc + conmon),
  health.py (the healthcheck runner), containers.py (the ContainerManager tying them);
- network.py, ipam.py, firewall.py: bridges, veths, persistent IPAM, NAT, published ports,
  isolation, managed /etc/hosts.
driver.py (NativeRuntime) puts them behind `runtime.base.Runtime`, with named volumes and a
network namespace per container (PYAPPLY_RUNTIME=native, the default runtime).
"""

from __future__ import annotations

import hashlib
import os


def root_tag(root: str | os.PathLike[str]) -> str:
    """8 hex digits naming a state root in host-wide names (interface aliases, netns names,
    cgroups), so that two roots on one host never share one."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:8]
