"""A minimal read-only client for the Docker Engine REST API over a UNIX socket.

Observation (list, inspect) is most of what a no-op `pyapply -f DIR` does, so it is kept off
the Docker SDK: importing the SDK (requests, urllib3, ...) costs more than the reads
themselves, and its per-request overhead is several times that of a bare HTTP/1.1 exchange.

`EngineHTTP` speaks HTTP/1.1 (GET only) with keep-alive over one connection per thread -- a
bare reader on the socket, see `_Connection` -- pipelines batches of reads (`get_all`),
decodes JSON, and pins the API version with one `GET /version` on first use (the daemon's
own version, which is what the SDK's `version="auto"` negotiates, so both read paths see
the same payloads). Failures come out as `EngineError` subclasses only;
`runtime.docker.errors` turns them into the runtime taxonomy, with the same rules as for the
SDK's errors.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

__all__ = [
    "EngineAPIError",
    "EngineConnectError",
    "EngineError",
    "EngineHTTP",
    "EngineTransportError",
]

# Errors that mean "the kept-alive connection was closed by the daemon while idle": the
# request never reached it, so it is sent again once on a fresh connection.
_STALE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class EngineError(Exception):
    """Base of the failures `EngineHTTP` raises."""


class EngineAPIError(EngineError):
    """The daemon answered with a non-2xx status; `explanation` is its `message`."""

    def __init__(self, status: int, explanation: str, method: str = "GET", path: str = "") -> None:
        super().__init__(explanation or f"{status} error for {method} {path}")
        self.status = status
        self.explanation = explanation
        self.method = method
        self.path = path


class EngineConnectError(EngineError):
    """No connection could be opened to the daemon's socket (`cause`: the OSError)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class EngineTransportError(EngineError):
    """The exchange failed after connecting: timeout, connection dropped, malformed answer
    (`cause`: the underlying exception)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


class _Truncated(ConnectionResetError):
    """The daemon closed the connection in the middle of a response."""


class _Connection:
    """One HTTP/1.1 connection to a UNIX socket: GET requests, responses read in full.

    A bare reader rather than http.client: the Engine API's answers are plain (a status
    line, a few headers, a body sized by Content-Length or chunked), and http.client costs
    more to import (email, ssl) than observing a whole stack, and parses headers with the
    email package on every response.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._file: BinaryIO | None = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._file = sock.makefile("rb")

    def __del__(self) -> None:  # its thread ended
        self.close()

    def close(self) -> None:
        file, sock = self._file, self.sock
        self._file = self.sock = None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def send(self, *targets: str) -> None:
        """Send a GET request for each target at once (more than one: pipelined)."""
        assert self.sock is not None
        self.sock.sendall(
            b"".join(
                b"GET %s HTTP/1.1\r\nHost: docker\r\nAccept: application/json\r\n\r\n"
                % target.encode("ascii")
                for target in targets
            )
        )

    def status_line(self) -> bytes:
        """The first line of the response ("" when the daemon closed the connection instead
        of answering)."""
        assert self._file is not None
        return self._file.readline(_MAX_LINE)

    def rest(self, status_line: bytes) -> tuple[int, str, bytes]:
        """Read the rest of the response: (status, reason, body); closes the connection when
        the daemon will."""
        assert self._file is not None
        file = self._file
        while True:
            version, status, reason = _parse_status(status_line)
            headers = _read_headers(file)
            if not 100 <= status < 200:
                break
            status_line = file.readline(_MAX_LINE)  # an interim answer: the real one follows
        keep = version != b"HTTP/1.0" and headers.get(b"connection", b"").lower() != b"close"
        if status in (204, 304):
            body = b""
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = _read_chunked(file)
        elif b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                raise ValueError("malformed HTTP response: bad Content-Length") from None
            body = _read_exactly(file, length)
        else:
            body = file.read()  # delimited by the end of the connection
            keep = False
        if not keep:
            self.close()
        return status, reason, body


_MAX_LINE = 65536
# Requests pipelined at once: their few kilobytes always fit in the socket's buffer, so
# sending never waits on the daemon, which may be waiting for the answers to be read.
_PIPELINE = 32


def _parse_status(line: bytes) -> tuple[bytes, int, str]:
    if not line.endswith(b"\n"):
        raise _Truncated("connection closed in the status line")
    parts = line.split(None, 2)
    try:
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError
        status = int(parts[1])
    except ValueError:
        raise ValueError(f"malformed HTTP response: {line[:80]!r}") from None
    reason = parts[2].strip().decode("latin-1") if len(parts) > 2 else ""
    return parts[0], status, reason


def _read_headers(file: BinaryIO) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    while True:
        line = file.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise _Truncated("connection closed in the response headers")
        if line in (b"\r\n", b"\n"):
            return headers
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise _Truncated(f"connection closed after {len(data)} of {size} body bytes")
    return data


def _read_chunked(file: BinaryIO) -> bytes:
    pieces: list[bytes] = []
    while True:
        line = file.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise _Truncated("connection closed in a chunk header")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ValueError(f"malformed HTTP response: chunk size {line[:40]!r}") from None
        if size == 0:
            _read_headers(file)  # trailers, up to the final empty line
            return b"".join(pieces)
        pieces.append(_read_exactly(file, size))
        _read_exactly(file, 2)  # CRLF


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


