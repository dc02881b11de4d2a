"""The agent's REST API against malformed, random and slow clients: a real `pyapply watch`
on the native runtime, its real UNIX socket, raw bytes written by this test.

- A seeded fuzzer sends a few hundred requests (methods, paths, versions, headers,
  `Content-Length` values, query values, bodies, plain garbage). Every answer must be one
  well-formed HTTP/1.x response with a status below 500 -- the documented exceptions are
  counted apart: 504 when a client asked to wait for a pass with a timeout shorter than the
  pass -- or, for bytes that are not an HTTP request at all, a closed connection after
  which the agent still answers `/v1/status`. No request may go unanswered (a hang).
- Slow clients (a request line, a header or a body sent a byte at a time, or nothing at
  all) are cut off at the `--api-timeout` deadline, however the bytes trickle in, while
  other clients are served meanwhile.
- More connections than the limit get 503 at once instead of a thread each, and the
  agent's thread count returns to its baseline afterwards.

The figures (cases, statuses, hangs) are printed: `pytest -s tests/e2e/test_api_fuzz.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from pyapply.reconciler.agent.api import MAX_BODY_BYTES, MAX_CONNECTIONS
from tests.e2e.helpers import sleeper_stack
from tests.e2e.runtimes import RuntimeUnderTest
from tests.e2e.test_agent import AgentProc, Repo, wait_for

pytestmark = pytest.mark.e2e

API_TIMEOUT = 2.0  # the agent's --api-timeout here
CLIENT_TIMEOUT = 10.0  # no answer within this is a hang
FUZZ_CASES = 1000
FUZZ_BUDGET_S = 20.0
SEED = int(os.environ.get("PYAPPLY_FUZZ_SEED", "1717"))
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*")


class Answer(msgspec.Struct):
    status: int | None  # the last final status; None: closed without a response
    body: bytes = b""
    statuses: tuple[int, ...] = ()  # every final response (pipelined bytes may add some)


def connect(path: str, timeout: float = CLIENT_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; TimeoutError if it does not close
    within the socket's timeout (the test half-closed its side, so it must)."""
    data = b""
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the server neither answered nor closed")
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def parse_answers(data: bytes, head_request: bool = False) -> Answer:
    """The responses in `data`, each checked to be well formed: a status line, headers
    ending in an empty line, a Content-Length and exactly that many body bytes (1xx interim
    responses have none; an answer to HEAD may omit its body). AssertionError if not."""
    statuses: list[int] = []
    body = b""
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"a response without the end of its headers: {head[:300]!r}"
        lines = head.split(b"\r\n")
        m = STATUS_LINE.fullmatch(lines[0])
        assert m, f"not a status line: {lines[0][:300]!r}"
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and name and name == name.strip(), f"not a header line: {line!r}"
            headers[name.lower()] = value.strip()
        status = int(m.group(1))
        if status < 200:
            continue  # 100 Continue
        assert b"content-length" in headers, f"no Content-Length in {head[:300]!r}"
        length = int(headers[b"content-length"])
        if head_request and len(data) < length and not data:
            length = 0  # HEAD: the length of the body not sent
        assert len(data) >= length, f"the body ended after {len(data)} of {length} bytes"
        body, data = data[:length], data[length:]
        statuses.append(status)
    if not statuses:
        return Answer(None)
    return Answer(statuses[-1], body, tuple(statuses))


def first_final_answer(data: bytes) -> bytes | None:
    """The bytes of the first final (non-1xx) response in `data`, once all have arrived."""
    offset = 0
    while True:
        end = data.find(b"\r\n\r\n", offset)
        if end < 0:
            return None
        m = STATUS_LINE.match(data, offset)
        if m and int(m.group(1)) < 200:
            offset = end + 4  # 100 Continue
            continue
        found = re.search(rb"(?im)^content-length: *([0-9]+)\r$", data[offset : end + 2])
        length = int(found.group(1)) if found else 0
        return data[: end + 4 + length] if len(data) >= end + 4 + length else None


