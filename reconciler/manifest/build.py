"""A service's compose `build:` field -> `BuildSpec`, and the image name it builds.

Both forms compose has: a string (the context directory) or a mapping (`context`,
`dockerfile`, `dockerfile_inline`, `args`, `target`, `labels`, `tags`, `no_cache`, `pull`).
The context is resolved against the manifest's directory (merge.py has already rebased it
for included and extended files). A service with `build:` and no `image:` runs the image
compose would build for it, `<stack>-<service>`.

A context directory that does not exist is a warning here, located: `config`, `convert`
and `validate` read projects whose sources are elsewhere (the corpus has no contexts, and
`docker compose config` accepts them too); it becomes a located error when the image has
to be built (reconciler.engine.build).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from pyapply.reconciler.core.model import BuildSpec
from pyapply.reconciler.manifest.document import MISSING, Path, format_path, ignored
from pyapply.reconciler.manifest.values import scalar_str, show

if TYPE_CHECKING:
    from pyapply.reconciler.manifest.service import ServiceBuilder

# compose `build:` fields pyapply's builders do not take: warned about, ignored
UNSUPPORTED = (
    "additional_contexts",
    "cache_from",
    "cache_to",
    "entitlements",
    "extra_hosts",
    "isolation",
    "network",
    "platforms",
    "privileged",
    "provenance",
    "sbom",
    "secrets",
    "shm_size",
    "ssh",
    "ulimits",
)

# the path component of an image reference (the distribution spec's grammar): what a
# derived `<stack>-<service>` must match to be usable as an image name
_NAME = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


def default_image(stack: str, service: str) -> str:
    """The image compose builds for a service without `image:` (compose's
    GetImageNameOrDefault: project name, "-", service name)."""
    return f"{stack}-{service}"


def remote(context: str) -> bool:
    """A git or HTTP URL as context (compose allows them; pyapply builds local ones)."""
    return "://" in context or context.startswith("git@")


def read(b: ServiceBuilder) -> BuildSpec | None:
    """The service's `build:`, or None when it has none (or it is malformed: reported)."""
    raw = b.get("build")
    if raw is MISSING:
        return None
    ctx = b.ctx
    path: Path = b.at("build")
    if isinstance(raw, str):
        raw, where = {"context": raw}, path
    else:
        where = (*path, "context") if "context" in raw else path
        ignored(ctx, raw, path, UNSUPPORTED)
    given = raw.get("context", ".")
    if remote(given):
        ctx.error(
            where,
            f"the build context {show(given)} is a URL; pyapply builds from a local "
            "directory only (clone it and name the directory)",
        )
        return None
    context, shown = ctx.resolve(given, where)
    location = ctx.location(where)
    if not os.path.isdir(context):
        what = "is not a directory" if os.path.exists(context) else "does not exist"
        ctx.warn(where, f"build context {show(shown)} {what}: the image cannot be built here")
    if "dockerfile" in raw and "dockerfile_inline" in raw:
        ctx.error(path, '"dockerfile" and "dockerfile_inline" cannot be used together', key=True)
    if isinstance(raw.get("dockerfile"), str):
        # recorded for the policy: a Dockerfile from elsewhere is a host file read too
        dockerfile = os.path.normpath(os.path.join(context, raw["dockerfile"]))
        ctx.resolved[(*path, "dockerfile")] = dockerfile
    tags = raw.get("tags") or []
    for i, tag in enumerate(tags):
        if any(c.isspace() for c in tag):
            ctx.error((*path, "tags", i), f"{show(tag)} is not an image name")
    return BuildSpec(
        context=context,
        dockerfile=raw.get("dockerfile"),
        dockerfile_inline=raw.get("dockerfile_inline"),
        args=tuple(sorted(_args(b, raw.get("args"), (*path, "args")).items())),
        target=raw.get("target"),
        labels=tuple(sorted(_pairs(b, raw.get("labels"), (*path, "labels")).items())),
        tags=tuple(tags),
        no_cache=bool(raw.get("no_cache", False)),
        pull=bool(raw.get("pull", False)),
        pull_first="image" in b.raw and "pull_policy" not in b.raw,
        location=location,
        path=format_path(where),
    )


def _args(b: ServiceBuilder, raw: Any, path: Path) -> dict[str, str]:
    """args: {K: v} or ["K=v"]; a bare K (or K: null) takes the value of the variable K of
    the project's environment, and is left out when it is unset (as compose does)."""
    out: dict[str, str] = {}
    if isinstance(raw, dict):
        items = [(k, None if v is None else scalar_str(v)) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = []
        for i, item in enumerate(raw):
            key, eq, value = item.partition("=")
            if not key:
                b.ctx.error((*path, i), f"{show(item)} is not a build arg of the form KEY=value")
                continue
            items.append((key, value if eq else None))
    else:
        return out
    for key, value in items:
        if value is not None:
            out[key] = value
        elif key in b.ctx.env:
            out[key] = b.ctx.env[key]
    return out


def _pairs(b: ServiceBuilder, raw: Any, path: Path) -> dict[str, str]:
    from pyapply.reconciler.manifest.document import list_or_dict

    return list_or_dict(b.ctx, raw, path, "label") if raw is not None else {}


def image_name(b: ServiceBuilder, image: Any) -> str | None:
    """The image a service with `build:` runs: its `image:`, else `<stack>-<service>`
    (None, reported, when that is not a valid image name)."""
    if isinstance(image, str):
        return image
    if "image" in b.raw:
        return None  # malformed: the schema reported it
    name = default_image(b.stack.name, b.name)
    if not _NAME.fullmatch(name):
        b.ctx.error(
            b.at("build"),
            f'without "image", the built image would be named {show(name)}, which is not a '
            'valid image name (lowercase letters, digits and separators): set "image"',
            key=True,
        )
        return None
    return name
