"""The options of `pyapply watch` for the dashboard and the authenticated HTTP API
(`--http`, `--http-token-file`, `--http-read-only`, `--http-cert`, `--http-key`) and their
wiring into the agent's API (`reconciler.agent.web`)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
import msgspec

from pyapply.reconciler.cli.main import fail
from pyapply.runtime.base import Hidden

if TYPE_CHECKING:
    from pyapply.reconciler.agent.agent import Agent
    from pyapply.reconciler.agent.api import Api
    from pyapply.reconciler.agent.web import TokenTable, Web

# (reconciler.agent.web is imported by `watch` only: `pyapply status` and the other agent
# commands, which share this module's command group, do not load the dashboard)


def web_options(fn: Any) -> Any:
    options = [
        click.option(
            "--http",
            "http_addr",
            default=None,
            metavar="HOST:PORT",
            help="Serve the dashboard and the API on HOST:PORT (TCP), behind tokens; needs "
            "--http-token-file. Off by default.",
        ),
        click.option(
            "--http-token-file",
            default=None,
            metavar="FILE",
            help="Tokens of --http, one `viewer <token>` or `operator <token>` a line "
            "(mode 0600, outside the watched tree, tokens of 16 characters or more).",
        ),
        click.option(
            "--http-read-only",
            is_flag=True,
            help="With --http: no actions (sync, rollback, resume) on the listener.",
        ),
        click.option(
            "--http-cert", default=None, metavar="FILE", help="With --http: serve TLS (PEM)."
        ),
        click.option(
            "--http-key", default=None, metavar="FILE", help="With --http-cert: its key (PEM)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class WebSetup(Hidden, msgspec.Struct):
    """The checked --http options of one `watch`."""

    __hidden__ = frozenset({"tokens"})
    address: tuple[str, int] | None = None
    tokens: TokenTable | None = None
    read_only: bool = False
    context: ssl.SSLContext | None = None

    @classmethod
    def parse(
        cls,
        *,
        http_addr: str | None,
        http_token_file: str | None,
        http_read_only: bool,
        http_cert: str | None,
        http_key: str | None,
    ) -> WebSetup:
        """Check the options before anything starts; a bad one exits 1 with one line."""
        from pyapply.reconciler.agent.web import (
            TokenTable,
            WebError,
            parse_address,
            read_tokens,
            tls_context,
        )

        setup = cls(read_only=http_read_only)
        if http_addr is None:
            given = [
                name
                for name, value in (
                    ("--http-token-file", http_token_file),
                    ("--http-read-only", http_read_only or None),
                    ("--http-cert", http_cert),
                    ("--http-key", http_key),
                )
                if value is not None
            ]
            if given:
                fail(f"{', '.join(given)}: only with --http")
            return setup
        if http_token_file is None:
            fail("--http needs --http-token-file (the listener never serves without tokens)")
        if (http_cert is None) != (http_key is None):
            fail("--http-cert and --http-key go together")
        try:
            setup.address = parse_address(http_addr)
            setup.tokens = TokenTable(read_tokens(http_token_file))
            if http_cert is not None and http_key is not None:
                setup.context = tls_context(http_cert, http_key)
        except WebError as exc:
            fail(str(exc))
        return setup

    @contextlib.contextmanager
    def running(self, agent: Agent, api: Api) -> Iterator[Web]:
        """The pages on the agent's socket (call before the API starts) and, with --http,
        the listener; stopped on the way out."""
        from pyapply.reconciler.agent.web import HttpServer, Web, socket_handler

        web = Web(agent, api, tokens=self.tokens, read_only=self.read_only)
        api.handler_class = socket_handler(web)
        server: HttpServer | None = None
        try:
            if self.address is not None:
                server = HttpServer(web, self.address, context=self.context)
                try:
                    server.start()
                except OSError as exc:
                    fail(f"--http {self.address[0]}:{self.address[1]}: cannot listen: {exc}")
                agent.http = server
            yield web
        finally:
            if server is not None:
                server.stop()
            web.stop()
