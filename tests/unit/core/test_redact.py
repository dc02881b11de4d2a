"""Redaction by value, by URL password and by name: the pure function, and the plan
renderings that use it."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

from pyapply.reconciler.agent.history import History
from pyapply.reconciler.core.diff import Change, FieldDiff
from pyapply.reconciler.core.model import SecretSpec, ServiceSpec, Stack
from pyapply.reconciler.core.plan import Plan
from pyapply.reconciler.core.redact import HIDDEN, MASK, MIN_SECRET_LENGTH, NO_SECRETS, Redactor
from pyapply.reconciler.core.translate import desired_state
from pyapply.reconciler.engine.reconcile import redactor_for
from pyapply.reconciler.view.plan_text import plan_json, plan_text

SECRET = "s3cr3t-Pa55word"


def test_a_secret_value_is_masked_wherever_it_appears() -> None:
    r = Redactor([SECRET])
    assert r.text(SECRET) == MASK
    assert r.text(f"x={SECRET};y") == f"x={MASK};y"
    assert r.text(f"{SECRET}{SECRET}") == MASK + MASK
    assert r.text("nothing here") == "nothing here"


def test_file_contents_are_taken_without_the_trailing_newline() -> None:
    r = Redactor([(SECRET + "\n").encode()])
    assert r.text(f"V={SECRET} end") == f"V={MASK} end"


def test_multi_line_secrets_are_masked_whole_and_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\nAAAAline1secret\nBBBBline2secret\n-----END KEY-----\n"
    r = Redactor([pem.encode()])
    assert r.text(pem) == MASK + "\n"
    assert r.text("one line: BBBBline2secret") == f"one line: {MASK}"
    assert "AAAA" not in r.text("AAAAline1secret\nBBBBline2secret")


def test_short_secrets_are_not_redacted_by_value() -> None:
    assert MIN_SECRET_LENGTH == 4
    r = Redactor(["a", "abc", "  b \n", "abcd"])
    assert len(r) == 1  # only "abcd"
    assert r.text("a abc abcd") == f"a abc {MASK}"


def test_the_longest_secret_wins_when_one_contains_another() -> None:
    r = Redactor(["token", "token-and-more"])
    assert r.text("x token-and-more y") == f"x {MASK} y"


def test_undecodable_bytes_are_skipped_but_text_lines_kept() -> None:
    r = Redactor([b"\xff\xfe\x00binary\nreadable-line\n"])
    assert r.text("see readable-line") == f"see {MASK}"


def test_url_passwords_are_masked_without_knowing_them() -> None:
    t = NO_SECRETS.text
    assert t("postgres://app:PASSWORD@db:5432/shop") == "postgres://app:***@db:5432/shop"
    assert t("a https://u:p%40ss@h/x and redis://:pw@r:6379") == (
        "a https://u:***@h/x and redis://:***@r:6379"
    )
    # an unencoded '@' in the password: masked up to the last one of the authority
    assert t("mysql://root:p@ss@db/x") == "mysql://root:***@db/x"
    assert t("ssh://git@github.com/x") == "ssh://git@github.com/x"  # a user, no password
    assert t("http://host:8080/path?q=a@b") == "http://host:8080/path?q=a@b"


def test_credential_key_value_pairs_in_free_text() -> None:
    t = NO_SECRETS.text
    assert t("host=db user=app password=hunter22 dbname=x") == (
        "host=db user=app password=*** dbname=x"
    )
    assert t("https://h/cb?access_token=abc123&x=1") == "https://h/cb?access_token=***&x=1"
    assert t("monkey=banana") == "monkey=banana"


def test_value_walks_json_documents() -> None:
    r = Redactor([SECRET])
    doc = {"a": [SECRET, 1, None, True], "b": {"c": f"x {SECRET}"}, "n": 2.5}
    assert r.value(doc) == {"a": [MASK, 1, None, True], "b": {"c": f"x {MASK}"}, "n": 2.5}


def test_env_fields_by_name_and_by_value() -> None:
    r = Redactor([SECRET])
    assert r.env_field("env.DB_PASSWORD", "short") == HIDDEN
    assert r.env_field("env.DATABASE_URL", "postgres://a:b@h/d") == "postgres://a:***@h/d"
    assert r.env_field("env.OTHER", f"pre{SECRET}post") == f"pre{MASK}post"
    assert r.env_field("env", ["API_TOKEN=x", f"V={SECRET}"]) == [
        f"API_TOKEN={HIDDEN}",
        f"V={MASK}",
    ]
    assert r.env_field("image", "busybox") == "busybox"
    assert r.env_field("env.X", None) is None


def test_repr_and_union_never_show_values() -> None:
    r = Redactor([SECRET]).union(Redactor(["another-one"]))
    assert SECRET not in repr(r) and len(r) == 2
    assert r.text(f"{SECRET} another-one") == f"{MASK} {MASK}"
    assert r.union(Redactor([SECRET])) is r


def test_redactor_for_takes_secrets_not_configs() -> None:
    stack = Stack(
        name="shop",
        services=(ServiceSpec(name="web", image="busybox"),),
        configs=(SecretSpec(name="conf", content="config-not-secret"),),
        secrets=(SecretSpec(name="pw", file="/nonexistent"), SecretSpec(name="tok", content="x")),
    )
    desired = desired_state(
        stack,
        revision="r",
        file_contents={
            ("config", "conf"): b"config-not-secret",
            ("secret", "pw"): (SECRET + "\n").encode(),
            ("secret", "tok"): b"from-content-source",
        },
        files_root="/tmp/files",
    )
    r = redactor_for([desired])
    assert r.text(f"{SECRET} from-content-source config-not-secret") == (
        f"{MASK} {MASK} config-not-secret"
    )


def _plan(fields: tuple[FieldDiff, ...], errors: tuple[str, ...] = ()) -> Plan:
    change = Change("recreate", "container", "shop-web-1", "spec changed", "web", 1, fields)
    return Plan("shop", "rev", (change,), (), errors, ())


def test_plan_text_and_json_hide_secrets_before_shortening() -> None:
    long_secret = "L" * 70 + "-tail-of-a-long-secret"
    r = Redactor([SECRET, long_secret])
    plan = _plan(
        (
            FieldDiff(
                "env.DATABASE_URL", "postgres://app:old@db/x", f"postgres://app:{SECRET}@db/x"
            ),
            FieldDiff("env.PLAIN", "a", f"prefix-{long_secret}"),
            FieldDiff("env", [f"X={SECRET}"], []),
        ),
        errors=(f"create shop-web-1: failed with {SECRET}",),
    )
    text = plan_text(plan, r)
    assert SECRET not in text and "old" not in text
    assert "LLLL" not in text  # a cut at 80 characters must not leave a prefix behind
    assert "env.PLAIN: a -> prefix-***" in text
    doc = json.dumps(plan_json(plan, r))
    assert SECRET not in doc and "LLLL" not in doc and "app:old" not in doc
    assert "postgres://app:***@db/x" in doc


def test_history_db_holds_no_revision_files(tmp_path: Path) -> None:
    h = History(str(tmp_path))
    h.store_revision("abc1234", "first", "/src", {"stack.yaml": f"pw: {SECRET}".encode()})
    h.finish(h.begin("abc1234", "first", "api"), "succeeded", {}, [])
    assert SECRET.encode() not in (tmp_path / "history.db").read_bytes()
    assert SECRET.encode() in (tmp_path / "revisions.db").read_bytes()
    for name in ("history.db", "revisions.db"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert h.revision_files("abc1234")[2] == {"stack.yaml": f"pw: {SECRET}".encode()}


def test_an_old_history_db_is_moved_apart_and_vacuumed(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "history.db")
    db.executescript(
        "CREATE TABLE revisions (revision TEXT PRIMARY KEY, subject TEXT NOT NULL DEFAULT '',"
        " source TEXT NOT NULL DEFAULT '', recorded REAL NOT NULL, files TEXT NOT NULL);"
    )
    files = json.dumps({"s.yaml": f"pw: {SECRET}"})
    db.execute("INSERT INTO revisions VALUES ('old1', 's', '/x', 1.0, ?)", (files,))
    db.commit()
    db.close()
    h = History(str(tmp_path))
    assert h.revision_files("old1")[2] == {"s.yaml": f"pw: {SECRET}".encode()}
    assert SECRET.encode() not in (tmp_path / "history.db").read_bytes()
    assert h.passes(1) == []  # the record itself is still usable after the move


def test_agent_log_lines_are_redacted_in_both_formats() -> None:
    import logging

    from pyapply.reconciler.agent.logs import JsonFormatter, PlainFormatter, log_redaction

    secret = 'qu"ote\\back-ünï'  # JSON would escape all of these
    record = logging.LogRecord("pyapply.agent", logging.ERROR, __file__, 1, "x %s", (secret,), None)
    record.fields = {"errors": [f"create: {secret}", "redis://:pw1234@r"]}
    try:
        log_redaction.use(Redactor([secret]))
        plain = PlainFormatter().format(record)
        doc = json.loads(JsonFormatter().format(record))
    finally:
        log_redaction.use(NO_SECRETS)
    assert plain.endswith(f"x {MASK}")
    assert doc["msg"] == f"x {MASK}"
    assert doc["errors"] == [f"create: {MASK}", "redis://:***@r"]


def test_hook_environments_follow_the_name_rule() -> None:
    hooks = [{"command": ["x"], "env": ["API_TOKEN=abc123", "MODE=fast"]}, {"command": ["y"]}]
    assert Redactor().env_field("post_start", hooks) == [
        {"command": ["x"], "env": ["API_TOKEN=(sensitive value)", "MODE=fast"]},
        {"command": ["y"]},
    ]
