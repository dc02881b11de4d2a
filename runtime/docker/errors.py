"""Translate Docker SDK / EngineHTTP / socket failures into the runtime error taxonomy.

`translate` is the one place that decides what a failure means for the reconciler, whichever
path the request took (the SDK, or `runtime.docker.engine` for reads): a daemon's answer goes
through `classify_api_error` (status + the daemon's message), a failure to connect through
`connect_failure`, a request that broke off through `transport_failure`.

=====================================================  ======================================
what happened                                          raised
=====================================================  ======================================
socket missing / refused, connect timeout, version      Unavailable (transient)
probe failed                                            ("cannot reach the Docker daemon")
read timeout, connection dropped mid-request            TransientError
HTTP 404                                                NotFound
HTTP 409                                                Conflict, except transient conflicts
                                                        ("removal ... already in progress",
                                                        "is restarting", ...) -> TransientError
HTTP 5xx                                                TransientError, except permanent causes
                                                        (port taken, missing executable, no
                                                        such image, ...) -> PermanentError
HTTP 400 / other 4xx                                    PermanentError ("has active endpoints",
                                                        "in use" -> Conflict)
a start failing on what a killed daemon left (a port    Stuck (the executor removes and
held by a leaked proxy or still allocated, a task       recreates the container after a few
that already exists, "marked for removal")              tries)
"manifest unknown", "repository does not exist"         NotFound (whatever the status)
=====================================================  ======================================

Messages read `docker: cannot <action>: <reason>`, where reason is the daemon's explanation,
reworded where a plainer sentence exists (ports in use, networks with containers attached).
"""

from __future__ import annotations

import re
import sys
from functools import cache

from pyapply.runtime.base import (
    Conflict,
    NotFound,
    PermanentError,
    RuntimeFailure,
    Stuck,
    TransientError,
    Unavailable,
)
from pyapply.runtime.docker.engine import (
    EngineAPIError,
    EngineConnectError,
    EngineError,
    EngineTransportError,
)

# The exception types of the fast read path (`runtime.docker.engine`) and the socket layer.
_BASE_ERRORS: tuple[type[BaseException], ...] = (EngineError, OSError)


@cache
def _sdk_errors() -> tuple[type[BaseException], ...]:
    import requests
    import urllib3.exceptions
    from docker import errors as docker_errors

    return (
        docker_errors.DockerException,
        requests.RequestException,
        urllib3.exceptions.HTTPError,
    )


def translatable_errors() -> tuple[type[BaseException], ...]:
    """Every exception type `translate` understands: the fast path's and the socket layer's,
    plus the SDK's and its transport's once the SDK has been imported (until then nothing
    can raise them, and looking them up must not import the SDK)."""
    if "docker" not in sys.modules:
        return _BASE_ERRORS
    return _BASE_ERRORS + _sdk_errors()


# 409s that go away by themselves.
_TRANSIENT_CONFLICTS = (
    "already in progress",
    "is restarting",
    "marked for removal",
    "is being removed",
    "try again",
)

# 5xx (or any status) whose cause retrying will not fix.
_PERMANENT_SERVER = (
    "port is already allocated",
    "address already in use",
    "driver failed programming external connectivity",
    "no such image",
    "invalid reference format",
    "executable file not found",
    "no such file or directory",
    "not a directory",
    "permission denied",
    "unknown capability",
    "invalid argument",
    "minimum memory limit",
    "pool overlaps",
    "non-overlapping",
    "no available ipv4",
    "conflicts with network",
    "invalid pool request",
    "unauthorized",
    "authentication required",
    "access denied",
    "denied:",
)

# Why a container's start fails when dockerd (killed, restarted) keeps state of it that will
# not clear by itself: a host port still allocated in its books or held by a leaked
# docker-proxy, a containerd task or runc container of the same id, a removal it never
# finished. A new container (a new id, a fresh port allocation) does not inherit them.
_STUCK_START = (
    "port is already allocated",
    "address already in use",
    "marked for removal",
    "container with id exists",
    "id already in use",
    "task already exists",
)
_STUCK_TASK_RE = re.compile(r"task \S+(?: \S+)?: already exists|already exists: unknown")

