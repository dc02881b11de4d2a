"""Unit tests of the native push (runtime/native/push.py and the upload side of
registry.py): the pure parts (layer media types, the manifest made for an image, a stored
manifest recognised, the mount source, reproducible gzip), and the protocol against a small
fake registry on loopback written here, which can refuse mounts, ask for a minimum chunk
length, cut a chunk in the middle, and demand basic or bearer-token auth. It logs every
request, so the order (blobs before the manifest) and what was not sent are checked."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import re
import secrets
import socket
import threading
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from pyapply.runtime.base import NotFound, PermanentError, PushEvent, TransientError
from pyapply.runtime.native.images import ImageConfig, ImageRecord, ImageStore
from pyapply.runtime.native.push import (
    MT_OCI_CONFIG,
    MT_OCI_LAYER_GZIP,
    MT_OCI_LAYER_ZSTD,
    BlobToPush,
    GzipReader,
    _deflate_block,
    incompressible,
    layer_media_type,
    make_manifest,
    mount_source,
    push,
    push_target,
    stored_manifest,
)
from pyapply.runtime.native.reference import MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, parse_reference
from pyapply.runtime.native.registry import RegistryClient, _range_end


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# pure parts


def test_layer_media_type_by_magic() -> None:
    assert layer_media_type(gzip.compress(b"x")[:8]) == MT_OCI_LAYER_GZIP
    assert layer_media_type(b"\x28\xb5\x2f\xfd\x00\x00") == MT_OCI_LAYER_ZSTD
    assert layer_media_type(b"etc/\x00\x00\x00\x00") is None  # a plain tar: compress first
    assert layer_media_type(b"BZh91AY") is None  # bzip2 has no registry media type


def test_made_manifest_is_deterministic_and_names_every_blob() -> None:
    config = BlobToPush("config", sha(b"c"), 1, MT_OCI_CONFIG)
    layers = [BlobToPush("layer", sha(b"l1"), 2, MT_OCI_LAYER_GZIP)]
    m1, m2 = make_manifest(config, layers), make_manifest(config, layers)
    assert m1 == m2 and m1.digest == sha(m1.body)
    doc = json.loads(m1.body)
    assert doc["mediaType"] == m1.media_type == MT_OCI_MANIFEST
    assert doc["config"] == {"mediaType": MT_OCI_CONFIG, "digest": sha(b"c"), "size": 1}
    assert doc["layers"] == [{"mediaType": MT_OCI_LAYER_GZIP, "digest": sha(b"l1"), "size": 2}]
    assert m1.blobs == (config, *layers)


def test_stored_manifest_recognised_only_for_the_image_and_its_layers() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_DOCKER_MANIFEST,
        "config": {"mediaType": "application/x-config", "digest": sha(b"c"), "size": 5},
        "layers": [{"mediaType": "application/x-layer", "digest": sha(b"l"), "size": 7}],
    }
    body = json.dumps(doc).encode()
    found = stored_manifest(body, sha(b"c"), (sha(b"l"),))
    assert found is not None
    media_type, blobs = found
    assert media_type == MT_DOCKER_MANIFEST
    assert blobs == (
        BlobToPush("config", sha(b"c"), 5, "application/x-config"),
        BlobToPush("layer", sha(b"l"), 7, "application/x-layer"),
    )
    assert stored_manifest(body, sha(b"other"), (sha(b"l"),)) is None
    assert stored_manifest(body, sha(b"c"), (sha(b"l2"),)) is None
    index = json.dumps({"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
    assert stored_manifest(index.encode(), sha(b"c"), ()) is None
    assert stored_manifest(b"not json", sha(b"c"), ()) is None


def test_mount_source_is_another_repository_of_the_same_registry() -> None:
    target = parse_reference("reg.local:5000/team/app:2")
    d = "@sha256:" + "a" * 64
    assert mount_source(target, []) is None
    assert mount_source(target, ["reg.local:5000/team/app" + d]) is None  # the same repository
    assert mount_source(target, ["other.local:5000/team/base" + d]) is None  # another registry
    assert mount_source(target, ["reg.local:5000/team/base" + d]) == "team/base"


def test_push_target_needs_a_tag() -> None:
    assert str(push_target("reg.local:5000/app")) == "reg.local:5000/app:latest"
    with pytest.raises(PermanentError, match="give a tag"):
        push_target("reg.local:5000/app@sha256:" + "b" * 64)


def test_gzip_reader_is_reproducible_whatever_the_threads(tmp_path: Path) -> None:
    src = tmp_path / "layer.tar"
    # several blocks: random (incompressible), then text repeating across block cuts
    src.write_bytes(secrets.token_bytes(1_500_000) + b"a layer of text. " * 200_000)

    def compress(path: Path, workers: int) -> bytes:
        reader = GzipReader(str(path), workers=workers)
        out = bytearray()
        while chunk := reader.read(1 << 16):
            out += chunk
        return bytes(out)

    first = compress(src, 1)
    assert compress(src, 1) == first == compress(src, 3)
    assert first[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0
    assert gzip.decompress(first) == src.read_bytes()
    assert len(first) < 1_600_000  # the text compressed, across the block cuts too
    for size in (0, 1, 1 << 20):  # empty, tiny, exactly one block
        small = tmp_path / f"small{size}"
        small.write_bytes(b"x" * size)
        assert gzip.decompress(compress(small, 2)) == small.read_bytes()


def test_incompressible_blocks_are_stored() -> None:
    assert incompressible(secrets.token_bytes(1 << 20))
    assert not incompressible(b"some text, some text " * 50_000)
    assert not incompressible(secrets.token_bytes(1 << 19) + b"\0" * (1 << 19))  # half: deflate
    assert not incompressible(secrets.token_bytes(1000))  # too small to judge: deflate
    random_block = secrets.token_bytes(1 << 20)
    stored = _deflate_block(random_block, b"", True, 1)
    assert zlib.decompress(stored, -zlib.MAX_WBITS) == random_block
    assert len(stored) < len(random_block) + 200  # stored blocks: 5 bytes per 64 KiB


def test_range_end() -> None:
    assert _range_end("0-99", 5) == 100
    assert _range_end(None, 5) == 5
    assert _range_end("bogus", 5) == 5


# ---------------------------------------------------------------------------------------------
# a fake registry


class Fake(msgspec.Struct):
    """What the fake registry holds and how it behaves."""

    blobs: dict[str, dict[str, bytes]] = msgspec.field(
        default_factory=dict
    )  # repo -> digest -> data
    manifests: dict[str, dict[str, bytes]] = msgspec.field(
        default_factory=dict
    )  # repo -> tag -> body
    uploads: dict[str, bytearray] = msgspec.field(default_factory=dict)
    log: list[tuple[str, str]] = msgspec.field(default_factory=list)
    mount: bool = True
    min_chunk: int = 0
    cut_patch: int = 0  # PATCH requests to cut after half their body
    fail_upload: bool = False  # a blob PUT answers 500
    fail_patch: bool = False  # every PATCH answers 500
    refuse_stream: bool = False  # a streamed PATCH (no Content-Range) answers 400
    cut_stream_at: int = 0  # a streamed PATCH keeps this many bytes, then the connection drops
    streamed: int = 0  # streamed PATCH requests taken
    basic: tuple[str, str] | None = None
    bearer: bool = False
    token_requests: list[dict[str, list[str]]] = msgspec.field(default_factory=list)
    short_chunks: set[str] = msgspec.field(default_factory=set)  # uploads that had a short chunk
    unauthorized: int = 0  # requests refused for want of credentials
    port: int = 0
    lock: threading.Lock = msgspec.field(default_factory=threading.Lock)


def _handler(fake: Fake) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def send(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def authorized(self, repo: str) -> bool:
            auth = self.headers.get("Authorization") or ""
            if fake.basic is not None:
                want = "Basic " + base64.b64encode(":".join(fake.basic).encode()).decode()
                if auth == want:
                    return True
                fake.unauthorized += 1
                self.body()
                self.send(401, WWW_Authenticate='Basic realm="fake"')
                return False
            if fake.bearer:
                if auth == f"Bearer tok:repository:{repo}:pull,push":
                    return True
                self.body()
                realm = f"http://127.0.0.1:{fake.port}/token"
                challenge = (
                    f'Bearer realm="{realm}",service="fake",scope="repository:{repo}:pull,push"'
                )
                self.send(401, WWW_Authenticate=challenge)
                return False
            return True

        def route(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            with fake.lock:
                fake.log.append((self.command, url.path + (f"?{url.query}" if url.query else "")))
            if url.path == "/token":
                with fake.lock:
                    fake.token_requests.append(query)
                want = "Basic " + base64.b64encode(b"tok-user:tok-pw").decode()
                if self.headers.get("Authorization") != want:
                    self.send(401)
                    return
                scope = " ".join(query.get("scope", []))
                self.send(200, json.dumps({"token": f"tok:{scope}"}).encode())
                return
            if url.path == "/v2/":
                self.send(200, b"{}")
                return
            m = re.match(r"^/v2/(.+?)/(blobs|manifests)/(.*)$", url.path)
            if m is None:
                self.send(404)
                return
            repo, kind, rest = m.groups()
            if not self.authorized(repo):
                return
            blobs = fake.blobs.setdefault(repo, {})
            if kind == "manifests" and self.command == "PUT":
                body = self.body()
                doc = json.loads(body)
                for d in [doc["config"], *doc["layers"]]:
                    if d["digest"] not in blobs:
                        err = {"errors": [{"code": "MANIFEST_BLOB_UNKNOWN", "message": "x"}]}
                        self.send(400, json.dumps(err).encode())
                        return
                fake.manifests.setdefault(repo, {})[rest] = body
                self.send(201, Docker_Content_Digest=sha(body))
                return
            if kind == "blobs" and self.command == "HEAD":
                self.send(200 if rest in blobs else 404)
                return
            if kind == "blobs" and rest == "uploads/" and self.command == "POST":
                self.body()
                mount, source = query.get("mount", [""])[0], query.get("from", [""])[0]
                if mount and fake.mount and mount in fake.blobs.get(source, {}):
                    blobs[mount] = fake.blobs[source][mount]
                    self.send(201, Location=f"/v2/{repo}/blobs/{mount}")
                    return
                uid = secrets.token_hex(6)
                fake.uploads[uid] = bytearray()
                headers = {"Location": f"/v2/{repo}/blobs/uploads/{uid}?_state=s"}
                if fake.min_chunk:
                    headers["OCI-Chunk-Min-Length"] = str(fake.min_chunk)
                self.send(202, **headers)
                return
            if kind == "blobs" and rest.startswith("uploads/"):
                uid = rest.split("/")[1]
                data = fake.uploads.get(uid)
                if data is None:
                    self.send(404)
                    return
                loc = f"/v2/{repo}/blobs/uploads/{uid}?_state=s{len(data)}"
                if self.command == "GET":
                    self.send(204, Location=loc, Range=f"0-{len(data) - 1}")
                    return
                if self.command == "PATCH" and fake.fail_patch:
                    if "Content-Range" in self.headers:
                        self.body()
                    else:
                        self.chunked(0)
                    self.send(500)
                    return
                if self.command == "PATCH" and "Content-Range" not in self.headers:
                    self.streamed_patch(uid, data, repo)
                    return
                if self.command == "PATCH":
                    start = int(self.headers["Content-Range"].split("-")[0])
                    n = int(self.headers["Content-Length"])
                    # only the last chunk may be shorter than the minimum
                    short = uid in fake.short_chunks
                    if start != len(data) or short:
                        self.body()
                        self.send(416)
                        return
                    if n < fake.min_chunk:
                        fake.short_chunks.add(uid)
                    if fake.cut_patch:
                        fake.cut_patch -= 1
                        data += self.rfile.read(n // 2)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    data += self.rfile.read(n)
                    loc = f"/v2/{repo}/blobs/uploads/{uid}?_state=s{len(data)}"
                    self.send(202, Location=loc, Range=f"0-{len(data) - 1}")
                    return
                if self.command == "PUT":
                    data += self.body()
                    digest = query["digest"][0]
                    if fake.fail_upload:
                        self.send(500)
                        return
                    if sha(bytes(data)) != digest:
                        self.send(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
                        return
                    blobs[digest] = bytes(data)
                    self.send(201, Docker_Content_Digest=digest)
                    return
            self.send(405)

        def chunked(self, limit: int) -> tuple[bytes, bool]:
            """A chunked-transfer body, up to `limit` bytes (0: all); whether it ended."""
            got = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(got), True
                got += self.rfile.read(size)
                self.rfile.readline()
                if limit and len(got) >= limit:
                    return bytes(got[:limit]), False

        def streamed_patch(self, uid: str, data: bytearray, repo: str) -> None:
            """A PATCH of unknown length (Transfer-Encoding: chunked, no Content-Range)."""
            assert self.headers.get("Transfer-Encoding") == "chunked"
            assert "Content-Length" not in self.headers
            if fake.refuse_stream:
                self.chunked(0)
                self.send(400, b'{"errors":[{"code":"SIZE_INVALID","message":"no length"}]}')
                return
            fake.streamed += 1
            body, ended = self.chunked(fake.cut_stream_at)
            data += body
            if not ended:
                fake.cut_stream_at = 0
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            loc = f"/v2/{repo}/blobs/uploads/{uid}?_state=s{len(data)}"
            self.send(202, Location=loc, Range=f"0-{max(len(data) - 1, 0)}")

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = route

    return Handler


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def registry_of(fake: Fake) -> str:
    return f"127.0.0.1:{fake.port}"


def make_image(
    tmp_path: Path, ref: str, layers: list[bytes], repo_digests: tuple[str, ...] = ()
) -> tuple[ImageStore, ImageRecord]:
    """A store holding one image whose layer blobs are `layers` as given (their diff_ids are
    made up: nothing is unpacked here)."""
    store = ImageStore(str(tmp_path / "root"), client=RegistryClient(docker_config=False))
    layer_digests = [store.blobs.put_bytes(data) for data in layers]
    diff_ids = [sha(b"diff" + d.encode()) for d in layer_digests]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_digest = store.blobs.put_bytes(config)
    record = ImageRecord(
        id=config_digest,
        refs=(),
        repo_digests=(),
        config=ImageConfig(),
        diff_ids=tuple(diff_ids),
        blobs=(config_digest, *layer_digests),
        layer_blobs=tuple(layer_digests),
    )
    with store._edit() as index:
        data = record.to_json()
        data["repo_digests"] = list(repo_digests)
        index.images[record.id] = data
        index.refs[str(parse_reference(ref))] = record.id
    rec = store.resolve(ref)
    assert rec is not None
    return store, rec


def requests_of(fake: Fake, method: str, part: str = "") -> list[str]:
    return [p for m, p in fake.log if m == method and part in p]


# ---------------------------------------------------------------------------------------------
# the protocol


def test_push_uploads_blobs_then_the_manifest_and_skips_what_exists(
    tmp_path: Path, fake: Fake
) -> None:
    layer = gzip.compress(b"layer one", mtime=0)
    ref = f"{registry_of(fake)}/team/app:1"
    store, rec = make_image(tmp_path, ref, [layer])
    events: list[PushEvent] = []
    result = push(store, ref, events.append)

    body = fake.manifests["team/app"]["1"]
    assert result.digest == sha(body) and result.ref == ref
    doc = json.loads(body)
    assert doc["config"]["digest"] == rec.id
    assert [d["digest"] for d in doc["layers"]] == [sha(layer)]
    assert doc["layers"][0]["mediaType"] == MT_OCI_LAYER_GZIP
    assert fake.blobs["team/app"][sha(layer)] == layer
    # the manifest went last, after every blob was in
    methods = [(m, p) for m, p in fake.log if m in ("PUT", "PATCH")]
    assert methods[-1] == ("PUT", "/v2/team/app/manifests/1")
    assert len(requests_of(fake, "HEAD", "/blobs/")) == 2  # an existence check each
    assert {(e.kind, e.state) for e in events} == {
        ("config", "uploading"),
        ("config", "uploaded"),
        ("layer", "uploading"),
        ("layer", "uploaded"),
        ("manifest", "pushed"),
    }
    # the record now names it by digest; a second push uploads nothing
    after = store.resolve(ref)
    assert (
        after is not None and f"{registry_of(fake)}/team/app@{result.digest}" in after.repo_digests
    )
    fake.log.clear()
    events.clear()
    assert push(store, ref, events.append) == result
    assert requests_of(fake, "POST") == [] and requests_of(fake, "PATCH") == []
    assert {e.state for e in events if e.kind != "manifest"} == {"exists"}


def test_uncompressed_layers_pushed_as_reproducible_gzip(tmp_path: Path, fake: Fake) -> None:
    raw = b"plain tar bytes " * 5000
    ref = f"{registry_of(fake)}/team/raw:1"
    store, rec = make_image(tmp_path, ref, [raw])
    first = push(store, ref)
    [layer] = json.loads(fake.manifests["team/raw"]["1"])["layers"]
    assert layer["mediaType"] == MT_OCI_LAYER_GZIP
    assert gzip.decompress(fake.blobs["team/raw"][layer["digest"]]) == raw
    after = store.resolve(ref)
    assert after is not None
    assert after.layer_blobs == (layer["digest"],) and after.diff_ids == rec.diff_ids
    assert not store.blobs.has(rec.layer_blobs[0])  # the uncompressed blob is gone
    # the same image made again elsewhere pushes to the same digest
    store2, _ = make_image(tmp_path / "again", ref.replace("raw", "raw2"), [raw])
    assert push(store2, ref.replace("raw", "raw2")).digest == first.digest


def test_cross_repository_mount_and_a_registry_that_cannot_mount(
    tmp_path: Path, fake: Fake
) -> None:
    layer = gzip.compress(b"shared layer", mtime=0)
    reg = registry_of(fake)
    store, _ = make_image(tmp_path, f"{reg}/team/base:1", [layer])
    push(store, f"{reg}/team/base:1")
    with store._edit() as index:
        index.refs[f"{reg}/team/copy:1"] = index.refs[f"{reg}/team/base:1"]
    fake.log.clear()
    events: list[PushEvent] = []
    push(store, f"{reg}/team/copy:1", events.append)
    mounts = requests_of(fake, "POST", "mount=")
    assert len(mounts) == 2 and all("from=team%2Fbase" in p for p in mounts)
    assert requests_of(fake, "PATCH") == [] and requests_of(fake, "PUT", "/uploads/") == []
    assert {e.state for e in events if e.kind != "manifest"} == {"mounted"}

    # a registry that answers a mount with an upload session: the session is used
    fake.mount = False
    with store._edit() as index:
        index.refs[f"{reg}/team/third:1"] = index.refs[f"{reg}/team/base:1"]
    fake.log.clear()
    push(store, f"{reg}/team/third:1")
    assert len(requests_of(fake, "POST")) == 2  # the mount requests only, no second POST
    assert len(requests_of(fake, "PUT", "/uploads/")) == 2
    assert fake.blobs["team/third"][sha(layer)] == layer


def test_chunked_upload_honours_the_minimum_and_resumes_a_cut_chunk(
    tmp_path: Path, fake: Fake
) -> None:
    layer = gzip.compress(secrets.token_bytes(300_000), mtime=0)
    ref = f"{registry_of(fake)}/team/big:1"
    store, _ = make_image(tmp_path, ref, [layer])
    fake.min_chunk = 100_000
    fake.cut_patch = 1
    store.client.timeout = 10
    push(store, ref, chunk_size=40_000)
    assert fake.blobs["team/big"][sha(layer)] == layer
    patches = requests_of(fake, "PATCH")
    # chunks of the minimum (100 kB, not 40 kB); the first cut after 50 kB and resumed there
    assert len(patches) == 1 + -(-(len(layer) - 50_000) // 100_000)
    assert len(requests_of(fake, "GET", "/uploads/")) == 1  # where the upload stood
    assert "team/big" in fake.manifests


@pytest.mark.parametrize(
    "raw",
    [secrets.token_bytes(300_000), b"compressible layer text " * 40_000],
    ids=["incompressible", "compressible"],
)
def test_uncompressed_layer_gzipped_while_streamed(tmp_path: Path, fake: Fake, raw: bytes) -> None:
    ref = f"{registry_of(fake)}/team/stream:1"
    store, rec = make_image(tmp_path, ref, [raw])
    events: list[PushEvent] = []
    push(store, ref, events.append)
    [layer] = json.loads(fake.manifests["team/stream"]["1"])["layers"]
    sent = fake.blobs["team/stream"][layer["digest"]]
    assert gzip.decompress(sent) == raw and layer["size"] == len(sent)
    # the store keeps the very bytes the registry got, under the digest the manifest names
    after = store.resolve(ref)
    assert after is not None and after.layer_blobs == (layer["digest"],)
    assert store.blobs.read(layer["digest"]) == sent
    assert not store.blobs.has(rec.layer_blobs[0])
    # a session opened at once (no digest to ask about: no HEAD for the layer), one
    # streamed PATCH, the digest named by the closing PUT
    assert len(requests_of(fake, "HEAD", "/blobs/")) == 1  # the config's
    assert len(requests_of(fake, "POST")) == 2 and fake.streamed == 1
    assert len(requests_of(fake, "PATCH")) == 1
    quoted = urllib.parse.urlencode({"digest": layer["digest"]})
    assert len([p for p in requests_of(fake, "PUT", "/uploads/") if quoted in p]) == 1
    layer_events = [(e.state, e.digest) for e in events if e.kind == "layer"]
    assert layer_events == [("uploading", rec.layer_blobs[0]), ("uploaded", layer["digest"])]
    # reproducible: the same layer streamed again gives the same blob
    store2, _ = make_image(tmp_path / "again", ref.replace("stream", "stream2"), [raw])
    push(store2, ref.replace("stream", "stream2"))
    assert json.loads(fake.manifests["team/stream2"]["1"])["layers"] == [layer]


def test_a_cut_stream_is_resumed_from_the_stored_gzip(tmp_path: Path, fake: Fake) -> None:
    raw = secrets.token_bytes(300_000)
    ref = f"{registry_of(fake)}/team/cut:1"
    store, _ = make_image(tmp_path, ref, [raw])
    fake.cut_stream_at = 50_000
    fake.min_chunk = 100_000
    store.client.timeout = 10
    push(store, ref, chunk_size=40_000)
    [layer] = json.loads(fake.manifests["team/cut"]["1"])["layers"]
    sent = fake.blobs["team/cut"][layer["digest"]]
    assert gzip.decompress(sent) == raw
    # the stream kept 50 kB; where the upload stood was asked, and the rest went from the
    # stored gzip in chunks of the registry's minimum (the fake refuses a short one before
    # the last)
    assert len(requests_of(fake, "GET", "/uploads/")) == 1
    assert len(requests_of(fake, "PATCH")) == 1 + -(-(len(sent) - 50_000) // 100_000)
    assert "team/cut" in fake.manifests


def test_a_registry_that_refuses_a_stream_gets_the_stored_gzip(tmp_path: Path, fake: Fake) -> None:
    raw = secrets.token_bytes(200_000)
    ref = f"{registry_of(fake)}/team/nostream:1"
    store, _ = make_image(tmp_path, ref, [raw])
    fake.refuse_stream = True
    push(store, ref)
    [layer] = json.loads(fake.manifests["team/nostream"]["1"])["layers"]
    assert gzip.decompress(fake.blobs["team/nostream"][layer["digest"]]) == raw
    # refused, then the finished gzip as a blob of known digest: HEAD, a new session, PUT
    assert len(requests_of(fake, "HEAD", "/blobs/" + layer["digest"])) == 1
    assert len(requests_of(fake, "POST")) == 3  # the config's, the refused one's, the new
    assert [p for p in requests_of(fake, "PUT", "/uploads/") if "digest=" in p]


def test_a_layer_gzipped_before_is_asked_about_and_mounted_not_streamed_again(
    tmp_path: Path, fake: Fake
) -> None:
    raw = b"layer imported twice " * 5000
    reg = registry_of(fake)
    store, rec = make_image(tmp_path, f"{reg}/team/one:1", [raw])
    push(store, f"{reg}/team/one:1")
    [layer] = json.loads(fake.manifests["team/one"]["1"])["layers"]
    # imported again under another name: the record names the uncompressed blob anew
    store.blobs.put_bytes(raw)
    with store._edit() as index:
        data = index.images[rec.id]
        data["layer_blobs"] = list(rec.layer_blobs)
        data["blobs"] = [rec.id, *rec.layer_blobs]
        index.refs[f"{reg}/team/two:1"] = rec.id
    fake.log.clear()
    events: list[PushEvent] = []
    push(store, f"{reg}/team/two:1", events.append)
    # the gzip the first push made is still in the store: that blob, by its digest, mounted
    assert json.loads(fake.manifests["team/two"]["1"])["layers"] == [layer]
    assert {e.state for e in events if e.kind != "manifest"} == {"mounted"}
    assert requests_of(fake, "PATCH") == [] and requests_of(fake, "PUT", "/uploads/") == []
    after = store.resolve(f"{reg}/team/two:1")
    assert after is not None and after.layer_blobs == (layer["digest"],)
    assert not store.blobs.has(rec.layer_blobs[0])


def ours_alive() -> set[threading.Thread]:
    """The live threads but the fake registry's: its request threads may still be closing a
    connection the client has already let go."""
    return {t for t in threading.enumerate() if "process_request_thread" not in t.name}


def test_a_failing_upload_is_given_up_and_changes_nothing(tmp_path: Path, fake: Fake) -> None:
    raw = secrets.token_bytes(3_000_000)
    ref = f"{registry_of(fake)}/team/cut:1"
    store, rec = make_image(tmp_path, ref, [raw])
    fake.fail_patch = True
    threads = ours_alive()
    with pytest.raises(TransientError, match="HTTP 500"):
        push(store, ref, chunk_size=100_000)
    assert "team/cut" not in fake.manifests
    # a chunk refused is resumed a bounded number of times, then the push gives up
    assert 1 < len(requests_of(fake, "PATCH")) <= 4
    # the record is as it was, its uncompressed blob still there, no partial file left
    after = store.resolve(ref)
    assert after is not None and after.layer_blobs == rec.layer_blobs
    assert store.blobs.has(rec.layer_blobs[0])
    assert list(Path(store.blobs.tmp).iterdir()) == []
    assert ours_alive() == threads  # the compressing threads have ended


def test_a_failed_blob_leaves_no_manifest(tmp_path: Path, fake: Fake) -> None:
    ref = f"{registry_of(fake)}/team/half:1"
    store, _ = make_image(tmp_path, ref, [gzip.compress(b"a"), gzip.compress(b"b")])
    fake.fail_upload = True
    with pytest.raises(TransientError, match=r"cannot push .*team/half:1.*HTTP 500"):
        push(store, ref)
    assert "team/half" not in fake.manifests
    assert requests_of(fake, "PUT", "/manifests/") == []


def test_basic_auth_from_docker_config(
    tmp_path: Path, fake: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry_of(fake)
    fake.basic = ("bob", "pw-" + secrets.token_hex(3))
    cfg = tmp_path / "dockercfg"
    cfg.mkdir()
    auth = base64.b64encode(":".join(fake.basic).encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {reg: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    store, _ = make_image(tmp_path, f"{reg}/team/auth:1", [gzip.compress(b"x")])
    store.client = RegistryClient()  # reads the docker config, as the pull side does
    push(store, f"{reg}/team/auth:1")
    assert "team/auth" in fake.manifests
    # refused once per parallel blob at most, then the credentials go with every request
    assert fake.unauthorized <= 2

    store.client = RegistryClient(docker_config=False)  # no credentials: a clear refusal
    with pytest.raises(PermanentError, match="no credentials are configured"):
        push(store, f"{reg}/team/auth:1")


def test_bearer_token_with_push_scope(tmp_path: Path, fake: Fake) -> None:
    reg = registry_of(fake)
    fake.bearer = True
    store, _ = make_image(tmp_path, f"{reg}/team/tok:1", [gzip.compress(b"y")])
    store.client = RegistryClient(
        credentials={f"127.0.0.1:{fake.port}": ("tok-user", "tok-pw")}, docker_config=False
    )
    push(store, f"{reg}/team/tok:1")
    assert "team/tok" in fake.manifests
    assert fake.token_requests[0]["scope"] == ["repository:team/tok:pull,push"]
    assert fake.token_requests[0]["service"] == ["fake"]
    assert len(fake.token_requests) == 1  # one token for the whole push


def test_https_unless_loopback_or_configured_insecure(tmp_path: Path, fake: Fake) -> None:
    ref = f"{registry_of(fake)}/team/tls:1"
    store, _ = make_image(tmp_path, ref, [gzip.compress(b"z")])
    store.client = RegistryClient(docker_config=False, insecure_loopback=False)
    with pytest.raises(PermanentError, match="TLS"):
        push(store, ref)
    assert fake.manifests == {}
    store.client = RegistryClient(
        docker_config=False, insecure_loopback=False, insecure=[registry_of(fake)]
    )
    push(store, ref)
    assert "team/tls" in fake.manifests


def test_unknown_image_and_unreachable_registry(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    ref = f"127.0.0.1:{port}/team/gone:1"
    store, _ = make_image(tmp_path, ref, [gzip.compress(b"q")])
    with pytest.raises(TransientError, match=f"cannot push {re.escape(ref)}: .*unreachable"):
        push(store, ref)
    with pytest.raises(NotFound, match="no such image"):
        push(store, f"127.0.0.1:{port}/team/other:1")
