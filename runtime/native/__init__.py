"""The native, daemonless runtime: OCI images, overlayfs, runc, netlink networking.

Built in parts (issue 3), each usable and tested on its own:
- images.py, registry.py, layers.py: the content-addressed image store, the OCI distribution
  client (anonymous, basic, bearer token; manifest lists) and safe layer unpacking;
- oci.py (the pure OCI spec builder), rootfs.py (overlayfs), supervise.py (runc + conmon),
  health.py (the healthcheck runner), containers.py (the ContainerManager tying them);
- network.py, ipam.py, firewall.py: bridges, veths, persistent IPAM, NAT, published ports,
  isolation, managed /etc/hosts.
driver.py (NativeRuntime) puts them behind `runtime.base.Runtime`, with named volumes and a
network namespace per container (PYAPPLY_RUNTIME=native; docker stays the default).
"""