_NOT_FOUND = (
    "manifest unknown",
    "repository does not exist",
    "no such image",
    "not found: does not exist",
    "name unknown",
)

_IN_USE = ("has active endpoints", "volume is in use", "is in use")

_BIND_RE = re.compile(r"Bind for (?P<ip>\S*?):(?P<port>\d+) failed: port is already allocated")
_LISTEN_RE = re.compile(r"listen \w+ (?P<ip>\S*?):(?P<port>\d+): bind: address already in use")


def explanation_of(exc: BaseException) -> str:
    """The daemon's own words for an SDK failure ("" when there are none)."""
    if isinstance(exc, RuntimeFailure) and exc.__cause__ is not None:
        exc = exc.__cause__
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    if isinstance(explanation, str) and explanation.strip():
        return explanation.strip()
    return str(exc).strip()


def _reword(explanation: str) -> str:
    """Put well-known daemon messages in plain words, keeping the original for reference."""
    m = _BIND_RE.search(explanation)
    if m:
        where = f" on {m['ip']}" if m["ip"] else ""
        return f"port {m['port']} is already allocated{where} (daemon: {explanation})"
    m = _LISTEN_RE.search(explanation)
    if m:
        where = f" on {m['ip']}" if m["ip"] else ""
        return (
            f"port {m['port']} is already in use{where} by another program (daemon: {explanation})"
        )
    low = explanation.lower()
    if "has active endpoints" in low:
        return f"containers are still attached to it (daemon: {explanation})"
    if "volume is in use" in low:
        return f"it is in use by a container (daemon: {explanation})"
    return explanation


