"""What `runc list` says of our containers, read from runc's own files instead of running it.

Observing a stack asks runc for every container's status; `runc list` is a Go process that
costs ~20 ms of a no-op apply, most of it starting up. It reads nothing we cannot read: each
container's `<runc root>/<id>/state.json` (written by runc with a rename, so never half
written) holds the init process's pid and start time, and the status follows from the kernel
the way runc 1.1 works it out (libcontainer `refreshState` and `runType`):

- paused: the container's freezer cgroup is FROZEN by itself (v1 `freezer.state` and
  `freezer.self_freezing`; v2 `cgroup.freeze`);
- stopped: the init pid is gone, a zombie, or a different process (another start time in
  /proc/<pid>/stat);
- created: `exec.fifo` is still in the state dir (runc removes it when the container starts);
- running otherwise.

Anything that does not look as expected (a state file that does not parse, a freezer in
transition) gives None, and the caller asks runc itself, so this can only save time, never
change an answer.

A state file is ~30 kB, nearly all of it the container's config (its seccomp rules), and
parsing it whole costs more than everything else a look does per container. So the three
fields needed are read where runc writes them (Go marshals a struct's fields in their
order): the id and the init process at the head, and the `cgroup_paths` and `labels` objects
decoded where their keys are. A key with its quotes unescaped cannot be inside a JSON string,
so what is found is a key; whatever does not fit is read by parsing the whole file instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _proc_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process that is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:  # gone (ENOENT, ESRCH)
        return None
    # the command name is in parentheses and may hold anything: fields follow the last ")"
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X", b"x"):  # zombie, dead: runc says stopped
        return None
    return int(fields[19])  # field 22 of proc(5), counted from field 3


class _Unsure(Exception):
    """runc's answer cannot be worked out from the files; ask runc."""


def _paused(cgroup_paths: Any) -> bool:
    if not isinstance(cgroup_paths, dict):
        raise _Unsure
    freezer = cgroup_paths.get("freezer")
    if isinstance(freezer, str) and freezer:  # cgroup v1 (and hybrid)
        state = _read(os.path.join(freezer, "freezer.state"))
        if state is None or state.strip() == "THAWED":
            return False
        if state.strip() != "FROZEN":
            raise _Unsure  # FREEZING: runc waits for it to settle
        self_freezing = _read(os.path.join(freezer, "freezer.self_freezing"))
        return self_freezing is None or self_freezing.strip() != "0"
    unified = cgroup_paths.get("")
    if isinstance(unified, str) and unified:  # cgroup v2
        frozen = _read(os.path.join(unified, "cgroup.freeze"))
        return frozen is not None and frozen.strip() == "1"
    return False  # no freezer: never paused


def _bundle(config: Any) -> str:
    for label in (config or {}).get("labels") or ():
        if isinstance(label, str) and label.startswith("bundle="):
            return label[len("bundle=") :]
    return ""


def _entry(state_dir: str, doc: dict[str, Any]) -> dict[str, Any]:
    """One item of `runc list --format=json` (id, pid, status, bundle) from a state.json."""
    cid, pid, start = doc["id"], doc["init_process_pid"], doc["init_process_start"]
    if not isinstance(cid, str) or not isinstance(pid, int) or not isinstance(start, int):
        raise _Unsure
    if _paused(doc.get("cgroup_paths")):
        status = "paused"
    elif pid <= 0 or _proc_start(pid) != start:
        status = "stopped"
    elif os.path.lexists(os.path.join(state_dir, EXEC_FIFO)):
        status = "created"
    else:
        status = "running"
    return {
        "id": cid,
        "pid": pid if status != "stopped" else 0,
        "status": status,
        "bundle": _bundle(doc.get("config")),
    }


_HEAD = re.compile(r'\{"id":"([^"\\]+)","init_process_pid":(\d+),"init_process_start":(\d+),')
_DECODER = json.JSONDecoder()


def _object_at(text: str, key: str, last: bool) -> Any:
    """The JSON value after the (first or last) `"key":` of `text`; _Unsure when absent."""
    mark = f'"{key}":'
    at = text.rfind(mark) if last else text.find(mark)
    if at < 0:
        raise _Unsure
    return _DECODER.raw_decode(text, at + len(mark))[0]


def _fields(text: str) -> dict[str, Any]:
    """What `_entry` reads of a state file: from the places runc writes it, else (a layout
    this does not know) from the whole file parsed."""
    head = _HEAD.match(text)
    if head is not None:
        try:
            paths = _object_at(text, "cgroup_paths", last=True)  # after the config
            labels = _object_at(text, "labels", last=False)  # the config's own, first
        except (_Unsure, ValueError):
            pass
        else:
            if isinstance(paths, dict) and isinstance(labels, list):
                return {
                    "id": head.group(1),
                    "init_process_pid": int(head.group(2)),
                    "init_process_start": int(head.group(3)),
                    "cgroup_paths": paths,
                    "config": {"labels": labels},
                }
    doc: dict[str, Any] = json.loads(text)
    return doc


def list_states(
    runc_root: Path, ids: Iterable[str] | None = None
) -> dict[str, dict[str, Any]] | None:
    """Every container in `runc_root` by id (or those of `ids` that runc has), as `runc
    list` gives them; None when one of them cannot be read as runc would (the caller runs
    runc then). With `ids`, the look costs what the stack has, not what the root has."""
    out: dict[str, dict[str, Any]] = {}
    try:
        if ids is None:
            dirs = [e.path for e in os.scandir(runc_root) if e.is_dir(follow_symlinks=False)]
        else:
            dirs = [os.path.join(runc_root, cid) for cid in ids if _plain_name(cid)]
    except FileNotFoundError:
        return out
    try:
        for state_dir in dirs:
            text = _read(os.path.join(state_dir, STATE_FILE))
            if text is None:
                continue  # none, or being created or deleted: runc list skips it too
            item = _entry(state_dir, _fields(text))
            out[item["id"]] = item
    except (_Unsure, OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return out


def _plain_name(cid: str) -> bool:
    """An id that names a directory of the root (runc's ids never hold a slash)."""
    return bool(cid) and "/" not in cid and cid not in (".", "..")
