"""Unit tests of runtime/docker/build.py: dockerd's classic-builder and push streams (as
dockerd 20.10 sends them, recorded) read into BuildEvents, BuildFailed and PushEvents; the
build context plan (.dockerignore, inline and outside Dockerfiles, missing pieces)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import (
    BuildConfig,
    BuildEvent,
    BuildFailed,
    NotFound,
    PermanentError,
    PushEvent,
    TransientError,
)
from pyapply.runtime.docker.build import (
    BuildStream,
    PushStream,
    build_params,
    context_tar,
    dockerignore_patterns,
    parse_error,
    plan_context,
    push_failure,
)

# `docker build` of a 3-step Dockerfile whose last RUN fails, as the stream arrives (lines
# split across messages, stderr in ANSI colour)
FAILING = [
    {"stream": "Step 1/3 : FROM pyapply-test/busybox:latest"},
    {"stream": "\n"},
    {"stream": " ---> eb80635d6200\n"},
    {"stream": "Step 2/3 : RUN echo hi"},
    {"stream": "\n"},
    {"stream": " ---> Using cache\n"},
    {"stream": " ---> 8106ff0c5dd7\n"},
    {"stream": "Step 3/3 : RUN echo line1; echo line2 >&2; exit 3"},
    {"stream": "\n"},
    {"stream": " ---> Running in d317606d22ac\n"},
    {"stream": "line1\n"},
    {"stream": "\u001b[91mline2\n\u001b[0m"},
    {"stream": "Removing intermediate container d317606d22ac\n"},
    {
        "errorDetail": {
            "code": 3,
            "message": "The command '/bin/sh -c echo line1; echo line2 >&2; exit 3' "
            "returned a non-zero code: 3",
        },
        "error": "The command '/bin/sh -c echo line1; echo line2 >&2; exit 3' returned a "
        "non-zero code: 3",
    },
]

MULTI_STAGE = [
    {"stream": "Step 1/4 : FROM pyapply-test/busybox:latest AS a"},
    {"stream": "\n ---> eb80635d6200\nStep 2/4 : RUN echo built > /f\n"},
    {"stream": " ---> Running in 07c3af3f3d80\n"},
    {"stream": "partial"},
    {"stream": " line\nRemoving intermediate container 07c3af3f3d80\n ---> 57172ecb3b5a\n"},
    {"aux": {"ID": "sha256:" + "5" * 64}},
    {"stream": "Step 3/4 : FROM a\n ---> 57172ecb3b5a\n"},
    {"stream": 'Step 4/4 : CMD ["cat","/f"]\n ---> Running in 199fb69bc6d6\n'},
    {"stream": "Removing intermediate container 199fb69bc6d6\n ---> d8054cba4cdf\n"},
    {"aux": {"ID": "sha256:" + "d" * 64}},
    {"stream": "Successfully built d8054cba4cdf\n"},
]


def feed(messages: list[dict[str, Any]]) -> tuple[BuildStream, list[BuildEvent]]:
    events: list[BuildEvent] = []
    stream = BuildStream(events.append)
    for m in messages:
        stream.feed(m)
    return stream, events


def test_a_successful_multi_stage_build() -> None:
    stream, events = feed(MULTI_STAGE)
    stream.finish()
    assert stream.image_id == "sha256:" + "d" * 64  # the last stage's, not the first's
    assert (stream.total, stream.cached) == (4, 0)
    assert [(e.step, e.state) for e in events if e.state != "output"] == [
        (1, "running"),
        (1, "done"),
        (2, "running"),
        (2, "done"),
        (3, "running"),
        (3, "done"),
        (4, "running"),
        (4, "done"),
    ]
    # output reassembled into whole lines, bookkeeping left out
    assert [(e.step, e.line) for e in events if e.state == "output"] == [(2, "partial line")]
    assert events[-1].instruction == 'CMD ["cat","/f"]' and events[-1].total == 4


def test_a_failing_run_step() -> None:
    stream, events = feed(FAILING[:-1])
    with pytest.raises(BuildFailed) as info:
        stream.feed(FAILING[-1])
    e = info.value
    assert e.exit_code == 3
    assert e.step == "RUN echo line1; echo line2 >&2; exit 3"
    assert e.tail == ("line1", "line2")  # this step's lines only, colour codes gone
    assert e.message.startswith("step 3/3 `RUN echo line1; echo line2 >&2; exit 3` failed: ")
    assert "exited with code 3" in e.message
    states = [(ev.step, ev.state) for ev in events if ev.state != "output"]
    assert states == [
        (1, "running"),
        (1, "done"),
        (2, "running"),
        (2, "cached"),
        (3, "running"),
        (3, "failed"),
    ]
    assert stream.cached == 1


def test_a_failing_step_without_exit_code() -> None:
    stream, _ = feed([*FAILING[:3], {"stream": "Step 2/2 : COPY nope /x\n"}])
    with pytest.raises(BuildFailed) as info:
        stream.feed({"error": "COPY failed: file not found in build context", "errorDetail": {}})
    assert info.value.exit_code is None and info.value.step == "COPY nope /x"
    assert "step 2/2 `COPY nope /x` failed: COPY failed: file not found" in info.value.message


def test_parse_errors_are_located() -> None:
    e = parse_error("dockerfile parse error line 3: unknown instruction: FOO", "Dockerfile")
    assert e.where == "Dockerfile:3" and e.message == "Dockerfile:3: unknown instruction: FOO"
    e = parse_error("dockerfile parse error on line 12: FROM requires ...", "build/app.df")
    assert e.where == "build/app.df:12"
    e = parse_error("some other refusal", "Dockerfile")
    assert e.where is None and "some other refusal" in e.message


def test_dockerignore_patterns() -> None:
    text = "# comment\nnode_modules\n\n  *.log  \n!keep.log\n**/tmp\n"
    assert dockerignore_patterns(text) == ("node_modules", "*.log", "!keep.log", "**/tmp")


def test_plan_context(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (ctx / ".dockerignore").write_text("secret.txt\n")
    (ctx / "secret.txt").write_text("x")
    (ctx / "app.txt").write_text("y")
    plan = plan_context(BuildConfig(context=str(ctx)))
    assert (plan.name, plan.content, plan.excludes) == ("Dockerfile", None, ("secret.txt",))
    with context_tar(plan) as tar, tarfile.open(fileobj=tar) as tf:
        assert sorted(tf.getnames()) == [".dockerignore", "Dockerfile", "app.txt"]

    inline = plan_context(BuildConfig(context=str(ctx), dockerfile_inline="FROM a\n"))
    assert inline.name.startswith(".dockerfile.") and inline.content == "FROM a\n"
    with context_tar(inline) as tar, tarfile.open(fileobj=tar) as tf:
        member = tf.extractfile(inline.name)
        assert member is not None and member.read() == b"FROM a\n"

    (tmp_path / "outside.df").write_text("FROM b\n")
    outside = plan_context(BuildConfig(context=str(ctx), dockerfile="../outside.df"))
    assert outside.content == "FROM b\n" and outside.name.startswith(".dockerfile.")

    with pytest.raises(BuildFailed, match="no such Dockerfile"):
        plan_context(BuildConfig(context=str(ctx), dockerfile="nope.df"))
    with pytest.raises(BuildFailed, match="is not a directory"):
        plan_context(BuildConfig(context=str(tmp_path / "missing")))


def test_dockerignore_semantics_in_the_context(tmp_path: Path) -> None:
    for name in ("Dockerfile", "x.log", "keep.log", "a/b/deep.log", "a/b/file.txt", "logs/1"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".dockerignore").write_text("**/*.log\n!keep.log\nlogs\n")
    plan = plan_context(BuildConfig(context=str(tmp_path)))
    with context_tar(plan) as tar, tarfile.open(fileobj=tar) as tf:
        names = sorted(tf.getnames())
    assert names == [".dockerignore", "Dockerfile", "a", "a/b", "a/b/file.txt", "keep.log"]


def test_build_params() -> None:
    config = BuildConfig(
        context=".", args={"A": "1"}, target="t", labels={"l": "v"}, no_cache=True, pull=True
    )
    params = build_params(config)
    assert params["buildargs"] == {"A": "1"} and params["target"] == "t"
    assert params["labels"] == {"l": "v"} and params["nocache"] and params["pull"]
    assert build_params(BuildConfig(context="."))["buildargs"] is None


def test_push_stream() -> None:
    events: list[PushEvent] = []
    stream = PushStream("127.0.0.1:5000/a/b:1", events.append)
    for m in [
        {"status": "The push refers to repository [127.0.0.1:5000/a/b]"},
        {"status": "Preparing", "progressDetail": {}, "id": "aaa"},
        {"status": "Preparing", "progressDetail": {}, "id": "bbb"},
        {"status": "Preparing", "progressDetail": {}, "id": "ccc"},
        {"status": "Pushing", "progressDetail": {"current": 512, "total": 2048}, "id": "aaa"},
        {"status": "Pushing", "progressDetail": {"current": 2048, "total": 2048}, "id": "aaa"},
        {"status": "Pushed", "progressDetail": {}, "id": "aaa"},
        {"status": "Layer already exists", "progressDetail": {}, "id": "bbb"},
        {"status": "Mounted from a/c", "progressDetail": {}, "id": "ccc"},
        {"status": "1: digest: sha256:" + "f" * 64 + " size: 527"},
        {"progressDetail": {}, "aux": {"Tag": "1", "Digest": "sha256:" + "f" * 64, "Size": 527}},
    ]:
        stream.feed(m)
    assert stream.digest == "sha256:" + "f" * 64
    assert [(e.kind, e.digest, e.size, e.state) for e in events] == [
        ("layer", "aaa", 2048, "uploading"),
        ("layer", "aaa", 2048, "uploaded"),
        ("layer", "bbb", 0, "exists"),
        ("layer", "ccc", 0, "mounted"),
        ("manifest", "sha256:" + "f" * 64, 527, "pushed"),
    ]


def test_push_failures() -> None:
    ref = "127.0.0.1:1/a/b:1"
    refused = 'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused'
    e = push_failure(ref, refused)
    assert isinstance(e, TransientError)
    assert e.message.startswith("docker: cannot push 127.0.0.1:1/a/b:1: registry 127.0.0.1:1 ")
    assert "unreachable" in e.message
    missing = push_failure(ref, "An image does not exist locally with the tag: 127.0.0.1:1/a/b")
    assert isinstance(missing, NotFound)
    denied = push_failure(ref, "denied: requested access to the resource is denied")
    assert type(denied) is PermanentError
    stream = PushStream(ref)
    with pytest.raises(TransientError, match="unreachable"):
        stream.feed({"errorDetail": {"message": refused}, "error": refused})
