"""Secrets kept in git: SOPS files and age files, decrypted in memory as a revision is read.

A file in the repository may be encrypted in one of these forms, told apart by its content:

- an **age file** (`age-encryption.org/v1`, binary or ASCII-armored): the whole file is
  decrypted with the age identities;
- a **SOPS file** with age recipients, as the `sops` tool writes it:
  - YAML or JSON: the document with its keys in clear and each value replaced by
    `ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]`, and a top-level `sops` mapping;
  - dotenv: `KEY=ENC[...]` lines, the metadata flattened into `sops_*` keys
    (`sops_age__list_0__map_enc`), `\\n` standing for a newline;
  - binary: JSON `{"data": ENC[...], "sops": {...}}`, the file's bytes in `data`.

How a SOPS file is decrypted (the rules of getsops/sops, implemented here):

1. the 32-byte data key is an age file in `sops.age[].enc`, one per recipient: the first
   one our identities open gives it (several key groups, Shamir's sharing, are refused);
2. every value is walked in document order with its path of mapping keys (list items add
   nothing to the path). Whether it is encrypted follows the metadata: `unencrypted_suffix`,
   `encrypted_suffix`, `unencrypted_regex` and `encrypted_regex`, each tried against every
   key of the path. An encrypted value is AES-256-GCM with the data key, the 32-byte IV of
   the value, and the additional data `key1:key2:` (the path joined by `:`, plus `:`); its
   `type` (str, int, float, bool, bytes) says how to read the plaintext. An empty string
   stays empty; null values are skipped;
3. the MAC: SHA-512 over every plaintext value in order (only the encrypted ones, after a
   fixed 32-byte prefix, with `mac_only_encrypted`), as `str`, integers in decimal, floats
   in Go's shortest form, booleans `True`/`False`, as upper-case hex; `sops.mac` is that
   hex encrypted with the data key and the additional data `lastmodified` (RFC 3339). A
   file whose MAC does not match is refused: a value was changed, added, removed or moved.

What the caller gets is the file as `sops -d` would give it: the YAML, JSON or dotenv text
without the metadata, or the binary file's bytes. A manifest that is itself encrypted is
decrypted in place after it is parsed (`decrypt_documents`), so every position of its
fields stays the one in the file.

The age identities come from one key file per process (`use_key_file`: `--age-key-file`, or
`SOPS_AGE_KEY_FILE`), which must be readable by its owner only. Plaintext never leaves
memory here; every decrypted value is remembered (`revealed`) so that the redactor hides it
in plans, logs and the API. Every failure is a `SopsError` naming the file's line and column
where one applies, never quoting a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.manifest.sealed import (
    AGE_MAGIC,
    forget_revealed,
    has_sops_metadata,
    is_age,
    reveal,
)
from pyapply.runtime.statefs import secret_file_problem

KEY_FILE_ENV = "SOPS_AGE_KEY_FILE"

# sops's MAC over only the encrypted values starts with these bytes (sha256 of "sops"), so
# that it never equals the MAC over all values
_MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()
_ENC = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")


class SopsError(PyapplyError):
    """A file that cannot be decrypted; `line`/`column` (1-based) locate it when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def located(self, file: str) -> str:
        """`file:line:col: message` (or `file: message`)."""
        if self.line is None:
            return f"{file}: {self.message}"
        return f"{file}:{self.line}:{self.column or 1}: {self.message}"


class KeyFileError(PyapplyError):
    """The age key file is missing, open to others, or not a list of age identities."""


# ---------------------------------------------------------------------------------------------
# The key file and what was decrypted (process-wide: one agent or command, one key file)

_lock = threading.Lock()
_key_file: str | None = None
_identities: list[Any] | None = None


