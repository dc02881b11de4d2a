"""The native runtime's image store: pull, import, resolve, list, remove, prune.

Layout under `<root>/images/` (root: the `root` argument, else $PYAPPLY_ROOT, else
/var/lib/pyapply):

    blobs/sha256/<hex>     manifests, indexes, configs, layer tarballs (content-addressed)
    layers/<diffid-hex>/   each layer unpacked once (an overlayfs lowerdir), shared by images
    index.json             {"version": 1, "refs": {ref: image id}, "images": {id: record}}
    index.lock, gc.lock    flock(2) locks: index writers; pulls/imports (shared) vs prune
    tmp/                   partial blobs and layers (cleared by prune)

An image's id is its config digest. References are stored normalised
(`busybox` -> `docker.io/library/busybox:latest`); `resolve` accepts any spelling, an id or a
unique id prefix (12+ hex digits), or `name@digest` of a pulled image.

API:
    store = ImageStore(root=None, credentials=None, insecure=(), platform=None,
                       max_parallel=4, ca_file=None, client=None)
    store.pull(ref, progress=None) -> ImageRecord      # progress(PullProgress) from threads
    store.resolve(ref) -> ImageRecord | None
    store.layer_dirs(record) -> list[str]              # lowest layer first
    store.import_archive(path, ref=None) -> list[ImageRecord]
    store.list() -> list[ImageRecord]
    store.remove(ref, keep_layers=()) -> None          # NotFound if unknown
    store.prune(in_use) -> list[str]                   # removed image ids; blobs/layers GC'd
    with store.building(): ...                         # the builder's layers are safe from GC
    store.add_layer(tar, tree=None) -> diff_id         # a built layer (uncompressed tar)
    store.commit_built(config, diff_ids, refs) -> ImageRecord   # a built image, tagged
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, Literal

import msgspec

from pyapply.runtime.base import ImageInfo, NotFound, PermanentError
from pyapply.runtime.native.layers import (
    BlobStore,
    DigestMismatch,
    check_digest,
    diff_id_of,
    sha256_bytes,
    unpack_layer,
)
from pyapply.runtime.native.reference import (
    INDEX_TYPES,
    Platform,
    Reference,
    host_platform,
    normalize_ref,
    parse_platform,
    parse_reference,
    select_platform,
)
from pyapply.runtime.native.statefile import (
    anything,
    bad,
    checked,
    integer,
    list_of,
    map_of,
    nonempty,
    optional,
    read_json,
    record,
    string,
)
from pyapply.runtime.statefs import atomic_write, private_dir, rmtree, state_root

if TYPE_CHECKING:
    import tarfile

    from pyapply.runtime.native.registry import RegistryClient

CONFIG_TYPES = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)
MAX_JSON = 16 << 20


class ImageConfig(msgspec.Struct, frozen=True):
    """The parts of an image config a container is made from (Docker/OCI `config`)."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    healthcheck: Mapping[str, Any] | None = None  # {Test, Interval, Timeout, ...} as in JSON
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)
    stop_signal: str | None = None

    @classmethod
    def from_json(cls, c: Mapping[str, Any] | None) -> ImageConfig:
        c = c or {}

        def strs(v: Any) -> tuple[str, ...] | None:
            if v is None:
                return None
            if isinstance(v, str):
                return (v,)
            return tuple(str(x) for x in v)

        return cls(
            env=strs(c.get("Env")) or (),
            cmd=strs(c.get("Cmd")),
            entrypoint=strs(c.get("Entrypoint")),
            working_dir=str(c.get("WorkingDir") or ""),
            user=str(c.get("User") or ""),
            exposed_ports=tuple(sorted(c.get("ExposedPorts") or {})),
            healthcheck=dict(c["Healthcheck"]) if c.get("Healthcheck") else None,
            labels={str(k): str(v) for k, v in (c.get("Labels") or {}).items()},
            stop_signal=c.get("StopSignal") or None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "Env": list(self.env),
            "Cmd": list(self.cmd) if self.cmd is not None else None,
            "Entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "WorkingDir": self.working_dir,
            "User": self.user,
            "ExposedPorts": {p: {} for p in self.exposed_ports},
            "Healthcheck": dict(self.healthcheck) if self.healthcheck else None,
            "Labels": dict(self.labels),
            "StopSignal": self.stop_signal,
        }


