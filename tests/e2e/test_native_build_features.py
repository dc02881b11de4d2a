"""The Dockerfile features of BuildKit's syntax that the native builder supports beyond the
classic builder's, end to end through the real CLI: the `# escape=` directive (and `#
syntax=` ignored), COPY heredocs, and `RUN --mount` of the context, of a stage, of a cache
kept across builds and of a tmpfs; the image is run with `pyapply -f` and checked from
inside its container. On the docker runtime (dockerd's classic builder), the same
Dockerfile is a clear error at its line, before anything is built.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import NativeUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

# `# escape=`: the backtick continues lines, and backslashes are plain characters (ENV WIN)
DOCKERFILE = f"""\
# syntax=docker/dockerfile:1
# escape=`
FROM {TEST_IMAGE} AS tools
RUN mkdir -p /opt/tools && echo "from the tools stage" > /opt/tools/note

FROM {TEST_IMAGE}
ARG WHO=world
ENV WIN=C:\\path\\here
COPY <<EOF <<-"RAW" /etc/inline/
hello $WHO
"quoted" and ${{WIN}}
EOF
\t\traw $WHO
\tRAW
COPY --chmod=755 <<EOF /usr/local/bin/greet
#!/bin/sh
echo greet $WHO
EOF
RUN --mount=type=bind,target=/ctx `
    --mount=type=bind,from=tools,source=/opt/tools,target=/opt/mnt/tools,rw `
    cat /ctx/data/a.txt > /from-ctx && test ! -e /ctx/data/secret.txt `
    && ! touch /ctx/written 2>/dev/null && cat /opt/mnt/tools/note > /from-stage `
    && echo scribble > /opt/mnt/tools/new
RUN --mount=type=cache,id=demo,target=/var/cache/demo,mode=0700 `
    --mount=type=tmpfs,target=/scratch,size=1m `
    echo run >> /var/cache/demo/runs && wc -l < /var/cache/demo/runs > /cache-count `
    && echo big > /scratch/file && grep -q " /scratch " /proc/mounts
COPY --from=tools /opt/tools /tools-copy
CMD ["sleep", "100000"]
"""

CHECKS = [
    'test "$(cat /etc/inline/EOF)" = "$(printf \'hello world\\n"quoted" and C:\\\\path\\\\here\')"',
    "test \"$(cat /etc/inline/RAW)\" = 'raw $WHO'",
    'test "$(stat -c %a /usr/local/bin/greet)" = 755 && test "$(/usr/local/bin/greet)" = "greet world"',
    "test \"$WIN\" = 'C:\\path\\here'",
    'test "$(cat /from-ctx)" = alpha && test "$(cat /from-stage)" = "from the tools stage"',
    # nothing a mount brought is in the image: no mount points, no cache, no rw changes
    "test ! -e /ctx && test ! -e /opt/mnt && test ! -e /var/cache/demo && test ! -e /scratch",
    "test ! -e /tools-copy/new && test -f /tools-copy/note",
]


def _context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    for rel, text in {
        "Dockerfile": DOCKERFILE,
        ".dockerignore": "data/secret.txt\n",
        "data/a.txt": "alpha\n",
        "data/secret.txt": "never seen\n",
    }.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    return ctx


def _manifest(stack: str, image: str) -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app: {{image: {image}, stop_grace_period: 1s}}
"""


def test_buildkit_syntax_on_each_runtime(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    cli = runtime.cli()
    ref = f"local/{runtime.stack}-features:1"
    if runtime.name == "docker":
        out = cli.run("image", "build", str(ctx), "-t", ref)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out
        assert (
            "error: Dockerfile:9: COPY with a heredoc needs BuildKit, and the docker runtime "
            "builds with dockerd's classic builder" in out.stderr
        ), out.stderr
        (ctx / "Dockerfile").write_text(
            f"FROM {TEST_IMAGE}\nRUN --mount=type=cache,target=/x true\n"
        )
        out = cli.run("image", "build", str(ctx), "-t", ref)
        assert out.returncode == 1, out
        assert "error: Dockerfile:2: RUN --mount=type=cache,target=/x needs BuildKit" in out.stderr
        return
    assert isinstance(runtime, NativeUnderTest)
    cli.ok("image", "build", str(ctx), "-t", ref)
    first = runtime.native.image_store.resolve(ref)
    # the same build without the layer cache: the cache mount is still there, with the
    # first build's line in it, so its RUN counts two
    out = cli.ok("image", "build", str(ctx), "-t", ref, "--no-cache")
    assert "CACHED" not in out
    cache_root = runtime.root / "build" / "mounts" / "cache"
    assert stat.S_IMODE(os.stat(cache_root).st_mode) == 0o700
    (cache,) = [p for p in cache_root.iterdir() if p.is_dir()]
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert (cache / "runs").read_text() == "run\nrun\n"
    second = runtime.native.image_store.resolve(ref)
    assert first is not None and second is not None
    # the RUN with the cache mount made a different file (/cache-count), the rest the same
    assert first.diff_ids[:-2] == second.diff_ids[:-2]

    manifest = tmp_path / "stack.yaml"
    manifest.write_text(_manifest(runtime.stack, ref))
    cli.ok("-f", str(manifest))
    name = f"{runtime.stack}-app-1"
    for check in CHECKS:
        code, text = runtime.exec(name, "sh", "-c", check)
        assert code == 0, f"{check}: {text}"
    code, text = runtime.exec(name, "cat", "/cache-count")
    assert (code, text.strip()) == (0, "2")
    cli.ok("down", "-f", str(manifest))

    # a changed file under a bind mount changes the step's key: the RUN runs again
    (ctx / "data" / "a.txt").write_text("alpha, changed\n")
    out = cli.ok("image", "build", str(ctx), "-t", ref)
    assert "[8/11] CACHED" not in out and "[7/11] CACHED" in out, out
    # an excluded file's change does not
    (ctx / "data" / "secret.txt").write_text("still never seen\n")
    out = cli.ok("image", "build", str(ctx), "-t", ref)
    assert out.count("CACHED") == 6 and "[8/11] CACHED" in out, out
