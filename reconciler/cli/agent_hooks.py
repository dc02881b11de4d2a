"""The options of `pyapply watch` for push webhooks and notifications, and their wiring
into an agent (`reconciler.agent.webhook`, `reconciler.agent.notify`)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
import msgspec

from pyapply.reconciler.agent.notify import Notifier, NotifyError, Target, parse_target
from pyapply.reconciler.agent.webhook import (
    WebhookError,
    WebhookServer,
    parse_address,
    push_filter,
    read_secret,
)
from pyapply.reconciler.cli.main import fail
from pyapply.runtime.base import Hidden

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


class AgentHooks(Hidden, msgspec.Struct):
    """The checked --webhook and --notify options of one `watch`."""

    __hidden__ = frozenset({"secret"})
    address: tuple[str, int] | None = None
    secret: bytes = b""
    ref: str | None = None
    targets: list[Target] = msgspec.field(default_factory=list)

    @classmethod
    def parse(
        cls,
        *,
        webhook_addr: str | None,
        webhook_secret_file: str | None,
        webhook_ref: str | None,
        notify_urls: tuple[str, ...],
        notify_format: str,
    ) -> AgentHooks:
        """Check the options before anything starts; a bad one exits 1 with one line."""
        hooks = cls(ref=webhook_ref)
        if webhook_addr is not None or webhook_secret_file is not None:
            if webhook_addr is None or webhook_secret_file is None:
                fail(
                    "--webhook and --webhook-secret-file go together (a webhook is never unsigned)"
                )
            try:
                hooks.address = parse_address(webhook_addr)
                hooks.secret = read_secret(webhook_secret_file)
            except WebhookError as exc:
                fail(str(exc))
        elif webhook_ref is not None:
            fail("--webhook-ref needs --webhook")
        try:
            hooks.targets = [parse_target(u, notify_format) for u in notify_urls]
        except NotifyError as exc:
            fail(str(exc))
        return hooks

    def _followed(self, agent: Agent) -> str | None:
        """The ref a push must name: --webhook-ref, else the branch or tag the git source
        follows (a SHA pin or the default branch: any ref, the fetch decides)."""
        if self.ref is not None:
            return self.ref
        if agent.git is not None and agent.git.ref.kind == "name":
            return agent.git.ref.value
        return None

    @contextlib.contextmanager
    def running(self, agent: Agent) -> Iterator[None]:
        """The notifier and the webhook listener of `agent`, stopped on the way out."""
        server: WebhookServer | None = None
        notifier: Notifier | None = None
        try:
            if self.targets:
                notifier = Notifier(
                    self.targets,
                    host=socket.gethostname(),
                    source=agent.source.path,
                    redactor=lambda: agent.redactor,
                    metrics=agent.metrics,
                )
                notifier.start()
                agent.notifier = notifier
            if self.address is not None:
                server = WebhookServer(
                    self.address,
                    self.secret,
                    agent.on_push,
                    push_filter(agent.source, self._followed(agent)),
                    metrics=agent.metrics,
                )
                try:
                    server.start()
                except OSError as exc:
                    fail(f"--webhook {self.address[0]}:{self.address[1]}: cannot listen: {exc}")
                agent.webhook = server
            yield
        finally:
            if server is not None:
                server.stop()
            if notifier is not None:
                notifier.stop()
