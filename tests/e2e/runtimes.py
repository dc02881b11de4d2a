"""The runtimes the end-to-end suite runs on, behind one test-side interface.

Every converted e2e test takes the `runtime` fixture (conftest.py), parametrised over
RUNTIME_NAMES, and gets a `RuntimeUnderTest`:

- `name`, `stack` (a fresh stack name), `root` (a private state root), `env` (the
  environment of the real CLI: PYAPPLY_RUNTIME and PYAPPLY_ROOT always set explicitly);
- `observe`: runtime-neutral questions answered through the Runtime protocol
  (`open_runtime(name, root=...)`): containers, networks, volumes of a stack, logs;
- `by_hand`: what a user does out of band -- stop a container, kill its process, remove it,
  disconnect it from a network -- on docker with the Docker SDK, on native with the
  NativeRuntime's own public methods or the kernel (a signal to the container's process);
- `exec`: run a command inside a container (`docker exec`, `runc exec`);
- `cleanup()`: remove whatever the stack left, then list what could not be removed and, on
  native, the kernel objects of the state root still there (bridges, veths, network
  namespaces, overlay mounts, iptables rules, cgroups, processes). The fixture fails the
  test on any of them.

Nothing here depends on pytest, so it can be used from a REPL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker.errors
from pyroute2 import IPRoute, netns  # type: ignore[import-untyped]

from pyapply.runtime.base import ContainerState, NetworkState, Runtime, VolumeState
from pyapply.runtime.drivers import open_runtime
from tests.e2e.helpers import REPO_ROOT, STACK_LABEL, cleanup_stack

RUNTIME_NAMES = ("docker", "native")
PYAPPLY = str(Path(sys.executable).parent / "pyapply")
WEBDB = REPO_ROOT / "manifests" / "webdb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def links_of(nm: Any) -> list[str]:
    """The network interfaces a state root's NetworkManager made (by their alias)."""
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            alias = str(link.get("ifalias") or "")
            if alias.startswith(nm.alias_prefix):
                out.append(f"link {link.get('ifname')} ({alias})")
    return out


