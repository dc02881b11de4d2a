"""Building and pushing through dockerd: the build context, and dockerd's progress streams
read into the runtime's vocabulary (BuildEvent, BuildFailed, PushEvent).

The build uses dockerd's classic builder (`POST /build`): BuildKit over the Engine API needs
a gRPC session the Docker SDK does not speak. The context is a tar of the context directory
without what `.dockerignore` excludes (the SDK's matcher, Docker's semantics); a Dockerfile
outside the context, or given inline, travels in the tar under a generated name, as the
docker CLI does.

The classic builder reports in text: "Step 2/5 : RUN make" starts a step, " ---> Using
cache" marks it answered from the cache, " ---> Running in ..." / " ---> <id>" /
"Removing intermediate container ..." are its bookkeeping, and anything else is output of
the running step (stderr arrives wrapped in ANSI colour codes). Stream chunks do not follow
line boundaries, so text is reassembled into lines first. A syntax error is an HTTP 400
before any step ("dockerfile parse error line 3: ..."); a failing step is an in-band
`error` with the exit status as `errorDetail.code`.

What the classic builder cannot build is refused before anything is sent, at its line:
heredocs (`RUN <<EOF`, `COPY <<EOF`; the classic builder's parser takes the heredoc's lines
for instructions and fails on a later line) and `RUN --mount` (refused by dockerd only when
the step is reached, without a line). The Dockerfile is read for that with the same
BuildKit parser the native builder uses (the `dockerfile` wheel).

Everything here but `context_tar` is pure (it reads no daemon), for unit tests.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Literal

import msgspec

from pyapply.runtime.base import (
    BuildConfig,
    BuildEvent,
    BuildFailed,
    NotFound,
    PermanentError,
    PushEvent,
    RuntimeFailure,
    TransientError,
)

TAIL_LINES = 20  # lines of a failed step's output kept for the error

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PARSE_ERROR_RE = re.compile(r"(?:dockerfile )?parse error (?:on )?line (\d+): (.*)", re.I | re.S)
_BOOKKEEPING = (" ---> ", "Removing intermediate container ", "Successfully built ")
_SUCCESS_TAG = "Successfully tagged "


# ---------------------------------------------------------------------------------------------
# The context


class Context(msgspec.Struct, frozen=True):
    """What to send: the context directory, the .dockerignore patterns, and the Dockerfile
    as dockerd will find it in the tar (`name`), with `content` when it is added to the tar
    (inline, or from outside the context)."""

    directory: str
    excludes: tuple[str, ...]
    name: str
    content: str | None = None


def dockerignore_patterns(text: str) -> tuple[str, ...]:
    """The patterns of a .dockerignore: one a line, blank lines and `#` comments left out."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return tuple(out)


def plan_context(config: BuildConfig) -> Context:
    """Check the context and the Dockerfile and say what to send; BuildFailed (naming the
    path) when the context is not a directory or the Dockerfile is missing."""
    directory = os.path.abspath(config.context)
    if not os.path.isdir(directory):
        raise BuildFailed(f"build context {config.context} is not a directory")
    excludes: tuple[str, ...] = ()
    ignore = os.path.join(directory, ".dockerignore")
    if os.path.isfile(ignore):
        with open(ignore, encoding="utf-8", errors="replace") as f:
            excludes = dockerignore_patterns(f.read())
    generated = f".dockerfile.{secrets.token_hex(10)}"
    if config.dockerfile_inline is not None:
        refuse_classic_limits(config.dockerfile_inline, "Dockerfile")
        return Context(directory, excludes, generated, config.dockerfile_inline)
    dockerfile = config.dockerfile or "Dockerfile"
    path = os.path.normpath(os.path.join(directory, dockerfile))
    if not os.path.isfile(path):
        raise BuildFailed(f"{dockerfile}: no such Dockerfile in {config.context}", where=path)
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    refuse_classic_limits(text, dockerfile)
    rel = os.path.relpath(path, directory)
    if rel.startswith(".." + os.sep) or rel == "..":
        return Context(directory, excludes, generated, text)
    return Context(directory, excludes, rel)


