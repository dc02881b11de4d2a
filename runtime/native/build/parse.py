"""A Dockerfile as stages of instructions, parsed by the official BuildKit parser (the
`dockerfile` package on PyPI, a wheel of moby/buildkit's Go parser), with line numbers and
heredocs. Our part is only what the parser leaves to the builder: the instructions it does
not know, the stages, and where a syntax error is (the Go parser's message has no line, so
the first line at which a growing prefix of the file stops parsing names it).

Parser directives (`# escape=`, `# syntax=` in the comments that open the file):
the parser honours `escape` itself (line continuations); the builder needs it again for word
processing, so `directives` reads them the way BuildKit does. `syntax` names a frontend
image BuildKit would run; this builder has one frontend, so it is read and ignored.

Heredocs: the parser gives each one's name and content; whether it was `<<-` (leading tabs
stripped) and whether its name was quoted (no expansion of its content) are read back from
the instruction's words here.

Pure: text in, `Dockerfile` out, `BuildFailed(where="Dockerfile:LINE")` for bad input.
"""

from __future__ import annotations

import re

import dockerfile
import msgspec

from pyapply.runtime.base import BuildFailed

INSTRUCTIONS = frozenset(
    {
        "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
        "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
        "HEALTHCHECK", "SHELL",
    }
)  # fmt: skip
# What a stage's instructions may be (FROM starts one; ARG may also come before the first).
_NOT_IN_ONBUILD = frozenset({"ONBUILD", "FROM", "MAINTAINER"})


# BuildKit's directive line (frontend/dockerfile/parser/directives.go's pattern)
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
# the ones the wheel's parser knows; another name ends the directives, as it does there
KNOWN_DIRECTIVES = frozenset({"escape", "syntax"})
# a heredoc marker in an instruction's words: [fd]<<[-]NAME, NAME maybe quoted
_HEREDOC_MARK = re.compile(r"(\d*)<<(-?)\s*(\"[^\"\n]*\"|'[^'\n]*'|[^\s<>;&|]+)")


class Heredoc(msgspec.Struct, frozen=True):
    name: str
    content: str
    fd: int = 0
    chomp: bool = False  # `<<-`: leading tabs of every line are stripped
    expand: bool = True  # an unquoted name: $VARs in the content are expanded

    def body(self) -> str:
        """The content, its lines' leading tabs stripped for `<<-`."""
        if not self.chomp:
            return self.content
        return re.sub(r"(?m)^\t+", "", self.content)


def directives(text: str) -> dict[str, str]:
    """The parser directives at the top of a Dockerfile (lower-case names): the leading
    `# name=value` comments of known names, up to the first line that is not one."""
    found: dict[str, str] = {}
    for line in text.removeprefix("\ufeff").splitlines():
        m = _DIRECTIVE.match(line)
        if m is None or m.group(1).lower() not in KNOWN_DIRECTIVES:
            break
        found.setdefault(m.group(1).lower(), m.group(2))
    return found


class Instruction(msgspec.Struct, frozen=True):
    """One instruction as the parser gave it (`cmd` upper-case)."""

    cmd: str
    line: int
    original: str
    value: tuple[str, ...]
    flags: tuple[str, ...] = ()
    json: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    sub_cmd: str | None = None  # ONBUILD's instruction

    def flag(self, name: str) -> str | None:
        """The value of `--name=value` (the last one given), None when absent; `--name`
        alone is "true"."""
        found: str | None = None
        for f in self.flags:
            key, eq, value = f.removeprefix("--").partition("=")
            if key == name:
                found = value if eq else "true"
        return found

    def flag_names(self) -> list[str]:
        return [f.removeprefix("--").partition("=")[0] for f in self.flags]

    @property
    def text(self) -> str:
        """The instruction on one line, as progress and history show it."""
        first = self.original.splitlines()[0] if self.original else self.cmd
        return first.strip()


class Stage(msgspec.Struct):
    index: int
    base: str  # as written (may hold $ARGs)
    name: str | None  # lower-cased, as stage names are compared
    line: int
    platform: str | None = None
    instructions: list[Instruction] = msgspec.field(default_factory=list)
    from_instruction: Instruction | None = None


class Dockerfile(msgspec.Struct):
    meta_args: list[Instruction]  # ARGs before the first FROM
    stages: list[Stage]
    name: str = "Dockerfile"
    escape: str = "\\"  # the `# escape=` directive's character

    def stage(self, ref: str) -> Stage | None:
        """The stage named `ref` (case-insensitive), or the one at index `ref`."""
        want = ref.lower()
        for s in self.stages:
            if s.name == want:
                return s
        if want.isdigit() and int(want) < len(self.stages):
            return self.stages[int(want)]
        return None


