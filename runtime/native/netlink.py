"""pyroute2, imported on first use.

Importing the pyroute2 package costs about 200 ms, because its __init__ loads all of its
parts (NDB, IPDB, conntrack ...), whatever one asks for. Reading the native runtime's state
(a no-op apply, `diff`, `get`) never talks netlink, so the modules that do go through these
wrappers, and the package is imported by the first call that needs the kernel.
"""

from __future__ import annotations

from typing import Any


def IPRoute(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import IPRoute as cls  # type: ignore[import-untyped]

    return cls(*args, **kwargs)


def NetNS(*args: Any, **kwargs: Any) -> Any:
    from pyroute2 import NetNS as cls

    return cls(*args, **kwargs)


def netlink_error() -> Any:
    """pyroute2's NetlinkError, for `except netlink_error() as e:` (evaluated only when an
    exception is being handled, by which time pyroute2 has been imported)."""
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    return NetlinkError


def netns_create(name: str) -> None:
    """Make the named network namespace /run/netns/NAME."""
    from pyroute2 import netns

    netns.create(name)


def netns_attach(name: str, pid: int) -> None:
    """Make /run/netns/NAME the network namespace of process `pid` (a bind mount of its
    /proc/PID/ns/net, as `netns_create` makes for a new one)."""
    from pyroute2 import netns

    netns.attach(name, pid)


def netns_remove(name: str) -> None:
    from pyroute2 import netns

    netns.remove(name)
