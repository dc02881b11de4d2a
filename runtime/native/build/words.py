"""Docker's word processing for Dockerfile arguments: quotes removed, `\\` escapes and
`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}` (and the `-`/`+` forms without the colon)
expanded from the step's environment, as the builder does for every instruction except the
shell form of RUN, CMD and ENTRYPOINT (the shell does that itself).

Pure functions of their input; `WordError` says what is wrong with the text.
"""

from __future__ import annotations

from collections.abc import Mapping


class WordError(ValueError):
    """A word that cannot be processed (an unterminated quote or `${`)."""


def _name_end(text: str, i: int) -> int:
    while i < len(text) and (text[i].isalnum() or text[i] == "_"):
        i += 1
    return i


def _braced(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """`i` is just after `${`; returns the expansion and the index after `}`."""
    end = _name_end(text, i)
    name = text[i:end]
    if not name:
        raise WordError(f"bad substitution in {text!r}")
    if end < len(text) and text[end] == "}":
        return env.get(name, ""), end + 1
    colon = text.startswith(":", end)
    op_at = end + 1 if colon else end
    if op_at >= len(text) or text[op_at] not in "-+?":
        raise WordError(f"bad substitution in {text!r}")
    op = text[op_at]
    # the word runs to the matching brace; it may itself hold quotes and substitutions
    depth, j = 1, op_at + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text.startswith("${", j):
            depth += 1
            j += 2
            continue
        if text[j] == "}":
            depth -= 1
            if depth == 0:
                break
        j += 1
    if depth:
        raise WordError(f"missing '}}' in {text!r}")
    word = process(text[op_at + 1 : j], env)
    is_set = name in env and (not colon or env[name] != "")
    if op == "-":
        value = env[name] if is_set else word
    elif op == "+":
        value = word if is_set else ""
    else:  # "?": an error when unset
        if not is_set:
            raise WordError(f"{name}: {word or 'parameter not set'}")
        value = env[name]
    return value, j + 1


def _dollar(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """`i` is at `$`; returns the expansion and the index after it."""
    if text.startswith("${", i):
        return _braced(text, i + 2, env)
    end = _name_end(text, i + 1)
    if end == i + 1:
        return "$", i + 1
    return env.get(text[i + 1 : end], ""), end


def process(text: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """One word: quotes removed, escapes and variables processed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape:
            if i + 1 < len(text):
                out.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise WordError(
                    f"unexpected end of statement while looking for matching ' in {text!r}"
                )
            out.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= len(text):
                    raise WordError(
                        f'unexpected end of statement while looking for matching " in {text!r}'
                    )
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == escape and i + 1 < len(text) and text[i + 1] in ('"', "$", escape):
                    out.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _dollar(text, i, env)
                    out.append(value)
                else:
                    out.append(c)
                    i += 1
        elif c == "$":
            value, i = _dollar(text, i, env)
            out.append(value)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_words(text: str) -> list[str]:
    """Split on unquoted blanks, keeping quotes (for `process` afterwards)."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == "\\" and quote == '"' and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
            cur.append(c)
        elif c == "\\" and i + 1 < len(text):
            cur.append(c + text[i + 1])
            i += 1
        elif c.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        words.append("".join(cur))
    return words


def expand_heredoc(text: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """A heredoc's content with `$VAR`/`${...}` expanded, as a shell expands a heredoc whose
    delimiter is unquoted: quotes stay as they are; the escape character before `$` or
    itself is removed (the rest is left alone)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and text[i + 1] in ("$", escape):
            out.append(text[i + 1])
            i += 2
        elif c == "$":
            value, i = _dollar(text, i, env)
            out.append(value)
        else:
            out.append(c)
            i += 1
    return "".join(out)
