"""`pyapply image` and `pyapply system`: argument handling and formatting, without a kernel.

The commands run through `reconciler.cli.main.run()` as the console script does, on an empty
state root under tmp_path (listing, importing a missing file and refusing never touch
runc, netlink or iptables). Pulls, removals and resets for real are in
tests/e2e/test_native_system.py.
"""

from __future__ import annotations

import datetime
import io
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.cli.image import (
    PlainPullProgress,
    RichPullProgress,
    ago,
    human_size,
    image_rows,
    image_table,
    image_users,
    one_line,
    parse_time,
    refusal,
    removes_image,
    short_id,
    split_ref,
)
from pyapply.reconciler.cli.system import plural, reset_lines
from pyapply.runtime.base import ContainerState
from pyapply.runtime.native.images import ImageConfig, ImageRecord, PullProgress

ID_A = "sha256:" + "a" * 64
ID_B = "sha256:" + "b" * 64
NOW = datetime.datetime(2025, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)


def record(image_id: str, refs: tuple[str, ...] = (), digests: tuple[str, ...] = ()) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        refs=refs,
        repo_digests=digests,
        config=ImageConfig(),
        diff_ids=(),
        blobs=(),
        created="2025-05-30T10:00:00.123456789Z",
        size=1_069_372,
    )


def container(name: str, image: str, image_id: str = "") -> ContainerState:
    return ContainerState(
        id="c" * 64, name=name, image=image, image_id=image_id, labels={}, status="exited"
    )


# ---------------------------------------------------------------------------------------------
# pure helpers


def test_refusal_only_for_another_runtime() -> None:
    assert refusal(None, "image ls", "docker image ls") is None
    assert refusal("native", "image ls", "docker image ls") is None
    docker = refusal("docker", "image ls", "docker image ls")
    assert docker is not None and "`docker image ls`" in docker and "native" in docker
    other = refusal("podman", "image ls", "docker image ls")
    assert other is not None and "unknown runtime 'podman'" in other


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker.io/library/busybox:latest", ("busybox", "latest")),
        ("docker.io/pyapply-test/busybox:1.36", ("pyapply-test/busybox", "1.36")),
        (
            "127.0.0.1:5000/pyapply-test/busybox:latest",
            ("127.0.0.1:5000/pyapply-test/busybox", "latest"),
        ),
        ("127.0.0.1:5000/x", ("127.0.0.1:5000/x", "<none>")),  # a port is not a tag
        ("docker.io/library/busybox@sha256:" + "c" * 64, ("busybox", "<none>")),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref(ref) == expected


def test_short_id_and_sizes() -> None:
    assert short_id(ID_A) == "a" * 12
    assert short_id("0123456789abcdef") == "0123456789ab"
    assert [human_size(n) for n in (0, 999, 1000, 1_069_372, 999_999, 12_345_678_901)] == [
        "0B",
        "999B",
        "1kB",
        "1.07MB",
        "1MB",
        "12.3GB",
    ]


def test_parse_time_and_ago() -> None:
    assert parse_time("2025-05-30T12:00:00.123456789Z") == datetime.datetime(
        2025, 5, 30, 12, 0, 0, 123456, tzinfo=datetime.UTC
    )
    assert parse_time("2025-05-30T14:00:00+02:00") == datetime.datetime(
        2025, 5, 30, 12, 0, tzinfo=datetime.UTC
    )
    assert parse_time("yesterday") is None
    assert ago("2025-05-30T12:00:00Z", NOW) == "2 days ago"
    assert ago("2025-06-01T11:59:00Z", NOW) == "1 minute ago"
    assert ago("2025-04-01T12:00:00Z", NOW) == "2 months ago"
    assert ago("2020-01-01T00:00:00Z", NOW) == "5 years ago"
    assert ago("2025-06-01T12:00:00Z", NOW) == "just now"
    assert ago(None, NOW) == "-"
    assert ago("some day", NOW) == "some day"


def test_one_line_keeps_the_first_line() -> None:
    assert one_line("x is not a tar archive: could not open:\n- gz: no\n- tar: no\n") == (
        "x is not a tar archive: could not open"
    )
    assert one_line("plain") == "plain"


def test_image_users_by_recorded_id_else_by_reference() -> None:
    users = image_users(
        [
            container("s-web-1", "web:1", ID_A),
            container("s-old-1", "web:0"),  # created before image ids were recorded
            container("s-web-2", "web:1", ID_A),
            container("s-gone-1", "gone:1"),
        ],
        {"web:0": ID_B}.get,
    )
    assert users == {ID_A: ["s-web-1", "s-web-2"], ID_B: ["s-old-1"]}


