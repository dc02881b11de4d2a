"""Redaction: the one place that decides what of a value may be shown or stored.

Everything pyapply prints, logs, serves on its API or records in `history.db` goes through a
`Redactor`: plan text and JSON (`diff`, `apply`), `get`, action errors, the agent's logs,
its API documents and its pass records. Three rules, in this order:

1. **Secret values.** Any occurrence of a secret's content is replaced by `***`. The set of
   secret values comes from the desired model of the loaded stacks (their `secrets:` with
   `file`, `content` or `environment` sources; configs are not secret) and is handed to the
   `Redactor` by whoever built that model (`engine.reconcile.redactor_for`); it is never read again
   here. Details:
   - a content is taken without its surrounding white space (a secret file usually ends in
     a newline that an environment value does not have);
   - a multi-line content is redacted as a whole *and line by line*, because outputs show
     values one line at a time (log lines, a truncated field, one line of a PEM put in an
     environment variable). Over-redaction of a line that is not secret on its own (a PEM
     `-----BEGIN ...-----` line) is the accepted price;
   - values shorter than `MIN_SECRET_LENGTH` (4) characters are *not* redacted by value:
     a one-character secret would otherwise turn every `a` of every output into `***`.
     Such a secret still hides behind the name rule where it is named;
   - bytes that are not UTF-8 cannot appear in text output; such lines are skipped.
2. **URL passwords.** `scheme://user:PASS@host` becomes `scheme://user:***@host`, anywhere
   in a string, whether or not PASS is a known secret. A userinfo without a password
   (`ssh://git@host`) names a user and is kept. `password=...`, `token=...` and similar
   `key=value` pairs in free text (libpq DSNs, query strings, command lines) are masked
   the same way.
3. **Credential-looking names.** An environment variable whose name contains PASS, SECRET,
   TOKEN, KEY, CREDENTIAL, PRIVATE, AUTH or CERT has its whole value shown as
   `(sensitive value)` (plan fields `env.NAME` and `NAME=value` items, the `env` of a
   `post_start` / `pre_stop` hook too).

What it cannot know: a secret's *previous* content (after a rotation, the old value that a
live container's last-applied label still holds) is not in the desired model; only the URL
and name rules cover it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MIN_SECRET_LENGTH = 4
MASK = "***"
HIDDEN = "(sensitive value)"

SENSITIVE_NAME = re.compile(r"(PASS|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE|AUTH|CERT)", re.I)
# scheme://user:password@ -- the password runs to the last '@' of the authority
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*:)[^\s/?#]*@")
# key=value in free text where the key names a credential (the narrow list: `key=` alone
# is too common a word to hide)
_KEYWORD = re.compile(
    r"(?i)(\b[\w.\-]*(?:password|passwd|pwd|secret|token|apikey|api_key)[\w.\-]*=)"
    r"[^\s&;,'\"]+"
)


def _candidates(secret: str | bytes) -> list[str]:
    """The strings to hide for one secret's content: the whole and each line."""
    if isinstance(secret, bytes):
        lines = []
        for raw in secret.splitlines():
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue  # not text: it cannot appear in text output as such
        try:
            whole = secret.decode("utf-8")
        except UnicodeDecodeError:
            whole = ""
    else:
        whole = secret
        lines = secret.splitlines()
    out = [whole.strip(), *(line.strip() for line in lines)]
    return [c for c in out if len(c) >= MIN_SECRET_LENGTH]


class Redactor:
    """Hides secret values, URL passwords and credential-named variables (see the module
    docstring). Immutable; `Redactor()` knows no secret values and applies rules 2 and 3."""

    __slots__ = ("_pattern", "_values")

    def __init__(self, secrets: Iterable[str | bytes] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            values.update(_candidates(secret))
        self._values = frozenset(values)
        # longest first, so that a secret containing another is hidden whole
        ordered = sorted(values, key=lambda v: (-len(v), v))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __repr__(self) -> str:  # never the values themselves
        return f"Redactor({len(self._values)} secret value(s))"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Redactor) and other._values == self._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def union(self, other: Redactor) -> Redactor:
        if other._values <= self._values:
            return self
        return Redactor([*self._values, *other._values])

    # -- the one function -----------------------------------------------------------------

    def text(self, s: str) -> str:
        """`s` with every secret value, URL password and credential `key=value` masked."""
        if self._pattern is not None:
            s = self._pattern.sub(MASK, s)
        s = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", s)
        return _KEYWORD.sub(lambda m: m.group(1) + MASK, s)

    def value(self, v: Any) -> Any:
        """A JSON-like value with `text` applied to every string in it (keys included)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, Mapping):
            return {
                (self.text(k) if isinstance(k, str) else k): self.value(x) for k, x in v.items()
            }
        if isinstance(v, list | tuple):
            return [self.value(x) for x in v]
        return v

    def env_field(self, path: str, v: Any) -> Any:
        """A plan field's value (`env.NAME`, `env` as NAME=value items, anything else):
        the name rule, then `value`."""
        if v is None:
            return None
        if path.startswith("env.") and SENSITIVE_NAME.search(path[4:]):
            return HIDDEN
        if path == "env" and isinstance(v, list | tuple):
            return [self.env_item(str(item)) for item in v]
        if path in ("post_start", "pre_stop") and isinstance(v, list | tuple):
            # lifecycle hooks: each has an `env` of NAME=value items of its own
            return [
                {**self.value(h), "env": [self.env_item(str(e)) for e in h.get("env") or ()]}
                if isinstance(h, Mapping) and "env" in h
                else self.value(h)
                for h in v
            ]
        return self.value(v)

    def env_item(self, item: str) -> str:
        """`NAME=value` with the name rule and `text` applied."""
        key, sep, _ = item.partition("=")
        if sep and SENSITIVE_NAME.search(key):
            return f"{key}={HIDDEN}"
        return self.text(item)


NO_SECRETS = Redactor()