def check_key_file(path: str) -> None:
    """Refuse a key file that is not a regular file readable by its owner only."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise KeyFileError(f"age key file {path}: {e.strerror}") from None
    problem = secret_file_problem(st, path)
    if problem:
        raise KeyFileError(f"age key file {path}: {problem}")


def parse_identities(path: str) -> list[Any]:
    """The age identities in a key file (`AGE-SECRET-KEY-1...` lines; `#` comments and
    blank lines skipped), as `age-keygen` writes it."""
    import pyrage

    check_key_file(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"age key file {path}: cannot read it: {e}") from None
    found: list[Any] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            found.append(pyrage.x25519.Identity.from_str(text))
        except Exception:  # pyrage.IdentityError; the line itself is never quoted
            raise KeyFileError(
                f"age key file {path}:{number}: not an age identity (AGE-SECRET-KEY-1...)"
            ) from None
    if not found:
        raise KeyFileError(f"age key file {path}: holds no age identity")
    return found


def use_key_file(path: str | None) -> None:
    """Decrypt with the identities in `path` from now on (None: no key file). The file is
    checked now and read at the first decryption."""
    global _key_file, _identities
    if path is not None:
        check_key_file(path)
    with _lock:
        _key_file = os.path.abspath(path) if path is not None else None
        _identities = None


def key_file() -> str | None:
    return _key_file


def _keys() -> list[Any]:
    global _identities
    with _lock:
        if _key_file is None:
            raise SopsError(
                f"encrypted, but no age key was given: name the key file with --age-key-file "
                f"or {KEY_FILE_ENV}"
            )
        if _identities is None:
            try:
                _identities = parse_identities(_key_file)
            except KeyFileError as e:
                raise SopsError(str(e)) from None
        return _identities


def forget() -> None:
    """Forget the key file and the values decrypted (tests)."""
    global _key_file, _identities
    with _lock:
        _key_file = None
        _identities = None
    forget_revealed()


# ---------------------------------------------------------------------------------------------
# age


def age_decrypt(content: bytes) -> bytes:
    """An age file's plaintext (binary or armored)."""
    import pyrage

    # the armor is read strictly: no white space around it
    given = content if content.startswith(AGE_MAGIC) else content.strip()
    try:
        return bytes(pyrage.decrypt(given, _keys()))
    except pyrage.DecryptError as e:
        raise SopsError(
            f"cannot decrypt this age file with the key file {_key_file}: {e}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Telling the forms apart


def sops_form(content: bytes, name: str = "") -> str | None:
    """The form of an encrypted file ("yaml", "json", "binary", "dotenv" or "age"), or None
    for a file that is not encrypted. Told by content, as a file in git may be named
    anything; only a JSON file is told from a binary one by its name, as sops does."""
    if is_age(content):
        return "age"
    if b"sops" not in content:
        return None
    if re.search(rb"(?m)^sops_mac=", content):
        return "dotenv"
    stripped = content.lstrip()
    if stripped.startswith(b"{"):
        try:
            data = json.loads(content)
        except ValueError:
            return None
        if has_sops_metadata(data):
            if set(data) == {"data", "sops"} and not name.endswith(".json"):
                return "binary"
            return "json"
        return None
    if not re.search(rb"(?m)^sops:", content):
        return None
    from pyapply.reconciler.manifest import yamlpos

    try:
        text = content.decode("utf-8-sig")
        docs = list(yamlpos.parse(text))
    except (UnicodeDecodeError, yamlpos.YamlSyntaxError):
        return None
    if docs and all(has_sops_metadata(d.data) for d in docs):
        return "yaml"
    return None


# ---------------------------------------------------------------------------------------------
# The SOPS tree


class Metadata(msgspec.Struct, frozen=True):
    age: tuple[tuple[str, str], ...]  # (recipient, armored data key)
    mac: str
    lastmodified: str
    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    mac_only_encrypted: bool = False

    @classmethod
    def read(cls, meta: Any) -> Metadata:
        if not isinstance(meta, dict):
            raise SopsError("the sops metadata is not a mapping")
        groups = meta.get("key_groups")
        if groups:
            raise SopsError(
                "the data key is split into key groups (Shamir's secret sharing), which "
                "pyapply does not support: encrypt for age recipients in one group"
            )
        for field in ("encrypted_comment_regex", "unencrypted_comment_regex"):
            if meta.get(field):
                raise SopsError(f"sops {field} is not supported: use encrypted_regex instead")
        recipients: list[tuple[str, str]] = []
        for entry in meta.get("age") or []:
            if isinstance(entry, dict) and isinstance(entry.get("enc"), str):
                recipients.append((str(entry.get("recipient", "")), entry["enc"]))
        if not recipients:
            raise SopsError(
                "encrypted for no age recipient (only KMS, PGP or Vault keys): pyapply "
                "decrypts with age keys only"
            )
        mac, lastmodified = meta.get("mac"), meta.get("lastmodified")
        if not isinstance(mac, str) or not isinstance(lastmodified, str):
            raise SopsError("the sops metadata has no mac or lastmodified")
        only = meta.get("mac_only_encrypted")
        for field in ("unencrypted_regex", "encrypted_regex"):
            if meta.get(field):
                try:
                    re.compile(str(meta[field]))
                except re.error as e:
                    raise SopsError(f"sops {field}: not a regular expression here: {e}") from None
        return cls(
            age=tuple(recipients),
            mac=mac,
            lastmodified=lastmodified,
            unencrypted_suffix=str(meta.get("unencrypted_suffix") or ""),
            encrypted_suffix=str(meta.get("encrypted_suffix") or ""),
            unencrypted_regex=str(meta.get("unencrypted_regex") or ""),
            encrypted_regex=str(meta.get("encrypted_regex") or ""),
            mac_only_encrypted=only is True or only == "true",
        )

    def encrypted(self, path: Sequence[str]) -> bool:
        """Whether the value at this key path is encrypted (sops's rules, in its order)."""
        result = True
        if self.unencrypted_suffix and any(k.endswith(self.unencrypted_suffix) for k in path):
            result = False
        if self.encrypted_suffix:
            result = any(k.endswith(self.encrypted_suffix) for k in path)
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, k) for k in path):
            result = False
        if self.encrypted_regex:
            result = any(re.search(self.encrypted_regex, k) for k in path)
        return result

    def data_key(self) -> bytes:
        import pyrage

        keys = _keys()
        for _, enc in self.age:
            try:
                key = bytes(pyrage.decrypt(enc.strip().encode(), keys))
            except pyrage.DecryptError:
                continue
            if len(key) != 32:
                raise SopsError("the data key is not 32 bytes long")
            return key
        recipients = ", ".join(r for r, _ in self.age)
        raise SopsError(
            f"no identity in the age key file {_key_file} opens this file (it is encrypted "
            f"for {recipients})"
        )


