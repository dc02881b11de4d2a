"""Every command the CLI registers lazily resolves: a mistyped "module:attr" in
`LAZY_COMMANDS` would otherwise drop the command from `pyapply` without a word."""

from __future__ import annotations

import importlib

import click
import pytest

from pyapply.reconciler.cli.main import LAZY_COMMANDS, lazy_command, main

# the commands pyapply has always had (README): none may go missing from the table
EXPECTED = {
    "apply", "diff", "down", "delete", "get", "logs", "validate", "watch", "status",
    "history", "rollback", "resume", "sync", "config", "convert", "image", "system",
    "build", "push",
    "ps", "exec", "run", "restart", "events", "top", "stop", "start",
}  # fmt: skip


def test_the_table_holds_every_command() -> None:
    assert set(LAZY_COMMANDS) == EXPECTED


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_each_lazy_command_imports_to_a_click_command(name: str) -> None:
    module_name, sep, attr = LAZY_COMMANDS[name].partition(":")
    assert sep and attr, f"{name}: {LAZY_COMMANDS[name]!r} is not 'module:attr'"
    module = importlib.import_module(module_name)  # raises when the path is mistyped
    command = getattr(module, attr)
    assert isinstance(command, click.Command)
    assert lazy_command(name) is command
    assert main.get_command(click.Context(main), name) is command


def test_the_group_lists_them_all() -> None:
    assert set(main.list_commands(click.Context(main))) == EXPECTED


def test_an_unknown_name_is_no_command() -> None:
    assert lazy_command("nosuch") is None