class ImageRecord(msgspec.Struct, frozen=True):
    id: str  # config digest
    refs: tuple[str, ...]  # normalised references naming it
    repo_digests: tuple[str, ...]  # name@manifest-or-index-digest it was pulled as
    config: ImageConfig
    diff_ids: tuple[str, ...]  # lowest layer first
    blobs: tuple[str, ...]  # every blob it needs (manifests, config, layer blobs)
    layer_blobs: tuple[str, ...] = ()  # the (compressed) layer blobs, as diff_ids
    os: str = "linux"
    architecture: str = ""
    variant: str | None = None
    created: str | None = None
    size: int = 0  # sum of the layer blobs' sizes

    def info(self) -> ImageInfo:
        return ImageInfo(id=self.id, env=self.config.env)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repo_digests": list(self.repo_digests),
            "config": self.config.to_json(),
            "diff_ids": list(self.diff_ids),
            "blobs": list(self.blobs),
            "layer_blobs": list(self.layer_blobs),
            "os": self.os,
            "architecture": self.architecture,
            "variant": self.variant,
            "created": self.created,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], refs: Iterable[str]) -> ImageRecord:
        return cls(
            id=d["id"],
            refs=tuple(sorted(refs)),
            repo_digests=tuple(d.get("repo_digests") or ()),
            config=ImageConfig.from_json(d.get("config")),
            diff_ids=tuple(d.get("diff_ids") or ()),
            blobs=tuple(d.get("blobs") or ()),
            layer_blobs=tuple(d.get("layer_blobs") or ()),
            os=d.get("os") or "linux",
            architecture=d.get("architecture") or "",
            variant=d.get("variant"),
            created=d.get("created"),
            size=int(d.get("size") or 0),
        )


class PullProgress(msgspec.Struct, frozen=True):
    """One progress report: `action` is "download" (done/total bytes, repeated), "cached"
    (blob already stored), "unpacked" (layer unpacked) or "present" (layer already
    unpacked)."""

    digest: str
    action: Literal["download", "cached", "unpacked", "present"]
    done: int = 0
    total: int = 0


ProgressFn = Callable[[PullProgress], None]


def _strings(value: Any, where: str) -> Any:
    """A string or a list of strings (an image config's Cmd, Entrypoint, Env)."""
    return value if isinstance(value, str) else list_of(string)(value, where)


_CONFIG_SHAPE = record(
    {},
    {
        "Env": optional(_strings),
        "Cmd": optional(_strings),
        "Entrypoint": optional(_strings),
        "WorkingDir": optional(string),
        "User": optional(string),
        "ExposedPorts": optional(map_of(anything)),
        "Healthcheck": optional(map_of(anything)),
        "Labels": optional(map_of(optional(string))),
        "StopSignal": optional(string),
    },
)
_RECORD_SHAPE = record(
    {"id": nonempty},
    {
        "repo_digests": list_of(string),
        "config": optional(_CONFIG_SHAPE),
        "diff_ids": list_of(string),
        "blobs": list_of(string),
        "layer_blobs": list_of(string),
        "os": optional(string),
        "architecture": optional(string),
        "variant": optional(string),
        "created": optional(string),
        "size": optional(integer),
    },
)


def _index_fits(doc: Mapping[str, Any], where: str) -> None:
    images = doc.get("images") or {}
    for image_id, rec in images.items():
        if rec["id"] != image_id:
            raise bad(f"images.{image_id}", f"the record is of {rec['id']}")
    for ref, image_id in (doc.get("refs") or {}).items():
        if image_id not in images:
            raise bad(f"refs.{ref}", f"no image {image_id}")


INDEX_SHAPE = checked(
    record({}, {"version": integer, "refs": map_of(string), "images": map_of(_RECORD_SHAPE)}),
    _index_fits,
)


class _Index(msgspec.Struct):
    refs: dict[str, str] = msgspec.field(default_factory=dict)
    images: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def record(self, image_id: str) -> ImageRecord:
        refs = [r for r, i in self.refs.items() if i == image_id]
        return ImageRecord.from_json(self.images[image_id], refs)


