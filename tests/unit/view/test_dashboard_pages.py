"""The dashboard's pages as HTML: escaping of what the stacks and the runtime name, states
in words, actions only for an operator, the fragment that live updates swap in."""

from __future__ import annotations

import html
import re
from typing import Any

import markupsafe

from pyapply.reconciler.view import dashboard
from pyapply.reconciler.view.dashboard import Viewer, fragment, overview_rows, page

NOW = 1_800_000_000.0
HOSTILE = '<script>alert("x")</script>'
OPERATOR = Viewer(role="operator", read_only=False, csrf="c" * 64, session=True)
VIEWER = Viewer(role="viewer", read_only=False, csrf="d" * 64, session=True)


def status(sync: str = "Synced", health: str = "Healthy", name: str = "shop") -> dict[str, Any]:
    return {
        "agent": {"source": "/srv/repo", "reconciling": False},
        "revision": {
            "applied": "0123456789abcdef",
            "subject": f"deploy {HOSTILE}",
            "source": "0123456789abcdef",
            "pinned": None,
            "pin_reason": None,
        },
        "last_result": {
            "pass": 3,
            "revision": "0123456789abcdef",
            "trigger": "file",
            "outcome": "succeeded",
            "started": NOW - 30,
            "ended": NOW - 28,
            "errors": [],
            "summary": {},
        },
        "sync": sync,
        "rejected": None,
        "stacks": [
            {
                "name": name,
                "sync": sync,
                "health": health,
                "services": [
                    {"name": "web", "health": health, "replicas": 2, "running": 2},
                    {"name": "db", "health": "Healthy", "replicas": 1, "running": 1},
                ],
            }
        ],
    }


def stack_doc(name: str = "shop") -> dict[str, Any]:
    return {
        "name": name,
        "sync": "OutOfSync",
        "health": "Degraded",
        "revision": "0123456789abcdef",
        "services": [
            {
                "name": HOSTILE,
                "health": "Degraded",
                "running": 0,
                "replicas": [
                    {
                        "name": f"{name}-x-1",
                        "state": "exited",
                        "exit_code": 137,
                        "health": None,
                        "image": "busybox:latest",
                        "image_id": "sha256:" + "ab" * 32,
                        "ports": [{"container_port": 80, "protocol": "tcp", "host_port": 8080}],
                        "restarts": 2,
                        "started_at": "2027-01-15T08:00:00.123456789Z",
                    }
                ],
            }
        ],
        "networks": [{"name": f"{name}_default", "driver": "bridge", "internal": False}],
        "volumes": [],
        "drift": {
            "text": f"stack {name}:\n  ~ start container {HOSTILE}",
            "changes": [
                {
                    "action": "start",
                    "object": "container",
                    "name": f"{name}-x-1",
                    "reason": f"exited {HOSTILE}",
                    "fields": [{"field": "status", "old": "exited", "new": "running"}],
                }
            ],
        },
    }


