"""The agent's log: plain lines or one JSON document per line, on stderr, with every secret
the agent has learned hidden (`log_redaction`), and `info` for a line with fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from pyapply.reconciler.core.redact import NO_SECRETS, Redactor

log = logging.getLogger("pyapply.agent")


class LogRedaction:
    """The redactor the agent's log lines go through; the agent widens it as it learns the
    secrets of the stacks it loads (one per process, like the logging set-up itself)."""

    def __init__(self) -> None:
        self.redactor: Redactor = NO_SECRETS

    def use(self, redactor: Redactor) -> None:
        self.redactor = redactor


log_redaction = LogRedaction()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        # redacted before serialising: JSON escapes would hide a secret from the pattern
        doc = log_redaction.redactor.value(json.loads(json.dumps(doc, default=str)))
        return json.dumps(doc)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return log_redaction.redactor.text(super().format(record))


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger("pyapply")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def info(msg: str, **fields: Any) -> None:
    """An info line; `fields` go into the JSON document of the line."""
    log.info(msg, extra={"fields": fields})
