"""`pyapply validate`: the manifests checked offline (schema, references, policy) without
a runtime; located problems as text or JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pyapply.reconciler.cli.common import policy_or_fail
from pyapply.reconciler.cli.main import (
    EXIT_ERROR,
    age_key_option,
    err,
    fail,
    file_option,
    output_option,
    policy_option,
    profile_option,
    project_name,
)
from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.core.redact import NO_SECRETS
from pyapply.reconciler.manifest import sops
from pyapply.reconciler.manifest.loader import load


@click.command()
@file_option()
@profile_option
@output_option
@policy_option
@age_key_option
@click.option("--root", envvar="PYAPPLY_ROOT", default=None, help="State root (protected).")
def validate(
    files: tuple[str, ...],
    profiles: tuple[str, ...],
    output: str,
    policy_arg: str | None,
    root: str | None,
) -> None:
    """Check manifests offline (schema, references and policy); no runtime needed."""
    policy = policy_or_fail(policy_arg, "warn", root)
    try:
        loaded = load(
            list(files),
            profiles=profiles,
            file_guard=policy.file_guard(),
            project_name=project_name(),
        )
    except ManifestError as exc:
        if output == "json":
            click.echo(
                json.dumps(
                    {"valid": False, "problems": [_problem_json(p) for p in exc.problems]},
                    indent=2,
                )
            )
        else:
            for problem in exc.problems:
                err(str(problem))
        sys.exit(EXIT_ERROR)
    if sops.key_file() is not None:  # with a key: the encrypted secrets and configs too
        broken = sops.check_stack_files(loaded.stacks)
        if broken:
            if output == "json":
                problems = [
                    {
                        "severity": "error",
                        "message": f"{what}: {e.message}",
                        "path": None,
                        "file": file,
                        "line": e.line,
                        "column": e.column,
                    }
                    for what, file, e in broken
                ]
                click.echo(json.dumps({"valid": False, "problems": problems}, indent=2))
            else:
                for what, file, e in broken:
                    err(f"{what}: {e.located(file)}")
            sys.exit(EXIT_ERROR)
    from pyapply.reconciler.manifest.policy import check

    findings = check(loaded, policy)
    denied = any(f.action == "deny" for f in findings)
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "valid": not denied,
                    "stacks": [s.name for s in loaded.stacks],
                    "problems": [_problem_json(p) for p in loaded.warnings],
                    "policy": policy.name,
                    "findings": [f.to_json() for f in findings],
                },
                indent=2,
            )
        )
        if denied:
            sys.exit(EXIT_ERROR)
        return
    for warning in loaded.warnings:
        err(str(warning))
    for finding in findings:
        err(str(finding))
    if denied:
        n = sum(f.action == "deny" for f in findings)
        fail(f"{n} ask{'s' if n != 1 else ''} denied by the policy {policy.name}")
    services = sum(len(s.services) for s in loaded.stacks)
    click.echo(
        f"valid: {len(loaded.stacks)} stack(s), {services} service(s) in {len(loaded.files)} file(s)"
    )


def _problem_json(p: Any) -> dict[str, Any]:
    loc = p.location
    return {
        "severity": p.severity,
        "message": NO_SECRETS.text(p.message),  # a quoted value may hold a URL password
        "path": p.path,
        "file": loc.file if loc else None,
        "line": loc.line if loc else None,
        "column": loc.column if loc else None,
    }