def exchange(
    path: str, request: bytes, head_request: bool = False, half_close: bool = True
) -> Answer:
    """Send `request` and read the answers. Half-closed (the server never waits for more
    bytes): everything until the server closes. Kept open: the first final answer, which
    must come without the client closing (a server waiting for the body of an invalid
    length is a hang)."""
    with contextlib.closing(connect(path)) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        if half_close:
            return parse_answers(read_to_eof(sock), head_request)
        data = b""
        while (answer := first_final_answer(data)) is None:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return parse_answers(data, head_request)
            data += chunk
        return parse_answers(answer, head_request)


def read_answer(sock: socket.socket) -> Answer:
    """One response on a connection kept open (its length says where it ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed in the middle of a response: {data!r}"
        data += chunk
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", data).group(1))  # type: ignore[union-attr]
    while len(data.partition(b"\r\n\r\n")[2]) < length:
        data += sock.recv(65536)
    return parse_answers(data)


def get_status(path: str) -> int | None:
    return exchange(path, b"GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n").status


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for {pid}")


# ---------------------------------------------------------------------------------------------
# The generator


PATHS = [
    "/v1/status",
    "/v1/history",
    "/v1/diff",
    "/v1/sync",
    "/v1/rollback",
    "/v1/resume",
    "/metrics",
    "/",
    "/v1/",
    "/v1/status/",
    "//[::1",
    "http://agent/v1/status",
    "/v1/history%00",
    "/%ff%fe",
    "*",
    "/" + "a" * 3000,
]
ROUTES = [
    ("GET", "/v1/status"),
    ("GET", "/v1/history"),
    ("GET", "/v1/diff"),
    ("POST", "/v1/sync"),
    ("POST", "/v1/rollback"),
    ("POST", "/v1/resume"),
    ("GET", "/metrics"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "get", "BREW"]
VALUES = [
    "abc",
    "1e23",
    "-1",
    "0",
    "1",
    "50",
    "5000",
    "5001",
    "99999999999999999999999",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "1.5",
    "",
    "%ZZ",
    "0x10",
    "+1",
    " 1",
    "1_0",
    "\u0661\u0662",
    "true",
    "yes",
    "no",
    "maybe",
    "9" * 400,
]
LENGTHS = [
    "-1",
    "abc",
    "",
    " 5 ",
    "1e3",
    "0x10",
    "10000000000000000000000000000000",
    str(MAX_BODY_BYTES + 1),
    "1, 2",
    "+5",
    "\u0665",  # an Arabic-Indic five: a digit to str.isdigit(), not to HTTP
    "5",
    "0",
]
INVALID_LENGTHS = {v for v in LENGTHS if not re.fullmatch(r" *[0-9]+ *", v)} | {
    str(MAX_BODY_BYTES + 1),
    "10000000000000000000000000000000",
}
BODIES = [
    b"",
    b"{}",
    b'{"revision": "nope"}',
    b'{"revision": 5}',
    b"[" * 3000 + b"]" * 3000,
    b"[" * 20000,
    b"not json",
    b"\xff\xfe\x00\x01",
    b'"' + b"x" * 1000 + b'"',
    b"null",
]


def query(rng: random.Random) -> str:
    keys = ["limit", "timeout", "wait", "wait", "revision", "x"]
    parts = [f"{rng.choice(keys)}={rng.choice(VALUES)}" for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.05:
        parts = [f"k{i}=v" for i in range(200)]  # more fields than the server parses
    return ("?" + "&".join(parts)) if parts else ""


def make_case(rng: random.Random) -> tuple[bytes, bool, bool, bool]:
    """(request bytes, garbage?, HEAD?, half-close?) -- garbage may be answered by closing;
    a request whose body length is invalid is sent without closing: it must be answered
    without the server waiting for a body."""
    kind = rng.random()
    if kind < 0.08:  # not HTTP at all
        choice = rng.randrange(4)
        if choice == 0:
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))), True, False, True
        if choice == 1:
            return b"\r\n" * rng.randint(1, 3), True, False, True
        if choice == 2:
            return b"", True, False, True
        return b"A" * 70000 + b"\r\n\r\n", True, False, True
    if kind < 0.5:  # a plausible request: a real route, odd query values, a JSON body
        method, route = rng.choice(ROUTES)
        body = rng.choice([b"", b"{}", b'{"revision": "0"}', b'{"revision": ""}', b"[]"])
        text = f"{method} {route}{query(rng)} HTTP/1.1\r\nHost: agent\r\n"
        if body or rng.random() < 0.3:
            text += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        return text.encode() + b"\r\n" + body, False, False, rng.random() < 0.5
    method = rng.choice(METHODS)
    path = rng.choice(PATHS) + query(rng)
    version = rng.choice(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/x", "", "HTTP/1.1 x"])
    line = f"{method} {path} {version}".rstrip(" ").encode("utf-8", "surrogateescape")
    headers = [b"Host: agent"]
    body = rng.choice(BODIES)
    length: str | None = str(len(body)) if body else None
    roll = rng.random()
    invalid_length = False
    if roll < 0.35:
        length = rng.choice(LENGTHS)
        invalid_length = length in INVALID_LENGTHS
    elif roll < 0.4:
        headers.append(b"Transfer-Encoding: chunked")
        invalid_length = True
    elif roll < 0.45:
        headers += [b"Content-Length: 1", b"Content-Length: 2"]
        invalid_length = True
    elif roll < 0.5:
        headers += [f"X-{i}: v".encode() for i in range(120)]  # too many headers
    elif roll < 0.55:
        headers.append(b"X-Long: " + b"v" * 70000)
    elif roll < 0.6:
        headers.append(b"Bad Header Line")
    elif roll < 0.65:
        headers.append(b"X-Bin: \xff\xfe")
    elif roll < 0.7:
        headers.append(b"Expect: 100-continue")
    if length is not None:
        headers.append(f"Content-Length: {length}".encode())
    request = line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    # a valid request line and headers with an invalid length: answered at once
    keep_open = invalid_length and version == "HTTP/1.1" and method in ("GET", "POST")
    return request, False, method == "HEAD", not keep_open


# The cases, each sent without closing: (request, expected status).
KNOWN: list[tuple[bytes, int]] = [
    (b"POST /v1/sync HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /v1/sync HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /v1/sync HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413),
    (b"POST /v1/sync HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", 413),
    (b"POST /v1/sync HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST /v1/sync?wait=true&timeout=abc HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/sync?wait=true&timeout=nan HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/sync?wait=true&timeout=-1 HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/sync?wait=maybe HTTP/1.1\r\n\r\n", 400),
    (b"GET /v1/history?limit=1e23 HTTP/1.1\r\n\r\n", 400),
    (b"GET /v1/history?limit=-1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /v1/history?limit=abc HTTP/1.1\r\n\r\n", 400),
    (b"GET /v1/history?limit=3 HTTP/1.1\r\n\r\n", 200),
    (b"POST /v1/rollback HTTP/1.1\r\nContent-Length: 6000\r\n\r\n" + b"[" * 6000, 400),
    (b"BREW /v1/status HTTP/1.1\r\n\r\n", 405),
    (b"GET /v1/status HTTP/2.0\r\n\r\n", 400),
    (b"GET /v1/status\r\n\r\n", 400),
    (b"GET //[::1/v1/status HTTP/1.1\r\n\r\n", 404),
    (b"GET http://[::1/v1/status HTTP/1.1\r\n\r\n", 400),
    (b"POST /v1/sync HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 413),
]


# ---------------------------------------------------------------------------------------------


def stack_yaml(stack: str) -> str:
    return sleeper_stack(stack)


@pytest.fixture
def agent(tmp_path: Path, runtime: RuntimeUnderTest) -> Iterator[AgentProc]:
    proc = AgentProc(tmp_path, runtime)
    repo = Repo(tmp_path / "repo")
    repo.commit({"stack.yaml": stack_yaml(runtime.stack)}, "one service")
    try:
        proc.start(repo.path, "--no-events", "--interval", "300", "--api-timeout", str(API_TIMEOUT))
        wait_for(
            "the first pass",
            lambda: any(p["outcome"] == "succeeded" for p in proc.history()),
            timeout=120,
        )
        yield proc
    finally:  # ended by pid, whatever the test did
        with contextlib.suppress(AssertionError):
            proc.stop(timeout=30)
        print(f"--- agent log:\n{proc.logs()[-4000:]}")


def settled_threads(pid: int, baseline: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    count = threads(pid)
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        count = threads(pid)
    return count


@pytest.mark.parametrize("runtime", ["native"], indirect=True)
def test_fuzzed_requests_get_well_formed_answers(agent: AgentProc) -> None:
    assert agent.proc is not None
    pid = agent.proc.pid
    sock_path = agent.socket
    baseline = settled_threads(pid, 0, timeout=0)
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    closed = hangs = documented_5xx = kept_open = 0
    failures: list[str] = []
    for request, expected in KNOWN:
        try:
            got = exchange(sock_path, request, half_close=False).status
        except (TimeoutError, AssertionError) as exc:
            got = None
            failures.append(f"{request[:80]!r}: {exc!r}")
        if got != expected:
            failures.append(f"{request[:80]!r}: HTTP {got}, expected {expected}")
    started = time.monotonic()
    cases = 0
    while cases < FUZZ_CASES and time.monotonic() - started < FUZZ_BUDGET_S:
        request, garbage, head, half_close = make_case(rng)
        cases += 1
        kept_open += not half_close
        try:
            answer = exchange(sock_path, request, head, half_close)
        except TimeoutError:
            hangs += 1
            failures.append(f"hang: {request[:200]!r}")
            continue
        except AssertionError as exc:
            failures.append(f"malformed answer to {request[:200]!r}: {exc}")
            continue
        if answer.status is None:
            closed += 1
            if not garbage:
                failures.append(f"closed without an answer: {request[:200]!r}")
            if get_status(sock_path) != 200:
                failures.append(f"/v1/status fails after {request[:200]!r}")
            continue
        for status in answer.statuses:
            statuses[status] += 1
            if status < 500:
                continue
            waited = b"wait=" in request and b"did not finish" in answer.body
            if status == 504 and waited:
                documented_5xx += 1  # the client's own timeout was shorter than the pass
            else:
                failures.append(f"HTTP {status} for {request[:200]!r}: {answer.body[:300]!r}")
        if answer.body:
            try:
                doc = json.loads(answer.body)
            except ValueError:
                # Prometheus text and the dashboard's pages (whole HTML documents, on `/`,
                # `/history`...) are the non-JSON answers
                body = answer.body.strip()
                page = body.startswith(b"<!doctype html>") and body.endswith(b"</html>")
                if b"/metrics" not in request and not page:
                    failures.append(f"not JSON: {answer.body[:200]!r} for {request[:200]!r}")
            else:
                refused = answer.status is not None and answer.status >= 400
                if refused and not (isinstance(doc, dict) and isinstance(doc.get("error"), str)):
                    failures.append(f"no error message in {doc!r}")
    took = time.monotonic() - started
    after = settled_threads(pid, baseline)
    print(
        f"\nfuzz (seed {SEED}): {len(KNOWN)} known cases, {cases} random cases in {took:.1f}s; statuses {dict(sorted(statuses.items()))}; "
        f"closed {closed}; kept open {kept_open}; hangs {hangs}; 5xx outside the documented 504: "
        f"{sum(n for s, n in statuses.items() if s >= 500) - documented_5xx}; "
        f"threads {baseline} -> {after}"
    )
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:20])
    assert cases >= 200, f"only {cases} cases ran in {FUZZ_BUDGET_S}s"
    assert statuses[400] and statuses[405] and statuses[200] and statuses[202]
    assert after <= baseline, f"the agent has {after} threads, {baseline} before the fuzz"
    assert get_status(sock_path) == 200
    assert agent.proc.poll() is None


def trickle(sock: socket.socket, data: bytes, stop_after: float) -> float | None:
    """Send `data` a byte at a time, 0.1 s apart; the time from the start at which the
    server cut the connection, or None if it never did within `stop_after` seconds."""
    start = time.monotonic()
    sock.settimeout(0.1)
    for i in range(len(data)):
        if time.monotonic() - start > stop_after:
            return None
        try:
            sock.send(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
    return None


@pytest.mark.parametrize("runtime", ["native"], indirect=True)
def test_slow_clients_are_cut_off_and_connections_bounded(agent: AgentProc) -> None:
    assert agent.proc is not None
    pid = agent.proc.pid
    path = agent.socket
    baseline = settled_threads(pid, 0, timeout=0)
    long_header = b"GET /v1/status HTTP/1.1\r\nX-Slow: " + b"a" * 400
    slow_body = b"POST /v1/rollback HTTP/1.1\r\nContent-Length: 300\r\n\r\n" + b"{" * 300
    slow_line = b"GET /v1/status" + b"/" * 400
    cut: dict[str, float | None] = {}

    def slow(name: str, data: bytes) -> None:
        with contextlib.closing(connect(path)) as sock:
            if name == "body":  # the headers at once, then the body byte by byte
                head, _, data = data.partition(b"\r\n\r\n")
                sock.sendall(head + b"\r\n\r\n")
            cut[name] = trickle(sock, data, stop_after=API_TIMEOUT + 3)

    def idle(name: str, first: bytes) -> None:
        # connected and silent, or silent after one answer on a kept-alive connection
        with contextlib.closing(connect(path, timeout=API_TIMEOUT + 3)) as sock:
            start = time.monotonic()
            if first:
                sock.sendall(first)
                assert read_answer(sock).status == 200
                start = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server, not by this timeout
            cut[name] = time.monotonic() - start

    clients = [
        threading.Thread(target=slow, args=("header", long_header)),
        threading.Thread(target=slow, args=("body", slow_body)),
        threading.Thread(target=slow, args=("request line", slow_line)),
        threading.Thread(target=idle, args=("idle", b"")),
        threading.Thread(
            target=idle, args=("keep-alive", b"GET /v1/history?limit=1 HTTP/1.1\r\n\r\n")
        ),
    ]
    for t in clients:
        t.start()
    time.sleep(0.5)
    # meanwhile, other clients are served at once
    t0 = time.monotonic()
    assert get_status(path) == 200
    served_in = time.monotonic() - t0
    for t in clients:
        t.join(API_TIMEOUT + 5)
    print(f"\nslow clients cut after (s): {cut}; /v1/status meanwhile in {served_in:.2f}s")
    assert served_in < API_TIMEOUT
    assert sorted(cut) == sorted(["header", "body", "request line", "idle", "keep-alive"])
    for name, when in cut.items():
        assert when is not None, f"a slow {name} was not cut off"
        assert API_TIMEOUT - 0.5 <= when <= API_TIMEOUT + 1.5, (name, when)

    # more connections than the limit: the extra ones are refused at once with 503, the
    # others keep a thread each and are served; nobody else waits meanwhile
    socks = [connect(path) for _ in range(MAX_CONNECTIONS + 4)]
    try:
        time.sleep(0.3)
        busy = 0
        for sock in socks:
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                answer = parse_answers(read_to_eof(sock))
                assert answer.status == 503, answer
                busy += 1
        assert busy >= 4, f"{busy} connections refused over the limit of {MAX_CONNECTIONS}"
        assert threads(pid) <= baseline + MAX_CONNECTIONS
    finally:
        for sock in socks:
            sock.close()
    after = settled_threads(pid, baseline)
    assert after <= baseline, f"{after} threads after the slow clients, {baseline} before"
    assert get_status(path) == 200
