"""A build's scratch space: `<root>/build/tmp/<id>/` (overlay mounts of COPY steps, layer
tars) and its RUN containers, named `build-<id>-<n>` in the root's ContainerManager.

The directory is flock()ed while its build runs. A build killed half-way (SIGKILL, a
reboot) leaves its directory unlocked, maybe with mounts and containers; the next build
sweeps them: containers removed (process, cgroup, overlay), mounts unmounted, dirs deleted.
A build that ends in any other way cleans its own on the way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path
from types import TracebackType

from pyapply.runtime.base import RuntimeFailure
from pyapply.runtime.native import rootfs
from pyapply.runtime.native.containers import ContainerManager
from pyapply.runtime.statefs import private_dir, rmtree

PREFIX = "build-"


class Workspace:
    def __init__(self, build_dir: Path, containers: ContainerManager) -> None:
        self.tmp_root = build_dir / "tmp"
        self.id = secrets.token_hex(6)
        self.dir = self.tmp_root / self.id
        self.containers = containers
        self._fd: int | None = None
        self._n = 0

    def container_name(self) -> str:
        self._n += 1
        return f"{PREFIX}{self.id}-{self._n}"

    def __enter__(self) -> Workspace:
        private_dir(self.tmp_root)
        self.sweep()
        private_dir(self.dir)
        self._fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._clear(self.id)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _live(self) -> set[str]:
        """The ids of the builds running now (their directories are locked)."""
        live: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.tmp_root):
                try:
                    fd = os.open(self.tmp_root / entry, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    live.add(entry)
                finally:
                    os.close(fd)
        return live

    def sweep(self) -> None:
        """Remove what killed builds left (never what a running build uses)."""
        live = self._live()
        left: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            left.update(e for e in os.listdir(self.tmp_root) if e not in live)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.containers.containers_dir):
                if name.startswith(PREFIX):
                    build_id = name[len(PREFIX) :].partition("-")[0]
                    if build_id not in live:
                        left.add(build_id)
        for build_id in sorted(left):
            self._clear(build_id)

    def _clear(self, build_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.containers.containers_dir):
                if name.startswith(f"{PREFIX}{build_id}-"):
                    with contextlib.suppress(RuntimeFailure):
                        self.containers.remove(name)
        d = self.tmp_root / build_id
        for mount in sorted(d.glob("*/rootfs"), reverse=True):
            with contextlib.suppress(RuntimeFailure):
                rootfs.unmount(mount)
        if not any(str(m).startswith(str(d) + "/") for m in rootfs.mountpoints()):
            rmtree(d)  # never delete through a mount that would not go
