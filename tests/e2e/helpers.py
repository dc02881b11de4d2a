"""Plain helpers for the end-to-end tests: stack names, cleanup by ownership, HTTP probes.

Nothing here depends on pytest, so the fixtures in conftest.py stay thin and the helpers can
be used from a REPL while debugging a failing test.
"""

from __future__ import annotations

import http.client
import re
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker.errors

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = "pyapply-test/busybox:latest"
STACK_LABEL = "io.pyapply.stack"
STACK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# Never route test traffic through a proxy from the environment: it only goes to loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_RETRYABLE = (
    urllib.error.URLError,
    http.client.RemoteDisconnected,
    http.client.IncompleteRead,
    ConnectionError,
    socket.timeout,
)


def new_stack_name() -> str:
    """A fresh stack name: `t` + 8 lowercase hex digits (valid per STACK_NAME_RE)."""
    name = "t" + secrets.token_hex(4)
    assert STACK_NAME_RE.match(name)
    return name


def http_get(
    url: str, timeout: float = 5, attempts: int = 20, delay: float = 0.25
) -> tuple[int, str]:
    """GET `url`, retrying connection errors (a port not yet published, a server still
    starting) up to `attempts` times, `delay` seconds apart. Returns (status, body); an HTTP
    error status is an answer, not retried. Raises the last connection error."""
    last: BaseException | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(delay)
        try:
            with _OPENER.open(url, timeout=timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")
        except _RETRYABLE as e:
            last = e
    assert last is not None
    raise last


def _owned(collection: Any, name: str, sep: str, **kwargs: Any) -> list[Any]:
    """Objects of one kind labelled with the stack or named `<stack><sep>...`: two filtered
    listings (dockerd's name filter matches substrings, hence the prefix check)."""
    found: dict[str, Any] = {}
    for item in collection.list(filters={"label": f"{STACK_LABEL}={name}"}, **kwargs):
        found[item.id] = item
    for item in collection.list(filters={"name": name + sep}, **kwargs):
        if item.name.startswith(name + sep):
            found[item.id] = item
    return list(found.values())


def cleanup_stack(client: Any, name: str, rounds: int = 3) -> list[str]:
    """Remove every container, network and volume of stack `name` from dockerd: those
    labelled io.pyapply.stack=<name>, containers named `<name>-*`, networks and volumes named
    `<name>_*`. Retries a few rounds (a network with an endpoint still detaching refuses to
    go). Returns what could not be removed, as "kind name: error" lines."""
    problems: list[str] = []
    for round_ in range(rounds):
        problems = []
        containers = _owned(client.containers, name, "-", all=True, ignore_removed=True)
        for c in containers:
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"container {c.name}: {e}")
        for n in _owned(client.networks, name, "_"):
            try:
                n.remove()
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"network {n.name}: {e}")
        for v in _owned(client.volumes, name, "_"):
            try:
                v.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"volume {v.name}: {e}")
        if not problems:
            break
        if round_ + 1 < rounds:
            time.sleep(0.5)
    return problems


class Workdir:
    """A scratch directory (pytest's tmp_path) to copy manifests into and write files in."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def copy(
        self,
        src: str | Path,
        dest: str | Path | None = None,
        substitutions: Mapping[str, str] | None = None,
    ) -> Path:
        """Copy a file or directory (relative paths are from the repository root) to
        `dest` inside the work dir (default: its base name), replacing each key of
        `substitutions` by its value in every *.yaml/*.yml file copied."""
        source = Path(src) if Path(src).is_absolute() else REPO_ROOT / src
        target = self.path / (dest if dest is not None else source.name)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            files = [p for p in target.rglob("*") if p.suffix in (".yaml", ".yml")]
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            files = [target] if target.suffix in (".yaml", ".yml") else []
        for f in files if substitutions else []:
            text = f.read_text()
            for old, new in (substitutions or {}).items():
                text = text.replace(old, new)
            f.write_text(text)
        return target

    def write(self, relpath: str | Path, text: str) -> Path:
        """Write `text` to `relpath` inside the work dir, creating parent directories."""
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target


def sleeper_stack(stack: str, service_lines: str = "", rest: str = "") -> str:
    """A pyapply/v1 stack of one service, `app`, that sleeps under an init: the smallest
    running container. `service_lines` are more fields of `app` (indented six spaces);
    `rest` follows the services (indented two spaces: networks, secrets, ...)."""
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app:
      image: {TEST_IMAGE}
      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
{service_lines}{rest}"""


_CSI = re.compile(rb"\x1b\[([0-9;?]*)([A-Za-z])")


def terminal_screen(raw: bytes, columns: int = 200) -> list[str]:
    """What a terminal shows after `raw` (a program's output read from a pty): a small
    emulator of what line-based live views send -- text, CR, LF, cursor up (CSI n A),
    erase line (CSI 2K); other escape sequences (colours, cursor visibility) change no
    text. Lines wider than `columns` are cut, not wrapped."""
    screen: list[list[str]] = [[]]
    row = col = 0
    i = 0
    text = raw
    while i < len(text):
        m = _CSI.match(text, i)
        if m is not None:
            args, op = m.group(1).decode(), m.group(2).decode()
            if op == "A":
                row = max(0, row - int(args or "1"))
            elif op == "K" and args == "2":
                screen[row] = []
            i = m.end()
            continue
        c = text[i : i + 1]
        i += 1
        if c == b"\r":
            col = 0
        elif c == b"\n":
            row += 1
            col = 0
            while len(screen) <= row:
                screen.append([])
        elif c == b"\x1b":
            continue
        else:
            # one UTF-8 character (rich's ellipsis is three bytes)
            end = i
            while end < len(text) and (text[end] & 0xC0) == 0x80:
                end += 1
            ch = text[i - 1 : end].decode("utf-8", "replace")
            i = end
            line = screen[row]
            if col < columns:
                while len(line) < col:
                    line.append(" ")
                if col < len(line):
                    line[col] = ch
                else:
                    line.append(ch)
            col += 1
    return ["".join(line).rstrip() for line in screen]