def _locate_error(text: str) -> int:
    """The first line at which the file, cut after that line, no longer parses."""
    lines = text.splitlines(keepends=True)
    for n in range(1, len(lines) + 1):
        try:
            dockerfile.parse_string("".join(lines[:n]))
        except dockerfile.GoParseError:
            return n
    return max(len(lines), 1)


def _heredocs(c: dockerfile.Command) -> tuple[Heredoc, ...]:
    """The parser's heredocs, with `chomp` and `expand` read from their markers in the
    instruction's words (in order: the parser gives them in the order they are named)."""
    marks: list[tuple[str, bool, bool]] = []
    for word in c.value:
        for m in _HEREDOC_MARK.finditer(word):
            raw = m.group(3)
            quoted = raw[:1] in ("'", '"')
            marks.append((raw[1:-1] if quoted else raw, m.group(2) == "-", not quoted))
    out = []
    for h in c.heredocs:
        chomp, expand = False, True
        for i, (name, ch, ex) in enumerate(marks):
            if name == h.name:
                chomp, expand = ch, ex
                del marks[i]
                break
        out.append(Heredoc(h.name, h.content, h.file_descriptor, chomp, expand))
    return tuple(out)


def _convert(c: dockerfile.Command) -> Instruction:
    return Instruction(
        cmd=c.cmd.upper(),
        line=c.start_line,
        original=c.original,
        value=tuple(c.value),
        flags=tuple(c.flags),
        json=bool(c.json),
        heredocs=_heredocs(c),
        sub_cmd=c.sub_cmd.upper() if c.sub_cmd else None,
    )


_STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")


def parse_text(text: str, name: str = "Dockerfile") -> Dockerfile:
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as e:
        line = _locate_error(text)
        raise BuildFailed(f"{name}:{line}: {e}", where=f"{name}:{line}") from None
    meta: list[Instruction] = []
    stages: list[Stage] = []
    for c in commands:
        ins = _convert(c)
        where = f"{name}:{ins.line}"
        if ins.cmd not in INSTRUCTIONS:
            raise BuildFailed(f"{where}: unknown instruction: {c.cmd}", where=where)
        if ins.cmd == "ONBUILD" and (ins.sub_cmd is None or ins.sub_cmd in _NOT_IN_ONBUILD):
            raise BuildFailed(
                f"{where}: {ins.sub_cmd or 'nothing'} is not allowed in ONBUILD", where=where
            )
        if ins.cmd == "FROM":
            stages.append(_stage(ins, len(stages), where))
            continue
        if not stages:
            if ins.cmd != "ARG":
                raise BuildFailed(
                    f"{where}: {ins.cmd} before the first FROM (only ARG may come first)",
                    where=where,
                )
            meta.append(ins)
            continue
        needs_value = ins.cmd not in ("HEALTHCHECK",)
        if needs_value and not any(v.strip() for v in ins.value):
            raise BuildFailed(f"{where}: {ins.cmd} requires at least one argument", where=where)
        stages[-1].instructions.append(ins)
    if not stages:
        raise BuildFailed(f"{name}: no FROM instruction (a Dockerfile starts a stage with FROM)")
    seen: dict[str, int] = {}
    for s in stages:
        if s.name is not None:
            if s.name in seen:
                where = f"{name}:{s.line}"
                raise BuildFailed(f"{where}: duplicate stage name {s.name!r}", where=where)
            seen[s.name] = s.index
    escape = directives(text).get("escape", "\\")
    return Dockerfile(meta_args=meta, stages=stages, name=name, escape=escape)


def _stage(ins: Instruction, index: int, where: str) -> Stage:
    value = list(ins.value)
    stage_name: str | None = None
    if len(value) == 3 and value[1].upper() == "AS":
        stage_name = value[2].lower()
        if not _STAGE_NAME.match(stage_name):
            raise BuildFailed(f"{where}: invalid stage name {value[2]!r}", where=where)
        value = value[:1]
    if len(value) != 1:
        raise BuildFailed(f"{where}: FROM takes an image and optionally AS <name>", where=where)
    unknown = [f for f in ins.flag_names() if f != "platform"]
    if unknown:
        raise BuildFailed(f"{where}: FROM does not take --{unknown[0]}", where=where)
    return Stage(
        index=index,
        base=value[0],
        name=stage_name,
        line=ins.line,
        platform=ins.flag("platform"),
        from_instruction=ins,
    )


def parse_trigger(text: str, where: str) -> Instruction:
    """An ONBUILD trigger of a base image, as the instruction it holds."""
    try:
        commands = dockerfile.parse_string(text + "\n")
    except dockerfile.GoParseError as e:
        raise BuildFailed(f"{where}: the base image's ONBUILD {text!r}: {e}", where=where) from None
    if len(commands) != 1 or commands[0].cmd.upper() not in INSTRUCTIONS - _NOT_IN_ONBUILD:
        raise BuildFailed(f"{where}: the base image's ONBUILD {text!r} is not valid", where=where)
    return _convert(commands[0])