class EngineHTTP:
    """GET requests to dockerd at the UNIX socket `path`; JSON in, JSON out.

    Thread-safe: each thread has its own kept-alive connection. `max_version` caps the
    negotiated API version (None: whatever the daemon speaks).
    """

    def __init__(self, path: str, *, timeout: float = 60, max_version: str | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._max_version = max_version
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every open connection, for close(); a thread's goes when the thread ends.
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._prefix: str | None = None

    # -----------------------------------------------------------------------------------------

    @property
    def api_version(self) -> str:
        """The API version requests are made with (asks the daemon on first use)."""
        return self._version_prefix()[2:]

    def get(
        self, path: str, params: Mapping[str, str | int] | None = None, *, versioned: bool = True
    ) -> Any:
        """GET `path` ("/containers/json", already quoted) and return the decoded JSON."""
        url = (self._version_prefix() if versioned else "") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return _decode(url, *self._exchange(url))

    def get_all(self, paths: Sequence[str]) -> list[Any]:
        """GET every path in turn and return, in order, each one's decoded JSON or the
        `EngineError` it failed with. A failure other than `EngineAPIError` (an answer)
        ends the list there: the paths after it are not tried.

        The requests are pipelined (sent together on this thread's connection, answers read
        in order), which halves the time per request; a connection that closes or breaks
        mid-way is left, and the requests not answered yet are made one at a time (reconnect
        once, as `get`).
        """
        results: list[Any] = []
        try:
            urls = [self._version_prefix() + p for p in paths]
        except EngineError as e:
            return [e]
        while len(results) < len(urls):
            batch = urls[len(results) : len(results) + _PIPELINE]
            answers, failure = self._pipelined(batch) if len(batch) > 1 else ([], None)
            results += answers
            if failure is not None:
                results.append(failure)
                break
            if not answers:  # the plain way, for one request
                try:
                    results.append(_decode(batch[0], *self._exchange(batch[0])))
                except EngineAPIError as e:
                    results.append(e)
                except EngineError as e:
                    results.append(e)
                    break
        return results

    def close(self) -> None:
        """Close every connection (of every thread); later calls reconnect."""
        with self._lock:
            connections, self._connections = list(self._connections), weakref.WeakSet()
        for conn in connections:
            conn.close()

    # -----------------------------------------------------------------------------------------

    def _version_prefix(self) -> str:
        prefix = self._prefix
        if prefix is None:
            info = self.get("/version", versioned=False)
            version = str((info or {}).get("ApiVersion") or "")
            if not version:
                raise EngineTransportError(ValueError("the daemon reported no API version"))
            if self._max_version and _version_key(self._max_version) < _version_key(version):
                version = self._max_version
            prefix = self._prefix = f"/v{version}"
        return prefix

    def _connection(self) -> tuple[_Connection, bool]:
        """This thread's connection, and whether it is fresh (never used)."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, False
        if conn is None:
            conn = self._local.conn = _Connection(self.path, self.timeout)
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise EngineConnectError(e) from e
        with self._lock:  # (again, after a close())
            self._connections.add(conn)
        return conn, True

    def _pipelined(self, urls: list[str]) -> tuple[list[Any], EngineError | None]:
        """Answers to the first requests of `urls` (each decoded JSON or an EngineAPIError),
        pipelined on this thread's connection, and the failure that ended them (None: they
        end where the connection closed or broke, and the caller goes on from there)."""
        answers: list[Any] = []
        try:
            conn, _ = self._connection()
        except EngineConnectError:
            return answers, None  # the plain way fails alike, with one request
        try:
            conn.send(*urls)
            for url in urls:
                first = conn.status_line()
                if not first:
                    break
                try:
                    answers.append(_decode(url, *conn.rest(first)))
                except EngineAPIError as e:
                    answers.append(e)
                except EngineError as e:  # an answer that is not JSON
                    conn.close()
                    return answers, e
                if conn.sock is None:  # the daemon closed it after that answer
                    break
        except TimeoutError as e:  # waiting again, one at a time, would not help
            conn.close()
            return answers, EngineTransportError(e)
        except (OSError, ValueError):
            pass
        if len(answers) < len(urls):
            conn.close()
        return answers, None

    def _exchange(self, url: str) -> tuple[int, str, bytes]:
        for attempt in (1, 2):
            conn, fresh = self._connection()
            try:
                try:
                    conn.send(url)
                    first = conn.status_line()
                    if not first:
                        raise _Truncated("the daemon closed the connection without answering")
                except _STALE:
                    # A kept-alive connection the daemon closed while idle: nothing of a
                    # response was read, so the request is sent again on a fresh connection,
                    # once. A fresh connection failing that way is a real failure.
                    conn.close()
                    if fresh or attempt == 2:
                        raise
                    continue
                return conn.rest(first)
            except (OSError, ValueError) as e:
                conn.close()
                raise EngineTransportError(e) from e
        raise AssertionError("unreachable")  # pragma: no cover


def _decode(url: str, status: int, reason: str, body: bytes) -> Any:
    if not 200 <= status < 300:
        raise EngineAPIError(status, _explanation(body, reason), "GET", url)
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as e:
        raise EngineTransportError(e) from e


def _explanation(body: bytes, reason: str) -> str:
    """The daemon's `message` from an error body (its text when that is not JSON)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        return text or reason
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"]).strip()
    return text or reason
