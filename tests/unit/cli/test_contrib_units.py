"""The systemd units in contrib/systemd start `pyapply watch` with options it has: each
unit's ExecStart is parsed by the real `watch` command's option parser (no callback runs,
no file is looked at, no agent starts), and the git-source unit runs with a deploy key
and a known_hosts file kept outside the state root."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import pytest

from pyapply.reconciler.cli.agent import watch

UNITS = Path(__file__).resolve().parents[3] / "contrib" / "systemd"


def exec_start(unit: Path) -> list[str]:
    """The ExecStart command line, its continuation lines joined."""
    text = unit.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def parse(argv: list[str]) -> dict[str, Any]:
    """`watch`'s options as its parser reads them (raw strings); an unknown one raises."""
    opts, args, _ = watch.make_parser(click.Context(watch)).parse_args(argv)
    assert not args, args
    return dict(opts)


@pytest.mark.parametrize("name", ["pyapply-agent.service", "pyapply-agent-git.service"])
def test_the_units_start_watch_with_options_it_has(name: str) -> None:
    argv = exec_start(UNITS / name)
    assert Path(argv[0]).name == "pyapply" and argv[1] == "watch", argv
    assert parse(argv[2:])["metrics_addr"] == "127.0.0.1:9464"
    with pytest.raises(click.NoSuchOption):  # the parser is strict: the check can fail
        parse([*argv[2:], "--no-such-option"])


def test_the_git_unit_fetches_over_ssh_with_a_deploy_key() -> None:
    unit = UNITS / "pyapply-agent-git.service"
    argv = exec_start(unit)
    params = parse(argv[2:])
    assert params["repo"].startswith("ssh://") and isinstance(params["subpath"], str)
    assert params["ssh_key"] and params["known_hosts"]
    env = dict(
        ln.removeprefix("Environment=").split("=", 1)
        for ln in unit.read_text().splitlines()
        if ln.startswith("Environment=")
    )
    root = env["PYAPPLY_ROOT"]
    for key in (params["ssh_key"], params["known_hosts"]):
        assert not key.startswith(root.rstrip("/") + "/"), key  # outside the synced tree
    assert "Conflicts=pyapply-agent.service" in unit.read_text()  # one agent per root