def test_removes_image_only_with_its_last_name_or_by_id() -> None:
    one = record(
        ID_A,
        ("docker.io/library/busybox:latest",),
        ("docker.io/library/busybox@sha256:" + "d" * 64,),
    )
    two = record(ID_A, ("docker.io/library/busybox:latest", "docker.io/local/bb:1"))
    assert removes_image("busybox", one)
    assert removes_image("busybox:latest", one)
    assert not removes_image("busybox", two)
    assert not removes_image("local/bb:1", two)
    assert removes_image("a" * 12, two)
    assert removes_image(ID_A, two)
    assert not removes_image("docker.io/library/busybox@sha256:" + "d" * 64, one)
    assert removes_image(
        "docker.io/library/busybox@sha256:" + "d" * 64, record(ID_A, (), one.repo_digests)
    )


def test_image_rows_and_table() -> None:
    records = [
        record(ID_A, ("127.0.0.1:5000/pyapply-test/busybox:latest", "docker.io/library/busybox:1")),
        record(ID_B),
    ]
    rows = image_rows(records, {ID_A: ["s-web-1", "s-web-2"]})
    assert rows[0]["in_use"] is True and rows[0]["containers"] == ["s-web-1", "s-web-2"]
    assert rows[1]["in_use"] is False and rows[1]["refs"] == []
    assert json.loads(json.dumps(rows)) == rows
    lines = image_table(rows, NOW)
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "IN", "USE"]
    assert lines[1].split() == [
        "127.0.0.1:5000/pyapply-test/busybox",
        "latest",
        "a" * 12,
        "2",
        "days",
        "ago",
        "1.07MB",
        "yes",
        "(2)",
    ]
    assert lines[2].split()[:3] == ["busybox", "1", "a" * 12]
    assert lines[3].split()[:3] == ["<none>", "<none>", "b" * 12]
    assert lines[3].endswith("no")
    tag_at = lines[0].index("TAG")  # the columns line up
    assert [line[tag_at:].split()[0] for line in lines] == ["TAG", "latest", "1", "<none>"]


# ---------------------------------------------------------------------------------------------
# progress


def blob(n: str) -> str:
    return "sha256:" + n * 64


def test_plain_pull_progress_lines() -> None:
    lines: list[str] = []
    p = PlainPullProgress(lines.append)
    mb = 1_000_000
    for done in (mb, 2 * mb, 3 * mb, 5 * mb, 7 * mb, 8 * mb):
        p(PullProgress(blob("1"), "download", done, 8 * mb))
    p(PullProgress(blob("2"), "unpacked"))  # same thread: the download's row
    p(PullProgress(blob("3"), "cached", 10, 10))
    p(PullProgress(blob("4"), "unpacked"))
    p(PullProgress(blob("5"), "present"))
    p(PullProgress(blob("6"), "download", 2 * mb, 0))  # size unknown
    assert lines == [
        "111111111111: downloading 2MB / 8MB",  # each quarter once
        "111111111111: downloading 5MB / 8MB",
        "111111111111: downloading 7MB / 8MB",
        "111111111111: downloaded 8MB",
        "111111111111: unpacked",
        "333333333333: already downloaded",
        "333333333333: unpacked",
        "555555555555: already unpacked",
        "666666666666: downloading 2MB",
    ]


