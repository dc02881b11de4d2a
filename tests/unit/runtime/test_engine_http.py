"""EngineHTTP (the Docker driver's read path) against a tiny fake dockerd on a UNIX socket.

The fake answers from a table of canned responses, records every request and the connection
it came on, and can drop a kept-alive connection or stall, so that keep-alive, reconnecting,
version pinning and the error taxonomy are checked without a daemon.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import msgspec
import pytest

from pyapply.runtime.base import (
    Conflict,
    NotFound,
    PermanentError,
    RuntimeFailure,
    TransientError,
    Unavailable,
)
from pyapply.runtime.docker.driver import DockerRuntime, unix_socket_path
from pyapply.runtime.docker.engine import (
    EngineAPIError,
    EngineConnectError,
    EngineHTTP,
    EngineTransportError,
)
from pyapply.runtime.docker.errors import translate

Reply = tuple[int, Any]  # status, JSON body (bytes: sent as is; Raw: the whole response)


class Raw(msgspec.Struct, frozen=True):
    """A response written byte for byte, after which the fake closes the connection."""

    data: bytes


class FakeDaemon(msgspec.Struct):
    path: str
    api_version: str = "1.41"
    routes: dict[str, Reply] = msgspec.field(default_factory=dict)
    requests: list[tuple[int, str]] = msgspec.field(default_factory=list)  # (connection no., path)
    connections: int = 0
    drop_after_reply: bool = False  # close each connection after one reply, without saying so
    drop_after: set[str] = msgspec.field(default_factory=set)  # ... after replying to these paths
    stall: threading.Event | None = None  # requests wait for this before answering
    chunked: bool = False

    # "METHOD /path" -> replies given in turn (the last one repeats), for mutations
    answers: dict[str, list[Reply]] = msgspec.field(default_factory=dict)
    bodies: list[tuple[str, bytes]] = msgspec.field(default_factory=list)  # ("METHOD /path", body)

    def reply(self, path: str) -> Reply:
        if path.endswith("/version"):
            return 200, {"ApiVersion": self.api_version, "Version": "fake"}
        return self.routes.get(path, (404, {"message": f"page not found: {path}"}))

    def answer(self, key: str) -> Reply:
        replies = self.answers.get(key)
        if not replies:
            return 404, {"message": f"page not found: {key}"}
        return replies.pop(0) if len(replies) > 1 else replies[0]


def _handler(daemon: FakeDaemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            daemon.connections += 1
            self.number = daemon.connections

        def address_string(self) -> str:  # a UNIX socket has no peer address
            return "fake"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            daemon.requests.append((self.number, self.path))
            if daemon.stall is not None:
                daemon.stall.wait(10)
            status, body = daemon.reply(self.path)
            if isinstance(body, Raw):
                self.wfile.write(body.data)
                self.close_connection = True
                return
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if daemon.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 7):
                    piece = data[i : i + 7]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            if daemon.drop_after_reply or self.path in daemon.drop_after:
                self.close_connection = True

        def _mutate(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            key = f"{method} {self.path.split('?')[0]}"
            daemon.requests.append((self.number, key))
            daemon.bodies.append((key, body))
            status, answer = daemon.answer(key)
            data = b"" if status == 204 else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_DELETE(self) -> None:
            self._mutate("DELETE")

        def do_POST(self) -> None:
            self._mutate("POST")

    return Handler


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    # A short directory: UNIX socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="pyafake-") as tmp:
        daemon = FakeDaemon(path=os.path.join(tmp, "docker.sock"))
        server = _Server(daemon.path, _handler(daemon))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield daemon
        finally:
            if daemon.stall is not None:
                daemon.stall.set()
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture
def engine(fake: FakeDaemon) -> Iterator[EngineHTTP]:
    client = EngineHTTP(fake.path, timeout=5)
    yield client
    client.close()


def _failure(exc: BaseException, action: str = "inspect container web") -> RuntimeFailure:
    return translate(exc, action, "unix:///fake.sock")


# ---------------------------------------------------------------------------------------------
# The client


def test_pins_the_version_once_and_keeps_the_connection_alive(
    fake: FakeDaemon, engine: EngineHTTP
) -> None:
    fake.routes["/v1.41/containers/json?all=1"] = (200, [{"Id": "abc"}])
    fake.routes["/v1.41/containers/abc/json"] = (200, {"Id": "abc", "Name": "/web"})
    assert engine.get("/containers/json", {"all": 1}) == [{"Id": "abc"}]
    for _ in range(3):
        assert engine.get("/containers/abc/json") == {"Id": "abc", "Name": "/web"}
    assert engine.api_version == "1.41"
    assert [p for _, p in fake.requests].count("/version") == 1
    assert {n for n, _ in fake.requests} == {1}  # one connection for all five requests


def test_version_is_capped(fake: FakeDaemon) -> None:
    fake.api_version = "1.45"
    client = EngineHTTP(fake.path, timeout=5, max_version="1.43")
    try:
        assert client.api_version == "1.43"
    finally:
        client.close()


def test_chunked_bodies_are_decoded(fake: FakeDaemon, engine: EngineHTTP) -> None:
    fake.chunked = True
    payload = {"Id": "abc", "Config": {"Env": [f"K{i}=v" for i in range(50)]}}
    fake.routes["/v1.41/containers/abc/json"] = (200, payload)
    assert engine.get("/containers/abc/json") == payload
    assert engine.get("/containers/abc/json") == payload


def test_a_connection_the_daemon_closed_is_reopened_once(
    fake: FakeDaemon, engine: EngineHTTP
) -> None:
    fake.drop_after_reply = True
    fake.routes["/v1.41/volumes/data"] = (200, {"Name": "data"})
    for _ in range(3):
        assert engine.get("/volumes/data") == {"Name": "data"}
    assert fake.connections == 4  # /version, then one per request


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
        b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[1, 2, 3]",  # up to EOF
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[1, 2, 3]",
    ],
)
def test_responses_that_end_the_connection(
    fake: FakeDaemon, engine: EngineHTTP, response: bytes
) -> None:
    fake.routes["/v1.41/x"] = (200, Raw(response))
    assert engine.get("/x") == [1, 2, 3]
    assert engine.get("/x") == [1, 2, 3]
    # The answer closed the connection: the next request went on a new one, without error.
    assert fake.requests == [(1, "/version"), (1, "/v1.41/x"), (2, "/v1.41/x")]


def test_no_content_is_none(fake: FakeDaemon, engine: EngineHTTP) -> None:
    fake.routes["/v1.41/x"] = (200, Raw(b"HTTP/1.1 204 No Content\r\n\r\n"))
    assert engine.get("/x") is None


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[1, 2",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1, 2\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 20",
    ],
)
def test_a_response_cut_short_is_transient(
    fake: FakeDaemon, engine: EngineHTTP, response: bytes
) -> None:
    """Cut after the first byte of the answer: not retried (the daemon may have acted)."""
    fake.routes["/v1.41/x"] = (200, Raw(response))
    with pytest.raises(EngineTransportError) as info:
        engine.get("/x")
    failure = _failure(info.value)
    assert type(failure) is TransientError
    assert "connection to the daemon lost" in failure.message
    assert [p for _, p in fake.requests].count("/v1.41/x") == 1


def test_something_else_than_http_is_permanent(fake: FakeDaemon, engine: EngineHTTP) -> None:
    fake.routes["/v1.41/x"] = (200, Raw(b"SSH-2.0-OpenSSH_9.2\r\n"))
    with pytest.raises(EngineTransportError) as info:
        engine.get("/x")
    assert type(_failure(info.value)) is PermanentError


# ---------------------------------------------------------------------------------------------
# Pipelined reads


def _volumes(fake: FakeDaemon, n: int) -> list[str]:
    for i in range(n):
        fake.routes[f"/v1.41/volumes/v{i}"] = (200, {"Name": f"v{i}"})
    return [f"/volumes/v{i}" for i in range(n)]


def test_get_all_answers_in_order_on_one_connection(fake: FakeDaemon, engine: EngineHTTP) -> None:
    paths = _volumes(fake, 70)  # more than one pipelined batch
    paths.insert(3, "/volumes/missing")
    answers = engine.get_all(paths)
    assert len(answers) == 71
    assert isinstance(answers[3], EngineAPIError) and answers[3].status == 404
    del answers[3]
    assert answers == [{"Name": f"v{i}"} for i in range(70)]
    assert fake.connections == 1
    assert engine.get_all([]) == []


def test_get_all_goes_on_when_the_daemon_closes_mid_way(
    fake: FakeDaemon, engine: EngineHTTP
) -> None:
    paths = _volumes(fake, 10)
    fake.drop_after = {"/v1.41/volumes/v2", "/v1.41/volumes/v6"}
    assert engine.get_all(paths) == [{"Name": f"v{i}"} for i in range(10)]
    assert fake.connections == 3
    # Each request was answered once: the unanswered ones were sent again, not the others.
    answered = [p for _, p in fake.requests if p != "/version"]
    assert sorted(set(answered)) == sorted(f"/v1.41{p}" for p in paths)


def test_get_all_reopens_a_stale_connection(fake: FakeDaemon, engine: EngineHTTP) -> None:
    paths = _volumes(fake, 5)
    engine.get("/volumes/v0")
    fake.drop_after_reply = True  # (from now on: the next reply closes the connection)
    engine.get("/volumes/v0")  # the daemon closed this one after answering
    fake.drop_after_reply = False
    assert engine.get_all(paths) == [{"Name": f"v{i}"} for i in range(5)]


def test_get_all_stops_at_a_failure_that_is_not_an_answer(
    fake: FakeDaemon, engine: EngineHTTP
) -> None:
    paths = _volumes(fake, 6)
    fake.routes["/v1.41/volumes/v2"] = (200, b"<html>")
    answers = engine.get_all(paths)
    assert answers[:2] == [{"Name": "v0"}, {"Name": "v1"}] and len(answers) == 3
    assert isinstance(answers[2], EngineTransportError)


def test_get_all_on_a_missing_socket(tmp_path: Any) -> None:
    client = EngineHTTP(str(tmp_path / "nothing.sock"), timeout=1)
    [answer] = client.get_all(["/volumes/a", "/volumes/b"])
    assert isinstance(answer, EngineConnectError)


def test_get_all_does_not_wait_twice(fake: FakeDaemon) -> None:
    client = EngineHTTP(fake.path, timeout=0.3)
    try:
        paths = _volumes(fake, 4)
        client.get("/version", versioned=False)
        fake.stall = threading.Event()
        answers = client.get_all(paths)
    finally:
        client.close()
    assert len(answers) == 1 and isinstance(answers[0], EngineTransportError)
    assert isinstance(answers[0].cause, TimeoutError)


def test_each_thread_has_its_own_connection(fake: FakeDaemon, engine: EngineHTTP) -> None:
    fake.routes["/v1.41/volumes/data"] = (200, {"Name": "data"})
    engine.get("/volumes/data")
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(engine.get("/volumes/data")))
    worker.start()
    worker.join(5)
    assert results == [{"Name": "data"}]
    assert len({n for n, _ in fake.requests}) == 2
    gc.collect()
    assert len(engine._connections) == 1  # the thread's went with it (closed)


def test_non_2xx_carries_status_and_the_daemons_message(
    fake: FakeDaemon, engine: EngineHTTP
) -> None:
    fake.routes["/v1.41/containers/web/json"] = (404, {"message": "No such container: web"})
    fake.routes["/v1.41/networks/x"] = (500, b"plain text failure\n")
    with pytest.raises(EngineAPIError) as info:
        engine.get("/containers/web/json")
    assert (info.value.status, info.value.explanation) == (404, "No such container: web")
    with pytest.raises(EngineAPIError) as info:
        engine.get("/networks/x")
    assert (info.value.status, info.value.explanation) == (500, "plain text failure")


def test_missing_socket_is_a_connect_error(tmp_path: Any) -> None:
    client = EngineHTTP(str(tmp_path / "nothing.sock"), timeout=1)
    with pytest.raises(EngineConnectError) as info:
        client.get("/containers/json")
    assert isinstance(info.value.cause, FileNotFoundError)
    failure = _failure(info.value, "list containers")
    assert isinstance(failure, Unavailable)
    assert "cannot reach the Docker daemon at unix:///fake.sock" in failure.message


def test_a_socket_nobody_listens_on_is_unavailable(tmp_path: Any) -> None:
    path = str(tmp_path / "dead.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)  # bound, never listening: connect is refused
        client = EngineHTTP(path, timeout=1)
        with pytest.raises(EngineConnectError) as info:
            client.get("/containers/json")
    assert isinstance(info.value.cause, ConnectionRefusedError)
    assert isinstance(_failure(info.value), Unavailable)


def test_a_daemon_that_does_not_answer_is_transient(fake: FakeDaemon) -> None:
    client = EngineHTTP(fake.path, timeout=0.3)
    try:
        client.get("/version", versioned=False)
        fake.stall = threading.Event()
        with pytest.raises(EngineTransportError) as info:
            client.get("/containers/json")
    finally:
        client.close()
    failure = _failure(info.value)
    assert type(failure) is TransientError
    assert "did not answer in time" in failure.message


def test_a_body_that_is_not_json_is_permanent(fake: FakeDaemon, engine: EngineHTTP) -> None:
    fake.routes["/v1.41/volumes/x"] = (200, b"<html>not docker</html>")
    with pytest.raises(EngineTransportError) as info:
        engine.get("/volumes/x")
    assert type(_failure(info.value)) is PermanentError


# ---------------------------------------------------------------------------------------------
# Classification: the same rules as for the SDK's errors


@pytest.mark.parametrize(
    ("status", "message", "expected", "reworded"),
    [
        (404, "No such container: web", NotFound, None),
        (
            500,
            "driver failed programming external connectivity on endpoint web (abc): "
            "Bind for 127.0.0.1:8080 failed: port is already allocated",
            PermanentError,
            "port 8080 is already allocated on 127.0.0.1",
        ),
        (500, "error during connect: too many open files", TransientError, None),
        (409, "removal of container web is already in progress", TransientError, None),
        (409, "Conflict. The container name is in use", PermanentError, None),
        (400, "network x has active endpoints", PermanentError, "containers are still attached"),
        (500, "manifest unknown", NotFound, None),
    ],
)
def test_api_errors_are_classified_like_the_sdks(
    status: int, message: str, expected: type[Exception], reworded: str | None
) -> None:
    failure = _failure(EngineAPIError(status, message), "start container web")
    assert type(failure) is expected or (
        expected is PermanentError and isinstance(failure, PermanentError)
    )
    assert not (expected is PermanentError and failure.retryable)
    assert str(failure).startswith("docker: cannot start container web: ")
    if reworded is not None:
        assert reworded in str(failure)


def test_sdk_and_engine_errors_classify_identically() -> None:
    import requests
    from docker import errors as docker_errors

    for status, message in [
        (404, "No such container: web"),
        (500, "Bind for 0.0.0.0:80 failed: port is already allocated"),
        (500, "something odd"),
        (409, "is restarting"),
        (400, "volume is in use - [abc]"),
    ]:
        response = requests.Response()
        response.status_code = status
        sdk = docker_errors.APIError("x", response=response, explanation=message)
        a, b = _failure(sdk), _failure(EngineAPIError(status, message))
        assert (type(a), a.message) == (type(b), b.message)


# ---------------------------------------------------------------------------------------------
# The driver on the fast path


def test_driver_reads_through_the_socket(fake: FakeDaemon) -> None:
    web = {
        "Id": "c1",
        "Name": "/shop-web-1",
        "Image": "sha256:1",
        "State": {"Status": "running", "Health": {"Status": "healthy"}},
        "Config": {"Image": "web:1", "Labels": {"io.pyapply.stack": "shop"}, "Env": ["B=2", "A=1"]},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}},
        "NetworkSettings": {"Networks": {"shop_front": {}}},
    }
    filters = "%7B%22label%22%3A+%5B%22io.pyapply.stack%3Dshop%22%5D%7D"
    fake.routes[f"/v1.41/containers/json?all=1&filters={filters}"] = (
        200,
        [{"Id": "c1", "Names": ["/shop-web-1"]}, {"Id": "gone", "Names": ["/shop-old-1"]}],
    )
    fake.routes["/v1.41/containers/c1/json"] = (200, web)
    fake.routes["/v1.41/containers/shop-web-1/json"] = (200, web)
    fake.routes["/v1.41/images/reg:5000/web:1/json"] = (200, {"Id": "sha256:1"})
    fake.routes["/v1.41/containers/oops/json"] = (500, {"message": "no space left on device"})
    rt = DockerRuntime(base_url=f"unix://{fake.path}", timeout=5)
    try:
        [state] = rt.list_containers({"io.pyapply.stack": "shop"})  # "gone": 404, skipped
        assert (state.name, state.status, state.health) == ("shop-web-1", "running", "healthy")
        assert state.env == ("A=1", "B=2") and state.networks == ("shop_front",)
        assert rt.get_container("shop-web-1") == state
        assert rt.get_container("nothing") is None
        images = rt.images(["reg:5000/web:1", "missing:1"])
        assert images["missing:1"] is None
        assert images["reg:5000/web:1"] is not None
        with pytest.raises(TransientError, match="cannot inspect container oops: no space"):
            rt.get_container("oops")
    finally:
        rt.close()
    assert {n for n, _ in fake.requests} == {1}  # everything over one kept-alive connection


def test_driver_with_a_missing_socket_is_unavailable(tmp_path: Any) -> None:
    rt = DockerRuntime(base_url=f"unix://{tmp_path}/no.sock", timeout=1)
    with pytest.raises(Unavailable, match="cannot reach the Docker daemon"):
        rt.list_containers({})
    rt.close()


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("unix://var/run/docker.sock", "/var/run/docker.sock"),
        ("http+unix:///run/d.sock", "/run/d.sock"),
        ("unix://", "/var/run/docker.sock"),
        ("tcp://127.0.0.1:2375", None),
        ("ssh://me@host", None),
    ],
)
def test_which_addresses_take_the_fast_path(address: str, path: str | None) -> None:
    assert unix_socket_path(address) == path


def test_importing_the_driver_does_not_import_the_sdk() -> None:
    code = (
        "import sys, pyapply.reconciler.cli.main, pyapply.runtime.docker.driver\n"
        "print(sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_network_held_by_a_stale_endpoint_is_freed_and_removed(fake: FakeDaemon) -> None:
    """dockerd 20.10 can keep the endpoint of a container that is gone and then refuse to
    remove the network for ever ("has active endpoints"). The driver force-disconnects such
    stale endpoints and removes the network; an endpoint of a container that exists is left."""
    net = {
        "Id": "n1",
        "Name": "shop_back",
        "Containers": {
            "ep-0123abcd": {"Name": "shop-db-1", "EndpointID": "0123abcd"},  # stale
            "c2": {"Name": "other-app-1"},  # a live container of someone else
        },
    }
    fake.routes["/v1.41/networks/shop_back"] = (200, net)
    fake.routes["/v1.41/containers/c2/json"] = (200, {"Id": "c2", "Name": "/other-app-1"})
    busy = (
        403,
        {"message": "error while removing network: network shop_back id n1 has active endpoints"},
    )
    fake.answers["DELETE /v1.41/networks/shop_back"] = [busy, (204, None)]
    fake.answers["POST /v1.41/networks/shop_back/disconnect"] = [(200, {})]
    rt = DockerRuntime(base_url=f"unix://{fake.path}", timeout=5)
    try:
        rt.remove_network("shop_back")
    finally:
        rt.close()
    disconnects = [json.loads(b) for k, b in fake.bodies if k.endswith("/disconnect")]
    assert disconnects == [{"Container": "shop-db-1", "Force": True}]
    deletes = [k for k, _ in fake.bodies if k.startswith("DELETE")]
    assert deletes == ["DELETE /v1.41/networks/shop_back"] * 2


def test_a_network_with_live_endpoints_only_is_still_refused(fake: FakeDaemon) -> None:
    net = {"Id": "n1", "Name": "shop_back", "Containers": {"c2": {"Name": "other-app-1"}}}
    fake.routes["/v1.41/networks/shop_back"] = (200, net)
    fake.routes["/v1.41/containers/c2/json"] = (200, {"Id": "c2", "Name": "/other-app-1"})
    busy = (
        403,
        {"message": "error while removing network: network shop_back id n1 has active endpoints"},
    )
    fake.answers["DELETE /v1.41/networks/shop_back"] = [busy]
    rt = DockerRuntime(base_url=f"unix://{fake.path}", timeout=5)
    try:
        with pytest.raises(Conflict, match="still attached"):
            rt.remove_network("shop_back")
    finally:
        rt.close()
    assert not [k for k, _ in fake.bodies if k.endswith("/disconnect")]


def test_a_network_whose_endpoints_dockerd_cannot_list_says_to_restart_dockerd(
    fake: FakeDaemon,
) -> None:
    fake.routes["/v1.41/networks/shop_back"] = (200, {"Id": "n1", "Name": "shop_back"})
    busy = (
        403,
        {"message": "error while removing network: network shop_back id n1 has active endpoints"},
    )
    fake.answers["DELETE /v1.41/networks/shop_back"] = [busy]
    rt = DockerRuntime(base_url=f"unix://{fake.path}", timeout=5)
    try:
        with pytest.raises(Conflict, match=r"lists none .* restart dockerd"):
            rt.remove_network("shop_back")
    finally:
        rt.close()
    assert not [k for k, _ in fake.bodies if k.endswith("/disconnect")]
