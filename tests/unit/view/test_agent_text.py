"""`pyapply status` and `pyapply history` as text (`view.agent_text`)."""

from __future__ import annotations

from typing import Any

from pyapply.reconciler.view.agent_text import history_lines, status_lines, when


def test_status_lines() -> None:
    doc: dict[str, Any] = {
        "agent": {"source": "/srv/repo", "source_kind": "git", "reconciling": True},
        "revision": {"applied": "abc123", "subject": "fix", "source": "def456", "pinned": None},
        "sync": "OutOfSync",
        "rejected": {"revision": "def456", "outcome": "refused", "errors": ["no, because"]},
        "history_reset": None,
        "history": {"write_failures": 2, "last_failure": "begin: disk full"},
        "last_result": {"outcome": "succeeded", "trigger": "resync", "ended": 0, "pass": 7},
        "webhook": {
            "address": "0.0.0.0:9000",
            "path": "/webhook",
            "requests": {"triggered": 3, "ignored": 1, "unauthorized": 2, "too_large": 1},
            "last": {"at": 0, "outcome": "triggered", "status": 202},
            "last_triggered": 0,
        },
        "notifications": {
            "events": {"applied": 2},
            "suppressed": 0,
            "targets": [
                {
                    "url": "https://hooks.example/…",
                    "format": "slack",
                    "queued": 1,
                    "sent": 4,
                    "failed": 1,
                    "dropped": 0,
                    "last_sent": 0,
                    "last_failed": 0,
                    "last_error": "HTTP 500",
                },
            ],
        },
        "stacks": [
            {
                "name": "st",
                "health": "Degraded",
                "services": [{"name": "web", "health": "Degraded", "running": 1, "replicas": 2}],
            }
        ],
    }
    assert status_lines(doc) == [
        "source:    /srv/repo (git)",
        "revision:  abc123 fix",
        "source at: def456",
        "sync:      OutOfSync  (reconciling)",
        "source def456: refused, not applied",
        "  error: no, because",
        "history:   WARNING: 2 record(s) could not be written (begin: disk full)",
        "last pass: succeeded (resync) at -, pass #7",
        "webhook:   http://0.0.0.0:9000/webhook, 3 push(es); last triggered at -; 3 request(s) "
        "refused",
        "notify:    https://hooks.example/… (slack): 4 sent, 1 failed, 0 dropped, 1 queued "
        "(last error: HTTP 500)",
        "stack st: Degraded",
        "  web: Degraded (1/2 running)",
    ]


def test_status_lines_on_a_swarm() -> None:
    """The swarm's extra: a service's update state and latest failure, and the nodes."""
    doc: dict[str, Any] = {
        "agent": {"source": "/srv/repo", "source_kind": "dir", "reconciling": False},
        "revision": {"applied": "abc123", "subject": "", "source": "abc123", "pinned": None},
        "sync": "Synced",
        "last_result": {},
        "stacks": [
            {
                "name": "st",
                "health": "Degraded",
                "services": [
                    {
                        "name": "web",
                        "health": "Degraded",
                        "running": 1,
                        "replicas": 2,
                        "update": "paused",
                        "failing": "exit 3",
                    }
                ],
            }
        ],
        "nodes": [
            {"hostname": "m1", "role": "manager", "state": "ready", "availability": "active"},
            {"hostname": "w1", "role": "worker", "state": "down", "availability": "drain"},
        ],
    }
    lines = status_lines(doc)
    assert lines[-4:] == [
        "stack st: Degraded",
        "  web: Degraded (1/2 running); update paused; failing: exit 3",
        "node m1 (manager): ready, active",
        "node w1 (worker): down, drain",
    ]


def test_history_lines() -> None:
    records = [
        {
            "id": 12,
            "revision": "abc123",
            "subject": "fix",
            "trigger": "file,event:st-web-1,resync,api",
            "started": 100.0,
            "ended": 101.5,
            "outcome": "failed",
            "summary": {},
            "errors": ["one", "two"],
        }
    ]
    header, row = history_lines(records)
    assert header.split() == [
        "PASS", "REVISION", "OUTCOME", "TRIGGER", "STARTED", "SECONDS", "SUBJECT", "/", "ERRORS"
    ]  # fmt: skip
    assert row.startswith("12    abc123    failed   file,event:st-web-1,r...  ")
    assert f"  {when(100.0)}  1.50     fix: one (+1)" in row
