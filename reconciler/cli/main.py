"""The command line: `pyapply -f stack.yaml` and its friends.

This module is the entry point: the command group, the options the commands share, and
`run`, which turns every error into a message and an exit status in one place (0 success /
no drift, 1 error: bad input, failed action, any `PyapplyError` or runtime failure, 2 drift
found by `diff --exit-code`, 130 interrupted). The commands live one group per module
(`apply.py`: apply/diff/down, `inspect.py`: get (ps)/logs, `ops.py`: exec/run/restart/
events/top, `validate.py`, `agent.py`,
`compose.py`, `image.py`, `system.py`) and are imported only when used (`LAZY_COMMANDS`), so
that a no-op apply pays only for what it runs. A command parses its options and calls the
engine and the views; it decides nothing itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Collection
from typing import Any, NoReturn, TypeVar

import click

from pyapply.reconciler.core.errors import PyapplyError
from pyapply.reconciler.core.redact import NO_SECRETS
from pyapply.reconciler.version import __version__
from pyapply.runtime.base import RuntimeFailure

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


class Failure(PyapplyError):
    """An error for the user: printed as one line on stderr, exit status 1."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


def err(message: str) -> None:
    """A line on stderr; URL passwords and credential `key=value` pairs are masked (the
    commands that know the stacks' secrets mask them before calling this)."""
    click.echo(NO_SECRETS.text(message), err=True)


# ---------------------------------------------------------------------------------------------
# Options shared by commands


def project_files_here() -> tuple[str, ...]:
    """The compose project a command reads without `-f`: COMPOSE_FILE, else the compose
    file (and its override) of the current directory or its nearest parent that has one."""
    from pyapply.reconciler.manifest.discovery import find_project

    return tuple(find_project(os.getcwd(), os.environ))


