"""The options of `pyapply watch` for push webhooks and notifications, and their wiring
into an agent (`reconciler.agent.webhook`, `reconciler.agent.notify`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from pyapply.reconciler.cli.main import fail

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent


def hook_options(fn: Any) -> Any:
    """--webhook, --webhook-secret-file, --webhook-ref, --notify, --notify-format."""
    options = [
        click.option(
            "--webhook",
            "webhook_addr",
            default=None,
            metavar="HOST:PORT",
            help="Take push webhooks (GitHub, GitLab, Gitea/Forgejo, generic signed) on "
            "http://HOST:PORT/webhook; needs --webhook-secret-file.",
        ),
        click.option(
            "--webhook-secret-file",
            default=None,
            metavar="FILE",
            help="The webhooks' shared secret (a file of mode 0600, at least 16 bytes).",
        ),
        click.option(
            "--webhook-ref",
            default=None,
            metavar="REF",
            help="The branch or tag whose pushes trigger a pass (default: the branch checked "
            "out in a git work tree; any ref for other sources).",
        ),
        click.option(
            "--notify",
            "notify_urls",
            multiple=True,
            metavar="URL",
            help="POST an event to URL (repeatable): applied, failed, refused, "
            "drift_repaired, rollback. `slack+https://...` or `json+https://...` picks "
            "the format for one URL; plain http only to loopback.",
        ),
        click.option(
            "--notify-format",
            type=click.Choice(["json", "slack"]),
            default="json",
            show_default=True,
            help="The format of --notify URLs that do not say theirs.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@contextlib.contextmanager
def agent_hooks(
    agent: Agent,
    *,
    webhook_addr: str | None,
    webhook_secret_file: str | None,
    webhook_ref: str | None,
    notify_urls: tuple[str, ...],
    notify_format: str,
) -> Iterator[None]:
    """Start the notifier and the webhook listener of `agent` (when asked for); stop them
    on the way out. A bad option exits 1 with one line, before anything starts."""
    from pyapply.reconciler.agent.notify import Notifier, NotifyError, parse_target
    from pyapply.reconciler.agent.webhook import (
        WebhookError,
        WebhookServer,
        parse_address,
        push_filter,
        read_secret,
    )

    server: WebhookServer | None = None
    if webhook_addr is not None or webhook_secret_file is not None:
        if webhook_addr is None or webhook_secret_file is None:
            fail("--webhook and --webhook-secret-file go together (a webhook is never unsigned)")
        try:
            address = parse_address(webhook_addr)
            secret = read_secret(webhook_secret_file)
        except WebhookError as exc:
            fail(str(exc))
        server = WebhookServer(
            address,
            secret,
            agent.on_push,
            push_filter(agent.source, webhook_ref),
            metrics=agent.metrics,
        )
    elif webhook_ref is not None:
        fail("--webhook-ref needs --webhook")
    notifier: Notifier | None = None
    if notify_urls:
        try:
            targets = [parse_target(u, notify_format) for u in notify_urls]
        except NotifyError as exc:
            fail(str(exc))
        notifier = Notifier(
            targets,
            host=socket.gethostname(),
            source=agent.source.path,
            redactor=lambda: agent.redactor,
            metrics=agent.metrics,
        )
    try:
        if notifier is not None:
            notifier.start()
            agent.notifier = notifier
        if server is not None:
            try:
                server.start()
            except OSError as exc:
                fail(f"--webhook {webhook_addr}: cannot listen: {exc.strerror or exc}")
            agent.webhook = server
        yield
    finally:
        if server is not None:
            server.stop()
        if notifier is not None:
            notifier.stop()
