"""Pushing an image of the native store to a registry (the OCI distribution protocol).

What is pushed is one image manifest: the one the image was pulled with when the store still
holds it and all its blobs (so a pulled image keeps its digest), else one made here, in the
OCI format, from the image's config and layer blobs. Layers the store keeps uncompressed (a
`docker save` import, a build) are sent as a reproducible gzip (no name, no time, fixed
level): the same layer always gives the same blob, so pushing the same image twice gives
the same manifest digest. The store then keeps the gzip blob in place of the uncompressed
one (the record's `layer_blobs`; the diff_ids, hence the image id, do not change).

Each blob of known digest goes this way (spec: "pushing blobs"): a HEAD says whether the
repository has it already; if not, and the image came from (or was pushed to) another
repository of the same registry, a cross-repository mount is asked for (`POST
...?mount=&from=`); a registry that cannot mount opens an upload session instead, which is
used; else a POST opens one. The blob is sent in one PUT, or in PATCH chunks when it is
larger than the chunk size. An uncompressed layer is compressed while it is sent, not
before: its gzip's digest is not known until the last byte, so an upload session is opened
at once, fed with one streamed PATCH as the gzip comes and closed with the digest (the gzip
is written to the store on the way, and what a cut stream did not deliver is sent from
there); a cut upload is resumed in both cases. Blobs go in
parallel; the manifest goes last, and only when every blob is in the registry, so an
interrupted push never leaves a tag naming a half-pushed image.

Credentials, TLS and the insecure-registry rule are the pull side's (registry.py).
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import queue
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import msgspec

from pyapply.runtime.base import (
    NotFound,
    PermanentError,
    PushEvent,
    PushResult,
    RuntimeFailure,
)
from pyapply.runtime.native.images import ImageRecord, ImageStore
from pyapply.runtime.native.layers import CHUNK, check_digest, sha256_bytes
from pyapply.runtime.native.reference import (
    MANIFEST_TYPES,
    MT_OCI_MANIFEST,
    Reference,
    parse_reference,
)
from pyapply.runtime.native.registry import Body
from pyapply.runtime.statefs import atomic_write, private_dir

MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# A push of a new layer mostly waits on its compression (done once: the gzip blob is
# kept), so the deflate is ISA-L's (the `isal` package) at its level 2: ~3x the speed of
# zlib's level 1 at about its ratio (zlib's level 6 gives blobs ~8% smaller at ~8x the
# time). Without isal, zlib's level 1. The bytes differ between the two (each is
# reproducible on its own).
try:
    from isal import isal_zlib as _deflate_lib

    GZIP_LEVEL = 2
except ImportError:  # pragma: no cover (a platform without isal's wheels)
    _deflate_lib = zlib  # type: ignore[misc]
    GZIP_LEVEL = 1
GZIP_BLOCK = 1 << 20  # input bytes per independently deflated block (part of the format)
DEFLATE_WINDOW = 32 << 10
SAMPLES, SAMPLE = 8, 4096  # what decides that a block is stored, not deflated
CHUNK_SIZE = 64 << 20  # blobs larger than this go in PATCH chunks of this size
# How far (in pieces of layers.CHUNK bytes) the compression of a layer sent while it is
# made may run ahead of the upload.
FEED_PIECES = (8 << 20) // CHUNK

PushProgressFn = Callable[[PushEvent], None]


class BlobToPush(msgspec.Struct, frozen=True):
    kind: Literal["layer", "config"]
    digest: str
    size: int
    media_type: str


class Manifest(msgspec.Struct, frozen=True):
    """The manifest to push and the blobs it names (config first)."""

    body: bytes
    media_type: str
    digest: str
    blobs: tuple[BlobToPush, ...]


# ---------------------------------------------------------------------------------------------
# Pure parts


def layer_media_type(head: bytes) -> str | None:
    """The OCI media type of a layer blob from its first bytes; None when it must be
    compressed first (an uncompressed tar, or bzip2/xz, which registries do not name)."""
    if head.startswith(b"\x1f\x8b"):
        return MT_OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return MT_OCI_LAYER_ZSTD
    return None


def make_manifest(config: BlobToPush, layers: Iterable[BlobToPush]) -> Manifest:
    """An OCI image manifest naming `config` and `layers`, as deterministic bytes."""
    layers = tuple(layers)
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Manifest(body, MT_OCI_MANIFEST, sha256_bytes(body), (config, *layers))


def stored_manifest(
    body: bytes, image_id: str, layer_blobs: tuple[str, ...]
) -> tuple[str, tuple[BlobToPush, ...]] | None:
    """(media type, blobs) of a stored manifest document when it is the image manifest of
    image `image_id` with exactly `layer_blobs`; None otherwise (an index, another
    platform's manifest, a manifest of other blobs)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        return None
    media_type = str(doc.get("mediaType") or MT_OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        return None
    cdesc = doc["config"]
    layers = doc.get("layers")
    if cdesc.get("digest") != image_id or not isinstance(layers, list):
        return None
    if tuple(str(d.get("digest")) for d in layers if isinstance(d, dict)) != layer_blobs:
        return None
    try:
        blobs = [BlobToPush("config", image_id, int(cdesc["size"]), str(cdesc["mediaType"]))]
        blobs += [
            BlobToPush("layer", str(d["digest"]), int(d["size"]), str(d["mediaType"]))
            for d in layers
        ]
    except (KeyError, TypeError, ValueError):
        return None
    return media_type, tuple(blobs)


def mount_source(target: Reference, repo_digests: Iterable[str]) -> str | None:
    """Another repository of `target`'s registry the image is known to be in (it was pulled
    from or pushed to it, `name@digest` in the record): where a cross-repository mount can
    take its blobs from. One is asked: a registry that cannot mount opens an upload
    session instead, and that session is used. None when there is none."""
    for entry in sorted(repo_digests):
        try:
            ref = parse_reference(entry)
        except PermanentError:
            continue
        if ref.registry == target.registry and ref.repository != target.repository:
            return ref.repository
    return None


def push_target(ref: str) -> Reference:
    """The reference to push to: a tag (a digest names content, it cannot be pushed to)."""
    target = parse_reference(ref)
    if target.digest is not None:
        raise PermanentError(f"cannot push to {ref}: give a tag, not a digest")
    return target


def incompressible(data: bytes) -> bool:
    """Whether samples spread over `data` (4 KiB at 8 places) shrink by less than 3% at
    level 1: the block is stored rather than deflated."""
    if len(data) < SAMPLES * SAMPLE:
        return False
    step = (len(data) - SAMPLE) // (SAMPLES - 1)
    probe = b"".join(data[i * step : i * step + SAMPLE] for i in range(SAMPLES))
    return len(zlib.compress(probe, 1)) > 0.97 * len(probe)


class GzipReader:
    """`read(n)` of the reproducible gzip of a file: no name, mtime 0, OS unknown, a fixed
    level, so the same content always compresses to the same bytes (and digest).

    Compressed in parallel, as pigz does: the input is cut into fixed blocks, each deflated
    on its own (with the 32 KiB before it as a preset dictionary, so matches still reach
    back across the cut) and ended on a byte boundary with a sync flush, the last one with
    the final block; concatenated in order they are one deflate stream. The bytes depend on
    the block size and level only, never on the number of threads or their timing."""

    def __init__(self, path: str, level: int = GZIP_LEVEL, workers: int | None = None) -> None:
        self._src: Any = open(path, "rb")  # noqa: SIM115 (closed at end of data or close())
        self._level = level
        self._workers = workers or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._pending: collections.deque[Future[bytes]] = collections.deque()
        self._next: bytes = self._src.read(GZIP_BLOCK)
        self._tail = b""
        self._crc = 0
        self._size = 0
        self._submitted_last = False
        self._done = False
        self._buf = bytearray(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _submit(self) -> None:
        while not self._submitted_last and len(self._pending) < 2 * self._workers:
            data = self._next
            self._next = self._src.read(GZIP_BLOCK) if data else b""
            last = not self._next
            self._crc = zlib.crc32(data, self._crc)
            self._size += len(data)
            self._pending.append(
                self._pool.submit(_deflate_block, data, self._tail, last, self._level)
            )
            self._tail = data[-DEFLATE_WINDOW:]
            self._submitted_last = last

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._done:
            self._submit()
            if self._pending:
                self._buf += self._pending.popleft().result()
            if self._submitted_last and not self._pending:
                self._buf += struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
                self._done = True
                self.close()
        with memoryview(self._buf) as view:
            out = bytes(view[:n])  # one copy (a slice of the bytearray would be two)
        del self._buf[:n]
        return out

    def close(self) -> None:
        self._src.close()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _deflate_block(data: bytes, window: bytes, last: bool, level: int) -> bytes:
    """One block of the parallel gzip: raw deflate, primed with the data before it, ended on
    a byte boundary (sync flush) or, for the last block, with the final deflate block.

    A block that does not compress (already compressed files, random data: samples of it
    shrink by less than 3%) is stored, as Go's deflate skips such input: zlib would spend
    as long on it as on text, for nothing. The choice depends on the content only."""
    lib: Any = _deflate_lib
    if level and incompressible(data):
        lib, level = zlib, 0  # stored blocks
    if window:
        z = lib.compressobj(level, lib.DEFLATED, -15, zdict=window)
    else:
        z = lib.compressobj(level, lib.DEFLATED, -15)
    return bytes(z.compress(data) + z.flush(lib.Z_FINISH if last else lib.Z_SYNC_FLUSH))


# ---------------------------------------------------------------------------------------------
# The push


def push(
    store: ImageStore,
    ref: str,
    progress: PushProgressFn | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> PushResult:
    """Push the image `ref` names in `store` to `ref`'s registry and tag; returns the
    manifest's digest. NotFound when the store has no such image."""
    target = push_target(ref)
    record = store.resolve(ref)
    if record is None:
        raise NotFound(f"no such image: {ref} (pull, import or build it first)")
    try:
        return _push(store, record, target, progress, chunk_size)
    except RuntimeFailure as e:
        # the registry's words, said of this push
        raise type(e)(f"cannot push {target}: {e.message}") from e


def _push(
    store: ImageStore,
    record: ImageRecord,
    target: Reference,
    progress: PushProgressFn | None,
    chunk_size: int,
) -> PushResult:
    client = store.client
    # blobs must not be collected by a prune while they are read (as during a pull)
    with store._flock("gc.lock", fcntl.LOCK_SH):
        stored, blobs = _plan(store, record)
        source = mount_source(target, record.repo_digests)

        def send(blob: BlobToPush) -> BlobToPush:
            def report(
                blob: BlobToPush, state: Literal["exists", "mounted", "uploading", "uploaded"]
            ) -> None:
                if progress is not None:
                    progress(PushEvent(str(target), blob.kind, blob.digest, blob.size, state))

            if not blob.media_type:
                # an uncompressed layer: its gzip's digest is known only once it is made, so
                # there is nothing to ask the registry about (HEAD, mount) before; it is
                # gzipped while it is sent (one layer's compression also runs while another
                # one uploads)
                report(blob, "uploading")
                sent = _stream_layer(store, target, blob, chunk_size)
                report(sent, "uploaded")
                return sent
            if client.blob_exists(target, blob.digest):
                report(blob, "exists")
                return blob
            upload = client.start_upload(target, blob.digest, source)
            if upload is None:
                report(blob, "mounted")
                return blob
            report(blob, "uploading")
            path = store.blobs.path(blob.digest)
            client.upload_blob(target, upload, path, blob.size, blob.digest, chunk_size)
            report(blob, "uploaded")
            return blob

        sent = _parallel(store.max_parallel, send, blobs)
        manifest = stored or make_manifest(sent[0], sent[1:])
        layers = tuple(b.digest for b in sent[1:])
        if layers != record.layer_blobs:
            _replace_layers(store, record, layers)
        # every blob is in the registry: now, and only now, the manifest (and the tag)
        digest = client.put_manifest(target, manifest.body, manifest.media_type)
        if progress is not None:
            progress(PushEvent(str(target), "manifest", digest, len(manifest.body), "pushed"))
        _remember(store, record, manifest, target)
    _drop_unused(store, [d for d in record.layer_blobs if d not in layers])
    return PushResult(ref=str(target), digest=digest)


def _parallel(
    workers: int, fn: Callable[[BlobToPush], BlobToPush], blobs: list[BlobToPush]
) -> list[BlobToPush]:
    """`fn` over `blobs` in threads; the results in order. The first failure is raised once
    every thread has ended (nothing keeps running behind the error, and no manifest
    follows)."""
    if len(blobs) <= 1:
        return [fn(b) for b in blobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(blobs))) as pool:
        futures = [pool.submit(fn, b) for b in blobs]
        errors = [f.exception() for f in futures]
    for e in errors:
        if e is not None:
            raise e
    return [f.result() for f in futures]


def _plan(store: ImageStore, record: ImageRecord) -> tuple[Manifest | None, list[BlobToPush]]:
    """The blobs to push for `record`, config first, and the manifest when the store holds
    the one the image came with. A layer kept uncompressed is named by its own digest with
    an empty media type: it is gzipped before it is sent."""
    layer_blobs = record.layer_blobs
    if len(layer_blobs) != len(record.diff_ids):
        raise PermanentError(f"image {record.id} has no layer blobs to push; pull it again")
    for digest in (record.id, *layer_blobs):
        if not store.blobs.has(digest):
            raise NotFound(f"blob {digest} of image {record.id} is missing; pull it again")
    for digest in record.blobs:
        if digest in (record.id, *layer_blobs):
            continue
        body = store.blobs.read(digest)
        found = stored_manifest(body, record.id, layer_blobs)
        if found is not None:
            return Manifest(body, found[0], digest, found[1]), list(found[1])
    # the config as it is (docker's JSON is the OCI config's): the image id stays the same
    blobs = [BlobToPush("config", record.id, store.blobs.size(record.id), MT_OCI_CONFIG)]
    for digest in layer_blobs:
        with open(store.blobs.path(digest), "rb") as f:
            media_type = layer_media_type(f.read(8)) or ""
        gz = None if media_type else _known_gzip(store, digest)
        if gz is not None:  # gzipped by an earlier push, and still here: that blob goes
            blobs.append(BlobToPush("layer", gz, store.blobs.size(gz), MT_OCI_LAYER_GZIP))
        else:
            blobs.append(BlobToPush("layer", digest, store.blobs.size(digest), media_type))
    return None, blobs


def _memo_path(store: ImageStore, digest: str) -> str:
    algo, hexpart = check_digest(digest)
    return os.path.join(store.dir, "gzip-of", algo, hexpart)


def _known_gzip(store: ImageStore, digest: str) -> str | None:
    """The gzip blob an earlier push made of the uncompressed layer blob `digest`, when the
    store still holds it (an image imported again names its uncompressed layers anew: its
    gzip's digest, known ahead, lets the registry be asked about it, HEAD or mount)."""
    try:
        with open(_memo_path(store, digest)) as f:
            gz = f.read(200).strip()
    except OSError:
        return None
    try:
        return gz if store.blobs.has(gz) else None
    except PermanentError:  # not a digest (a damaged note): compressed again
        return None


def _note_gzip(store: ImageStore, digest: str, gz: str) -> None:
    """Note that `gz` is the gzip of the uncompressed layer blob `digest` (a fact of their
    contents, kept beside the blobs; a note whose gzip is gone is ignored)."""
    path = _memo_path(store, digest)
    private_dir(os.path.dirname(path))
    atomic_write(path, gz + "\n", durable=False)


def _stream_layer(
    store: ImageStore, target: Reference, blob: BlobToPush, chunk_size: int
) -> BlobToPush:
    """Send the reproducible gzip of the uncompressed layer `blob` while it is made (a thread
    compresses it into the store, hashing it on the way, and hands it over piece by piece);
    the descriptor of the gzip blob, which the store keeps.

    An upload session is opened first (POST) and the gzip goes in one PATCH as it comes,
    its length unknown ahead (chunked transfer encoding, no Content-Range: the streamed
    upload docker's own push makes, which registries take for that reason; one request, so
    the registry hashes and stores it in one go). The closing PUT names the digest once the
    whole gzip is hashed. By then the gzip is in the store, so what the PATCH did not
    deliver is sent from there: after a cut, the rest in PATCH chunks from where the
    registry says the upload stands (resumable); if the registry refused the streamed PATCH,
    the whole blob afresh, as any blob of known digest (HEAD, then PUT or chunks)."""
    client = store.client
    upload = client.start_upload(target, blob.digest, None)  # no mount: nothing to name yet
    assert upload is not None  # (only a mount answers without a session)
    feed = _GzipFeed(store, blob.digest)
    refused: PermanentError | None = None
    try:
        feed_error: Exception | None = None

        def body() -> Iterator[bytes]:
            # a failure of the compression ends the body (it is raised below, as itself,
            # not as a failure of the connection the body was going to)
            nonlocal feed_error
            try:
                yield from feed.pieces()
            except Exception as e:
                feed_error = e

        try:
            client.stream_chunk(target, upload, body())
        except PermanentError as e:
            refused = e
        if feed_error is not None:
            raise feed_error
        for _ in feed.pieces():  # a PATCH that stopped early: the gzip is finished for the store
            pass
    finally:
        feed.close()
    digest = feed.digest
    _note_gzip(store, blob.digest, digest)
    sent = BlobToPush("layer", digest, store.blobs.size(digest), MT_OCI_LAYER_GZIP)
    path = store.blobs.path(digest)
    if refused is not None:
        if not client.blob_exists(target, digest):
            fresh = client.start_upload(target, digest, None)
            assert fresh is not None
            client.upload_blob(target, fresh, path, sent.size, digest, chunk_size)
        return sent
    step = max(chunk_size, upload.min_chunk, 1)
    while upload.offset < sent.size:  # what a cut PATCH did not deliver
        n = min(step, sent.size - upload.offset)
        client.send_chunk(target, upload, Body(n, path=path, offset=upload.offset))
    client.close_upload(target, upload.location, digest, Body.of(b""))
    return sent


class _GzipFeed:
    """The reproducible gzip of an uncompressed layer blob, made in a thread: written into
    the blob store as it is made (hashed on the way, kept under its digest at the end) and
    handed to the uploading thread piece by piece (`pieces()`; `digest` once they end)."""

    def __init__(self, store: ImageStore, digest: str) -> None:
        self.digest = ""
        self._ended = False
        # a bound on what is compressed ahead of the upload (pieces of layers.CHUNK bytes)
        self._queue: queue.Queue[bytes | _FeedEnd] = queue.Queue(maxsize=FEED_PIECES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, digest), daemon=True)
        self._thread.start()

    def _run(self, store: ImageStore, digest: str) -> None:
        end = _FeedEnd()
        reader = GzipReader(store.blobs.path(digest))

        def read(n: int) -> bytes:
            data = reader.read(n)
            if data:
                self._put(data)
            return data

        try:
            end.digest = store.blobs.ingest(read)
        except BaseException as e:  # handed over: the uploading thread raises it
            end.error = e
        finally:
            reader.close()
        if not self._stop.is_set():
            self._put(end)

    def _put(self, item: bytes | _FeedEnd) -> None:
        while True:
            if self._stop.is_set():
                raise _FeedStopped()  # the upload failed: stop compressing (no blob kept)
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def pieces(self) -> Iterator[bytes]:
        """The pieces not taken yet (none once the end was seen)."""
        while not self._ended:
            item = self._queue.get()
            if isinstance(item, _FeedEnd):
                self._ended = True
                if item.error is not None:
                    raise item.error
                self.digest = item.digest
                return
            yield item

    def close(self) -> None:
        """Stop the thread (when the upload failed) and wait for it."""
        self._stop.set()
        self._thread.join()


class _FeedEnd(msgspec.Struct):
    digest: str = ""
    error: BaseException | None = None


class _FeedStopped(Exception):
    """The upload a gzip feed fed has failed: its compression stops."""


def _replace_layers(store: ImageStore, record: ImageRecord, layer_blobs: tuple[str, ...]) -> None:
    """The record names the gzip blobs of its layers from now on (same diff_ids)."""
    with store._edit() as index:
        data = index.images.get(record.id)
        if data is None:
            raise NotFound(f"image {record.id} was removed during the push")
        old = set(data.get("layer_blobs") or ())
        data["layer_blobs"] = list(layer_blobs)
        data["blobs"] = list(
            dict.fromkeys([*(b for b in data.get("blobs") or () if b not in old), *layer_blobs])
        )
        data["size"] = sum(store.blobs.size(d) for d in layer_blobs)


def _remember(
    store: ImageStore, record: ImageRecord, manifest: Manifest, target: Reference
) -> None:
    """Keep the pushed manifest and `name@digest` on the record (as docker's RepoDigests):
    the image can be named by it, and a later push to another repository of the registry
    mounts its blobs from there."""
    if not store.blobs.has(manifest.digest):
        store.blobs.put_bytes(manifest.body, manifest.digest)
    with store._edit() as index:
        data = index.images.get(record.id)
        if data is None:
            return
        data["blobs"] = list(dict.fromkeys([*(data.get("blobs") or ()), manifest.digest]))
        repo_digest = str(target.with_digest(manifest.digest))
        data["repo_digests"] = sorted({*(data.get("repo_digests") or ()), repo_digest})


def _drop_unused(store: ImageStore, digests: list[str]) -> None:
    """Delete the replaced uncompressed blobs no image names any more."""
    if not digests:
        return
    with store._flock("gc.lock", fcntl.LOCK_EX):
        index = store._load()
        used = {b for data in index.images.values() for b in data.get("blobs") or ()}
        used |= {b for data in index.images.values() for b in data.get("layer_blobs") or ()}
        for digest in digests:
            if digest not in used:
                store.blobs.remove(digest)
