"""`.dockerignore` matching with Docker's rules (runtime/native/build/dockerignore.py)."""

from __future__ import annotations

import pytest

from pyapply.runtime.native.build.dockerignore import Matcher, clean


def m(text: str) -> Matcher:
    return Matcher.from_text(text)


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        ("foo", "foo", True),
        ("foo", "foo/bar/baz", True),  # a matched directory takes everything below it
        ("foo", "a/foo", False),  # anchored at the root, unlike gitignore
        ("*.log", "x.log", True),
        ("*.log", "dir/x.log", False),  # '*' never crosses '/'
        ("**/*.log", "dir/sub/x.log", True),
        ("**/*.log", "x.log", True),  # '**/' is zero or more directories
        ("dir/**", "dir/a/b", True),
        ("dir/**", "other/a", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[ab]x", "bx", True),
        ("[!ab]x", "cx", True),
        ("[!ab]x", "ax", False),
        ("/abs/./x/", "abs/x", True),  # cleaned like a path, leading '/' dropped
        ("# comment\n\n  spaced  ", "spaced", True),
        ("*\n!keep", "keep", False),  # the last match decides
        ("*\n!keep", "other", True),
        ("docs\n!docs/README.md", "docs/README.md", False),
        ("docs\n!docs/README.md", "docs/other.md", True),
        ("!x\nx", "x", True),
        (r"a\*b", "a*b", True),
        (r"a\*b", "axb", False),
    ],
)
def test_docker_semantics(patterns: str, path: str, excluded: bool) -> None:
    assert m(patterns).excluded(path) is excluded


def test_the_root_is_never_excluded() -> None:
    assert m("*").excluded(".") is False


def test_clean() -> None:
    assert clean("./a//b/../c/") == "a/c"
    assert clean("") == "."
    assert clean("/") == "."


def test_an_excluded_directory_is_entered_only_for_an_exception_below_it() -> None:
    assert m("docs\n!docs/README.md").may_reinclude_below("docs") is True
    assert m("docs\n!src/x").may_reinclude_below("docs") is False
    assert m("docs").may_reinclude_below("docs") is False
    assert m("docs\n!**/*.md").may_reinclude_below("docs") is True