Locate = Callable[[str], tuple[int, int] | None]


def _aad_time(value: str) -> str:
    """`lastmodified` as Go formats a time in RFC 3339 (the MAC's additional data)."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SopsError(f"sops lastmodified {value!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        return value
    text = when.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S")
    offset = when.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _decrypt_value(value: str, key: bytes, aad: str) -> Any:
    """One `ENC[AES256_GCM,...]` value, read as its type says; raises ValueError."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if value == "":
        return ""
    m = _ENC.match(value)
    if m is None:
        raise ValueError("is not a sops value (ENC[AES256_GCM,...])")
    try:
        data, iv, tag = (base64.b64decode(m.group(i), validate=True) for i in (1, 2, 3))
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64 in its data, iv or tag") from None
    if len(tag) != 16 or len(iv) < 8:
        raise ValueError("has a tag or iv of the wrong length")
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, aad.encode())
    except InvalidTag:
        raise ValueError(
            "does not decrypt: it was changed, moved, or encrypted with another data key"
        ) from None
    kind = m.group(4)
    if kind == "bytes":
        return plain
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"decrypts to bytes that are not UTF-8 for type {kind}") from None
    if kind == "str":
        return text
    if kind in ("int", "int64", "float"):
        try:
            return float(text) if kind == "float" else int(text)
        except ValueError:  # Python's message would quote the plaintext
            raise ValueError(f"does not decrypt to a number of type {kind}") from None
    if kind == "bool":
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise ValueError("is not a boolean")
    if kind == "comment":
        return text
    raise ValueError(f"has an unknown type {kind!r}")


