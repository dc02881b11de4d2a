"""The native, daemonless runtime: OCI images, overlayfs, runc, netlink networking.

Built in parts (issue 3): images.py (image store), oci.py/rootfs.py/supervise.py (containers),
network.py (bridges, veth, IPAM, NAT). The Runtime driver that ties them together comes last.
"""