def _files_or_project(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    if value:
        return value
    found = project_files_here()
    if not found:
        raise click.UsageError(
            "no -f given, and no compose.yaml, compose.yml, docker-compose.yaml or "
            "docker-compose.yml here or in a parent directory (nor COMPOSE_FILE)",
            ctx,
        )
    return found


def file_option(required: bool = True) -> Callable[[F], F]:
    """-f/--file; when it is not given, a command that needs manifests (`required`) reads
    the compose project found as compose finds it (`project_files_here`); the others
    (`down`, `get`: they also take --stack) call `project_files_here` themselves."""
    files = click.option(
        "-f",
        "--file",
        "files",
        multiple=True,
        callback=_files_or_project if required else None,
        type=click.Path(),
        help="Manifest file or directory (every *.yaml/*.yml below); repeatable. Default: "
        "COMPOSE_FILE, else compose.yaml (compose.yml, docker-compose.y[a]ml) and its "
        "override in this directory or the nearest parent holding one.",
    )
    # -p rides on -f (every command that loads manifests has -f) and reaches the loader
    # through the context (`project_name`), so no command has to pass it along
    name = click.option(
        "-p",
        "--project-name",
        metavar="NAME",
        expose_value=False,
        callback=_remember_project_name,
        help="The compose project's name (over COMPOSE_PROJECT_NAME, `name:` and the "
        "directory's name).",
    )

    def decorate(fn: F) -> F:
        return name(files(fn))

    return decorate


def _remember_project_name(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[_PROJECT_NAME] = value


_PROJECT_NAME = "pyapply.project_name"


def project_name() -> str | None:
    """The `-p/--project-name` of the command being run, if one was given."""
    ctx = click.get_current_context(silent=True)
    value = ctx.meta.get(_PROJECT_NAME) if ctx is not None else None
    return value if isinstance(value, str) else None


def runtime_options(fn: F) -> F:
    fn = click.option(
        "--runtime",
        "runtime_name",
        envvar="PYAPPLY_RUNTIME",
        default=None,
        help="Runtime to drive: native (the default, daemonless), docker, or swarm (services on a "
        "swarm manager). Env: PYAPPLY_RUNTIME.",
    )(fn)
    fn = click.option(
        "--root",
        envvar="PYAPPLY_ROOT",
        default=None,
        help="State root (default /var/lib/pyapply). Env: PYAPPLY_ROOT.",
    )(fn)
    return fn


def profile_option(fn: F) -> F:
    return click.option(
        "--profile",
        "profiles",
        multiple=True,
        envvar="COMPOSE_PROFILES",
        help="Enable a compose profile (repeatable; '*' enables all). Env: COMPOSE_PROFILES.",
    )(fn)


def output_option(fn: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        help="Output format.",
    )(fn)


def policy_option(fn: F) -> F:
    return click.option(
        "--policy",
        "policy_arg",
        metavar="FILE",
        envvar="PYAPPLY_POLICY",
        default=None,
        help="What manifests may ask of the host: a policy file (YAML or JSON), or the "
        "built-in 'restricted' (every rule denies) or 'warn' (every rule warns). "
        "Default: warn (watch: restricted). Env: PYAPPLY_POLICY.",
    )(fn)


def _use_age_key(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        from pyapply.reconciler.manifest import sops  # only with a key (startup)

        try:
            sops.use_key_file(value)
        except sops.KeyFileError as exc:
            raise Failure(f"{exc}; nothing was changed") from None


def age_key_option(fn: F) -> F:
    """`--age-key-file` (env SOPS_AGE_KEY_FILE): the age identities that decrypt the files
    kept encrypted in git (`reconciler.manifest.sops`); checked when the command starts."""
    return click.option(
        "--age-key-file",
        metavar="FILE",
        envvar="SOPS_AGE_KEY_FILE",
        default=None,
        expose_value=False,
        callback=_use_age_key,
        help="age identities (age-keygen's file, mode 0600 or 0400) that decrypt SOPS and "
        ".age files: manifests, env files, configs and secrets. Env: SOPS_AGE_KEY_FILE.",
    )(fn)


# Every command lives in its own module, imported only when used: "name": "module:attr".
LAZY_COMMANDS: dict[str, str] = {
    # apply, diff, down (alias delete) (reconciler/cli/apply.py)
    "apply": "pyapply.reconciler.cli.apply:apply",
    "diff": "pyapply.reconciler.cli.apply:diff_cmd",
    "down": "pyapply.reconciler.cli.apply:down",
    "delete": "pyapply.reconciler.cli.apply:down",  # kubectl's name for down
    # what runs (reconciler/cli/inspect.py)
    "get": "pyapply.reconciler.cli.inspect:get",
    "logs": "pyapply.reconciler.cli.inspect:logs",
    "ps": "pyapply.reconciler.cli.inspect:get",  # compose's name for get
    # into the running containers (reconciler/cli/ops.py)
    "exec": "pyapply.reconciler.cli.ops:exec_cmd",
    "run": "pyapply.reconciler.cli.ops:run_cmd",
    "restart": "pyapply.reconciler.cli.ops:restart",
    "stop": "pyapply.reconciler.cli.ops:stop",
    "start": "pyapply.reconciler.cli.ops:start",
    "events": "pyapply.reconciler.cli.ops:events",
    "top": "pyapply.reconciler.cli.ops:top",
    # offline checks (reconciler/cli/validate.py)
    "validate": "pyapply.reconciler.cli.validate:validate",
    # the agent (reconciler/cli/agent.py)
    "watch": "pyapply.reconciler.cli.agent:watch",
    "status": "pyapply.reconciler.cli.agent:status",
    "history": "pyapply.reconciler.cli.agent:history",
    "rollback": "pyapply.reconciler.cli.agent:rollback",
    "resume": "pyapply.reconciler.cli.agent:resume",
    "sync": "pyapply.reconciler.cli.agent:sync",
    # compose files (reconciler/cli/compose.py)
    "config": "pyapply.reconciler.cli.compose:config",
    "convert": "pyapply.reconciler.cli.compose:convert",
    # the native runtime's image store and state root (reconciler/cli/image.py, cli/system.py)
    "image": "pyapply.reconciler.cli.image:image",
    "system": "pyapply.reconciler.cli.system:system",
    # images of services with `build:` (reconciler/cli/build.py)
    "build": "pyapply.reconciler.cli.build:build",
    "push": "pyapply.reconciler.cli.build:push",
}


def lazy_command(name: str) -> click.Command | None:
    """The command registered as `name`, imported now; None when there is none."""
    target = LAZY_COMMANDS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    command = getattr(importlib.import_module(module_name), attr, None)
    return command if isinstance(command, click.Command) else None


# The options a user may give before the command name, as docker and kubectl accept them
# (`pyapply --runtime docker diff -f X`): option -> its long name after the move. Each takes
# a value. `-f` becomes `--file`, since `logs -f` is --follow, as in compose.
GLOBAL_OPTIONS: dict[str, str] = {
    "--runtime": "--runtime",
    "--root": "--root",
    "-f": "--file",
    "--file": "--file",
    "--profile": "--profile",
    "--age-key-file": "--age-key-file",
    "--policy": "--policy",
    "--stack": "--stack",
    "-o": "--output",
    "--output": "--output",
}
TOP_LEVEL = ("--help", "-h", "--version")


def hoist_globals(args: list[str], commands: Collection[str]) -> list[str]:
    """The arguments with the global options given before the command name moved right
    after it; with no command name among the leading words, `apply` is meant (`pyapply -f
    x`). Anything else is left where it stands for click to judge."""
    moved: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if word[:2] in ("-f", "-o") and len(word) > 2:  # a short option joined to its value
            name, eq, value = word[:2], "=", word[2:]
        elif name not in GLOBAL_OPTIONS or (eq and not name.startswith("--")):
            break
        if eq:
            moved += [GLOBAL_OPTIONS[name], value]
            i += 1
            continue
        if i + 1 >= len(args):
            raise click.UsageError(f"option {word} needs a value")
        moved += [GLOBAL_OPTIONS[name], args[i + 1]]
        i += 2
    rest = args[i:]
    if rest and rest[0] in TOP_LEVEL:  # pyapply's own help or version, whatever came first
        return rest
    if rest and rest[0] in commands:
        return [rest[0], *moved, *rest[1:]]
    if moved or (rest and rest[0].startswith("-")):
        return ["apply", *moved, *rest]
    return args


class DefaultApply(click.Group):
    """`pyapply -f x` means `pyapply apply -f x`; global options may come before the command
    name (`hoist_globals`); commands are loaded on first use."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = hoist_globals(args, {*self.commands, *LAZY_COMMANDS})
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [n for n in LAZY_COMMANDS if lazy_command(n) is not None]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or lazy_command(cmd_name)


@click.group(cls=DefaultApply, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyapply")
def main() -> None:
    """Declarative, GitOps-style reconciler for containers, networks and volumes.

    `pyapply -f stack.yaml` converges the live state to the manifests.
    """


def run() -> int:
    try:
        main.main(standalone_mode=False)
    except click.exceptions.Abort:
        err("aborted")
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_ERROR
    except PyapplyError as exc:  # ours: a message for the user (Failure, PassError, ...)
        err(f"error: {exc}")
        return EXIT_ERROR
    except RuntimeFailure as exc:
        err(f"error: {exc.message}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    return EXIT_OK


def entry() -> None:
    sys.exit(run())