def _go_float(value: float) -> str:
    """strconv.FormatFloat(value, 'f', -1, 64): the shortest digits, never an exponent."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _mac_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return _go_float(value).encode()
    return str(value).encode("utf-8", "surrogateescape")


class _Tree:
    """One decryption of a tree's branches with one data key and one MAC."""

    def __init__(self, meta: Metadata, locate: Locate) -> None:
        self.meta = meta
        self.locate = locate
        self.key = meta.data_key()
        self.hash = hashlib.sha512()
        if meta.mac_only_encrypted:
            self.hash.update(_MAC_ONLY_ENCRYPTED_INIT)
        self.secrets: list[str | bytes] = []

    def fail(self, value: str, sentence: str) -> SopsError:
        where = self.locate(value) if value else None
        return SopsError(sentence, *(where or (None, None)))

    def walk(self, node: Any, keys: list[str], shown: str) -> Any:
        if isinstance(node, dict):
            out: dict[Any, Any] = {}
            for k, v in node.items():
                if not isinstance(k, str):
                    raise SopsError(f"{shown or 'the document'}: a key that is not a string")
                out[k] = self.walk(v, [*keys, k], f"{shown}.{k}" if shown else k)
            return out
        if isinstance(node, list):
            return [self.walk(v, keys, f"{shown}[{i}]") for i, v in enumerate(node)]
        if node is None:
            return None
        encrypted = self.meta.encrypted(keys)
        value = node
        if encrypted:
            if not isinstance(node, str):
                raise SopsError(
                    f"{shown}: should be encrypted by the file's rules, but is a plain "
                    f"{type(node).__name__}"
                )
            try:
                value = _decrypt_value(node, self.key, ":".join(keys) + ":")
            except ValueError as e:
                raise self.fail(node, f"{shown}: the encrypted value {e}") from None
            if isinstance(value, str | bytes):
                self.secrets.append(value)
        if encrypted or not self.meta.mac_only_encrypted:
            self.hash.update(_mac_bytes(value))
        return value

    def verify(self) -> None:
        computed = self.hash.hexdigest().upper()
        try:
            stored = _decrypt_value(self.meta.mac, self.key, _aad_time(self.meta.lastmodified))
        except ValueError as e:
            raise self.fail(self.meta.mac, f"sops.mac: the MAC {e}") from None
        if not isinstance(stored, str) or not hmac.compare_digest(
            stored.encode(), computed.encode()
        ):
            raise self.fail(
                self.meta.mac,
                "MAC mismatch: the file was changed after it was encrypted (a value edited, "
                "added, removed or moved); it is refused",
            )
        reveal(self.secrets)


def decrypt_branches(branches: Sequence[Any], meta_raw: Any, locate: Locate) -> list[Any]:
    """The decrypted branches (top-level mappings without `sops`) of one SOPS tree; the MAC
    is checked over all of them."""
    tree = _Tree(Metadata.read(meta_raw), locate)
    out = [tree.walk(branch, [], "") for branch in branches]
    tree.verify()
    return out


def _text_locator(text: str) -> Locate:
    def locate(value: str) -> tuple[int, int] | None:
        at = text.find(value)
        if at < 0:
            return None
        line = text.count("\n", 0, at) + 1
        return line, at - (text.rfind("\n", 0, at) + 1) + 1

    return locate


# ---------------------------------------------------------------------------------------------
# Files: secrets, configs, env files


def decrypt(content: bytes, name: str = "", *, env: bool = False) -> bytes:
    """The plaintext of an encrypted file (as `sops -d` or `age -d` would give it), or
    `content` itself when it is not encrypted. `name` (the file name) tells a JSON file
    from a binary one; `env` says the file is an env file, whose values (rather than the
    whole content) are what the redactor learns."""
    form = sops_form(content, name)
    if form is None:
        return content
    if form == "age":
        plain = age_decrypt(content)
        reveal(_env_values(plain) if env else [plain])
        return plain
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SopsError("a SOPS file must be UTF-8 text") from None
    locate = _text_locator(text)
    if form == "dotenv":
        return _dotenv(text, locate)
    if form in ("json", "binary"):
        data = json.loads(text)
        meta = data.pop("sops")
        [plain] = decrypt_branches([data], meta, locate)
        if form == "binary":
            out = plain.get("data", "")
            blob = out if isinstance(out, bytes) else str(out).encode()
            if not env:
                reveal([blob])
            return blob
        return (json.dumps(plain, indent=4, ensure_ascii=False) + "\n").encode()
    from pyapply.reconciler.manifest import yamlpos

    docs = [d.data for d in yamlpos.parse(text)]
    meta = docs[0]["sops"]
    branches = [{k: v for k, v in d.items() if k != "sops"} for d in docs]
    plains = decrypt_branches(branches, meta, locate)
    import yaml

    return yaml.safe_dump_all(
        plains, sort_keys=False, allow_unicode=True, default_flow_style=False
    ).encode()