_NEEDS_BUILDKIT = (
    "needs BuildKit, and the docker runtime builds with dockerd's classic builder; "
    "the native runtime (--runtime native) builds it"
)


def refuse_classic_limits(text: str, name: str) -> None:
    """BuildFailed at the line of the first heredoc or `RUN --mount`, which the classic
    builder cannot build. A file the parser refuses is left to dockerd, whose parse error
    names its line."""
    import dockerfile

    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        return
    for c in commands:
        where = f"{name}:{c.start_line}"
        cmd = str(c.cmd).upper()
        if c.heredocs:
            raise BuildFailed(f"{where}: {cmd} with a heredoc {_NEEDS_BUILDKIT}", where=where)
        mounts = [f for f in c.flags if str(f).startswith("--mount")]
        if mounts:
            raise BuildFailed(f"{where}: RUN {mounts[0]} {_NEEDS_BUILDKIT}", where=where)


def context_tar(ctx: Context) -> IO[bytes]:
    """The context as an uncompressed tar in a temporary file (the caller closes it)."""
    from docker.utils import build as sdk_build

    tar: IO[bytes] = sdk_build.tar(
        ctx.directory, exclude=list(ctx.excludes), dockerfile=(ctx.name, ctx.content)
    )
    return tar


def build_params(config: BuildConfig) -> dict[str, Any]:
    """The SDK `build()` arguments of a BuildConfig (the context and tags aside: tags are
    set after the build succeeds, so a failed build tags nothing)."""
    return {
        "buildargs": dict(config.args) or None,
        "target": config.target or None,
        "labels": dict(config.labels) or None,
        "nocache": config.no_cache,
        "pull": config.pull,
        "rm": True,
        "forcerm": True,  # a failed step's container goes too
    }


# ---------------------------------------------------------------------------------------------
# The build stream


def parse_error(explanation: str, dockerfile: str) -> BuildFailed:
    """A Dockerfile dockerd refused before building (HTTP 400): located when it says where."""
    m = _PARSE_ERROR_RE.search(explanation)
    if m is not None:
        where = f"{dockerfile}:{m.group(1)}"
        return BuildFailed(f"{where}: {m.group(2).strip()}", where=where)
    return BuildFailed(f"{dockerfile}: {explanation.strip()}")


class BuildStream:
    """dockerd's build messages in, BuildEvents out (to `progress`); `failure` turns an
    in-band error into BuildFailed with the step, exit code and last output lines."""

    def __init__(self, progress: Callable[[BuildEvent], None] | None = None) -> None:
        self.progress = progress
        self.step = 0
        self.total = 0
        self.instruction = ""
        self.cached = 0
        self.image_id: str | None = None
        self.tags: list[str] = []
        self._step_cached = False
        self._started = 0.0
        self._pending = ""
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def feed(self, message: Mapping[str, Any]) -> None:
        """One decoded JSON message of the stream; raises BuildFailed on an error."""
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("errorDetail") or {}
            text = str(message.get("error") or detail.get("message") or "build failed")
            code = detail.get("code") if isinstance(detail, Mapping) else None
            raise self.failure(text, code if isinstance(code, int) else None)
        aux = message.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
            self.image_id = str(aux["ID"])
        chunk = message.get("stream")
        if isinstance(chunk, str):
            self._pending += chunk
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._line(_ANSI_RE.sub("", line).rstrip("\r"))

    def finish(self) -> None:
        """The stream ended without an error: the last step is done."""
        if self._pending:
            self._line(_ANSI_RE.sub("", self._pending))
            self._pending = ""
        self._end_step()

    def failure(self, text: str, code: int | None) -> BuildFailed:
        if self._pending:
            self._line(_ANSI_RE.sub("", self._pending))
            self._pending = ""
        text = text.strip()
        if self.step:
            self._emit("failed", seconds=time.monotonic() - self._started)
            where = f"step {self.step}/{self.total} `{self.instruction}`"
            reason = f"exited with code {code}" if code else text
            message = f"{where} failed: {reason}"
            if code and text:
                message += f" ({text})"
            return BuildFailed(
                message,
                step=self.instruction,
                exit_code=code,
                tail=tuple(self._tail),
            )
        return BuildFailed(text, exit_code=code)

    def _line(self, line: str) -> None:
        m = _STEP_RE.match(line)
        if m is not None:
            self._end_step()
            self.step, self.total, self.instruction = int(m[1]), int(m[2]), m[3]
            self._step_cached = False
            self._started = time.monotonic()
            self._tail.clear()
            self._emit("running")
            return
        if line.startswith(" ---> Using cache"):
            self._step_cached = True
            return
        if line.startswith(_SUCCESS_TAG):
            self.tags.append(line[len(_SUCCESS_TAG) :].strip())
            return
        if line.startswith(_BOOKKEEPING) or not self.step:
            return
        self._tail.append(line)
        self._emit("output", line=line)

    def _end_step(self) -> None:
        if not self.step or not self.instruction:
            return
        state: Literal["cached", "done"] = "cached" if self._step_cached else "done"
        if self._step_cached:
            self.cached += 1
        self._emit(state, seconds=time.monotonic() - self._started)
        self.instruction = ""

    def _emit(
        self,
        state: Literal["running", "cached", "done", "failed", "output"],
        line: str = "",
        seconds: float = 0.0,
    ) -> None:
        if self.progress is not None:
            self.progress(BuildEvent(self.step, self.total, self.instruction, state, line, seconds))


