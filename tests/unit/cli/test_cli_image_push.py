"""`pyapply image push`: its progress lines, and its failures on an empty native root (an
unknown image, a reference that cannot be pushed to) as one line and exit 1. Pushes to a
real registry, on both runtimes, are in tests/e2e/test_push.py."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.cli.image import push_event_json, push_line
from pyapply.runtime.base import PushEvent

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pyapply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    monkeypatch.setenv("PYAPPLY_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pyapply", *args])
        code = cli.run()
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_push_lines() -> None:
    d = "sha256:" + "ab" * 32
    assert push_line(PushEvent("r:1", "layer", d, 2_500_000, "uploading")) == (
        "layer abababababab: uploading (2.5MB)"
    )
    assert push_line(PushEvent("r:1", "config", d, 0, "exists")) == (
        "config abababababab: already in the registry"
    )
    assert push_line(PushEvent("r:1", "layer", d, 10, "mounted")).endswith(
        "mounted from another repository (10B)"
    )
    assert push_line(PushEvent("r:1", "manifest", d, 405, "pushed")) == (
        "manifest abababababab: pushed (405B)"
    )
    assert push_event_json(PushEvent("r:1", "layer", d, 1, "uploaded")) == {
        "kind": "layer",
        "digest": d,
        "size": 1,
        "state": "uploaded",
    }


def test_push_failures_are_one_line_and_exit_1(pyapply: Run) -> None:
    code, out, err = pyapply("image", "push", "127.0.0.1:9/none/such:1")
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        "error: no such image: 127.0.0.1:9/none/such:1 (pull, import or build it first)"
    )
    assert out.strip() == "pushing 127.0.0.1:9/none/such:1"
    code, out, err = pyapply("image", "push", "-o", "json", "127.0.0.1:9/x@sha256:" + "c" * 64)
    assert code == 1 and "give a tag, not a digest" in err
    [doc] = json.loads(out)
    assert "give a tag" in doc["error"]
    code, _, _ = pyapply("image", "push")
    assert code != 0  # a reference is required
