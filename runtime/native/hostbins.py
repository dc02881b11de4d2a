"""The host programs the native runtime executes, each with the Debian package that brings it.

This is the one list. Three readers depend on it:
- the runtime, to find a program and, when it is missing, to say which package to install;
- `scripts/setup.sh --native`, which installs every package named here (it runs this file with
  the system's python3, before the virtualenv exists, so it imports only the standard library);
- `tests/unit/runtime/test_hostbins.py`, which fails when the code runs a program that is not listed
  here, or when a listed path is not the listed package's on this machine.

A new program the runtime runs goes here first; `make test` fails until it does.
"""

from __future__ import annotations

import os
import sys

# a dataclass, not a msgspec Struct like every other value type: scripts/setup.sh runs this
# file with the system's python, before the virtualenv (and msgspec) exists
from dataclasses import dataclass


@dataclass(frozen=True)
class HostBinary:
    """A program on the host: where Debian puts it and which package puts it there."""

    name: str
    paths: tuple[str, ...]  # candidates, in order of preference; the first executable wins
    package: str
    needed_for: str

    def find(self) -> str | None:
        """The first candidate that is an executable regular file, or None."""
        for path in self.paths:
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        return None

    def missing(self) -> str:
        """What to tell a person when none of the candidates is there."""
        where = ", ".join(self.paths)
        return (
            f"{self.name} is needed {self.needed_for} but is not installed "
            f"(looked for {where}); install it with `apt-get install {self.package}`"
        )


RUNC = HostBinary("runc", ("/usr/sbin/runc",), "runc", "to run containers")
CONMON = HostBinary("conmon", ("/usr/bin/conmon",), "conmon", "to supervise containers")
# Bind-mounted into the container as its pid 1, so it must be a static build: Debian's tini
# package has one; docker.io's docker-init is a copy of the same program.
INIT = HostBinary(
    "tini",
    ("/usr/bin/tini-static", "/usr/bin/docker-init"),
    "tini",
    "for `init: true`",
)
IPTABLES = HostBinary(
    "iptables", ("/usr/sbin/iptables",), "iptables", "for NAT, published ports and isolation"
)
IPTABLES_SAVE = HostBinary(
    "iptables-save",
    ("/usr/sbin/iptables-save",),
    "iptables",
    "to check that the firewall rules of networks are still there",
)
IPTABLES_RESTORE = HostBinary(
    "iptables-restore",
    ("/usr/sbin/iptables-restore",),
    "iptables",
    "to add the firewall rules of networks and published ports",
)
# podman's DNS server for containers (runtime/native/dns.py); Debian puts it beside podman's
# other helpers, outside PATH
AARDVARK = HostBinary(
    "aardvark-dns",
    ("/usr/lib/podman/aardvark-dns",),
    "aardvark-dns",
    "to resolve container names by DNS on networks",
)
GIT = HostBinary("git", ("/usr/bin/git",), "git", "to name revisions of manifests kept in git")

# the agent's git source (`pyapply watch --repo`) reaches ssh:// repositories through it
SSH = HostBinary("ssh", ("/usr/bin/ssh",), "openssh-client", "to fetch git repositories over ssh")

HOST_BINARIES: tuple[HostBinary, ...] = (
    RUNC,
    CONMON,
    INIT,
    IPTABLES,
    IPTABLES_SAVE,
    IPTABLES_RESTORE,
    AARDVARK,
    GIT,
    SSH,
)


def packages() -> list[str]:
    """The Debian packages that bring every host program, without repeats."""
    return list(dict.fromkeys(b.package for b in HOST_BINARIES))


if __name__ == "__main__":
    # `python3 runtime/native/hostbins.py packages`: what setup.sh installs for the runtime
    if sys.argv[1:] != ["packages"]:
        print("usage: hostbins.py packages", file=sys.stderr)
        sys.exit(2)
    print("\n".join(packages()))
