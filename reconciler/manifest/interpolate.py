"""Variable interpolation as compose does it, and the `.env` files that feed it.

A manifest's string values may refer to variables: `$VAR`, `${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}`, and `$$`
for a literal dollar sign. Defaults, alternatives and messages may themselves contain
interpolations (`${A:-${B}}`) and balanced braces (`${JSON:-{"a":1}}`); they are only
expanded when used. The colon forms treat an empty variable like an unset one. A `$` that
starts no variable (`costs $ 5`) is kept as written.

Everything here is pure: the caller passes the variables in, and receives the unset ones back
so that it can warn about them where they were written.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Mapping

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.yamlpos import MAX_DEPTH, MAX_EXPANDED_CHARS

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# the reference parser takes any key without blanks; keys may start with a digit
_DOTENV_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_SEPARATOR = re.compile(r"[=:]")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(PyapplyError, ValueError):
    """The text cannot be interpolated; the message is a sentence meant for a person."""


class Interpolated(msgspec.Struct, frozen=True):
    value: str
    unset: tuple[str, ...] = ()  # variables used without a default that were not set


class Budget:
    """How many characters variables may still put into text, shared by the calls it is
    passed to: `${A}` is four characters, but A may be long and written a thousand times,
    and in a `.env` file `A=${A}${A}` doubles A on each line."""

    def __init__(self, chars: int = MAX_EXPANDED_CHARS) -> None:
        self.left = chars

    def spend(self, value: str) -> str:
        self.left -= len(value)
        if self.left < 0:
            raise InterpolationError(
                f"variables expand to more than {MAX_EXPANDED_CHARS} characters in all "
                "(a long value used many times?)"
            )
        return value


def interpolate(text: str, env: Mapping[str, str], budget: Budget | None = None) -> Interpolated:
    """Expand the variables in `text` from `env`, spending `budget` (a fresh one if not
    given) on the values put in; raises InterpolationError."""
    if "$" not in text:
        return Interpolated(text)
    unset: list[str] = []
    value = _expand(text, env, unset, budget or Budget())
    return Interpolated(value, tuple(dict.fromkeys(unset)))


def _expand(text: str, env: Mapping[str, str], unset: list[str], budget: Budget) -> str:
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1] if j + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            value, i = _braced(text, j, env, unset, budget)
            out.append(value)
        else:
            m = _NAME.match(text, j + 1)
            if m is None:
                # a `$` that starts no variable (`costs $ 5`, a regex ending in `$`) is kept
                # as written, as the reference loader does
                out.append("$")
                i = j + 1
                continue
            name = m.group()
            if name in env:
                out.append(budget.spend(env[name]))
            else:
                unset.append(name)
            i = m.end()
    return "".join(out)


def _braced(
    text: str, start: int, env: Mapping[str, str], unset: list[str], budget: Budget
) -> tuple[str, int]:
    """Expand the `${...}` starting at text[start] (the `$`); return the value and the index
    just after the closing brace."""
    m = _NAME.match(text, start + 2)
    end_of_braces = _closing_brace(text, start + 2)
    shown = text[start : end_of_braces + 1] if end_of_braces >= 0 else text[start:]
    if end_of_braces < 0:
        raise InterpolationError(f'invalid interpolation "{shown}": missing "}}"')
    if m is None:
        raise InterpolationError(f'invalid interpolation "{shown}": expected a variable name')
    name = m.group()
    k = m.end()
    if k == end_of_braces:
        if name in env:
            return budget.spend(env[name]), end_of_braces + 1
        unset.append(name)
        return "", end_of_braces + 1
    op = next((o for o in _OPERATORS if text.startswith(o, k)), None)
    if op is None:
        raise InterpolationError(
            f'invalid interpolation "{shown}": expected "}}", ":-", "-", ":?", "?", ":+" or "+" '
            f'after "{name}"'
        )
    word = text[k + len(op) : end_of_braces]
    value = env.get(name)
    is_set = value is not None
    usable = bool(value) if op.startswith(":") else is_set
    after = end_of_braces + 1
    if op in (":-", "-"):
        if usable:
            return budget.spend(value or ""), after
        return _expand(word, env, unset, budget), after
    if op in (":+", "+"):
        return (_expand(word, env, unset, budget), after) if usable else ("", after)
    # ":?" and "?": the variable is required
    if usable:
        return budget.spend(value or ""), after
    message = _expand(word, env, unset, budget)
    state = "is empty" if is_set else "is not set"
    tail = f": {message}" if message else ""
    raise InterpolationError(f'required variable "{name}" {state}{tail}')


def _closing_brace(text: str, i: int) -> int:
    """Index of the `}` closing a `${` whose body starts at i, allowing nested `${...}` up
    to MAX_DEPTH levels (expanding them recurses, one level per level). A bare `{` in a
    default (`${JSON:-{"a":1}}`) is balanced by its own `}`, so the default ends at the brace
    that closes the variable, not at the first one."""
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "$" and i + 1 < n and text[i + 1] in "${":
            if text[i + 1] == "{":
                depth += 1
                if depth >= MAX_DEPTH:
                    raise InterpolationError(
                        f"invalid interpolation: more than {MAX_DEPTH} levels of "
                        '"${...}" inside one another'
                    )
            i += 2
            continue
        if c == "{":
            depth += 1
            if depth >= MAX_DEPTH:
                raise InterpolationError(
                    f'invalid interpolation: more than {MAX_DEPTH} levels of "{{" inside one another'
                )
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


# ---------------------------------------------------------------------------------------------
# .env files


class DotenvProblem(msgspec.Struct, frozen=True):
    line: int  # 1-based
    column: int  # 1-based
    message: str


_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "$": "$$",
}


def parse_dotenv(
    text: str, environ: Mapping[str, str] | None = None, budget: Budget | None = None
) -> tuple[dict[str, str], list[DotenvProblem]]:
    r"""Parse `KEY=VALUE` (or `KEY: VALUE`) lines as the reference parser does: `#` comments,
    an optional `export ` prefix, keys that may start with a digit, single quotes (literal
    but for `\'`), double quotes (escapes `\a \b \f \n \r \t \v \\ \" \$` and
    interpolation, may span lines) and unquoted values (a `#` after whitespace starts a
    comment; interpolated). Values may refer to `environ` and to keys
    defined earlier in the file (`environ` wins). A bare `KEY` takes its value from `environ`
    and is left out when unset. Interpolation spends `budget` (a fresh one for the file if not
    given)."""
    environ = environ or {}
    budget = budget or Budget()
    values: dict[str, str] = {}
    problems: list[DotenvProblem] = []
    lookup: Mapping[str, str] = ChainMap(dict(environ), values)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        lineno = i + 1
        raw = lines[i]
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip())
        body = stripped
        if body.startswith("export ") or body.startswith("export\t"):
            body = body[7:].lstrip()
        sep = _SEPARATOR.search(body)
        key, eq, rest = (
            (body[: sep.start()], sep.group(), body[sep.end() :]) if sep else (body, "", "")
        )
        key = key.strip()
        if not _DOTENV_KEY.fullmatch(key):
            problems.append(
                DotenvProblem(lineno, indent + 1, f'"{stripped}" is not a KEY=VALUE line')
            )
            continue
        if not eq:
            if key in environ:
                values[key] = environ[key]
            continue
        rest = rest.strip()
        try:
            if rest[:1] in ("'", '"'):
                quote = rest[0]
                # a quoted value may span lines: look for the closing quote in each new line
                # only (a backslash before a line break escapes nothing that matters here),
                # so that an unterminated quote costs one pass over the file, not one per line
                parts = [rest[1:]]
                end = _closing_quote(parts[0], quote)
                while end < 0 and i < len(lines):
                    parts.append(lines[i])
                    i += 1
                    end = _closing_quote(lines[i - 1], quote)
                content = "\n".join(parts)
                if end >= 0 and len(parts) > 1:
                    end += len(content) - len(parts[-1])
                if end < 0:
                    problems.append(
                        DotenvProblem(lineno, indent + 1, f"unterminated {quote} quote")
                    )
                    continue
                trailing = content[end + 1 :].strip()
                if trailing and not trailing.startswith("#"):
                    problems.append(
                        DotenvProblem(
                            lineno,
                            indent + 1,
                            f'unexpected text after the closing quote of "{key}"',
                        )
                    )
                    continue
                value = content[:end]
                if quote == "'":
                    value = value.replace("\\'", "'")
                if quote == '"':
                    value = interpolate(_unescape(value), lookup, budget).value
            else:
                value = re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
                value = interpolate(value, lookup, budget).value
        except InterpolationError as e:
            problems.append(DotenvProblem(lineno, indent + 1, f"{key}: {e}"))
            continue
        values[key] = value
    return values, problems


def _closing_quote(text: str, quote: str) -> int:
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and (quote == '"' or text[i + 1 : i + 2] == "'"):
            i += 2
            continue
        if c == quote:
            return i
        i += 1
    return -1


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)