class Cli:
    """Runs `pyapply` as a user would, with the stack's name and port in the environment
    and the runtime and state root chosen explicitly."""

    def __init__(self, stack: str, root: Path, port: int, runtime: str = "docker") -> None:
        self.stack = stack
        self.port = port
        self.env = {
            **os.environ,
            "STACK": stack,
            "WEB_PORT": str(port),
            "PYAPPLY_ROOT": str(root),
            "PYAPPLY_RUNTIME": runtime,
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYAPPLY, *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def ok(self, *args: str, **env: str) -> str:
        out = self.run(*args, **env)
        assert out.returncode == 0, (
            f"pyapply {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
        )
        return out.stdout

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYAPPLY, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


# ---------------------------------------------------------------------------------------------


class Observer:
    """Runtime-neutral questions, answered only through the Runtime protocol."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def containers(self, stack: str) -> dict[str, ContainerState]:
        return {c.name: c for c in self.rt.list_containers({STACK_LABEL: stack})}

    def container(self, name: str) -> ContainerState | None:
        return self.rt.get_container(name)

    def must(self, name: str) -> ContainerState:
        state = self.rt.get_container(name)
        assert state is not None, f"container {name} does not exist"
        return state

    def running(self, name: str) -> bool:
        state = self.rt.get_container(name)
        return state is not None and state.status == "running"

    def env(self, name: str) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.must(name).env)

    def all_container_names(self, prefix: str) -> list[str]:
        """Every container whose name starts with `prefix`, labelled or not."""
        return sorted(c.name for c in self.rt.list_containers({}) if c.name.startswith(prefix))

    def networks(self, stack: str) -> dict[str, NetworkState]:
        return {n.name: n for n in self.rt.list_networks({STACK_LABEL: stack})}

    def network(self, name: str) -> NetworkState | None:
        return self.rt.get_network(name)

    def volumes(self, stack: str) -> dict[str, VolumeState]:
        return {v.name: v for v in self.rt.list_volumes({STACK_LABEL: stack})}

    def volume(self, name: str) -> VolumeState | None:
        return self.rt.get_volume(name)

    def logs(self, name: str, tail: int | None = None) -> str:
        return b"".join(self.rt.logs(name, tail=tail)).decode(errors="replace")


class _NotingObserver(Observer):
    """An Observer that remembers the names of the networks it saw (for the cleanup check)."""

    def __init__(self, rt: Runtime, seen: set[str]) -> None:
        super().__init__(rt)
        self.seen = seen

    def networks(self, stack: str) -> dict[str, NetworkState]:
        found = super().networks(stack)
        self.seen.update(found)
        return found

    def network(self, name: str) -> NetworkState | None:
        self.seen.add(name)
        return super().network(name)


class RuntimeUnderTest:
    """One runtime with a private state root, as the tests see it (see the module doc)."""

    name = ""

    def __init__(self, stack: str, root: Path) -> None:
        self.stack = stack
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.env: dict[str, str] = {
            **os.environ,
            "PYAPPLY_RUNTIME": self.name,
            "PYAPPLY_ROOT": str(self.root),
        }
        self.rt = self.open()
        self.observe = Observer(self.rt)

    def open(self) -> Runtime:
        """A new protocol client of this runtime and root (e.g. for an event stream)."""
        return open_runtime(self.name, root=str(self.root))

    def cli(self, port: int | None = None) -> Cli:
        return Cli(self.stack, self.root, free_port() if port is None else port, self.name)

    # what differs per runtime
    def exec(self, name: str, *argv: str) -> tuple[int, str]:
        raise NotImplementedError

    def stop(self, name: str, timeout: float = 5) -> None:
        raise NotImplementedError

    def kill(self, name: str) -> None:
        """SIGKILL the container's process, as `docker kill` or `kill -9 PID` would."""
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def disconnect(self, name: str, network: str) -> None:
        raise NotImplementedError

    def set_memory_limit(self, name: str, limit: int) -> None:
        """Change a running container's memory limit, as `docker update --memory` would."""
        raise NotImplementedError

    def cleanup(self) -> list[str]:
        """Remove what the stack left; return what is left after that."""
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.rt.close()

    @property
    def by_hand(self) -> RuntimeUnderTest:
        """The out-of-band actions (stop, kill, remove, disconnect), for readability."""
        return self


class DockerUnderTest(RuntimeUnderTest):
    name = "docker"

    def __init__(self, stack: str, root: Path, client: Any) -> None:
        self.client = client
        super().__init__(stack, root)

    def attrs(self, name: str) -> dict[str, Any]:
        """docker inspect (for assertions that only docker can answer)."""
        return dict(self.client.containers.get(name).attrs)

    def exec(self, name: str, *argv: str) -> tuple[int, str]:
        code, out = self.client.containers.get(name).exec_run(list(argv))
        return int(code), out.decode(errors="replace")

    def stop(self, name: str, timeout: float = 5) -> None:
        self.client.containers.get(name).stop(timeout=int(timeout))

    def kill(self, name: str) -> None:
        self.client.containers.get(name).kill()

    def remove(self, name: str) -> None:
        self.client.containers.get(name).remove(force=True)

    def disconnect(self, name: str, network: str) -> None:
        self.client.networks.get(network).disconnect(name)

    def set_memory_limit(self, name: str, limit: int) -> None:
        self.client.containers.get(name).update(mem_limit=limit)

    def cleanup(self) -> list[str]:
        return cleanup_stack(self.client, self.stack)


class NativeUnderTest(RuntimeUnderTest):
    """The native runtime on a private root. Out-of-band actions use NativeRuntime's public
    methods (stop_container, remove_container, container_pid, exec), its NetworkManager
    (detach, by the container's key) and, to kill a container, a signal to its process."""

    name = "native"

    def __init__(self, stack: str, root: Path) -> None:
        super().__init__(stack, root)
        from pyapply.runtime.native.driver import NativeRuntime

        assert isinstance(self.rt, NativeRuntime)
        self.native = self.rt
        self._networks_seen: set[str] = set()
        self.observe = _NotingObserver(self.rt, self._networks_seen)

    def exec(self, name: str, *argv: str) -> tuple[int, str]:
        out = self.native.exec(name, list(argv), timeout=60)
        return out.exit_code, out.output.decode(errors="replace")

    def pid(self, name: str) -> int:
        pid = self.native.container_pid(name)
        assert pid is not None, f"container {name} has no process"
        return pid

    def stop(self, name: str, timeout: float = 5) -> None:
        self.native.stop_container(name, timeout)

    def kill(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)

    def remove(self, name: str) -> None:
        self.native.remove_container(name)

    def disconnect(self, name: str, network: str) -> None:
        key = self.native.key(name)
        assert key is not None, f"no container {name}"
        self.native.networks.detach(network, key)

    def set_memory_limit(self, name: str, limit: int) -> None:
        """Write the limit into the container's memory cgroup (v1, else v2)."""
        key = self.native.key(name)
        assert key is not None, f"no container {name}"
        for d in self.native.containers.cgroup_dirs(key):
            for f in ("memory.limit_in_bytes", "memory.max"):
                if (d / f).exists():
                    (d / f).write_text(str(limit))
                    return
        raise AssertionError(f"no memory cgroup of {name}")

    def note_networks(self) -> None:
        """Remember the root's networks (their bridges' firewall rules are checked at the
        end even if the networks are gone by then)."""
        with contextlib.suppress(Exception):
            self._networks_seen.update(n.name for n in self.native.list_networks({}))

    # -- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        problems = self._remove_owned()
        problems += self.kernel_leftovers()
        if problems:
            self._force_reset()
        return problems

    def _remove_owned(self) -> list[str]:
        rt = self.native
        s = self.stack
        self.note_networks()
        problems: list[str] = []
        for _round in range(3):
            problems = []
            kinds: tuple[tuple[str, Any, Any, str], ...] = (
                ("container", rt.list_containers, rt.remove_container, "-"),
                ("network", rt.list_networks, rt.remove_network, "_"),
                ("volume", rt.list_volumes, rt.remove_volume, "_"),
            )
            for kind, listing, remove, sep in kinds:  # in that order: users before used
                found = {o.name for o in listing({STACK_LABEL: s})}
                found |= {o.name for o in listing({}) if o.name.startswith(s + sep)}
                for name in sorted(found):
                    try:
                        remove(name)
                    except Exception as e:
                        problems.append(f"{kind} {name}: {e}")
            if not problems:
                break
            time.sleep(0.5)
        from pyapply.runtime.native import health

        # the root's health checker outlives pyapply by design (it exits when idle); a second
        # one, started by a racing start, may be queued on its lock: stop each in turn
        deadline = time.monotonic() + 10
        while True:
            health.stop_checker(self.root)
            if not self._processes() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return problems

    def _processes(self) -> list[str]:
        """Processes of this state root (conmon, health checker, ...): by their arguments."""
        root = str(self.root)
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(a == root or a.startswith(root + "/") or f"={root}/" in a for a in args):
                out.append(f"process {proc.name}: {' '.join(args)[:200]}")
        return out

    def kernel_leftovers(self) -> list[str]:
        """What of this state root is still in the kernel or running."""
        from pyapply.runtime.native import firewall
        from pyapply.runtime.native.network import NetworkManager

        nm = NetworkManager(self.root)
        out = links_of(nm)
        prefix = f"pyapply-{nm.tag}-"
        with contextlib.suppress(FileNotFoundError):
            out += [f"netns {n}" for n in sorted(os.listdir("/run/netns")) if n.startswith(prefix)]
        root = str(self.root)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point == root or point.startswith(root + "/"):
                    out.append(f"mount {point}")
        nets = self._networks_seen | {f"{self.stack}_{k}" for k in ("default", "front", "back")}
        comments = {firewall.network_comment(nm.bridge_name(n)): n for n in nets}
        for tool in ("iptables", "ip6tables"):  # a dual-stack network has rules in both
            rules = subprocess.run(
                [f"{tool}-save"], capture_output=True, text=True, check=True, timeout=60
            ).stdout
            for line in rules.splitlines():
                for comment, net in comments.items():
                    if f'"{comment}"' in line or f"{comment} " in line or f"{comment}:" in line:
                        out.append(f"{tool} rule of network {net}: {line}")
        cgroups = Path("/sys/fs/cgroup")
        parent = self.native.containers.cgroup_parent.strip("/")
        out += [f"cgroup {p}" for p in sorted(cgroups.glob(f"*/{parent}/{self.stack}-*"))]
        out += self._processes()
        return out

    def _force_reset(self) -> None:
        """After a failed cleanup: take down whatever of this root is left, so that one
        failing test does not leak into the machine."""
        from pyapply.runtime.native import health, rootfs
        from pyapply.runtime.native.network import NetworkManager

        health.stop_checker(self.root)
        cdirs = self.root / "containers"
        for cdir in sorted(cdirs.iterdir()) if cdirs.is_dir() else []:
            with contextlib.suppress(Exception):
                self.native.containers.remove(cdir.name)
        with contextlib.suppress(Exception):
            NetworkManager(self.root).reset()
        prefix = f"pyapply-{NetworkManager(self.root).tag}-"
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir("/run/netns"):
                if n.startswith(prefix):
                    with contextlib.suppress(OSError):
                        netns.remove(n)
        for point in sorted(rootfs.mountpoints(), key=len, reverse=True):
            if point.startswith(str(self.root) + "/"):
                with contextlib.suppress(Exception):
                    rootfs.unmount(point)


def import_test_image(root: Path, archive: Path, ref: str) -> None:
    """Put the test image (a `docker save` archive) into a native state root's store."""
    from pyapply.runtime.native.images import ImageStore

    ImageStore(str(root)).import_archive(str(archive), ref)


def save_docker_image(client: Any, ref: str, dest: Path) -> Path:
    """`docker save ref > dest`."""
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound as e:
        raise AssertionError(f"test image {ref} is missing; run `make setup`") from e
    with open(dest, "wb") as f:
        for chunk in image.save(named=True):
            f.write(chunk)
    return dest