def text_of(markup: str) -> str:
    """What a person reads: the markup without tags, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


def test_the_overview_shows_each_stack_in_words_and_escapes_a_hostile_subject() -> None:
    out = page(
        "overview",
        VIEWER,
        NOW,
        status=status("OutOfSync", "Degraded"),
        rows=overview_rows(status("OutOfSync", "Degraded")),
    )
    assert HOSTILE not in out
    assert str(markupsafe.escape(HOSTILE)) in out
    words = " ".join(text_of(out).split())
    assert "OutOfSync" in words and "Degraded" in words
    assert "1 Degraded, 1 Healthy" in words
    assert "0123456789ab" in words
    assert "succeeded" in words and "(28 s ago)" in words
    assert '<meta name="viewport"' in out
    assert "<script>" not in out.replace('<script src="/static/dashboard.js" defer></script>', "")


def test_actions_are_offered_to_an_operator_only_and_never_in_read_only() -> None:
    doc = status()
    rows = overview_rows(doc)
    assert 'href="/confirm/sync"' in page("overview", OPERATOR, NOW, status=doc, rows=rows)
    assert "/confirm/sync" not in page("overview", VIEWER, NOW, status=doc, rows=rows)
    locked = Viewer(role="operator", read_only=True, csrf="e" * 64)
    assert "/confirm/sync" not in page("overview", locked, NOW, status=doc, rows=rows)


def test_the_stack_page_escapes_names_and_plan_text_and_says_states_in_words() -> None:
    out = page("stack", OPERATOR, NOW - 60, stack=stack_doc())
    assert HOSTILE not in out
    words = " ".join(text_of(out).split())
    assert "exited (exit 137)" in words
    assert "Degraded" in words and "OutOfSync" in words
    assert "8080->80/tcp" in words
    assert "abababababab" in words  # the image id, short
    assert "status : exited → running" in words
    assert "1 change(s) to converge" in words
    assert f"~ start container {HOSTILE}" in text_of(out)  # shown, as text


def test_a_fragment_is_the_inside_of_main_only() -> None:
    doc = status()
    whole = page("overview", VIEWER, NOW, status=doc, rows=overview_rows(doc))
    part = fragment("overview", VIEWER, NOW, status=doc, rows=overview_rows(doc))
    assert "<html" not in part and "<main" not in part
    assert part.strip() and part.strip() in whole


def test_history_offers_rollback_to_an_earlier_good_revision_with_its_duration() -> None:
    passes = [
        {"id": 2, "revision": "bbbbbbbbbbbbbbbb", "subject": "two", "trigger": "file",
         "started": NOW - 10, "ended": NOW - 8.5, "outcome": "succeeded", "errors": [],
         "summary": {}, "duration": "1.5 s"},
        {"id": 1, "revision": "aaaaaaaaaaaaaaaa", "subject": HOSTILE, "trigger": "start",
         "started": NOW - 100, "ended": NOW - 99, "outcome": "failed", "errors": ["boom"],
         "summary": {}, "duration": "1.0 s"},
        {"id": 0, "revision": "cccccccccccccccc", "subject": "zero", "trigger": "start",
         "started": NOW - 200, "ended": NOW - 199, "outcome": "succeeded", "errors": [],
         "summary": {}, "duration": "1.0 s"},
    ]  # fmt: skip
    out = page("history", OPERATOR, NOW, passes=passes, applied="bbbbbbbbbbbbbbbb")
    assert HOSTILE not in out
    assert "/confirm/rollback?revision=cccccccccccccccc" in out
    assert "revision=bbbbbbbbbbbbbbbb" not in out  # the one applied now
    assert "revision=aaaaaaaaaaaaaaaa" not in out  # failed: not a target
    words = " ".join(text_of(out).split())
    assert "failed" in words and "1.5 s" in words


def test_confirm_and_login_forms_post_with_the_csrf_token() -> None:
    out = page(
        "confirm", OPERATOR, NOW, heading="Roll back", question=f"To {HOSTILE}?",
        action="/actions/rollback", fields=[("revision", '"><b>')], button="Roll back",
        back="/history",
    )  # fmt: skip
    assert 'method="post" action="/actions/rollback"' in out
    assert f'name="csrf" value="{"c" * 64}"' in out
    assert 'value="&#34;&gt;&lt;b&gt;"' in out
    assert HOSTILE not in out
    login = page("login", Viewer(), NOW, message="wrong token", live="none")
    assert 'action="/login"' in login and 'type="password"' in login


def test_logs_are_text_and_link_their_stream() -> None:
    out = page(
        "logs", VIEWER, NOW, stack="shop", service="web", limit=200, follow=True, live="logs",
        containers=[{"name": "shop-web-1", "lines": [HOSTILE, "ok"], "stream": "/s?x=1&y=2"}],
    )  # fmt: skip
    assert HOSTILE not in out and str(markupsafe.escape(HOSTILE)) in out
    assert 'data-stream="/s?x=1&amp;y=2"' in out


def test_words_for_times_and_durations() -> None:
    assert dashboard.span(0.42) == "0.4 s"
    assert dashboard.span(125) == "2 min 5 s"
    assert dashboard.span(90061) == "1 d 1 h"
    assert dashboard.uptime("2027-01-15T08:00:00.123456789Z", 1_800_000_000.0 + 0) != "-"
    assert dashboard.uptime("0001-01-01T00:00:00Z", NOW) == "-"
    assert dashboard.uptime("garbage", NOW) == "-"
    assert dashboard.when(None, NOW) == "never"
    assert dashboard.state_class("Degraded") == "st-bad"
    assert dashboard.state_symbol("Synced") == "\u2713"
