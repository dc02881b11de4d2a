"""The BuildKit syntax the native builder takes beyond the classic builder's: parser
directives (`# escape=`, `# syntax=`), heredoc flags (`<<-`, quoted names) and their
expansion, `RUN --mount` specs and their part in the cache key, the mount points a RUN's
mounts leave (dropped from the layer), and the docker runtime's located refusal of what
dockerd's classic builder cannot build."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyapply.runtime.base import BuildFailed
from pyapply.runtime.docker.build import refuse_classic_limits
from pyapply.runtime.native.build import words
from pyapply.runtime.native.build.builder import run_argv
from pyapply.runtime.native.build.layertar import drop_mount_stubs
from pyapply.runtime.native.build.mounts import MountSpec, mount_flags, parse_mount, parse_size
from pyapply.runtime.native.build.parse import directives, parse_text
from pyapply.runtime.native.build.state import StageState, apply_metadata

# -- directives ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("# escape=`\nFROM a\n", {"escape": "`"}),
        ("# syntax=docker/dockerfile:1\n#Escape = `\nFROM a\n", {"syntax": "docker/dockerfile:1", "escape": "`"}),
        ("\ufeff# escape=`\nFROM a\n", {"escape": "`"}),
        # an unknown name, a plain comment or an instruction ends the directives
        ("# foo=bar\n# escape=`\nFROM a\n", {}),
        ("# a comment\n# escape=`\nFROM a\n", {}),
        ("FROM a\n# escape=`\n", {}),
    ],
)  # fmt: skip
def test_directives_are_read_as_buildkit_reads_them(text: str, found: dict[str, str]) -> None:
    assert directives(text) == found


def test_the_escape_directive_changes_continuations_and_word_processing() -> None:
    df = parse_text(
        "# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nENV WIN=C:\\dir\\sub Q=a`$b\n"
        "RUN echo one `\n  two\n"
    )
    assert df.escape == "`"
    st = StageState(name=None, base_id="", escape=df.escape)
    env, run = df.stages[0].instructions
    apply_metadata(env, st, "Dockerfile:4")
    assert st.env_map() == {"WIN": "C:\\dir\\sub", "Q": "a$b"}
    assert run.line == 5 and run_argv(run, st) == ["/bin/sh", "-c", "echo one   two"]
    # the default escape: the backslash, and a backtick is a plain character
    assert parse_text("FROM a\n").escape == "\\"
    assert words.process("a`$b", {"b": "B"}) == "a`B"


def test_a_bad_escape_directive_is_located() -> None:
    with pytest.raises(BuildFailed) as info:
        parse_text("# escape=x\nFROM a\n")
    assert info.value.where == "Dockerfile:1" and "invalid escape token" in str(info.value)


# -- heredocs --------------------------------------------------------------------------------


def test_heredoc_flags_come_from_their_markers() -> None:
    df = parse_text(
        "FROM a\n"
        "COPY <<EOF <<-\"RAW\" 3<<'Q' /dest/\nhello $X\nEOF\n\t\traw $X\n\tRAW\nq $X\nQ\n"
        "RUN <<-EOF\n\techo x\n\tEOF\n"
    )
    copy, run = df.stages[0].instructions
    first, raw, quoted = copy.heredocs
    assert (first.name, first.chomp, first.expand, first.body()) == (
        "EOF",
        False,
        True,
        "hello $X\n",
    )
    assert (raw.name, raw.chomp, raw.expand, raw.body()) == ("RAW", True, False, "raw $X\n")
    assert (quoted.name, quoted.expand) == ("Q", False)
    # a RUN made of one `<<-` heredoc runs it with its tabs stripped
    st = StageState(name=None, base_id="")
    assert run_argv(run, st) == ["/bin/sh", "-c", "echo x\n"]


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ('"quoted" $X and ${Y:-dflt}\n', '"quoted" 1 and dflt\n'),
        ("'single' \\$X \\\\ \\n\n", "'single' $X \\ \\n\n"),
        ("$ alone, ${X}${X}", "$ alone, 11"),
    ],
)
def test_heredoc_content_is_expanded_as_a_shell_heredoc(text: str, out: str) -> None:
    assert words.expand_heredoc(text, {"X": "1"}) == out


# -- RUN --mount -----------------------------------------------------------------------------


def _mount(raw: str, env: dict[str, str] | None = None) -> MountSpec:
    st = StageState(name=None, base_id="", args=dict(env or {}))
    return parse_mount(raw, lambda v: st.expand(v, "Dockerfile:3"), "/work", "Dockerfile:3")


def test_mount_specs() -> None:
    assert _mount("target=/src") == MountSpec("bind", "/src", source="/", read_only=True)
    bind = _mount("type=bind,from=build,src=/out,dst=rel,rw")
    assert bind == MountSpec("bind", "/work/rel", source="/out", from_ref="build", read_only=False)
    cache = _mount("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1000,gid=1000")
    assert cache == MountSpec(
        "cache", "/root/.cache", id="/root/.cache", sharing="locked", mode=0o700, uid=1000, gid=1000
    )
    assert _mount("type=cache,id=$NAME,target=/c", {"NAME": "pip"}).id == "pip"
    assert _mount('type=tmpfs,"target=/t",size=64m') == MountSpec("tmpfs", "/t", size=64 << 20)
    assert mount_flags(("--network=none", "--mount=target=/a", "--mount=type=tmpfs,target=/b")) == [
        "target=/a",
        "type=tmpfs,target=/b",
    ]
    assert _mount("type=secret,id=tok") == MountSpec(
        "secret", "/run/secrets/tok", id="tok", mode=0o400, read_only=True
    )
    assert _mount("type=secret,target=/etc/key,required,mode=0440,gid=5") == MountSpec(
        "secret", "/etc/key", id="key", mode=0o440, gid=5, required=True, read_only=True
    )
    assert parse_size("1024", "x") == 1024 and parse_size("1GiB", "x") == 1 << 30


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("type=secret", "needs an id or a target"),
        ("type=secret,id=x,size=1", "type=secret does not take size"),
        ("type=ssh", "type=ssh is not supported"),
        ("type=volume,target=/x", "unknown mount type"),
        ("type=cache", "needs a target"),
        ("type=bind,target=/", "cannot be mounted at /"),
        ("type=tmpfs,target=/t,source=x", "type=tmpfs does not take source"),
        ("type=cache,target=/c,sharing=all", "shared, private or locked"),
        ("type=cache,target=/c,uid=me", "uid='me' is not a number"),
        ("type=cache,target=/c,from=build", "seeded from a stage"),
        ("type=bind,target=/c,ro=maybe", "true or false"),
        ("type=tmpfs,target=/t,size=lots", "invalid size"),
        ("type=bind,target", "target needs a value"),
    ],
)
def test_bad_mount_specs_are_located(raw: str, message: str) -> None:
    with pytest.raises(BuildFailed) as info:
        _mount(raw)
    assert info.value.where == "Dockerfile:3" and message in str(info.value)


def test_mount_specs_take_part_in_the_key() -> None:
    texts = {
        _mount(r).key_text()
        for r in (
            "target=/a",
            "target=/a,rw",
            "target=/b",
            "target=/a,source=sub",
            "target=/a,from=x",
            "type=cache,target=/a",
            "type=cache,target=/a,id=other",
            "type=cache,target=/a,uid=1",
            "type=tmpfs,target=/a",
            "type=tmpfs,target=/a,size=1k",
            "type=secret,id=a",
            "type=secret,id=a,required",
        )
    }
    assert len(texts) == 12


def test_the_mount_points_of_a_runs_mounts_leave_no_trace(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "root").mkdir(parents=True)
    (lower / "root").chmod(0o700)
    (lower / "srv").mkdir()
    (lower / "srv" / "kept").mkdir()
    # runc made /root/.cache/pip (a copy-up of /root), /ctx and /data/x/y; /srv/kept is
    # a mount target the image has; /data/keep.txt was written by the RUN
    (upper / "root" / ".cache" / "pip").mkdir(parents=True)
    (upper / "root").chmod(0o700)
    (upper / "ctx").mkdir()
    (upper / "data" / "x" / "y").mkdir(parents=True)
    (upper / "data" / "keep.txt").write_text("made by the step")
    (upper / "file-target").write_text("")
    (upper / "srv" / "kept").mkdir(parents=True)
    targets = ["/root/.cache/pip", "/ctx", "/data/x/y", "/file-target", "/srv/kept"]
    drop_mount_stubs(str(upper), [str(lower)], targets)
    left = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert left == ["data", "data/keep.txt", "srv", "srv/kept"]


# -- the docker runtime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a\nRUN true\nCOPY <<EOF /x\nhi\nEOF\n", "Dockerfile:3: COPY with a heredoc needs BuildKit"),
        ("FROM a\nRUN <<EOF\necho\nEOF\n", "Dockerfile:2: RUN with a heredoc needs BuildKit"),
        ("FROM a\nRUN --mount=target=/s make\n", "Dockerfile:2: RUN --mount=target=/s needs BuildKit"),
    ],
)  # fmt: skip
def test_the_classic_builder_refuses_buildkit_syntax_at_its_line(text: str, message: str) -> None:
    with pytest.raises(BuildFailed) as info:
        refuse_classic_limits(text, "Dockerfile")
    assert str(info.value).startswith(message) and info.value.where == message.split(": ")[0]
    assert "native runtime" in str(info.value)


def test_the_classic_builder_takes_the_rest() -> None:
    refuse_classic_limits("# escape=`\nFROM a\nRUN echo `\n  b\nCOPY x /y\n", "Dockerfile")
    refuse_classic_limits("FROM a\nRUN <<-broken\n", "Dockerfile")  # left to dockerd's parser
