"""The Dockerfile features of BuildKit's syntax that the native builder supports beyond the
classic builder's, end to end through the real CLI: the `# escape=` directive (and `#
syntax=` ignored), COPY heredocs, and `RUN --mount` of the context, of a stage, of a cache
kept across builds and of a tmpfs; the image is run with `pyapply -f` and checked from
inside its container. On the docker runtime (dockerd's classic builder), the same
Dockerfile is a clear error at its line, before anything is built.

And the live view of a build on a terminal: the CLI run in a pseudo-terminal, its screen
replayed (helpers.terminal_screen).
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import TEST_IMAGE, terminal_screen
from tests.e2e.runtimes import PYAPPLY, NativeUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

SECRET = "s3cret-value"
SECRET_MD5 = hashlib.md5(SECRET.encode()).hexdigest()  # the Dockerfile does not hold it

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
RUN --mount=type=secret,id=tok,uid=1000 --mount=type=secret,id=absent `
    test "$(md5sum < /run/secrets/tok)" = "{SECRET_MD5}  -" && test ! -e /run/secrets/absent `
    && test "$(stat -c %a:%u /run/secrets/tok)" = 400:1000 && ls /run/secrets > /secrets-seen
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
    'test "$(cat /secrets-seen)" = tok && test ! -e /run/secrets',
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
    secret = tmp_path / "token.txt"
    secret.write_text(SECRET)
    with_secret = ("--secret", f"id=tok,src={secret}")
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
        out = cli.run("image", "build", str(ctx), "-t", ref, *with_secret)
        assert out.returncode == 1 and "error: --secret (for RUN --mount=type=secret) needs" in (
            out.stderr
        )
        return
    assert isinstance(runtime, NativeUnderTest)
    cli.ok("image", "build", str(ctx), "-t", ref, *with_secret)
    first = runtime.native.image_store.resolve(ref)
    # the same build without the layer cache: the cache mount is still there, with the
    # first build's line in it, so its RUN counts two
    out = cli.ok("image", "build", str(ctx), "-t", ref, "--no-cache", *with_secret)
    assert "CACHED" not in out and "s3cret" not in out
    cache_root = runtime.root / "build" / "mounts" / "cache"
    assert stat.S_IMODE(os.stat(cache_root).st_mode) == 0o700
    (cache,) = [p for p in cache_root.iterdir() if p.is_dir()]
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert (cache / "runs").read_text() == "run\nrun\n"
    second = runtime.native.image_store.resolve(ref)
    assert first is not None and second is not None
    # the RUN with the cache mount made a different file (/cache-count), the rest the same
    assert first.diff_ids[:-3] == second.diff_ids[:-3] and first.diff_ids != second.diff_ids
    # the secret is nowhere in the state root: layers, blobs, the cache, scratch dirs
    found = subprocess.run(["grep", "-rlF", "s3cret", str(runtime.root)], capture_output=True)
    assert found.returncode == 1 and not found.stdout, found

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
    out = cli.ok("image", "build", str(ctx), "-t", ref, *with_secret)
    assert "[8/12] CACHED" not in out and "[7/12] CACHED" in out, out
    # an excluded file's change does not
    (ctx / "data" / "secret.txt").write_text("still never seen\n")
    out = cli.ok("image", "build", str(ctx), "-t", ref)  # the secret's RUN is cached
    assert out.count("CACHED") == 7 and "[8/12] CACHED" in out, out
    # a required secret not given: an error at its line
    (ctx / "Dockerfile").write_text(
        f"FROM {TEST_IMAGE}\nRUN --mount=type=secret,id=tok,required true\n"
    )
    out = cli.run("image", "build", str(ctx), "-t", ref)
    assert out.returncode == 1
    assert "error: Dockerfile:2: secret 'tok' is required and was not given" in out.stderr


def _in_a_terminal(argv: list[str], env: dict[str, str], limit: float = 120) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as its stdin, stdout and stderr; (exit code, all
    it wrote)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait(timeout=30)
    return code, bytes(out)


def test_the_live_view_of_a_build_on_a_terminal(native: NativeUnderTest, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {TEST_IMAGE}\n"
        "RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.15; done\n"
        "COPY Dockerfile /df\n"
        "RUN echo last\n"
    )
    env = {**native.cli().env, "TERM": "xterm", "COLUMNS": "120", "LINES": "40", "NO_COLOR": "1"}
    t0 = time.monotonic()
    argv = [PYAPPLY, "image", "build", str(ctx), "-t", "local/live:1"]
    code, raw = _in_a_terminal(argv, env)
    elapsed = time.monotonic() - t0
    assert code == 0, raw.decode(errors="replace")
    # redrawn in place: the cursor goes back up over the view, at most ~10 times a second
    redraws = raw.count(b"\x1b[1A")
    assert raw.count(b"\r\x1b[2K") >= 5 and redraws >= 5, raw
    assert raw.count(b"\r\x1b[2K") <= 10 * elapsed + 5
    # the running step's output was shown under it while it ran, and is gone at the end
    assert b"    | line 3" in raw
    assert not re.search(rb"\x1b\[[0-9;]*3[0-9]m", raw)  # NO_COLOR: no colour at all
    screen = [line for line in terminal_screen(raw) if line]
    assert screen[0].startswith("build local/live:1") and screen[0].endswith("4/4 steps")
    steps = screen[1:5]
    assert [line.split("]")[0] for line in steps] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert all(re.search(r"  DONE \d+\.\ds$", line) for line in steps), screen
    assert "RUN for i in 1 2 3" in steps[1] and "| line" not in "\n".join(screen)
    assert screen[5].startswith("built ") and "(4 steps, 0 cached): local/live:1" in screen[5]
    assert len(screen) == 6, screen

    # not a terminal: plain lines, as before
    out = native.cli().ok("image", "build", str(ctx), "-t", "local/live:1")
    assert "[4/4] CACHED" in out and "\x1b" not in out
