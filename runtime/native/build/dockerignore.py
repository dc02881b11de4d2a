"""`.dockerignore` with Docker's semantics (moby's patternmatcher), as a pure matcher.

Why not a library: `pathspec` implements gitignore, whose rules differ from Docker's (a
pattern without a slash matches at any depth there, only at the context root here; trailing
`/` means directories only there, nothing here); the PyPI packages that claim Docker's rules
are single releases, unmaintained. Docker's rules are short:

- one pattern a line; blank lines and lines starting with `#` are ignored; surrounding
  blanks are trimmed; a leading `!` makes the pattern an exception (re-inclusion);
- a pattern is cleaned like a path (`./a//b/` -> `a/b`, a leading `/` dropped) and matched
  against the whole slash-separated path below the context root, Go `filepath.Match` style:
  `*` any run of characters but `/`, `?` one such character, `[...]` a class, `\\` escapes;
  `**` any number of directories (zero included);
- a pattern that matches a directory matches everything below it;
- the last pattern that matches a path decides: excluded, unless it is an exception.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

import msgspec


class Pattern(msgspec.Struct, frozen=True):
    text: str  # cleaned
    exception: bool
    regex: re.Pattern[str]


def clean(path: str) -> str:
    """Go's filepath.Clean, relative to the root: '' and '.' become '.'."""
    p = posixpath.normpath("/" + path.strip()).lstrip("/")
    return p or "."


def _class(pat: str, i: int) -> tuple[str, int]:
    """A `[...]` class starting at `i`; returns its regex and the index after it."""
    j = i + 1
    negate = j < len(pat) and pat[j] in "!^"
    if negate:
        j += 1
    body: list[str] = []
    first = True
    while j < len(pat) and (pat[j] != "]" or first):
        c = pat[j]
        if c == "\\" and j + 1 < len(pat):
            body.append(re.escape(pat[j + 1]))
            j += 2
        else:
            body.append(c if c == "-" else re.escape(c))
            j += 1
        first = False
    if j >= len(pat):  # no closing bracket: a literal '['
        return re.escape("["), i + 1
    # a class never matches the separator, as in Go's filepath.Match
    if negate:
        return "[^/" + "".join(body) + "]", j + 1
    return "(?!/)[" + "".join(body) + "]", j + 1


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regex of one cleaned pattern, matching a whole relative path."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            while i < n and pattern[i] == "*":
                i += 1
            if i < n and pattern[i] == "/":
                out.append("(?:.*/)?")  # '**/' : zero or more directories
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            rx, i = _class(pattern, i)
            out.append(rx)
            continue
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def parse(text: str) -> list[Pattern]:
    """The patterns of a .dockerignore file's text."""
    out: list[Pattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                continue
        cleaned = clean(line)
        out.append(Pattern(cleaned, exception, compile_pattern(cleaned)))
    return out


class Matcher:
    """Decides which paths of a context are excluded."""

    def __init__(self, patterns: Iterable[Pattern]) -> None:
        self.patterns = list(patterns)
        self.has_exceptions = any(p.exception for p in self.patterns)

    @classmethod
    def from_text(cls, text: str) -> Matcher:
        return cls(parse(text))

    def excluded(self, path: str) -> bool:
        """Whether `path` (relative to the context, '/'-separated) is excluded: the last
        pattern matching it, or one of its parent directories, decides."""
        rel = clean(path)
        if rel == ".":
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        verdict = False
        for p in self.patterns:
            if any(p.regex.match(prefix) for prefix in prefixes):
                verdict = not p.exception
        return verdict

    def may_reinclude_below(self, directory: str) -> bool:
        """Whether an exception could re-include something below an excluded directory (so
        the walk must still enter it)."""
        if not self.has_exceptions:
            return False
        rel = clean(directory)
        for p in self.patterns:
            if not p.exception:
                continue
            # an exception whose fixed leading part lies inside (or above) the directory
            head = re.split(r"[*?\[\\]", p.text, maxsplit=1)[0]
            if head.startswith(rel + "/") or (rel + "/").startswith(head) or head == "":
                return True
        return False