class ImageStore:
    def __init__(
        self,
        root: str | None = None,
        *,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        insecure: Iterable[str] = (),
        platform: str | Platform | None = None,
        max_parallel: int = 4,
        ca_file: str | None = None,
        client: RegistryClient | None = None,
    ) -> None:
        self.root = os.path.abspath(state_root(root))
        self.dir = os.path.join(self.root, "images")
        self.layers_dir = os.path.join(self.dir, "layers")
        self.tmp_dir = os.path.join(self.dir, "tmp")
        self.index_path = os.path.join(self.dir, "index.json")
        # 0700 from the root down: layers hold setuid binaries and device nodes that no
        # other local user may reach (a root made 0755 by an older version is tightened)
        for d in (self.root, self.dir, self.layers_dir):
            private_dir(d)
        self.blobs = BlobStore(os.path.join(self.dir, "blobs"), self.tmp_dir)
        self._client = client
        self._client_options = (credentials, tuple(insecure), ca_file)
        self._client_lock = threading.Lock()
        if isinstance(platform, str):
            platform = parse_platform(platform)
        self.platform = platform or host_platform()
        self.max_parallel = max(1, max_parallel)
        self._local = threading.Lock()

    @property
    def client(self) -> RegistryClient:
        """The registry client, made at the first pull or push: a look at the store (a no-op
        apply resolving its images) never loads the HTTP client's module."""
        with self._client_lock:  # one client, whose tokens every pull thread shares
            if self._client is None:
                from pyapply.runtime.native.registry import RegistryClient

                credentials, insecure, ca_file = self._client_options
                self._client = RegistryClient(
                    credentials=credentials, insecure=insecure, ca_file=ca_file
                )
            return self._client

    @client.setter
    def client(self, client: RegistryClient) -> None:
        with self._client_lock:
            self._client = client

    # -- locks and the index ---------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        fd = os.open(os.path.join(self.dir, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _load(self) -> _Index:
        """The index; DamagedState (naming the file) when it is not what we wrote: which
        references name which images cannot be guessed."""
        data: dict[str, Any] | None = read_json(self.index_path, INDEX_SHAPE)
        if data is None:
            return _Index()
        return _Index(refs=dict(data.get("refs") or {}), images=dict(data.get("images") or {}))

    def _save(self, index: _Index) -> None:
        data = {"version": 1, "refs": index.refs, "images": index.images}
        atomic_write(self.index_path, json.dumps(data, indent=1, sort_keys=True))

    @contextlib.contextmanager
    def _edit(self) -> Iterator[_Index]:
        with self._local, self._flock("index.lock", fcntl.LOCK_EX):
            index = self._load()
            yield index
            self._save(index)

    def _commit(
        self, record: ImageRecord, refs: Iterable[str], repo_digest: str | None
    ) -> ImageRecord:
        with self._edit() as index:
            old = index.images.get(record.id)
            data = record.to_json()
            digests = list((old or {}).get("repo_digests") or [])
            if repo_digest and repo_digest not in digests:
                digests.append(repo_digest)
            data["repo_digests"] = sorted(digests)
            index.images[record.id] = data
            for r in refs:
                index.refs[r] = record.id
            return index.record(record.id)

    # -- queries ----------------------------------------------------------------------------

    def list(self) -> builtins.list[ImageRecord]:
        index = self._load()
        return sorted((index.record(i) for i in index.images), key=lambda r: (r.refs, r.id))

    def _find(self, index: _Index, ref: str) -> str | None:
        text = ref.strip()
        hexpart = text[7:] if text.startswith("sha256:") else text
        if 12 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
            hits = [i for i in index.images if i[7:].startswith(hexpart)]
            if len(hits) == 1:
                return hits[0]
            if text.startswith("sha256:"):
                return None
        try:
            parsed = parse_reference(text)
        except PermanentError:
            return None
        if parsed.digest:
            want = str(parsed)
            for image_id, data in index.images.items():
                if want in (data.get("repo_digests") or ()):
                    return image_id
            return None
        return index.refs.get(str(parsed))

    def resolve(self, ref: str) -> ImageRecord | None:
        index = self._load()
        image_id = self._find(index, ref)
        return index.record(image_id) if image_id else None

    def layer_dir(self, diff_id: str) -> str:
        _, hexpart = check_digest(diff_id)
        return os.path.join(self.layers_dir, hexpart)

    def layer_dirs(self, record: ImageRecord) -> builtins.list[str]:
        """The unpacked layer directories of `record`, lowest first (overlayfs wants them
        reversed in lowerdir=). A missing one is unpacked again from its blob; without the
        blob, NotFound (pull the image again)."""
        dirs = []
        for i, diff_id in enumerate(record.diff_ids):
            path = self.layer_dir(diff_id)
            if not os.path.isdir(path):
                blob = record.layer_blobs[i] if i < len(record.layer_blobs) else None
                if blob is None or not self.blobs.has(blob):
                    raise NotFound(
                        f"layer {diff_id} of image {record.id} is missing; pull the image again"
                    )
                with self._flock("gc.lock", fcntl.LOCK_SH):
                    self._ensure_layer(blob, diff_id, None)
            dirs.append(path)
        return dirs

    # -- pull -------------------------------------------------------------------------------

    def pull(self, ref: str, progress: ProgressFn | None = None) -> ImageRecord:
        """Pull `ref` for this store's platform: blobs not yet stored are downloaded in
        parallel and verified, layers not yet unpacked are unpacked, then the record is
        written. Safe to run concurrently with other pulls (and prune waits for it)."""
        parsed = parse_reference(ref)
        with self._flock("gc.lock", fcntl.LOCK_SH):
            chain, manifest = self.client.resolve(parsed, self.platform)
            for digest, body in chain:
                if not self.blobs.has(digest):
                    self.blobs.put_bytes(body, digest)
            cdesc = manifest["config"]
            if cdesc.get("mediaType") not in (None, *CONFIG_TYPES):
                raise PermanentError(
                    f"{parsed} is not a container image (its config is {cdesc.get('mediaType')})"
                )
            config_digest = str(cdesc.get("digest"))
            if not self.blobs.has(config_digest):
                self.client.fetch_blob(parsed, config_digest, _size(cdesc), self.blobs)
            config = self._read_json(config_digest)
            layers = list(manifest.get("layers") or [])
            diff_ids = _diff_ids(config, len(layers), str(parsed))

            def fetch(desc: Mapping[str, Any], diff_id: str) -> None:
                digest = str(desc.get("digest"))
                total = _size(desc) or 0
                if os.path.isdir(self.layer_dir(diff_id)):
                    # unpacked already (maybe from another compression of the same content,
                    # e.g. an imported `docker save`): its diff_id was verified then
                    _report(progress, PullProgress(diff_id, "present"))
                    return
                if self.blobs.has(digest):
                    _report(progress, PullProgress(digest, "cached", total, total))
                else:
                    step = max(total // 20, 1 << 20)
                    last = [0]

                    def on_bytes(n: int) -> None:
                        if progress is not None and (n - last[0] >= step or n == total):
                            last[0] = n
                            _report(progress, PullProgress(digest, "download", n, total))

                    self.client.fetch_blob(parsed, digest, _size(desc), self.blobs, on_bytes)
                self._ensure_layer(digest, diff_id, progress)

            self._parallel(fetch, list(zip(layers, diff_ids, strict=True)))
            record = ImageRecord(
                id=config_digest,
                refs=(),
                repo_digests=(),
                config=ImageConfig.from_json(config.get("config")),
                diff_ids=tuple(diff_ids),
                blobs=tuple(
                    dict.fromkeys(
                        [d for d, _ in chain]
                        + [config_digest]
                        + [str(d.get("digest")) for d in layers]
                    )
                ),
                os=str(config.get("os") or "linux"),
                architecture=str(config.get("architecture") or ""),
                variant=config.get("variant"),
                layer_blobs=tuple(str(d.get("digest")) for d in layers),
                created=config.get("created"),
                size=sum(_size(d) or 0 for d in layers),
            )
            refs = [str(parsed)] if parsed.digest is None else []
            repo_digest = str(parsed.with_digest(chain[0][0]))
            return self._commit(record, refs, repo_digest)

    def _parallel(
        self, fn: Callable[[Any, Any], None], items: builtins.list[tuple[Any, Any]]
    ) -> None:
        if len(items) <= 1:
            for a, b in items:
                fn(a, b)
            return
        from concurrent.futures import ThreadPoolExecutor  # only when there is work

        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(items))) as pool:
            futures = [pool.submit(fn, a, b) for a, b in items]
            errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    def _ensure_layer(self, blob_digest: str, diff_id: str, progress: ProgressFn | None) -> None:
        dest = self.layer_dir(diff_id)
        if os.path.isdir(dest):
            _report(progress, PullProgress(diff_id, "present"))
            return
        try:
            unpack_layer(self.blobs.path(blob_digest), dest, self.tmp_dir, diff_id)
        except DigestMismatch:
            # A corrupt stored blob must not stay: the next pull downloads it again.
            self.blobs.remove(blob_digest)
            raise
        _report(progress, PullProgress(diff_id, "unpacked"))

    def _read_json(self, digest: str) -> dict[str, Any]:
        try:
            data = json.loads(self.blobs.read(digest, MAX_JSON))
        except ValueError as e:
            raise PermanentError(f"blob {digest} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise PermanentError(f"blob {digest} is not a JSON object")
        return data

    # -- import -----------------------------------------------------------------------------

    def import_archive(self, path: str, ref: str | None = None) -> builtins.list[ImageRecord]:
        """Import a `docker save` archive, an OCI image layout (directory or tar) or, with
        `ref`, a plain rootfs tarball (optionally compressed) as a one-layer image. `ref`
        also renames a single imported image. Returns the records imported."""
        import tarfile  # an import, not a look at the store

        with self._flock("gc.lock", fcntl.LOCK_SH):
            if os.path.isdir(path):
                if not os.path.isfile(os.path.join(path, "oci-layout")):
                    raise PermanentError(f"{path} is a directory but not an OCI image layout")
                return self._import_oci(_DirSource(path), ref)
            if not os.path.isfile(path):
                raise NotFound(f"no such file: {path}")
            try:
                tf = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
            except tarfile.TarError as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise PermanentError(f"{path} is not a tar archive ({reason})") from e
            with tf:
                names = {_norm(m.name) for m in tf.getmembers()}
                src = _TarSource(tf)
                if "manifest.json" in names:
                    return self._import_docker(src, ref)
                if "oci-layout" in names and "index.json" in names:
                    return self._import_oci(src, ref)
            if ref is None:
                raise PermanentError(
                    f"{path} is neither a docker save archive nor an OCI layout; to import it "
                    "as a root file system tarball, give it a reference"
                )
            return [self._import_rootfs(path, ref)]

    def _store_from(self, src: _Source, name: str, digest: str | None = None) -> str:
        with src.open(name) as f:
            return self.blobs.ingest(f.read, digest)

    def _finish_import(
        self,
        config_digest: str,
        layer_digests: builtins.list[str],
        extra_blobs: builtins.list[str],
        refs: builtins.list[str],
        where: str,
    ) -> ImageRecord:
        config = self._read_json(config_digest)
        diff_ids = _diff_ids(config, len(layer_digests), where)
        for digest, diff_id in zip(layer_digests, diff_ids, strict=True):
            self._ensure_layer(digest, diff_id, None)
        record = ImageRecord(
            id=config_digest,
            refs=(),
            repo_digests=(),
            config=ImageConfig.from_json(config.get("config")),
            diff_ids=tuple(diff_ids),
            blobs=tuple(dict.fromkeys([*extra_blobs, config_digest, *layer_digests])),
            layer_blobs=tuple(layer_digests),
            os=str(config.get("os") or "linux"),
            architecture=str(config.get("architecture") or ""),
            variant=config.get("variant"),
            created=config.get("created"),
            size=sum(self.blobs.size(d) for d in layer_digests),
        )
        return self._commit(record, refs, None)

    def _import_docker(self, src: _Source, ref: str | None) -> builtins.list[ImageRecord]:
        try:
            entries = json.loads(src.read("manifest.json"))
        except ValueError as e:
            raise PermanentError(f"docker save archive: bad manifest.json: {e}") from e
        if not isinstance(entries, list) or not entries:
            raise PermanentError("docker save archive: manifest.json lists no image")
        if ref is not None and len(entries) != 1:
            raise PermanentError("a reference can only name an archive holding one image")
        out = []
        for entry in entries:
            config_digest = self._store_from(src, str(entry["Config"]))
            layers = [self._store_from(src, str(name)) for name in entry.get("Layers") or []]
            refs = (
                [normalize_ref(ref)]
                if ref
                else [normalize_ref(t) for t in entry.get("RepoTags") or []]
            )
            out.append(self._finish_import(config_digest, layers, [], refs, "docker save archive"))
        return out

    def _import_oci(self, src: _Source, ref: str | None) -> builtins.list[ImageRecord]:
        try:
            top = json.loads(src.read("index.json"))
        except (ValueError, KeyError) as e:
            raise PermanentError(f"OCI layout: bad index.json: {e}") from e
        descs = list(top.get("manifests") or [])
        if ref is not None and len(descs) != 1:
            raise PermanentError("a reference can only name an OCI layout holding one image")
        out = []
        for desc in descs:
            chain = []
            cur = desc
            for _ in range(3):
                digest = str(cur.get("digest"))
                algo, hexpart = check_digest(digest)
                self._store_from(src, f"blobs/{algo}/{hexpart}", digest)
                chain.append(digest)
                doc = self._read_json(digest)
                media_type = cur.get("mediaType") or doc.get("mediaType")
                if media_type in INDEX_TYPES or "manifests" in doc:
                    cur = select_platform(doc, self.platform)
                    continue
                break
            else:
                raise PermanentError("OCI layout: indexes nested too deeply")
            config_digest = str(doc["config"]["digest"])
            algo, hexpart = check_digest(config_digest)
            self._store_from(src, f"blobs/{algo}/{hexpart}", config_digest)
            layers = []
            for ld in doc.get("layers") or []:
                digest = str(ld.get("digest"))
                algo, hexpart = check_digest(digest)
                layers.append(self._store_from(src, f"blobs/{algo}/{hexpart}", digest))
            annotations = desc.get("annotations") or {}
            names = []
            if ref:
                names = [normalize_ref(ref)]
            elif annotations.get("io.containerd.image.name"):
                names = [normalize_ref(annotations["io.containerd.image.name"])]
            elif "/" in str(annotations.get("org.opencontainers.image.ref.name") or ""):
                # a full reference; a bare tag ("latest", as skopeo writes) names nothing
                with contextlib.suppress(PermanentError):
                    names = [normalize_ref(str(annotations["org.opencontainers.image.ref.name"]))]
            out.append(self._finish_import(config_digest, layers, chain, names, "OCI layout"))
        return out

    def _import_rootfs(self, path: str, ref: str) -> ImageRecord:
        name = normalize_ref(ref)
        with open(path, "rb") as f:
            layer = self.blobs.ingest(f.read)
        diff_id = diff_id_of(self.blobs.path(layer))
        current = self.resolve(name)
        if current is not None and current.diff_ids == (diff_id,):
            # the same content again is the same image: a new "created" time would make a
            # new id, and every container using the name would be recreated for nothing
            return current
        config = {
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            # the archive's time, not the clock's: the same file imported again (under
            # another name too) is the same image, not a new id one second later
            "created": datetime.datetime.fromtimestamp(
                int(os.stat(path).st_mtime), datetime.UTC
            ).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": f"pyapply image import {os.path.basename(path)}"}],
        }
        if self.platform.variant:
            config["variant"] = self.platform.variant
        body = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = self.blobs.put_bytes(body, sha256_bytes(body))
        return self._finish_import(config_digest, [layer], [], [name], path)

    # -- built images (runtime/native/build) ------------------------------------------------

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Hold off prune and remove (gc.lock, shared) while a build makes layers that no
        image names yet."""
        with self._flock("gc.lock", fcntl.LOCK_SH):
            yield

    def add_layer(self, tar_path: str, tree: str | None = None) -> str:
        """Store an uncompressed layer tar as a blob (its digest is its diff_id) and make
        its layer directory, once; returns the diff_id. `tree` is the directory the tar was
        made from, in the layer directory format (overlayfs whiteouts), not mounted: it is
        moved into place rather than the tar unpacked again (and, without `tree`, the tar
        is unpacked). Call inside `building()`."""
        with open(tar_path, "rb") as f:
            diff_id = self.blobs.ingest(f.read)
        dest = self.layer_dir(diff_id)
        if tree is not None and not os.path.isdir(dest):
            with contextlib.suppress(FileExistsError, OSError):
                os.rename(tree, dest)  # same file system; a racing unpack may win
        self._ensure_layer(diff_id, diff_id, None)
        return diff_id

    def has_layer(self, diff_id: str) -> bool:
        """Whether a layer is here to build on: its directory, else (a built layer, whose
        blob is its diff_id) made again from its blob. The layers of a stored image are
        made sure of by `layer_dirs`, which knows their blobs."""
        if os.path.isdir(self.layer_dir(diff_id)):
            return True
        if not self.blobs.has(diff_id):
            return False
        self._ensure_layer(diff_id, diff_id, None)
        return True

    def commit_built(
        self, config_body: bytes, diff_ids: builtins.list[str], refs: Iterable[str]
    ) -> ImageRecord:
        """Record a built image with an OCI manifest, and tag it with `refs`. Its layers
        are the base image's (whatever blobs they came in) and those stored with add_layer
        (uncompressed: the blob is the diff_id). Call inside `building()`."""
        config_digest = sha256_bytes(config_body)
        if not self.blobs.has(config_digest):  # a rebuild of the same image writes nothing
            self.blobs.put_bytes(config_body, config_digest)
        known: dict[str, str] = {}  # diff_id -> the blob a stored image has it as
        for data in self._load().images.values():
            # an old record may lack layer_blobs: the pairs that are there count
            pairs = zip(data.get("diff_ids") or (), data.get("layer_blobs") or (), strict=False)
            known.update(pairs)
        layer_blobs = []
        for d in diff_ids:
            blob = d if self.blobs.has(d) else known.get(d)
            if blob is None or not self.blobs.has(blob):
                raise NotFound(f"layer {d} has no blob in the store; pull its image again")
            layer_blobs.append(blob)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config_body),
            },
            "layers": [
                {
                    "mediaType": _layer_media_type(self.blobs.path(b)),
                    "digest": b,
                    "size": self.blobs.size(b),
                }
                for b in layer_blobs
            ],
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = sha256_bytes(body)
        if not self.blobs.has(manifest_digest):
            self.blobs.put_bytes(body, manifest_digest)
        config = self._read_json(config_digest)
        record = ImageRecord(
            id=config_digest,
            refs=(),
            repo_digests=(),
            config=ImageConfig.from_json(config.get("config")),
            diff_ids=tuple(diff_ids),
            blobs=tuple(dict.fromkeys([manifest_digest, config_digest, *layer_blobs])),
            layer_blobs=tuple(layer_blobs),
            os=str(config.get("os") or "linux"),
            architecture=str(config.get("architecture") or ""),
            variant=config.get("variant"),
            created=config.get("created"),
            size=sum(self.blobs.size(b) for b in layer_blobs),
        )
        return self._commit(record, [normalize_ref(r) for r in refs], None)

    def config_document(self, record: ImageRecord) -> dict[str, Any]:
        """The whole config document of an image (history, OnBuild, ... included)."""
        return self._read_json(record.id)

    # -- remove and prune -------------------------------------------------------------------

    def remove(self, ref: str, keep_layers: Iterable[str] = ()) -> None:
        """Remove a reference; the image record goes with its last reference, and with it
        the blobs and unpacked layers no remaining image needs, except the layer directories
        in `keep_layers` (those containers still run on). An id (or prefix) removes the
        image and all its references. Waits for running pulls/imports. Unknown: NotFound."""
        with self._flock("gc.lock", fcntl.LOCK_EX):
            if self._unref(ref):
                # the record is gone (saved): now its files, which no pull can claim meanwhile
                self._collect(self._load(), keep_layers)

    def _unref(self, ref: str) -> bool:
        """The index edit of remove(); whether the image record went."""
        with self._edit() as index:
            image_id = self._find(index, ref)
            if image_id is None:
                raise NotFound(f"no such image: {ref}")
            try:
                parsed: Reference | None = parse_reference(ref)
            except PermanentError:
                parsed = None
            by_name = parsed is not None and index.refs.get(str(parsed)) == image_id
            by_digest = parsed is not None and parsed.digest is not None
            data = index.images[image_id]
            if by_name and parsed is not None:
                del index.refs[str(parsed)]
            elif by_digest and parsed is not None:
                data["repo_digests"] = [
                    d for d in data.get("repo_digests") or [] if d != str(parsed)
                ]
            else:
                for r in [r for r, i in index.refs.items() if i == image_id]:
                    del index.refs[r]
                data["repo_digests"] = []
            if not data.get("repo_digests") and image_id not in index.refs.values():
                del index.images[image_id]
                return True
            return False

    def prune(self, in_use: set[str]) -> builtins.list[str]:
        """Remove every image no container uses (`in_use`: image ids or references), then
        every blob and unpacked layer no remaining image needs, and stale temporary files.
        Waits for running pulls/imports. Returns the ids of the images removed."""
        with self._flock("gc.lock", fcntl.LOCK_EX):
            with self._edit() as index:
                keep = {i for i in (self._find(index, r) for r in in_use) if i}
                removed = sorted(i for i in index.images if i not in keep)
                for image_id in removed:
                    del index.images[image_id]
                index.refs = {r: i for r, i in index.refs.items() if i in index.images}
            # records first (saved), then files: a failed deletion leaves garbage for the
            # next prune, never a record whose blobs are gone
            self._collect(self._load())
        return removed

    def _collect(self, index: _Index, keep_layers: Iterable[str] = ()) -> None:
        """Delete the blobs and layers no image of `index` needs (and not in `keep_layers`,
        layer directories in use), and every temporary file. Under gc.lock, exclusively."""
        blobs: set[str] = set()
        layers = {os.path.basename(os.path.realpath(d)) for d in keep_layers}
        for data in index.images.values():
            blobs.update(data.get("blobs") or ())
            layers.update(check_digest(d)[1] for d in data.get("diff_ids") or ())
        for digest in list(self.blobs.digests()):
            if digest not in blobs:
                self.blobs.remove(digest)
        for name in os.listdir(self.layers_dir):
            if name not in layers:
                rmtree(os.path.join(self.layers_dir, name))
        for name in os.listdir(self.tmp_dir):
            rmtree(os.path.join(self.tmp_dir, name))


# ---------------------------------------------------------------------------------------------
# helpers


def _layer_media_type(path: str) -> str:
    """The OCI media type of a layer blob, by its magic bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x1f\x8b"):
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


def _report(progress: ProgressFn | None, event: PullProgress) -> None:
    if progress is not None:
        progress(event)


def _size(desc: Mapping[str, Any]) -> int | None:
    size = desc.get("size")
    return int(size) if isinstance(size, int) and size >= 0 else None


def _diff_ids(config: Mapping[str, Any], n_layers: int, where: str) -> list[str]:
    rootfs = config.get("rootfs") or {}
    diff_ids = [str(d) for d in rootfs.get("diff_ids") or []]
    if len(diff_ids) != n_layers:
        raise PermanentError(
            f"{where}: the image config lists {len(diff_ids)} layers, the manifest {n_layers}"
        )
    for d in diff_ids:
        check_digest(d)
    return diff_ids


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


class _Source:
    """Files of an archive or a directory, read by relative name."""

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise PermanentError(f"{name}: larger than {limit} bytes")
        return data


class _DirSource(_Source):
    def __init__(self, root: str) -> None:
        self.root = root

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        parts = _norm(name).split("/")
        if ".." in parts or not parts[0]:
            raise PermanentError(f"invalid path {name!r} in the OCI layout")
        path = os.path.join(self.root, *parts)
        if os.path.islink(path):
            raise PermanentError(f"{name}: a symlink in the OCI layout; refused")
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise PermanentError(f"{name} is missing from {self.root}") from None


class _TarSource(_Source):
    def __init__(self, tf: tarfile.TarFile) -> None:
        self.tf = tf
        self.members = {_norm(m.name): m for m in tf.getmembers()}

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        member = self.members.get(_norm(name))
        if member is None:
            raise PermanentError(f"{name} is missing from the archive")
        f = self.tf.extractfile(member)
        if f is None:
            raise PermanentError(f"{name} is not a file in the archive")
        return f
