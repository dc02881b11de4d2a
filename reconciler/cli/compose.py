"""`pyapply config` and `pyapply convert`: what the manifests resolve to, printed.

`config` prints each stack as one resolved compose file (like `docker compose config`);
`convert` prints it as the canonical `pyapply/v1` Stack. Both read files only (no runtime),
print warnings on stderr, and exit 1 with every error when the manifests do not load.
Loading either output again gives the same model; paths in it are absolute.
"""

from __future__ import annotations

import click

from pyapply.reconciler.cli.common import load_or_fail
from pyapply.reconciler.cli.main import age_key_option, file_option, profile_option
from pyapply.reconciler.manifest import dump as compose_render


def _output(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["yaml", "json"]),
        default="yaml",
        show_default=True,
        help="Output format.",
    )(fn)


def _print(files: tuple[str, ...], profiles: tuple[str, ...], output: str, canonical: bool) -> None:
    # rendered as compose renders it: what would stop a run (a missing file, a host port
    # published twice) is a warning here, and an error for validate and apply
    loaded = load_or_fail(files, profiles, acting=False, strict=False)
    render = compose_render.stack_document if canonical else compose_render.compose_document
    docs = [render(stack) for stack in loaded.stacks]
    if output == "json":
        click.echo(compose_render.dump_json(docs))
    else:
        click.echo(compose_render.dump_yaml(docs), nl=False)


@click.command("config")
@file_option()
@profile_option
@age_key_option
@_output
def config(files: tuple[str, ...], profiles: tuple[str, ...], output: str) -> None:
    """Print the resolved project as one compose file (merges, includes, extends, profiles
    and variables applied), like `docker compose config`."""
    _print(files, profiles, output, canonical=False)


@click.command("convert")
@file_option()
@profile_option
@age_key_option
@_output
def convert(files: tuple[str, ...], profiles: tuple[str, ...], output: str) -> None:
    """Print the manifests as canonical pyapply/v1 Stack documents (paths made absolute)."""
    _print(files, profiles, output, canonical=True)
