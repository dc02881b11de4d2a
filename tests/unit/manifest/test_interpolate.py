"""Compose-style interpolation and `.env` parsing (reconciler/manifest/interpolate.py)."""

from __future__ import annotations

import pytest

from pyapply.reconciler.manifest.interpolate import (
    DotenvProblem,
    Interpolated,
    InterpolationError,
    interpolate,
    parse_dotenv,
)

ENV = {"SET": "value", "EMPTY": "", "B": "bee", "PORT": "8080"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no variables", "no variables"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("a-$SET-b", "a-value-b"),
        ("$SET.txt", "value.txt"),
        ("${SET}x", "valuex"),
        ("$$", "$"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: $$5", "cost: $5"),
        ("${SET:-default}", "value"),
        ("${EMPTY:-default}", "default"),
        ("${UNSET:-default}", "default"),
        ("${SET-default}", "value"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${UNSET:-}", ""),
        ("${UNSET:-with spaces and : colons}", "with spaces and : colons"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${SET+alt}", "alt"),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${SET:?must be set}", "value"),
        ("${EMPTY?must be set}", ""),
        # nested defaults, expanded only when used
        ("${UNSET:-${B}}", "bee"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${SET:-${UNSET:?never evaluated}}", "value"),
        ("${UNSET:-x$$y}", "x$y"),
        ("${UNSET:+${B}}", ""),
        ("${SET:+port ${PORT}}", "port 8080"),
        ("127.0.0.1:${PORT}:80", "127.0.0.1:8080:80"),
        ("${PORT}-${PORT}", "8080-8080"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, ENV).value == expected


@pytest.mark.parametrize(
    ("text", "unset"),
    [
        ("$UNSET", ("UNSET",)),
        ("${UNSET}", ("UNSET",)),
        ("$UNSET and ${UNSET} and $OTHER", ("UNSET", "OTHER")),
        ("${UNSET:-default}", ()),
        ("${UNSET-default}", ()),
        ("${UNSET:+alt}", ()),
        ("${UNSET:-$DEEP}", ("DEEP",)),
        ("$$UNSET", ()),
    ],
)
def test_unset_variables_are_reported(text: str, unset: tuple[str, ...]) -> None:
    assert interpolate(text, ENV).unset == unset


def test_unset_variable_is_empty() -> None:
    assert interpolate("a${UNSET}b", {}) == Interpolated("ab", ("UNSET",))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${UNSET:?please set UNSET}", 'required variable "UNSET" is not set: please set UNSET'),
        ("${UNSET?}", 'required variable "UNSET" is not set'),
        ("${EMPTY:?cannot be empty}", 'required variable "EMPTY" is empty: cannot be empty'),
        ("${UNSET:?need ${B}}", 'required variable "UNSET" is not set: need bee'),
        ("${SET", 'invalid interpolation "${SET": missing "}"'),
        ("${}", 'invalid interpolation "${}": expected a variable name'),
        ("${1A}", 'invalid interpolation "${1A}": expected a variable name'),
        (
            "${SET!x}",
            'invalid interpolation "${SET!x}": expected "}", ":-", "-", ":?", "?", ":+" or "+" '
            'after "SET"',
        ),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate(text, ENV)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the spec's interpolation section: only `$NAME`, `${...}` and `$$` are special; the
        # reference loader's pattern matches nothing else, so any other `$` stays as written
        ("echo costs $ 5", "echo costs $ 5"),
        ("price $", "price $"),
        ("echo $1", "echo $1"),
        ("^/api/.*$", "^/api/.*$"),
        ("a $- b $SET", "a $- b value"),
        ("$.path", "$.path"),
    ],
)
def test_dollar_that_starts_no_variable_is_kept(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == Interpolated(expected)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('${JSON:-{"a":1}}', {}, '{"a":1}'),
        ('${JSON:-{"a":1}}', {"JSON": "[]"}, "[]"),
        ('${JSON:-{"a":{"b":2}}}x', {"JSON": "set"}, "setx"),
        ('${JSON:-{"a":{"b":2}}}x', {}, '{"a":{"b":2}}x'),
        ("${SET:+{${B}}}", {"SET": "1", "B": "bee"}, "{bee}"),
        ("{${SET}}", {"SET": "v"}, "{v}"),
    ],
)
def test_default_with_braces_ends_at_its_closing_brace(
    text: str, env: dict[str, str], expected: str
) -> None:
    assert interpolate(text, env).value == expected


def test_required_error_inside_default_is_raised_when_used() -> None:
    with pytest.raises(InterpolationError, match='"INNER" is not set: inner'):
        interpolate("${OUTER:-${INNER:?inner}}", {})


# ---------------------------------------------------------------------------------------------
# .env files


def test_dotenv_forms() -> None:
    text = "\n".join(
        [
            "# a comment",
            "",
            "PLAIN=value",
            "SPACED = spaced out  ",
            "export EXPORTED=yes",
            "EMPTY=",
            "COMMENTED=kept # dropped",
            "HASH=a#b",
            "SINGLE='literal $PLAIN # not a comment'",
            'DOUBLE="line\\nbreak and $PLAIN"',
            'ESCAPED="\\$PLAIN \\"quoted\\""',
            "REF=${PLAIN}-x",
            "DEFAULTED=${NOPE:-fallback}",
            "FROM_ENV=$OUTER",
            "dotted.key=1",
            'MULTI="first',
            'second"',
            "AFTER=after",
            "BARE_FROM_ENV",
            "BARE_UNSET",
        ]
    )
    values, problems = parse_dotenv(text, {"OUTER": "outer", "BARE_FROM_ENV": "bare"})
    assert problems == []
    assert values == {
        "PLAIN": "value",
        "SPACED": "spaced out",
        "EXPORTED": "yes",
        "EMPTY": "",
        "COMMENTED": "kept",
        "HASH": "a#b",
        "SINGLE": "literal $PLAIN # not a comment",
        "DOUBLE": "line\nbreak and value",
        "ESCAPED": '$PLAIN "quoted"',
        "REF": "value-x",
        "DEFAULTED": "fallback",
        "FROM_ENV": "outer",
        "dotted.key": "1",
        "MULTI": "first\nsecond",
        "AFTER": "after",
        "BARE_FROM_ENV": "bare",
    }


def test_dotenv_environment_wins_in_references() -> None:
    values, _ = parse_dotenv("A=file\nB=${A}", {"A": "env"})
    assert values == {"A": "file", "B": "env"}


def test_dotenv_problems_name_the_line() -> None:
    text = "GOOD=1\nnot a line\n  BAD KEY=1\nQ='open\nX=${Y:?needed}\n"
    values, problems = parse_dotenv(text)
    assert values == {"GOOD": "1"}
    assert problems == [
        DotenvProblem(2, 1, '"not a line" is not a KEY=VALUE line'),
        DotenvProblem(3, 3, '"BAD KEY=1" is not a KEY=VALUE line'),
        DotenvProblem(4, 1, "unterminated ' quote"),
    ]


def test_dotenv_interpolation_error() -> None:
    _, problems = parse_dotenv("X=${Y:?needed}")
    assert problems == [DotenvProblem(1, 1, 'X: required variable "Y" is not set: needed')]


def test_dotenv_text_after_closing_quote() -> None:
    _, problems = parse_dotenv("A='x' y")
    assert problems == [DotenvProblem(1, 1, 'unexpected text after the closing quote of "A"')]


def test_dotenv_follows_the_reference_parser() -> None:
    # the forms compose's dotenv parser accepts (issue 16): `\'` inside single quotes,
    # `export KEY=`, `KEY: value`, keys starting with a digit, the C escapes \a \b \f \v in
    # double quotes, and `#` starting a comment only after whitespace
    text = "\n".join(
        [
            "SINGLE='it\\'s here'",
            "export EXPORTED=",
            "COLON: colon value",
            "COLON_QUOTED: 'quoted: yes'",
            "1STARTS_WITH_DIGIT=digit",
            'ESCAPES="\\a\\b\\f\\v\\t|"',
            "URL=http://host:80/x#frag",
            "COMMENT=value #comment",
            "TAB_COMMENT=value\t#comment",
            "NO_SPACE=value#not-a-comment",
        ]
    )
    values, problems = parse_dotenv(text, {})
    assert problems == []
    assert values == {
        "SINGLE": "it's here",
        "EXPORTED": "",
        "COLON": "colon value",
        "COLON_QUOTED": "quoted: yes",
        "1STARTS_WITH_DIGIT": "digit",
        "ESCAPES": "\a\b\f\v\t|",
        "URL": "http://host:80/x#frag",
        "COMMENT": "value",
        "TAB_COMMENT": "value",
        "NO_SPACE": "value#not-a-comment",
    }