def test_plain_pull_progress_rows_follow_threads() -> None:
    lines: list[str] = []
    p = PlainPullProgress(lines.append)
    started = threading.Barrier(2)

    def layer(n: str, diff: str) -> None:
        p(PullProgress(blob(n), "download", 10, 10))
        started.wait()  # both downloads done before either unpack
        p(PullProgress(blob(diff), "unpacked"))

    threads = [threading.Thread(target=layer, args=a) for a in (("1", "8"), ("2", "9"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(lines) == sorted(
        [
            "111111111111: downloaded 10B",
            "111111111111: unpacked",
            "222222222222: downloaded 10B",
            "222222222222: unpacked",
        ]
    )


def test_rich_pull_progress_draws_a_row_per_layer() -> None:
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    out = io.StringIO()
    progress = Progress(
        TextColumn("{task.description} {task.fields[state]}"),
        console=Console(file=out, force_terminal=True, width=100),
    )
    with RichPullProgress(progress) as p:
        p(PullProgress(blob("1"), "download", 5, 10))
        p(PullProgress(blob("1"), "download", 10, 10))
        p(PullProgress(blob("7"), "unpacked"))
        p(PullProgress(blob("2"), "present"))
    assert [t.description for t in progress.tasks] == ["111111111111", "222222222222"]
    assert [t.fields["state"] for t in progress.tasks] == ["unpacked", "already unpacked"]
    assert progress.tasks[0].completed == 10
    assert "111111111111 unpacked" in out.getvalue()


# ---------------------------------------------------------------------------------------------
# system reset output


def test_reset_lines() -> None:
    removed = {
        "container": ["s-web-1", "s-db-1"],
        "network": ["s_front"],
        "mount": ["/r/containers/x/rootfs"],
        "process": ["12 (conmon)", "13 (container process)"],
        "root entry": ["containers"],
        "netns": ["pyapply-abc-x"],
    }
    lines = reset_lines("/r", removed, ["notes.txt"])
    assert lines[:3] == [
        "removed container s-web-1",
        "removed container s-db-1",
        "removed network s_front",
    ]
    assert "cleaned up mount /r/containers/x/rootfs" in lines
    assert "kept in /r (not made by pyapply): notes.txt" in lines
    assert lines[-1] == (
        "reset /r: 2 containers, 1 network removed; cleaned up 1 mount, 2 processes, "
        "1 root entry, 1 netns"
    )
    assert reset_lines("/r", {}, []) == ["reset /r: no containers, networks, volumes or images"]
    assert [plural(k, 2) for k in ("image", "process", "netns", "root entry")] == [
        "images",
        "processes",
        "netns",
        "root entries",
    ]


# ---------------------------------------------------------------------------------------------
# the commands, as the console script runs them


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def pyapply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    """Run `pyapply ARGS` in-process on an empty root: (exit code, stdout, stderr)."""
    monkeypatch.setenv("PYAPPLY_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pyapply", *args])
        code = cli.run()
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_commands_are_registered_lazily(pyapply: Run) -> None:
    assert "image" in cli.LAZY_COMMANDS and "system" in cli.LAZY_COMMANDS
    code, out, _ = pyapply("--help")
    assert code == 0 and "image" in out and "system" in out
    code, out, _ = pyapply("image", "--help")
    assert code == 0
    for sub in ("pull", "ls", "rm", "import", "prune"):
        assert sub in out
    code, out, _ = pyapply("system", "--help")
    assert code == 0 and "reset" in out and "start" in out


def test_docker_runtime_refused(pyapply: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = pyapply("image", "ls", "--runtime", "docker")
    assert code == 1 and err.strip().startswith("error:") and "`docker image ls`" in err
    monkeypatch.setenv("PYAPPLY_RUNTIME", "docker")
    code, _, err = pyapply("image", "pull", "busybox")
    assert code == 1 and "`docker pull`" in err
    code, _, err = pyapply("system", "reset", "--force")
    assert code == 1 and "docker system prune" in err and len(err.strip().splitlines()) == 1


def test_system_start_on_a_root_with_no_containers_and_on_docker(
    pyapply: Run, tmp_path: Path
) -> None:
    # at boot on a fresh machine: nothing to bring back, and nothing made
    code, out, err = pyapply("system", "start")
    assert (code, err) == (0, "") and out == f"start {tmp_path / 'root'}: no containers\n"
    assert not (tmp_path / "root").exists()
    code, _, err = pyapply("system", "start", "--runtime", "docker")
    assert code == 1 and "dockerd starts its own at its start" in err
    code, _, err = pyapply("system", "start", "--runtime", "podman")
    assert code == 1 and "unknown runtime 'podman'" in err


def test_empty_store_lists_nothing(pyapply: Run) -> None:
    code, out, _ = pyapply("image", "ls", "-o", "json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = pyapply("image", "ls")
    assert code == 0 and out.split() == [
        "REPOSITORY",
        "TAG",
        "IMAGE",
        "ID",
        "CREATED",
        "SIZE",
        "IN",
        "USE",
    ]


def test_user_errors_are_one_line(pyapply: Run, tmp_path: Path) -> None:
    code, _, err = pyapply("image", "import", str(tmp_path / "missing.tar"))
    assert (code, err) == (1, f"error: no such file: {tmp_path / 'missing.tar'}\n")
    code, _, err = pyapply("image", "rm")
    assert code == 1 and "Missing argument" in err
    code, _, err = pyapply("image", "ls", "-o", "yaml")
    assert code == 1 and "Invalid value" in err


def test_reset_refuses_without_a_terminal_and_asks_on_one(
    pyapply: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "volumes").mkdir()
    code, _, err = pyapply("system", "reset")
    assert code == 1 and "--force" in err and len(err.strip().splitlines()) == 1

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty("n\n"))
    code, out, err = pyapply("system", "reset")
    assert code == 1 and "Remove everything pyapply made under" in out and "aborted" in err
    assert (root / "volumes").is_dir(), "a declined reset removed something"