def _env_values(plain: bytes) -> Iterator[str]:
    for line in plain.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() and not key.lstrip().startswith("#"):
            yield value.strip().strip("'\"")


def _dotenv(text: str, locate: Locate) -> bytes:
    """A SOPS dotenv file, decrypted to `KEY=value` lines (comments kept, `sops_*` gone)."""
    items: list[tuple[str, str]] = []  # (key, value) of the data, in order; "#" for comments
    meta: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("#"):
            items.append(("#", line[1:]))
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise SopsError("not a KEY=value line of a SOPS dotenv file", number, 1)
        value = value.replace("\\n", "\n")
        if key.startswith("sops_"):
            meta[key[len("sops_") :]] = value
        else:
            items.append((key, value))
    branch = {k: v for k, v in items if k != "#"}
    if len(branch) != sum(1 for k, _ in items if k != "#"):
        raise SopsError("a key is written twice in this SOPS dotenv file")
    [plain] = decrypt_branches([branch], _unflatten(meta), locate)
    lines = []
    for key, value in items:
        if key == "#":
            lines.append(f"#{value}")
        else:
            shown = plain[key]
            shown = shown.decode("utf-8", "replace") if isinstance(shown, bytes) else shown
            lines.append(f"{key}={_mac_bytes(shown).decode()}".replace("\n", "\\n"))
    return ("\n".join(lines) + "\n").encode()


def _unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """sops's flattened metadata (`age__list_0__map_enc`) back into a tree."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        parts = re.split(r"(__map_|__list_)", key)
        tokens: list[str | int] = [parts[0]]
        for sep, part in zip(parts[1::2], parts[2::2], strict=True):
            tokens.append(int(part) if sep == "__list_" and part.isdigit() else part)
        node: Any = root
        for here, after in zip(tokens, [*tokens[1:], None], strict=True):
            if after is None:
                _put(node, here, value)
                break
            child = _get(node, here)
            if child is None:
                child = [] if isinstance(after, int) else {}
                _put(node, here, child)
            node = child
    if "mac_only_encrypted" in root:
        root["mac_only_encrypted"] = root["mac_only_encrypted"] == "true"
    return root


def _get(node: Any, key: str | int) -> Any:
    if isinstance(node, list):
        return node[key] if isinstance(key, int) and key < len(node) else None
    return node.get(key)


def _put(node: Any, key: str | int, value: Any) -> None:
    if isinstance(node, list) and isinstance(key, int):
        while len(node) <= key:
            node.append(None)
        node[key] = value
    elif isinstance(node, dict):
        node[key] = value


# ---------------------------------------------------------------------------------------------
# Manifests


def decrypt_documents(docs: Sequence[Any], text: str) -> bool:
    """Decrypt, in place, the parsed documents (`yamlpos.Document`) of a manifest that is a
    SOPS file, and drop their `sops` metadata with its positions. False when the documents
    are not SOPS-encrypted (nothing changed)."""
    if not docs or not all(has_sops_metadata(d.data) for d in docs):
        return False
    meta = docs[0].data["sops"]
    branches = [{k: v for k, v in d.data.items() if k != "sops"} for d in docs]
    plains = decrypt_branches(branches, meta, _text_locator(text))
    for doc, plain in zip(docs, plains, strict=True):
        doc.data = plain
        for table in (doc.keys, doc.values, doc.tags):
            for path in [p for p in table if p and p[0] == "sops"]:
                del table[path]
    return True


def check_stack_files(stacks: Iterable[Any]) -> list[tuple[str, str, SopsError]]:
    """The secret and config files of these stacks (`core.model.Stack`) that are encrypted
    and do not decrypt, as (`kind name`, file, error) (for `validate`, which otherwise never
    reads them; a file it cannot read is the apply's business)."""
    from pyapply.reconciler.core.translate import file_sources

    problems: list[tuple[str, str, SopsError]] = []
    for stack in stacks:
        for kind, spec in file_sources(stack):
            if spec.file is None:
                continue
            try:
                with open(spec.file, "rb") as fh:
                    content = fh.read()
            except OSError:
                continue
            try:
                decrypt(content, os.path.basename(spec.file))
            except SopsError as e:
                problems.append((f"{kind} {spec.name}", spec.file, e))
    return problems
