"""runc's statuses read from its files (`runc_files.list_states`) are the ones `runc list`
gives, and anything unexpected gives None (the caller runs runc) rather than a guess. The
e2e tests compare both on live containers (tests/e2e/test_native_containers.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.native import runc_files


def own_start() -> int:
    with open("/proc/self/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def write_state(root: Path, cid: str, **over: Any) -> Path:
    doc: dict[str, Any] = {
        "id": cid,
        "init_process_pid": os.getpid(),
        "init_process_start": own_start(),
        "created": "2026-01-01T00:00:00Z",
        "config": {"labels": ["io.pyapply.name=web", f"bundle=/bundles/{cid}"]},
        "cgroup_paths": {},
        **over,
    }
    state_dir = root / cid
    state_dir.mkdir(parents=True)
    (state_dir / "state.json").write_text(json.dumps(doc))
    return state_dir


def freezer(tmp_path: Path, state: str, self_freezing: str | None) -> dict[str, str]:
    path = tmp_path / "freezer" / state
    path.mkdir(parents=True, exist_ok=True)
    (path / "freezer.state").write_text(state + "\n")
    if self_freezing is not None:
        (path / "freezer.self_freezing").write_text(self_freezing + "\n")
    return {"freezer": str(path), "": str(tmp_path / "unified")}


def test_statuses_follow_the_init_process_and_exec_fifo(tmp_path: Path) -> None:
    root = tmp_path / "runc"
    write_state(root, "alive")
    (write_state(root, "created") / "exec.fifo").touch()
    write_state(root, "restarted", init_process_start=own_start() + 1)  # pid reused
    write_state(root, "gone", init_process_pid=2**22 + 1)
    (root / "half-made").mkdir()  # runc create before its state.json: not listed
    found = runc_files.list_states(root)
    assert found == {
        "alive": {
            "id": "alive",
            "pid": os.getpid(),
            "status": "running",
            "bundle": "/bundles/alive",
        },
        "created": {
            "id": "created",
            "pid": os.getpid(),
            "status": "created",
            "bundle": "/bundles/created",
        },
        "restarted": {
            "id": "restarted",
            "pid": 0,
            "status": "stopped",
            "bundle": "/bundles/restarted",
        },
        "gone": {"id": "gone", "pid": 0, "status": "stopped", "bundle": "/bundles/gone"},
    }


@pytest.mark.parametrize(
    ("state", "self_freezing", "status"),
    [
        ("THAWED", "0", "running"),
        ("FROZEN", "1", "paused"),
        ("FROZEN", "0", "running"),  # frozen by an ancestor: runc says thawed
        ("FROZEN", None, "paused"),  # an old kernel without self_freezing
    ],
)
def test_a_frozen_cgroup_is_paused(
    tmp_path: Path, state: str, self_freezing: str | None, status: str
) -> None:
    root = tmp_path / "runc"
    write_state(root, "c", cgroup_paths=freezer(tmp_path, state, self_freezing))
    found = runc_files.list_states(root)
    assert found is not None
    assert found["c"]["status"] == status


def test_cgroup_v2_freeze(tmp_path: Path) -> None:
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.freeze").write_text("1\n")
    root = tmp_path / "runc"
    write_state(root, "c", cgroup_paths={"": str(unified)})
    found = runc_files.list_states(root)
    assert found is not None
    assert found["c"]["status"] == "paused"


@pytest.mark.parametrize(
    "damage",
    [
        "{garbage",
        json.dumps({"id": "c"}),  # no init process
        json.dumps({"id": "c", "init_process_pid": "1", "init_process_start": 1}),
    ],
)
def test_what_is_not_understood_is_left_to_runc(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "runc"
    write_state(root, "fine")
    (root / "c").mkdir()
    (root / "c" / "state.json").write_text(damage)
    assert runc_files.list_states(root) is None


def test_a_freezer_in_transition_is_left_to_runc(tmp_path: Path) -> None:
    root = tmp_path / "runc"
    write_state(root, "c", cgroup_paths=freezer(tmp_path, "FREEZING", "1"))
    assert runc_files.list_states(root) is None


def test_no_root_no_containers(tmp_path: Path) -> None:
    assert runc_files.list_states(tmp_path / "missing") == {}


def test_ids_read_only_those_containers(tmp_path: Path) -> None:
    root = tmp_path / "runc"
    write_state(root, "mine")
    (root / "other").mkdir()
    (root / "other" / "state.json").write_text("{garbage")  # never read
    found = runc_files.list_states(root, ["mine", "gone", "../runc", ""])
    assert found is not None
    assert list(found) == ["mine"]
    assert runc_files.list_states(tmp_path / "missing", ["mine"]) == {}


def test_the_fields_read_where_runc_writes_them_are_the_parsed_ones(tmp_path: Path) -> None:
    """runc's layout (compact, fields in the struct's order, the config before the cgroup
    paths) is read without parsing the config; a key-like text inside a string is no key."""
    decoy = 'x","labels":["bundle=/wrong"],"cgroup_paths":{"freezer":"/wrong"}'
    doc = {
        "id": "c1",
        "init_process_pid": 42,
        "init_process_start": 7,
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "env": [f"A={decoy}"],
            "labels": ["io.pyapply.name=web", "bundle=/bundles/c1"],
            "cgroups": {"path": "/pyapply/c1"},
        },
        "rootless": False,
        "cgroup_paths": {"": "/sys/fs/cgroup/unified/c1", "freezer": "/sys/fs/cgroup/freezer/c1"},
        "namespace_paths": {"NEWNET": "/proc/42/ns/net"},
    }
    text = json.dumps(doc, separators=(",", ":"))
    fields = runc_files._fields(text)
    assert len(fields) == 5  # read in place, not parsed whole
    assert fields == {
        "id": "c1",
        "init_process_pid": 42,
        "init_process_start": 7,
        "cgroup_paths": doc["cgroup_paths"],
        "config": {"labels": doc["config"]["labels"]},  # type: ignore[index]
    }
    # another layout: the whole file parsed
    assert runc_files._fields(json.dumps(doc)) == doc
