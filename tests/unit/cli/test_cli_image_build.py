"""`pyapply image build` as the console script runs it, on an empty native root, for what is
decided before any step runs (no runc, mount or network): a missing context, a bad
Dockerfile, a bad tag, `-o json` errors, --build-arg, --secret. Builds for real are in
tests/e2e/test_native_build.py."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.cli.image import _build_args

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


def test_a_missing_context(pyapply: Run, tmp_path: Path) -> None:
    code, _, err = pyapply("image", "build", str(tmp_path / "nope"), "-t", "x:1")
    assert code == 1
    assert err.strip() == f"error: build context {tmp_path / 'nope'} does not exist"


def test_a_bad_dockerfile_names_its_line(pyapply: Run, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a b\nNOPE x\n")
    code, out, err = pyapply("image", "build", str(tmp_path), "-t", "x:1")
    assert code == 1 and out == ""
    assert err.strip() == "error: Dockerfile:3: unknown instruction: NOPE"
    code, out, err = pyapply("image", "build", str(tmp_path), "-t", "x:1", "-o", "json")
    assert code == 1 and json.loads(out)["where"] == "Dockerfile:3"


def test_a_dockerfile_elsewhere_and_no_dockerfile(
    pyapply: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    code, _, err = pyapply("image", "build", str(ctx), "-t", "x:1")
    assert code == 1 and f"no Dockerfile at {ctx}/Dockerfile" in err
    (tmp_path / "Other.df").write_text("FROM scratch\nRUN <<EOF\n")
    monkeypatch.chdir(tmp_path)  # -f is relative to here, as docker build's is
    code, _, err = pyapply("image", "build", str(ctx), "-f", "Other.df", "-t", "x:1")
    assert code == 1 and "error: Other.df:2: unterminated heredoc" in err


def test_a_bad_tag_is_refused_before_building(pyapply: Run, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    code, _, err = pyapply("image", "build", str(tmp_path), "-t", "Bad Tag!")
    assert code == 1 and "invalid tag 'Bad Tag!'" in err


def test_build_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_ENV", "e")
    monkeypatch.delenv("UNSET_ONE", raising=False)
    assert _build_args(["A=1", "B=", "C=x=y", "FROM_ENV", "UNSET_ONE"]) == {
        "A": "1",
        "B": "",
        "C": "x=y",
        "FROM_ENV": "e",
    }


def test_secrets_are_read_by_id_and_bad_ones_refused(
    pyapply: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyapply.reconciler.cli.image import _build_secrets

    (tmp_path / "tok").write_bytes(b"file value")
    monkeypatch.setenv("TOKEN_VAR", "env value")
    assert _build_secrets([f"id=a,src={tmp_path / 'tok'}", "id=b,type=env,env=TOKEN_VAR"]) == {
        "a": b"file value",
        "b": b"env value",
    }
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    for bad, message in [
        ("id=x", "expected id=ID,src=FILE or id=ID,env=VAR"),
        (f"src={tmp_path / 'tok'}", "expected id=ID,src=FILE"),
        ("id=x,src=a,colour=red", "(unknown colour)"),
        (f"id=x,src={tmp_path / 'missing'}", f"--secret id=x: cannot read {tmp_path / 'missing'}"),
        ("id=x,env=NOT_SET_ANYWHERE", "the environment variable NOT_SET_ANYWHERE is not set"),
    ]:
        code, _, err = pyapply("image", "build", str(tmp_path), "-t", "x:1", "--secret", bad)
        assert code == 1 and message in err, (bad, err)
        assert "file value" not in err
