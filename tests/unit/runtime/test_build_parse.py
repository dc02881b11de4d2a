"""Dockerfile parsing (BuildKit's parser through the `dockerfile` wheel), word processing
and the metadata instructions (runtime/native/build/parse.py, words.py, state.py)."""

from __future__ import annotations

import json

import pytest

from pyapply.runtime.base import BuildFailed
from pyapply.runtime.native.build import words
from pyapply.runtime.native.build.builder import run_argv
from pyapply.runtime.native.build.parse import parse_text
from pyapply.runtime.native.build.state import (
    DEFAULT_PATH,
    StageState,
    apply_metadata,
    duration_ns,
    image_config_json,
)


def test_stages_lines_flags_and_heredocs() -> None:
    df = parse_text(
        "ARG BASE=busybox\n"
        "FROM $BASE AS Build\n"
        "RUN <<EOF\necho hi\nEOF\n"
        "FROM --platform=linux/amd64 scratch\n"
        "COPY --from=build --chown=1:2 /a /b/\n"
    )
    assert [a.original for a in df.meta_args] == ["ARG BASE=busybox"]
    build, final = df.stages
    assert (build.name, build.base, build.line) == ("build", "$BASE", 2)
    run = build.instructions[0]
    assert run.cmd == "RUN" and run.line == 3 and run.heredocs[0].content == "echo hi\n"
    assert final.platform == "linux/amd64"
    copy = final.instructions[0]
    assert copy.flag("from") == "build" and copy.flag("chown") == "1:2" and copy.line == 7
    assert df.stage("BUILD") is build and df.stage("1") is final


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("FROM a\nRUN x\nRUN <<EOF\necho\n", "Dockerfile:3", "unterminated heredoc"),
        ("FROM a\nFOO bar\n", "Dockerfile:2", "unknown instruction"),
        ("RUN x\n", "Dockerfile:1", "before the first FROM"),
        ("FROM a AS x\nFROM b AS x\n", "Dockerfile:2", "duplicate stage name"),
        ("FROM a\nENV\n", "Dockerfile:2", "requires at least one argument"),
        ("FROM a\nONBUILD FROM b\n", "Dockerfile:2", "not allowed in ONBUILD"),
    ],
)
def test_errors_name_the_line(text: str, where: str, message: str) -> None:
    with pytest.raises(BuildFailed) as info:
        parse_text(text)
    assert info.value.where == where
    assert message in str(info.value) and str(info.value).startswith(where + ":")


def test_no_from_is_an_error() -> None:
    with pytest.raises(BuildFailed, match="no FROM"):
        parse_text("ARG X=1\n")


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("plain", "plain"),
        ('"a b"', "a b"),
        ("'$X'", "$X"),
        ('"$X-${Y}"', "1-two"),
        ("${UNSET:-dflt}", "dflt"),
        ("${X:+set}", "set"),
        ("${UNSET:+set}", ""),
        (r"a\ b", "a b"),
        (r'"q\"q"', 'q"q'),
        ("$", "$"),
    ],
)
def test_word_processing(text: str, out: str) -> None:
    assert words.process(text, {"X": "1", "Y": "two"}) == out


def test_unterminated_quote() -> None:
    with pytest.raises(words.WordError):
        words.process('"open', {})


def _state() -> StageState:
    return StageState(name=None, base_id="", args={"V": "9"})


def _apply(st: StageState, line: str) -> None:
    df = parse_text("FROM scratch\n" + line + "\n")
    apply_metadata(df.stages[0].instructions[0], st, "Dockerfile:2")


def test_metadata_instructions_make_the_config() -> None:
    st = _state()
    for line in [
        'ENV A=1 B="two words" C=$V',
        'LABEL "k 1"="v 1" x=$V',
        "USER app:app",
        "EXPOSE 80 53/udp",
        'VOLUME ["/data"]',
        "CMD echo hi",
        "HEALTHCHECK --interval=2s --timeout=1s --retries=3 CMD test -f /x",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN make",
    ]:
        _apply(st, line)
    cfg = st.config
    assert cfg["Env"] == ["A=1", "B=two words", "C=9"]
    assert cfg["Labels"] == {"k 1": "v 1", "x": "9"}
    assert cfg["User"] == "app:app"
    assert cfg["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert cfg["Volumes"] == {"/data": {}}
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test -f /x"],
        "Interval": 2_000_000_000,
        "Timeout": 1_000_000_000,
        "Retries": 3,
    }
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["OnBuild"] == ["RUN make"]
    doc = json.loads(image_config_json(st, platform={"os": "linux"}, epoch=0, labels={"l": "1"}))
    assert doc["created"] == "1970-01-01T00:00:00Z"
    assert doc["config"]["Labels"] == {"k 1": "v 1", "x": "9", "l": "1"}


def test_entrypoint_drops_the_inherited_cmd_and_shell_changes_the_wrapper() -> None:
    st = _state()
    st.config["Cmd"] = ["inherited"]
    _apply(st, 'SHELL ["/bin/bash", "-c"]')
    _apply(st, "ENTRYPOINT run me")
    assert st.config["Entrypoint"] == ["/bin/bash", "-c", "run me"]
    assert st.config["Cmd"] is None


def test_run_forms() -> None:
    st = _state()
    ins = (
        parse_text(
            'FROM a\nRUN ["echo", "x"]\nRUN echo $V\nRUN <<EOF\nid\nEOF\n'
            "RUN cat <<EOF > /f\nbody\nEOF\n"
        )
        .stages[0]
        .instructions
    )
    assert run_argv(ins[0], st) == ["echo", "x"]
    assert run_argv(ins[1], st) == ["/bin/sh", "-c", "echo $V"]
    assert run_argv(ins[2], st) == ["/bin/sh", "-c", "id\n"]
    assert run_argv(ins[3], st) == ["/bin/sh", "-c", "cat <<EOF > /f\nbody\nEOF\n"]


def test_durations() -> None:
    assert duration_ns("1m30s", "w") == 90 * 10**9
    assert duration_ns("100ms", "w") == 10**8
    with pytest.raises(BuildFailed):
        duration_ns("5 s", "w")


def test_the_environment_of_a_run() -> None:
    """ENV wins over an ARG of the same name; args ENV does not set are added; proxy args
    given with --build-arg reach a RUN without an ARG line; PATH is always set."""
    st = StageState(name=None, base_id="", args={"A": "arg", "B": "b"})
    st.config["Env"] = ["A=env"]
    env = st.run_env({"http_proxy": "http://proxy:3128"})
    assert env == ["PATH=" + DEFAULT_PATH, "A=env", "B=b", "http_proxy=http://proxy:3128"]
    assert "PATH=/x" in StageState(name=None, base_id="", config={"Env": ["PATH=/x"]}).run_env({})