def _has(text: str, fragments: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(f in low for f in fragments)


def classify_api_error(status: int | None, explanation: str, action: str) -> RuntimeFailure:
    """Map an HTTP status (None for errors reported inside a stream) + message to an error."""
    message = f"docker: cannot {action}: {_reword(explanation)}"
    if action.startswith("start container") and status != 404 and _stuck_start(explanation):
        return Stuck(message)
    if _has(explanation, _NOT_FOUND) or status == 404:
        return NotFound(message)
    if _has(explanation, _IN_USE) and (status is None or 400 <= status < 500):
        return Conflict(message)
    if status == 409:
        if _has(explanation, _TRANSIENT_CONFLICTS):
            return TransientError(message)
        return Conflict(message)
    if status is not None and 400 <= status < 500:
        return PermanentError(message)
    # 5xx, or an error reported in-band in a stream (pull): transient unless clearly not.
    if _has(explanation, _PERMANENT_SERVER):
        return PermanentError(message)
    return TransientError(message)


def _stuck_start(explanation: str) -> bool:
    return _has(explanation, _STUCK_START) or _STUCK_TASK_RE.search(explanation.lower()) is not None


def translate(exc: BaseException, action: str, daemon: str) -> RuntimeFailure:
    """Turn one failure of either read path (EngineHTTP or the SDK) or of the SDK's
    mutations into the runtime taxonomy (the caller raises it `from` exc)."""
    if isinstance(exc, RuntimeFailure):
        return exc
    if isinstance(exc, EngineAPIError):
        return classify_api_error(exc.status, exc.explanation, action)
    if isinstance(exc, EngineConnectError):
        return connect_failure(exc.cause, action, daemon)
    if isinstance(exc, EngineTransportError):
        return transport_failure(exc.cause, action, daemon)
    if "docker" in sys.modules:
        failure = _translate_sdk(exc, action, daemon)
        if failure is not None:
            return failure
    return transport_failure(exc, action, daemon)


def connect_failure(
    root: BaseException, action: str, daemon: str, *, dropped: bool = False
) -> RuntimeFailure:
    """No request could be made: the daemon's socket refused, was missing, timed out on
    connect (Unavailable), denied access (PermanentError) or dropped the connection
    (`dropped`, TransientError)."""
    if (
        dropped
        or isinstance(root, ConnectionResetError | BrokenPipeError)
        or "remote end closed" in str(root).lower()
    ):
        return TransientError(f"docker: cannot {action}: connection to the daemon lost ({root})")
    if isinstance(root, PermissionError):
        return PermanentError(
            f"docker: cannot {action}: permission denied on {daemon} "
            f"(is this user allowed to use Docker?): {root}"
        )
    return Unavailable(
        f"docker: cannot {action}: cannot reach the Docker daemon at {daemon} "
        f"(is dockerd running?): {root}"
    )


def transport_failure(exc: BaseException, action: str, daemon: str) -> RuntimeFailure:
    """A socket- or HTTP-level failure of a request (no answer from the daemon to classify)."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        return TransientError(f"docker: cannot {action}: the Docker daemon did not answer in time")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return TransientError(f"docker: cannot {action}: connection to the daemon lost ({exc})")
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return Unavailable(
            f"docker: cannot {action}: cannot reach the Docker daemon at {daemon} "
            f"(is dockerd running?): {exc}"
        )
    if isinstance(exc, ValueError):  # includes an answer that is not JSON
        return PermanentError(f"docker: cannot {action}: {exc}")
    if isinstance(exc, OSError):
        return TransientError(f"docker: cannot {action}: {exc}")
    return PermanentError(f"docker: cannot {action}: {exc}")


def _translate_sdk(exc: BaseException, action: str, daemon: str) -> RuntimeFailure | None:
    """The SDK-specific part of `translate` (None: not an SDK/requests/urllib3 failure, or one
    `transport_failure` classifies)."""
    import requests
    import urllib3.exceptions
    from docker import errors as docker_errors

    if isinstance(exc, docker_errors.APIError):
        status = exc.status_code if exc.response is not None else None
        return classify_api_error(status, explanation_of(exc), action)
    if isinstance(exc, requests.ConnectionError) and not isinstance(
        exc, requests.exceptions.ReadTimeout
    ):
        # ConnectTimeout is a ConnectionError: the daemon did not accept the connection.
        root = _root_cause(exc)
        dropped = isinstance(root, urllib3.exceptions.ProtocolError)
        return connect_failure(root, action, daemon, dropped=dropped)
    if isinstance(exc, requests.Timeout | urllib3.exceptions.ReadTimeoutError):
        return transport_failure(TimeoutError(), action, daemon)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
        return TransientError(f"docker: cannot {action}: connection to the daemon lost ({exc})")
    if isinstance(exc, OSError | ValueError):
        return None  # plain socket errors, requests' other errors: the shared rules
    if isinstance(exc, docker_errors.InvalidArgument | docker_errors.InvalidVersion):
        return PermanentError(f"docker: cannot {action}: {exc}")
    if isinstance(exc, docker_errors.DockerException):
        # e.g. "Error while fetching server API version: ..." when the socket is not there.
        text = str(exc)
        if "fetching server api version" in text.lower():
            if exc.__cause__ is not None and isinstance(exc.__cause__, translatable_errors()):
                return translate(exc.__cause__, action, daemon)
            return Unavailable(
                f"docker: cannot {action}: cannot reach the Docker daemon at {daemon}: {text}"
            )
        return PermanentError(f"docker: cannot {action}: {text}")
    return None


def _root_cause(exc: BaseException) -> BaseException:
    """Walk requests/urllib3 wrapping down to the socket-level error."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        candidates = [a for a in current.args if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            candidates.append(reason)
        candidates += [c for c in (current.__cause__, current.__context__) if c is not None]
        if not candidates:
            break
        current = candidates[0]
    return current
