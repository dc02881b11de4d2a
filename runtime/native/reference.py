"""Image references, platforms and manifest media types: what the image store and the
registry client both speak.

Apart from the client (registry.py) so that looking an image up in the store -- what a no-op
apply does for every image it runs -- never loads the HTTP client's modules and classes.

- References: `busybox` -> `docker.io/library/busybox:latest`; `host[:port]/a/b:tag`,
  `name@sha256:...`. A first component with a `.` or `:`, or `localhost`, is a registry.
- Platforms: `os/arch[/variant]`, with the architecture names `uname` and Go use taken as
  one, and the best fit of an index for a wanted platform.
"""

from __future__ import annotations

import platform as _platform
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from pyapply.runtime.base import NotFound, PermanentError
from pyapply.runtime.native.layers import check_digest

DOCKER_HUB = "docker.io"

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (MT_DOCKER_MANIFEST, MT_OCI_MANIFEST)
INDEX_TYPES = (MT_DOCKER_LIST, MT_OCI_INDEX)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DOMAIN_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")


# ---------------------------------------------------------------------------------------------
# References


class Reference(msgspec.Struct, frozen=True):
    registry: str  # host[:port], "docker.io" for Docker Hub
    repository: str  # "library/busybox"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, e.g. docker.io/library/busybox."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)


def parse_reference(ref: str) -> Reference:
    """Parse an image reference; PermanentError when it is not one."""
    text = ref.strip()
    if not text:
        raise PermanentError("empty image reference")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        try:
            check_digest(digest)
        except PermanentError:
            raise PermanentError(f"invalid image reference {ref!r}: bad digest") from None
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise PermanentError(f"invalid image reference {ref!r}: bad tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise PermanentError(f"invalid image reference {ref!r}: bad registry {registry!r}")
    else:
        registry, path = DOCKER_HUB, rest
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if not _PATH_RE.match(path):
        raise PermanentError(
            f"invalid image reference {ref!r}: repository names are lowercase letters, "
            "digits and separators"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)


def normalize_ref(ref: str) -> str:
    return str(parse_reference(ref))


# ---------------------------------------------------------------------------------------------
# Platforms

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "arm",
    "armv7l": "arm",
    "armv7": "arm",
    "armv6l": "arm",
    "armhf": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class Platform(msgspec.Struct, frozen=True):
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) < 2 or len(parts) > 3 or not all(parts):
        raise PermanentError(f"invalid platform {text!r}: expected os/arch[/variant]")
    arch = _ARCH_ALIASES.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    machine = _platform.machine().lower()
    arch = _ARCH_ALIASES.get(machine, machine)
    variant = None
    if arch == "arm64":
        variant = "v8"
    elif arch == "arm":
        variant = {"armv6l": "v6"}.get(machine, "v7")
    return Platform("linux", arch, variant)


def _variant_rank(want: Platform, got: str | None) -> int | None:
    """How well a manifest's variant fits: 0 exact, 1 unspecified, 2+ older compatible
    (arm v7 runs v6/v5), None not usable."""
    if got == want.variant:
        return 0
    if not got or not want.variant:
        return 1
    if want.architecture == "arm" and got.startswith("v") and want.variant.startswith("v"):
        try:
            w, g = int(want.variant[1:]), int(got[1:])
        except ValueError:
            return None
        return 2 + (w - g) if g < w else None
    return None


def select_platform(index: Mapping[str, Any], want: Platform) -> dict[str, Any]:
    """The manifest descriptor of an index/manifest list that fits `want` best."""
    best: tuple[int, dict[str, Any]] | None = None
    seen: list[str] = []
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        os_, arch = plat.get("os", ""), plat.get("architecture", "")
        seen.append("/".join(p for p in (os_, arch, plat.get("variant")) if p))
        if os_ != want.os or _ARCH_ALIASES.get(arch, arch) != want.architecture:
            continue
        rank = _variant_rank(want, plat.get("variant"))
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, desc)
    if best is None:
        raise NotFound(
            f"no image for platform {want} in the index (it has: {', '.join(seen) or 'none'})"
        )
    return best[1]