# ---------------------------------------------------------------------------------------------
# The push stream

# registry unreachable, in the words of Go's net package as dockerd passes them on
_UNREACHABLE = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset",
    "server gave http response to https client",
)


def push_failure(ref: str, text: str) -> RuntimeFailure:
    """An in-band error of a push as the runtime's error: a missing local image is
    NotFound, an unreachable registry a TransientError saying so, the rest permanent."""
    text = text.strip()
    low = text.lower()
    if "does not exist locally" in low or "no such image" in low:
        return NotFound(f"docker: cannot push {ref}: no such local image ({text})")
    if any(f in low for f in _UNREACHABLE):
        registry = ref.split("/", 1)[0] if "/" in ref else "docker.io"
        return TransientError(f"docker: cannot push {ref}: registry {registry} unreachable: {text}")
    return PermanentError(f"docker: cannot push {ref}: {text}")


class PushStream:
    """dockerd's push messages in, PushEvents out; the pushed manifest's digest from the
    final `aux` message."""

    def __init__(self, ref: str, progress: Callable[[PushEvent], None] | None = None) -> None:
        self.ref = ref
        self.progress = progress
        self.digest: str | None = None
        self._sizes: dict[str, int] = {}
        self._uploading: set[str] = set()

    def feed(self, message: Mapping[str, Any]) -> None:
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("errorDetail") or {}
            raise push_failure(self.ref, str(message.get("error") or detail.get("message")))
        aux = message.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("Digest"), str):
            self.digest = str(aux["Digest"])
            self._emit("manifest", self.digest, int(aux.get("Size") or 0), "pushed")
            return
        status = str(message.get("status") or "")
        layer = message.get("id")
        if not isinstance(layer, str) or not layer:
            return
        detail = message.get("progressDetail") or {}
        if isinstance(detail, Mapping) and isinstance(detail.get("total"), int):
            self._sizes[layer] = int(detail["total"])
        if status == "Pushing" and layer not in self._uploading:
            self._uploading.add(layer)
            self._emit("layer", layer, self._sizes.get(layer, 0), "uploading")
        elif status == "Pushed":
            self._emit("layer", layer, self._sizes.get(layer, 0), "uploaded")
        elif status == "Layer already exists":
            self._emit("layer", layer, self._sizes.get(layer, 0), "exists")
        elif status.startswith("Mounted from"):
            self._emit("layer", layer, self._sizes.get(layer, 0), "mounted")

    def _emit(
        self,
        kind: Literal["layer", "config", "manifest"],
        digest: str,
        size: int,
        state: Literal["exists", "mounted", "uploading", "uploaded", "pushed"],
    ) -> None:
        if self.progress is not None:
            self.progress(PushEvent(self.ref, kind, digest, size, state))
