"""`pyapply watch` refuses bad --webhook and --notify options before anything starts: one
line on stderr, exit 1, no traceback, no secret or URL token in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PYAPPLY = str(Path(sys.executable).parent / "pyapply")
SECRET = "0123456789abcdef-cli-secret"


def watch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    watched = tmp_path / "watched"
    watched.mkdir(exist_ok=True)
    return subprocess.run(
        [PYAPPLY, "watch", str(watched), "--root", str(tmp_path / "root"),
         "--socket", str(tmp_path / "agent.sock"), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def secret_file(path: Path, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--webhook", "127.0.0.1:0"), "go together"),
        (("--webhook-ref", "main"), "--webhook-ref needs --webhook"),
        (("--webhook", "nonsense", "--webhook-secret-file", "{ok}"), "expected HOST:PORT"),
        (("--webhook", "127.0.0.1:0", "--webhook-secret-file", "{loose}"), "mode 0644"),
        (("--webhook", "127.0.0.1:0", "--webhook-secret-file", "{inside}"), "inside the watched"),
        (("--notify", "http://hooks.example.com/tok3n"), "loopback"),
        (("--notify", "gopher://127.0.0.1/tok3n"), "http(s)"),
    ],
)
def test_bad_options_exit_1_with_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    files = {
        "{ok}": secret_file(tmp_path / "ok", 0o600),
        "{loose}": secret_file(tmp_path / "loose", 0o644),
        "{inside}": secret_file(tmp_path / "watched" / "secret", 0o600),
    }
    out = watch(tmp_path, *(str(files.get(a, a)) for a in args))
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stderr
    assert "tok3n" not in out.stderr
    assert not (tmp_path / "agent.sock").exists()
