"""Secrets kept in git (`reconciler.manifest.sops`): SOPS files written by the real `sops`
tool (the corpus in ../shared/corpus/sops, or $PYAPPLY_CORPUS/sops) in every form, age
files, encrypted manifests and env files, the MAC, and every way it must refuse.

The corpus files prove the decryption against sops itself. Manifests and the JSON form are
not in the corpus; `sops_encrypt` below writes them by sops's rules (and is itself checked:
what it writes decrypts, and its MAC is the one the corpus files carry)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyapply.reconciler.agent.history import History, snapshot_files
from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.engine.reconcile import PassError, read_file_objects, redactor_for
from pyapply.reconciler.manifest import sealed, sops
from pyapply.reconciler.manifest.loader import load
from tests import corpus as test_corpus

LASTMODIFIED = "2026-01-02T03:04:05Z"


@pytest.fixture(autouse=True)
def clean_keyring() -> Iterator[None]:
    sops.forget()
    yield
    sops.forget()


@pytest.fixture
def corpus() -> Path:
    return test_corpus.need("sops", "keys", "age.txt").parents[1]


def key_file(tmp_path: Path, *texts: str, mode: int = 0o600) -> str:
    path = tmp_path / "keys.txt"
    path.write_text("".join(texts))
    path.chmod(mode)
    return str(path)


def corpus_keys(tmp_path: Path, corpus: Path, *names: str) -> str:
    return key_file(tmp_path, *((corpus / "keys" / n).read_text() for n in names))


def flip(text: str, marker: str) -> str:
    """`text` with the character after the first `marker` changed (a tampered value)."""
    at = text.index(marker) + len(marker)
    return text[:at] + ("B" if text[at] != "B" else "C") + text[at + 1 :]


# ---------------------------------------------------------------------------------------------
# A writer of SOPS files by sops's rules, for the forms the corpus does not hold


def _armor(data: bytes) -> str:
    body = base64.b64encode(data).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN AGE ENCRYPTED FILE-----", *lines, "-----END AGE ENCRYPTED FILE-----", ""]
    )


def _enc(value: Any, key: bytes, aad: str) -> str:
    if isinstance(value, bool):
        kind, raw = "bool", (b"True" if value else b"False")
    elif isinstance(value, int):
        kind, raw = "int", str(value).encode()
    elif isinstance(value, float):
        kind, raw = "float", repr(value).encode()
    else:
        kind, raw = "str", str(value).encode()
    if raw == b"":
        return ""
    iv = os.urandom(32)
    out = AESGCM(key).encrypt(iv, raw, aad.encode())
    b64 = base64.b64encode
    return (
        f"ENC[AES256_GCM,data:{b64(out[:-16]).decode()},iv:{b64(iv).decode()},"
        f"tag:{b64(out[-16:]).decode()},type:{kind}]"
    )


def sops_encrypt(
    tree: dict[str, Any],
    recipient: str,
    *,
    encrypted_regex: str = "",
    suffix: str = "",
    mac_only_encrypted: bool = False,
) -> dict[str, Any]:
    """`tree` encrypted as sops does, for one age recipient."""
    key = os.urandom(32)
    mac = hashlib.sha512()
    if mac_only_encrypted:
        mac.update(hashlib.sha256(b"sops").digest())

    def walk(node: Any, keys: list[str]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, [*keys, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, keys) for v in node]
        if node is None:
            return None
        encrypted = sops.Metadata(
            (), "", "", unencrypted_suffix=suffix, encrypted_regex=encrypted_regex
        ).encrypted(keys)
        if encrypted or not mac_only_encrypted:
            mac.update(sops._mac_bytes(node))
        return _enc(node, key, ":".join(keys) + ":") if encrypted else node

    out = walk(tree, [])
    data_key = pyrage.encrypt(key, [pyrage.x25519.Recipient.from_str(recipient)])
    out["sops"] = {
        "age": [{"recipient": recipient, "enc": _armor(data_key)}],
        "lastmodified": LASTMODIFIED,
        "mac": _enc(mac.hexdigest().upper(), key, LASTMODIFIED),
        "version": "3.9.0",
    }
    if encrypted_regex:
        out["sops"]["encrypted_regex"] = encrypted_regex
    if suffix:
        out["sops"]["unencrypted_suffix"] = suffix
    if mac_only_encrypted:
        out["sops"]["mac_only_encrypted"] = True
    return out


def recipient_of(corpus: Path, name: str = "age.txt") -> str:
    for line in (corpus / "keys" / name).read_text().splitlines():
        if line.startswith("# public key: "):
            return line.removeprefix("# public key: ")
    raise AssertionError(name)


# ---------------------------------------------------------------------------------------------
# The corpus: every form sops writes


@pytest.mark.parametrize(
    ("name", "keys", "form", "plain"),
    [
        (
            "algorithms/age.yaml",
            "age.txt",
            "yaml",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "age"},
                "stringData": {"key": "value"},
            },
        ),
        (
            "global/secret.yaml",
            "age-global.txt",
            "yaml",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "global-age-secret", "namespace": "default"},
                "type": "Opaque",
                "stringData": {"key": "global-value"},
            },
        ),
        ("envs/env.env", "age.txt", "dotenv", b"key=value\n"),
        ("files/file.txt", "age.txt", "binary", b"value"),
    ],
)
def test_every_corpus_form_decrypts(
    corpus: Path, tmp_path: Path, name: str, keys: str, form: str, plain: Any
) -> None:
    content = (corpus / name).read_bytes()
    assert sops.sops_form(content, Path(name).name) == form
    sops.use_key_file(corpus_keys(tmp_path, corpus, keys))
    out = sops.decrypt(content, Path(name).name)
    if form == "yaml":
        assert yaml.safe_load(out) == plain
        assert b"sops" not in out and b"ENC[" not in out
    else:
        assert out == plain
    secret = "global-value" if "global" in name else "value"
    assert secret in sealed.revealed()


def test_plain_files_pass_through(tmp_path: Path) -> None:
    # no key is needed for what is not encrypted, even if it mentions sops
    for content in (b"hunter2\n", b"sops: is a word\n", b'{"sops": 1}', b"sops_x=1\n"):
        assert sops.sops_form(content) is None
        assert sops.decrypt(content) == content


def test_the_mac_is_computed_as_sops_does(corpus: Path, tmp_path: Path) -> None:
    """The writer above agrees with sops: the MAC it computes over the corpus plaintext is
    the one sops stored (so the manifests it writes stand for real sops files)."""
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age-global.txt"))
    raw = yaml.safe_load((corpus / "global/secret.yaml").read_text())
    meta = sops.Metadata.read(raw["sops"])
    key = meta.data_key()
    stored = sops._decrypt_value(meta.mac, key, meta.lastmodified)
    plain = yaml.safe_load(sops.decrypt((corpus / "global/secret.yaml").read_bytes()))
    mac = hashlib.sha512()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif node is not None:
            mac.update(sops._mac_bytes(node))

    walk(plain)
    assert stored == mac.hexdigest().upper()


# ---------------------------------------------------------------------------------------------
# Refusals: tampered, wrong key, no key, bad key files


def test_a_tampered_value_is_refused_with_its_line(corpus: Path, tmp_path: Path) -> None:
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    text = (corpus / "algorithms/age.yaml").read_text()
    bad = flip(text, "key: ENC[AES256_GCM,data:")
    with pytest.raises(sops.SopsError) as e:
        sops.decrypt(bad.encode(), "age.yaml")
    line = text[: text.index("key: ENC[")].count("\n") + 1
    assert (e.value.line, e.value.column) == (line, 8)
    assert "stringData.key" in e.value.message and "does not decrypt" in e.value.message
    assert "value" not in sealed.revealed()  # nothing of a refused file is kept


def test_a_changed_clear_value_fails_the_mac(corpus: Path, tmp_path: Path) -> None:
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    text = (corpus / "algorithms/age.yaml").read_text()
    bad = text.replace("  name: age\n", "  name: agf\n")
    with pytest.raises(sops.SopsError) as e:
        sops.decrypt(bad.encode(), "age.yaml")
    assert "MAC mismatch" in e.value.message
    assert e.value.line == text[: text.index("mac: ENC[")].count("\n") + 1


@pytest.mark.parametrize(
    ("name", "marker", "line"),
    [
        ("envs/env.env", "key=ENC[AES256_GCM,data:", 1),
        ("files/file.txt", '"data": "ENC[AES256_GCM,data:', 2),
    ],
)
def test_tampered_dotenv_and_binary_are_refused(
    corpus: Path, tmp_path: Path, name: str, marker: str, line: int
) -> None:
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    bad = flip((corpus / name).read_text(), marker)
    with pytest.raises(sops.SopsError) as e:
        sops.decrypt(bad.encode(), Path(name).name)
    assert e.value.line == line and "does not decrypt" in e.value.message


def test_a_moved_value_fails(corpus: Path, tmp_path: Path) -> None:
    """The key path is the additional data: a value copied under another key is refused."""
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    text = (corpus / "envs/env.env").read_text()
    moved = text.replace("key=ENC[", "other=ENC[", 1)
    with pytest.raises(sops.SopsError, match="other: the encrypted value does not decrypt"):
        sops.decrypt(moved.encode(), "env.env")


def test_the_wrong_key_names_the_key_file_and_recipients(corpus: Path, tmp_path: Path) -> None:
    keys = corpus_keys(tmp_path, corpus, "age-global.txt")
    sops.use_key_file(keys)
    with pytest.raises(sops.SopsError) as e:
        sops.decrypt((corpus / "algorithms/age.yaml").read_bytes(), "age.yaml")
    assert keys in e.value.message and recipient_of(corpus) in e.value.message
    assert "AGE-SECRET-KEY" not in e.value.message


def test_no_key_given_says_how_to_give_one(corpus: Path) -> None:
    with pytest.raises(sops.SopsError, match="--age-key-file or SOPS_AGE_KEY_FILE"):
        sops.decrypt((corpus / "envs/env.env").read_bytes(), "env.env")


def test_key_files_are_checked(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(sops.KeyFileError, match="No such file"):
        sops.use_key_file(str(tmp_path / "missing.txt"))
    secret = (corpus / "keys/age.txt").read_text()
    loose = key_file(tmp_path, secret, mode=0o640)
    with pytest.raises(
        sops.KeyFileError, match=r"mode 0640 lets others read or change it; make it 0600 or 0400"
    ):
        sops.use_key_file(loose)
    os.chmod(loose, 0o400)
    sops.use_key_file(loose)  # owner-only read is fine
    bad = tmp_path / "bad.txt"
    bad.write_text("# a comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    bad.chmod(0o600)
    with pytest.raises(sops.KeyFileError, match=r"bad.txt:2: not an age identity") as e:
        sops.parse_identities(str(bad))
    assert "NOTAKEY" not in str(e.value)


def test_key_groups_and_non_age_files_are_refused_clearly() -> None:
    with pytest.raises(sops.SopsError, match="key groups"):
        sops.Metadata.read({"key_groups": [{"age": []}], "mac": "", "lastmodified": ""})
    with pytest.raises(sops.SopsError, match="age keys only"):
        sops.Metadata.read({"pgp": [{"fp": "X"}], "mac": "x", "lastmodified": LASTMODIFIED})


# ---------------------------------------------------------------------------------------------
# The rules: paths, lists, regexes, suffixes, types, the JSON form, age files


def test_json_form_lists_types_and_suffixes(corpus: Path, tmp_path: Path) -> None:
    tree = {
        "db": {"password": "s3cret-pass", "port": 5432, "ratio": 1.5, "on": True},
        "hosts": ["a.example", "b.example"],
        "empty": "",
        "none": None,
        "note_unencrypted": "left in clear",
    }
    doc = sops_encrypt(tree, recipient_of(corpus), suffix="_unencrypted")
    assert doc["note_unencrypted"] == "left in clear"
    assert doc["hosts"][0].startswith("ENC[") and doc["db"]["port"].endswith("type:int]")
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    out = sops.decrypt(json.dumps(doc, indent=2).encode(), "secrets.json")
    assert json.loads(out) == tree
    assert {"s3cret-pass", "a.example"} <= set(sealed.revealed())
    # a list item's path is its list's key: moving it within the list still decrypts, but
    # the MAC (over the values in order) refuses the swap
    doc["hosts"].reverse()
    with pytest.raises(sops.SopsError, match="MAC mismatch"):
        sops.decrypt(json.dumps(doc).encode(), "secrets.json")


def test_encrypted_regex_leaves_the_rest_clear(corpus: Path, tmp_path: Path) -> None:
    tree = {"metadata": {"name": "n"}, "data": {"a": "x-secret", "b": ["y-secret"]}}
    doc = sops_encrypt(tree, recipient_of(corpus), encrypted_regex="^data$")
    assert doc["metadata"]["name"] == "n" and doc["data"]["a"].startswith("ENC[")
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    text = yaml.safe_dump(doc, sort_keys=False)
    assert yaml.safe_load(sops.decrypt(text.encode(), "x.yaml")) == tree
    # the MAC covers the order of the values: the same file with its keys sorted is refused
    with pytest.raises(sops.SopsError, match="MAC mismatch"):
        sops.decrypt(yaml.safe_dump(doc, sort_keys=True).encode(), "x.yaml")


def test_mac_only_encrypted(corpus: Path, tmp_path: Path) -> None:
    """With `mac_only_encrypted` the clear values are outside the MAC (sops's option)."""
    tree = {"name": "clear", "data": {"a": "x-secret"}}
    doc = sops_encrypt(
        tree, recipient_of(corpus), encrypted_regex="^data$", mac_only_encrypted=True
    )
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    doc["name"] = "changed"  # not covered: accepted
    assert json.loads(sops.decrypt(json.dumps(doc).encode(), "x.json"))["data"] == tree["data"]
    doc["data"]["b"] = doc["data"]["a"]  # an encrypted value added: refused
    with pytest.raises(sops.SopsError):
        sops.decrypt(json.dumps(doc).encode(), "x.json")


def test_age_files_binary_and_armored(corpus: Path, tmp_path: Path) -> None:
    recipient = pyrage.x25519.Recipient.from_str(recipient_of(corpus))
    blob = pyrage.encrypt(b"TOKEN=abc-123-xyz\n", [recipient])
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    assert sops.decrypt(blob, "token.age") == b"TOKEN=abc-123-xyz\n"
    assert sops.decrypt(_armor(blob).encode(), "token.txt") == b"TOKEN=abc-123-xyz\n"
    sops.forget()
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age-global.txt"))
    with pytest.raises(sops.SopsError, match="cannot decrypt this age file"):
        sops.decrypt(blob, "token.age")


# ---------------------------------------------------------------------------------------------
# Where it is used: manifests, env files, secrets, the redactor, history

STACK = {
    "apiVersion": "pyapply/v1",
    "kind": "Stack",
    "metadata": {"name": "vault"},
    "spec": {
        "services": {
            "app": {
                "image": "busybox",
                "environment": {"DB_PASSWORD": "pa55-w0rd-xyz", "MODE": "prod"},
                "env_file": ["./app.env"],
                "secrets": ["token"],
            }
        },
        "secrets": {"token": {"file": "./token.txt"}},
    },
}


def project(tmp_path: Path, corpus: Path) -> Path:
    """A stack whose manifest (its environment), env file and secret are encrypted."""
    d = tmp_path / "project"
    d.mkdir()
    doc = sops_encrypt(STACK, recipient_of(corpus), encrypted_regex="^environment$")
    (d / "stack.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (d / "app.env").write_bytes((corpus / "envs/env.env").read_bytes())
    (d / "token.txt").write_bytes((corpus / "files/file.txt").read_bytes())
    return d


def test_an_encrypted_stack_loads_with_its_env_file_and_secret(
    corpus: Path, tmp_path: Path
) -> None:
    d = project(tmp_path, corpus)
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    loaded = load([str(d)], environ={})
    [stack] = loaded.stacks
    env = dict(stack.services[0].environment)
    assert env == {"DB_PASSWORD": "pa55-w0rd-xyz", "MODE": "prod", "key": "value"}
    files = read_file_objects(stack, {})
    assert files[("secret", "token")] == b"value"
    # every value that was encrypted is hidden wherever it shows, the rest is not
    shown = redactor_for([]).text("DB_PASSWORD=pa55-w0rd-xyz image=busybox")
    assert shown == "DB_PASSWORD=*** image=busybox"
    # the revision is the files as kept in git: their digest is of the ciphertext
    assert loaded.content_digest


def test_a_manifest_error_keeps_its_position(corpus: Path, tmp_path: Path) -> None:
    d = project(tmp_path, corpus)
    text = (d / "stack.yaml").read_text()
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    bad = flip(text, "DB_PASSWORD: ENC[AES256_GCM,data:")
    (d / "stack.yaml").write_text(bad)
    with pytest.raises(ManifestError) as e:
        load([str(d)], environ={})
    [problem] = e.value.problems
    line = bad[: bad.index("DB_PASSWORD: ENC[")].count("\n") + 1
    assert str(problem).startswith(f"{d}/stack.yaml:{line}:")
    assert "spec.services.app.environment.DB_PASSWORD" in problem.message


def test_a_wrong_key_for_the_env_file_is_located(corpus: Path, tmp_path: Path) -> None:
    d = project(tmp_path, corpus)
    plain = yaml.safe_dump(STACK)
    (d / "stack.yaml").write_text(plain)  # a clear manifest, an encrypted env file
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age-global.txt"))
    with pytest.raises(ManifestError) as e:
        load([str(d)], environ={})
    [problem] = e.value.problems
    assert "stack.yaml:" in str(problem) and "app.env" in problem.message
    assert "no identity in the age key file" in problem.message


def test_a_secret_file_that_does_not_decrypt_stops_the_pass(corpus: Path, tmp_path: Path) -> None:
    d = project(tmp_path, corpus)
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    [stack] = load([str(d)], environ={}).stacks
    token = d / "token.txt"
    token.write_text(flip(token.read_text(), '"data": "ENC[AES256_GCM,data:'))
    with pytest.raises(PassError, match=rf"secret token: {token}:2:\d+: data: the encrypted"):
        read_file_objects(stack, {})


def test_an_encrypted_dot_env_feeds_interpolation(corpus: Path, tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / ".env").write_bytes((corpus / "envs/env.env").read_bytes())  # key=value
    clear = {**STACK, "spec": {"services": {"app": {"image": "busybox:${key}"}}}}
    (d / "stack.yaml").write_text(yaml.safe_dump(clear))
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    [stack] = load([str(d)], environ={}).stacks
    assert stack.services[0].image == "busybox:value"


def test_an_age_manifest_is_found_and_loaded(corpus: Path, tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    recipient = pyrage.x25519.Recipient.from_str(recipient_of(corpus))
    clear = {**STACK, "spec": {"services": {"app": {"image": "busybox"}}}}
    (d / "stack.yaml.age").write_bytes(pyrage.encrypt(yaml.safe_dump(clear).encode(), [recipient]))
    with pytest.raises(ManifestError, match="no age key was given"):
        load([str(d)], environ={})
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    assert [s.name for s in load([str(d)], environ={}).stacks] == ["vault"]


def test_history_keeps_the_encrypted_form(corpus: Path, tmp_path: Path) -> None:
    """The agent stores a revision's files for rollback as they are in git: the encrypted
    bytes. No decrypted value reaches history.db or revisions.db."""
    d = project(tmp_path, corpus)
    sops.use_key_file(corpus_keys(tmp_path, corpus, "age.txt"))
    load([str(d)], environ={})  # decrypts everything once, as a pass does
    root = tmp_path / "root"
    root.mkdir()
    h = History(str(root))
    h.store_revision("a" * 40, "subject", str(d), snapshot_files(str(d)))
    _, _, files = h.revision_files("a" * 40)
    assert files["token.txt"] == (d / "token.txt").read_bytes()
    for db in ("history.db", "revisions.db"):
        raw = (root / db).read_bytes()
        for plain in (b"pa55-w0rd-xyz", b"key=value"):
            assert plain not in raw, (db, plain)
    with sqlite3.connect(root / "revisions.db") as conn:
        [(stored,)] = conn.execute("SELECT files FROM revisions").fetchall()
    assert "ENC[AES256_GCM" in stored and "pa55-w0rd-xyz" not in stored


# ---------------------------------------------------------------------------------------------
# The command line: --age-key-file on validate (offline), and on every command that loads


def pyapply(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from pyapply.reconciler.cli.main import run

    monkeypatch.setattr("sys.argv", ["pyapply", *args])
    return run()


def test_validate_checks_encrypted_secret_files_with_a_key(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = project(tmp_path, corpus)
    keys = corpus_keys(tmp_path, corpus, "age.txt")
    monkeypatch.delenv("SOPS_AGE_KEY_FILE", raising=False)
    assert pyapply(monkeypatch, "validate", "-f", str(d), "--age-key-file", keys) == 0
    assert "valid: 1 stack(s)" in capsys.readouterr().out
    token = d / "token.txt"
    token.write_text(flip(token.read_text(), '"data": "ENC[AES256_GCM,data:'))
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", keys)  # the environment works as the option
    assert pyapply(monkeypatch, "validate", "-f", str(d)) == 1
    assert f"secret token: {token}:2:" in capsys.readouterr().err
    os.chmod(keys, 0o644)
    assert pyapply(monkeypatch, "validate", "-f", str(d)) == 1
    assert "lets others read" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    ["apply", "diff", "down", "get", "logs", "validate", "config", "convert", "watch", "rollback"],
)
def test_every_loading_command_takes_the_key_file(name: str) -> None:
    from pyapply.reconciler.cli.main import lazy_command

    command = lazy_command(name)
    assert command is not None
    [option] = [p for p in command.params if "--age-key-file" in getattr(p, "opts", ())]
    assert option.envvar == "SOPS_AGE_KEY_FILE"
