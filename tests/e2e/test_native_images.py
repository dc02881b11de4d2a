"""The native image store against real registries: the local Debian docker-registry that
`make setup` starts (127.0.0.1:5000), a second docker-registry started here behind htpasswd
basic auth, and a small bearer-token server (with a registry front that demands its tokens)
written here, since docker-registry has no token server of its own. Also imports of a
`docker save` archive, OCI layouts and a plain rootfs tarball, and prune.

Each test uses a fresh state root under tmp_path. Manifests pushed to the shared registry go
to a per-test repository `pyapply-test/n<hex>` and are deleted afterwards; processes started
here are killed by pid.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyapply.runtime.base import NotFound, PermanentError, TransientError
from pyapply.runtime.native.images import ImageStore, PullProgress
from pyapply.runtime.native.reference import (
    MT_DOCKER_LIST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    host_platform,
)
from pyapply.runtime.native.registry import RegistryClient

pytestmark = pytest.mark.e2e

BUSYBOX_PATH = "pyapply-test/busybox"
USER, PASSWORD = "alice", "s3cret-" + secrets.token_hex(4)


# ---------------------------------------------------------------------------------------------
# helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(
    addr: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(addr, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def push_blob(addr: str, repo: str, data: bytes, mount_from: str | None = None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if mount_from:
        status, _, _ = api(
            addr, "POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={mount_from}"
        )
        if status == 201:
            return digest
    status, hdrs, body = api(addr, "POST", f"/v2/{repo}/blobs/uploads/")
    assert status == 202, body
    loc = hdrs["location"]
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    sep = "&" if "?" in loc else "?"
    status, _, body = api(
        addr,
        "PUT",
        f"{loc}{sep}digest={digest}",
        data,
        {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    assert status == 201, body
    return digest


def put_manifest(addr: str, repo: str, ref: str, doc: bytes, media_type: str) -> str:
    status, _, body = api(
        addr, "PUT", f"/v2/{repo}/manifests/{ref}", doc, {"Content-Type": media_type}
    )
    assert status == 201, body
    return "sha256:" + hashlib.sha256(doc).hexdigest()


def oci_manifest(addr: str, repo: str, config: bytes, layers: list[bytes]) -> bytes:
    """Push `config` and gzipped `layers` as blobs; return an OCI image manifest naming them."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": push_blob(addr, repo, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": push_blob(addr, repo, b),
                    "size": len(b),
                }
                for b in layers
            ],
        }
    ).encode()


def rootfs_tar(files: dict[str, bytes], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def layer_file(store: ImageStore, record: Any, rel: str) -> Path | None:
    """The topmost layer directory holding `rel`, as the container would see it."""
    for layer in reversed(store.layer_dirs(record)):
        p = Path(layer) / rel
        if os.path.lexists(p):
            return p
    return None


def downloads(events: list[PullProgress]) -> list[PullProgress]:
    return [e for e in events if e.action == "download"]


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for docker-registry's htpasswd: Python's crypt module (libxcrypt) where
    it exists (up to Python 3.12), else `htpasswd -nbB` (Debian's apache2-utils)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if hashed and hashed.startswith("$2"):
            return hashed
    except (ImportError, AttributeError, OSError):
        pass
    if shutil.which("htpasswd") is None:
        pytest.fail("no bcrypt: install apache2-utils (htpasswd)", pytrace=False)
    out = subprocess.run(
        ["htpasswd", "-nbB", "x", password], check=True, capture_output=True, text=True
    ).stdout.strip()
    return out.split(":", 1)[1]


def wait_http(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited: {log.read_text()[-2000:]}", pytrace=False)
        try:
            api(addr, "GET", "/v2/")
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"docker-registry on {addr} did not answer", pytrace=False)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def _remove_state_roots(tmp_path: Path) -> Iterator[None]:
    """State roots (layers with device nodes, blobs) don't outlive their test."""
    yield
    for child in tmp_path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


@pytest.fixture
def store(tmp_path: Path, registry: str) -> ImageStore:
    return ImageStore(str(tmp_path / "root"))


@pytest.fixture
def busybox(registry: str) -> str:
    return f"{registry}/{BUSYBOX_PATH}:latest"


@pytest.fixture
def test_repo(registry: str) -> Iterator[tuple[str, list[str]]]:
    """A per-test repository name in the shared registry, and a list the test appends the
    manifest digests it pushed to; they are deleted afterwards."""
    repo = f"pyapply-test/n{secrets.token_hex(4)}"
    pushed: list[str] = []
    yield repo, pushed
    for digest in reversed(pushed):
        api(registry, "DELETE", f"/v2/{repo}/manifests/{digest}")


def start_registry(
    d: Path, source: str, extra: dict[str, Any], http_extra: dict[str, Any]
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a docker-registry with its state in `d` on a free loopback port (`extra`: more
    top-level config, `http_extra`: more `http` config) and copy pyapply-test/busybox:latest
    into it from the `source` registry with skopeo (with our credentials when `extra` sets
    up auth). Returns its address and process; the caller kills it."""
    addr = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(d / "data")}},
        "http": {"addr": addr, **http_extra},
        **extra,
    }
    (d / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = d / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(d / "config.yml")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_http(addr, proc, log)
        creds = ["--dest-creds", f"{USER}:{PASSWORD}"] if "auth" in extra else []
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                *creds,
                f"docker://{source}/{BUSYBOX_PATH}:latest",
                f"docker://{addr}/{BUSYBOX_PATH}:latest",
            ],
            check=True,
            timeout=120,
        )
    except BaseException:
        kill(proc)
        raise
    return addr, proc


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: str
) -> Iterator[tuple[str, Path]]:
    """A docker-registry serving HTTPS with a self-signed certificate for 127.0.0.1;
    yields its address and the certificate (the CA to trust)."""
    for tool in ("docker-registry", "skopeo", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed; run `make setup`", pytrace=False)
    d = tmp_path_factory.mktemp("tlsreg")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    tls = {"tls": {"certificate": str(d / "cert.pem"), "key": str(d / "key.pem")}}
    addr, proc = start_registry(d, registry, {}, tls)
    try:
        yield addr, d / "cert.pem"
    finally:
        kill(proc)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[str]:
    """A second docker-registry on a free loopback port behind htpasswd basic auth (bcrypt),
    holding pyapply-test/busybox:latest pushed with skopeo. Killed and removed afterwards."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.fail("docker-registry and skopeo are needed; run `make setup`", pytrace=False)
    d = tmp_path_factory.mktemp("authreg")
    hashed = bcrypt_hash(PASSWORD)
    assert hashed.startswith("$2")
    (d / "htpasswd").write_text(f"{USER}:{hashed}\n")
    auth = {"auth": {"htpasswd": {"realm": "pyapply-test", "path": str(d / "htpasswd")}}}
    addr, proc = start_registry(d, registry, auth, {})
    try:
        yield addr
    finally:
        kill(proc)
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# pulls from the local registry


def test_pull_unpacks_and_records(store: ImageStore, busybox: str) -> None:
    events: list[PullProgress] = []
    rec = store.pull(busybox, progress=events.append)
    assert rec.refs == (busybox,)
    assert rec.architecture == host_platform().architecture
    assert any(e.startswith("PATH=") for e in rec.config.env), rec.config
    assert rec.config.cmd == ("sh",)
    bb = layer_file(store, rec, "bin/busybox")
    assert bb is not None and bb.stat().st_size > 100_000 and os.access(bb, os.X_OK)
    # every blob is content-addressed and verified on disk
    for digest in rec.blobs:
        path = Path(store.blobs.path(digest))
        assert path.parent.parent.name == "blobs"
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert {e.digest for e in downloads(events)} == set(rec.blobs) - {rec.id} - {
        d.split("@")[1] for d in rec.repo_digests
    }
    assert downloads(events)[-1].done == downloads(events)[-1].total
    index = json.loads((Path(store.dir) / "index.json").read_text())
    assert index["refs"] == {busybox: rec.id}
    assert store.resolve(busybox.split(":latest")[0]) == rec  # default tag
    assert store.list() == [rec]


def test_pull_again_downloads_nothing_and_by_digest(store: ImageStore, busybox: str) -> None:
    rec = store.pull(busybox)
    mtimes = {d: os.stat(store.blobs.path(d)).st_mtime_ns for d in rec.blobs}
    layer_inodes = [os.stat(p).st_ino for p in store.layer_dirs(rec)]
    events: list[PullProgress] = []
    again = store.pull(busybox, progress=events.append)
    assert again == rec
    assert downloads(events) == []
    assert {e.action for e in events} == {"present"}
    assert {d: os.stat(store.blobs.path(d)).st_mtime_ns for d in rec.blobs} == mtimes
    assert [os.stat(p).st_ino for p in store.layer_dirs(rec)] == layer_inodes

    # a layer directory removed behind our back is unpacked again from its stored blob, by a
    # pull (no download) or by layer_dirs
    shutil.rmtree(store.layer_dirs(rec)[0])
    events.clear()
    assert store.pull(busybox, progress=events.append) == rec
    assert [e.action for e in events] == ["cached", "unpacked"]
    shutil.rmtree(store.layer_dirs(rec)[0])
    assert os.path.isfile(os.path.join(store.layer_dirs(rec)[0], "bin/busybox"))

    [repo_digest] = rec.repo_digests
    events.clear()
    by_digest = store.pull(repo_digest, progress=events.append)
    assert by_digest.id == rec.id
    assert downloads(events) == []
    assert store.resolve(repo_digest) == by_digest
    with pytest.raises(NotFound):
        store.pull(repo_digest.split("@")[0] + "@sha256:" + "0" * 64)


def test_concurrent_pulls_share_blobs(store: ImageStore, busybox: str) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(ImageStore(store.root).pull(busybox))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len({r.id for r in results}) == 1
    assert list(Path(store.tmp_dir).iterdir()) == []
    assert len(os.listdir(store.layers_dir)) == 1


def test_registry_errors(store: ImageStore, registry: str) -> None:
    with pytest.raises(NotFound, match="not found"):
        store.pull(f"{registry}/{BUSYBOX_PATH}:no-such-tag")
    with pytest.raises(NotFound):
        store.pull(f"{registry}/pyapply-test/no-such-repo-{secrets.token_hex(3)}:latest")
    with pytest.raises(TransientError, match="unreachable"):
        store.pull(f"127.0.0.1:{free_port()}/x/y:latest")
    with pytest.raises(PermanentError, match="reference"):
        store.pull("UPPER/Case")
    assert store.list() == []


def test_manifest_list_and_oci_index_resolved_for_platform(
    store: ImageStore, registry: str, busybox: str, test_repo: tuple[str, list[str]], tmp_path: Path
) -> None:
    repo, pushed = test_repo
    # this platform's image: busybox, copied into the test repository (blobs mounted)
    status, _, bb_manifest = api(
        registry,
        "GET",
        f"/v2/{BUSYBOX_PATH}/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert status == 200
    bb = json.loads(bb_manifest)
    for desc in [bb["config"], *bb["layers"]]:
        status, _, data = api(registry, "GET", f"/v2/{BUSYBOX_PATH}/blobs/{desc['digest']}")
        assert status == 200
        push_blob(registry, repo, data, mount_from=BUSYBOX_PATH)
    bb_digest = put_manifest(registry, repo, "bb", bb_manifest, bb["mediaType"])
    pushed.append(bb_digest)

    # another platform's image: a tiny OCI image made here
    here = host_platform()
    other = ("arm64", "v8") if here.architecture != "arm64" else ("amd64", None)
    layer = rootfs_tar({"marker": f"built for {other[0]}".encode()})
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps(
        {
            "architecture": other[0],
            **({"variant": other[1]} if other[1] else {}),
            "os": "linux",
            "config": {"Env": ["PATH=/bin", "OTHER=1"], "Cmd": ["/marker"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    tiny = oci_manifest(registry, repo, config, [layer])
    tiny_digest = put_manifest(registry, repo, "tiny", tiny, MT_OCI_MANIFEST)
    pushed.append(tiny_digest)

    for media_type, tag in ((MT_OCI_INDEX, "oci"), (MT_DOCKER_LIST, "docker")):
        entries = [
            {
                "mediaType": MT_OCI_MANIFEST,
                "digest": tiny_digest,
                "size": len(tiny),
                "platform": {
                    "os": "linux",
                    "architecture": other[0],
                    **({"variant": other[1]} if other[1] else {}),
                },
            },
            {
                "mediaType": bb["mediaType"],
                "digest": bb_digest,
                "size": len(bb_manifest),
                "platform": {"os": "linux", "architecture": here.architecture},
            },
            {
                "mediaType": bb["mediaType"],
                "digest": bb_digest,
                "size": len(bb_manifest),
                "platform": {"os": "windows", "architecture": here.architecture},
            },
        ]
        index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
        index_digest = put_manifest(registry, repo, tag, index.encode(), media_type)
        pushed.append(index_digest)

        ref = f"{registry}/{repo}:{tag}"
        rec = store.pull(ref)
        assert rec.id == json.loads(json.dumps(bb))["config"]["digest"]
        assert f"{registry}/{repo}@{index_digest}" in rec.repo_digests
        assert layer_file(store, rec, "bin/busybox") is not None

        foreign = ImageStore(
            str(tmp_path / f"root-{tag}"), platform="linux/" + "/".join(filter(None, other))
        )
        rec2 = foreign.pull(ref)
        assert rec2.architecture == other[0] and "OTHER=1" in rec2.config.env
        marker = layer_file(foreign, rec2, "marker")
        assert marker is not None and marker.read_bytes() == f"built for {other[0]}".encode()
        # by the index's digest too
        assert foreign.pull(f"{registry}/{repo}@{index_digest}").id == rec2.id
        with pytest.raises(NotFound, match="no image for platform linux/s390x"):
            ImageStore(str(tmp_path / "s390x"), platform="linux/s390x").pull(ref)


def test_tampered_blob_refused(
    store: ImageStore, registry: str, test_repo: tuple[str, list[str]]
) -> None:
    """A manifest whose layer descriptor names a digest the registry's content doesn't match
    can't be made with a verifying registry; a wrong diff_id in the config can: refused, and
    nothing of it is kept."""
    repo, pushed = test_repo
    layer = rootfs_tar({"f": b"content"})
    config = json.dumps(
        {
            "architecture": host_platform().architecture,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
        }
    ).encode()
    manifest = oci_manifest(registry, repo, config, [layer])
    pushed.append(put_manifest(registry, repo, "bad", manifest, MT_OCI_MANIFEST))
    with pytest.raises(PermanentError, match="diff_id"):
        store.pull(f"{registry}/{repo}:bad")
    assert store.list() == []
    assert os.listdir(store.layers_dir) == []
    assert list(Path(store.tmp_dir).iterdir()) == []


# ---------------------------------------------------------------------------------------------
# transport


def test_https_verified_and_insecure_fallback(
    tmp_path: Path, registry: str, tls_registry: tuple[str, Path]
) -> None:
    addr, cert = tls_registry
    ref = f"{addr}/{BUSYBOX_PATH}:latest"
    # loopback is insecure by default: TLS without verification is tried first, and kept
    store = ImageStore(str(tmp_path / "a"))
    rec = store.pull(ref)
    assert store.client._schemes[addr] == "https"
    # ... and the plain-HTTP registry falls back to http
    store.pull(f"{registry}/{BUSYBOX_PATH}:latest")
    assert store.client._schemes[registry] == "http"

    strict = RegistryClient(insecure_loopback=False, docker_config=False)
    assert strict.base_url(addr) == f"https://{addr}"
    with pytest.raises(PermanentError, match=r"TLS verification of .* failed"):
        ImageStore(str(tmp_path / "b"), client=strict).pull(ref)
    with pytest.raises(PermanentError, match="plain-HTTP registry"):
        ImageStore(str(tmp_path / "c"), client=strict).pull(f"{registry}/{BUSYBOX_PATH}:latest")
    trusted = RegistryClient(insecure_loopback=False, docker_config=False, ca_file=str(cert))
    assert ImageStore(str(tmp_path / "d"), client=trusted).pull(ref).id == rec.id
    # a registry named insecure explicitly (host:port, host or CIDR) gets the same treatment
    for entry in (addr, "127.0.0.1", "127.0.0.0/8"):
        named = RegistryClient(insecure=[entry], insecure_loopback=False, docker_config=False)
        assert named.is_insecure(addr)
        assert ImageStore(str(tmp_path / "e"), client=named).pull(ref).id == rec.id


# ---------------------------------------------------------------------------------------------
# auth


def test_basic_auth(tmp_path: Path, auth_registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"{auth_registry}/{BUSYBOX_PATH}:latest"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    anon = ImageStore(str(tmp_path / "anon"))
    with pytest.raises(PermanentError, match="requires authentication") as err:
        anon.pull(ref)
    assert not isinstance(err.value, (NotFound, TransientError))
    assert anon.list() == []

    wrong = ImageStore(str(tmp_path / "wrong"), credentials={auth_registry: (USER, "nope")})
    with pytest.raises(PermanentError, match=r"denied access .* wrong user or password"):
        wrong.pull(ref)

    good = ImageStore(str(tmp_path / "good"), credentials={auth_registry: (USER, PASSWORD)})
    rec = good.pull(ref)
    assert layer_file(good, rec, "bin/busybox") is not None

    # credentials from a docker config.json (`docker login` writes these)
    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {auth_registry: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    from_config = ImageStore(str(tmp_path / "cfg"))
    assert from_config.pull(ref).id == rec.id


class _TokenRegistry(http.server.ThreadingHTTPServer):
    """A token server (/token, basic auth) and a registry front (/v2/...) that demands its
    bearer tokens and forwards authorised GETs to the real local registry."""

    daemon_threads = True

    def __init__(self, backend: str) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.backend = backend
        self.addr = f"127.0.0.1:{self.server_address[1]}"
        self.tokens: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        self.token_headers: list[dict[str, str]] = []
        self.unauthorised = 0
        self.allow_anonymous = False
        self.tamper: str | None = None  # "corrupt" | "truncate" blob bodies
        self.blob_delay = 0.0
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: _TokenRegistry

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        for part, status in (("/flaky/", 503), ("/limited/", 429), ("/gone/", 404)):
            if part in self.path:
                self._send(status, b'{"errors":[{"code":"UNKNOWN","message":"test"}]}', {})
                return
        if self.path.startswith("/token"):
            from urllib.parse import parse_qsl, urlsplit

            srv.token_requests.append(dict(parse_qsl(urlsplit(self.path).query)))
            srv.token_headers.append(dict(self.headers.items()))
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            given = self.headers.get("Authorization")
            if given != expected and not (given is None and srv.allow_anonymous):
                self._send(401, b'{"details":"bad credentials"}', {})
                return
            token = secrets.token_hex(16)
            srv.tokens.add(token)
            self._send(200, json.dumps({"token": token, "expires_in": 300}).encode(), {})
            return
        auth = self.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and auth[7:] in srv.tokens):
            srv.unauthorised += 1
            repo = self.path.split("/")[2:4]
            challenge = (
                f'Bearer realm="http://{srv.addr}/token",service="pyapply-token-test",'
                f'scope="repository:{"/".join(repo)}:pull"'
            )
            self._send(
                401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge}
            )
            return
        fwd = {k: v for k, v in self.headers.items() if k.lower() == "accept"}
        if "/blobs/" in self.path and srv.blob_delay:
            with srv.lock:
                srv.active += 1
                srv.max_active = max(srv.max_active, srv.active)
            time.sleep(srv.blob_delay)
            with srv.lock:
                srv.active -= 1
        status, hdrs, body = api(srv.backend, "GET", self.path, headers=fwd)
        keep = {k: v for k, v in hdrs.items() if k in ("content-type", "docker-content-digest")}
        if "/blobs/" in self.path and srv.tamper == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 1])
        elif "/blobs/" in self.path and srv.tamper == "truncate":
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self._send(status, body, keep)


@pytest.fixture
def token_registry(registry: str) -> Iterator[_TokenRegistry]:
    srv = _TokenRegistry(registry)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(10)


def test_bearer_token_flow(
    tmp_path: Path, token_registry: _TokenRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    ref = f"{token_registry.addr}/{BUSYBOX_PATH}:latest"
    store = ImageStore(str(tmp_path / "root"), credentials={token_registry.addr: (USER, PASSWORD)})
    rec = store.pull(ref)
    assert layer_file(store, rec, "bin/busybox") is not None
    assert token_registry.token_requests[0] == {
        "service": "pyapply-token-test",
        "scope": f"repository:{BUSYBOX_PATH}:pull",
    }
    # one challenge, then the token is reused for the manifest, config and layer requests
    assert token_registry.unauthorised == 1 and len(token_registry.tokens) == 1

    # 5xx and 429 are worth retrying; 404 is not
    with pytest.raises(TransientError, match="HTTP 503"):
        store.pull(f"{token_registry.addr}/flaky/x:latest")
    with pytest.raises(TransientError, match="HTTP 429"):
        store.pull(f"{token_registry.addr}/limited/x:latest")
    with pytest.raises(NotFound):
        store.pull(f"{token_registry.addr}/gone/x:latest")

    bad = ImageStore(str(tmp_path / "bad"), credentials={token_registry.addr: (USER, "wrong")})
    with pytest.raises(PermanentError, match="token service refused the configured credentials"):
        bad.pull(ref)
    anon = ImageStore(str(tmp_path / "anon"))
    with pytest.raises(PermanentError, match="refused anonymous access"):
        anon.pull(ref)
    # anonymous tokens (public images on Docker Hub work this way)
    token_registry.allow_anonymous = True
    assert anon.pull(ref).id == rec.id
    assert "Authorization" not in token_registry.token_headers[-1]

    # tokens revoked (expired): the next request is challenged again and a new token fetched
    before = len(token_registry.token_requests)
    token_registry.tokens.clear()
    assert store.pull(ref).id == rec.id
    assert len(token_registry.token_requests) == before + 1


def test_corrupt_and_truncated_blobs_refused(
    tmp_path: Path, token_registry: _TokenRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry (here: a front of the real one) serving content that does not match its
    digest: refused as permanent, nothing kept; a transfer cut short: transient."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    token_registry.allow_anonymous = True
    ref = f"{token_registry.addr}/{BUSYBOX_PATH}:latest"
    store = ImageStore(str(tmp_path / "root"))
    for mode, error, match in (
        ("corrupt", PermanentError, "hashes to"),
        ("truncate", TransientError, "truncated|connection lost"),
    ):
        token_registry.tamper = mode
        with pytest.raises(error, match=match) as err:
            store.pull(ref)
        assert isinstance(err.value, PermanentError) == (mode == "corrupt")
        assert store.list() == []
        assert os.listdir(store.layers_dir) == []
        assert list(Path(store.tmp_dir).iterdir()) == []
        # only the (verified) manifest made it into the store
        stored = list(store.blobs.digests())
        assert len(stored) == 1 and json.loads(store.blobs.read(stored[0]))["layers"]
    token_registry.tamper = None
    assert layer_file(store, store.pull(ref), "bin/busybox") is not None


def test_layers_fetched_in_parallel_and_stacked(
    tmp_path: Path,
    registry: str,
    token_registry: _TokenRegistry,
    test_repo: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A four-layer image (pushed to the real registry, pulled through the token front that
    delays each blob): layers download concurrently, with progress, and unpack in order
    with the upper layers' whiteouts and opaque markers."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    repo, pushed = test_repo
    contents = [
        {"etc/a": b"1", "etc/b": b"1", "var/cache/x": b"old"},
        {"etc/c": b"2"},
        {"etc/.wh.a": b"", "var/cache/.wh..wh..opq": b"", "var/cache/y": b"new"},
        {"etc/b": b"4"},
    ]
    layers = [rootfs_tar(files) for files in contents]
    diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(b)).hexdigest() for b in layers]
    config = json.dumps(
        {
            "architecture": host_platform().architecture,
            "os": "linux",
            "config": {"Env": ["A=1"], "Healthcheck": {"Test": ["CMD", "true"]}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = oci_manifest(registry, repo, config, layers)
    pushed.append(put_manifest(registry, repo, "layered", manifest, MT_OCI_MANIFEST))

    token_registry.allow_anonymous = True
    token_registry.blob_delay = 0.5
    store = ImageStore(str(tmp_path / "root"), max_parallel=4)
    events: list[PullProgress] = []
    lock = threading.Lock()

    def progress(e: PullProgress) -> None:
        with lock:
            events.append(e)

    rec = store.pull(f"{token_registry.addr}/{repo}:layered", progress=progress)
    assert token_registry.max_active >= 3
    assert rec.diff_ids == tuple(diff_ids)
    assert rec.config.healthcheck == {"Test": ["CMD", "true"]}
    done = {e.digest for e in downloads(events) if e.done == e.total}
    assert done == set(rec.layer_blobs)
    assert {e.digest for e in events if e.action == "unpacked"} == set(diff_ids)
    dirs = [Path(p) for p in store.layer_dirs(rec)]
    assert [p.name for p in dirs] == [d[7:] for d in diff_ids]
    assert (dirs[0] / "etc/a").read_bytes() == b"1" and (dirs[3] / "etc/b").read_bytes() == b"4"
    wh = os.lstat(dirs[2] / "etc/a")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(dirs[2] / "var/cache", "trusted.overlay.opaque") == b"y"

    # the kernel agrees: the layers as overlayfs lowerdirs give the expected merged view
    mnt = tmp_path / "merged"
    mnt.mkdir()
    lower = ":".join(str(p) for p in reversed(dirs))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(mnt)],
        check=True,
        timeout=30,
    )
    try:
        assert sorted(os.listdir(mnt / "etc")) == ["b", "c"]
        assert (mnt / "etc/b").read_bytes() == b"4"
        assert sorted(os.listdir(mnt / "var/cache")) == ["y"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


# ---------------------------------------------------------------------------------------------
# imports


def test_import_docker_save(store: ImageStore, busybox: str, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    subprocess.run(
        ["docker", "save", "-o", str(archive), "pyapply-test/busybox:latest"],
        check=True,
        timeout=120,
    )
    docker_id = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", "pyapply-test/busybox:latest"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    [rec] = store.import_archive(str(archive))
    assert rec.id == docker_id
    assert rec.refs == ("docker.io/pyapply-test/busybox:latest",)
    assert store.resolve("pyapply-test/busybox") == rec
    assert layer_file(store, rec, "bin/busybox") is not None
    assert any(e.startswith("PATH=") for e in rec.config.env)
    # the same image from the registry: same id, layer already unpacked, nothing new kept
    layers_before = os.listdir(store.layers_dir)
    events: list[PullProgress] = []
    pulled = store.pull(busybox, progress=events.append)
    assert pulled.id == rec.id
    assert [e.action for e in events if e.digest in rec.diff_ids] == ["present"]
    assert os.listdir(store.layers_dir) == layers_before


def test_import_oci_layout_dir_and_archive(store: ImageStore, busybox: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    archive = tmp_path / "oci.tar"
    for dest in (f"oci:{layout}:latest", f"oci-archive:{archive}:latest"):
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{busybox}", dest],
            check=True,
            timeout=120,
        )
    [from_dir] = store.import_archive(str(layout), "local/oci-dir:1")
    assert from_dir.refs == ("docker.io/local/oci-dir:1",)
    assert layer_file(store, from_dir, "bin/busybox") is not None
    [from_tar] = store.import_archive(str(archive))  # ref.name "latest" alone names nothing
    assert from_tar.id == from_dir.id
    assert from_tar.refs == ("docker.io/local/oci-dir:1",)


def test_import_rootfs_tarball(store: ImageStore, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    tarball.write_bytes(rootfs_tar({"bin/hello": b"#!/bin/sh\necho hi\n", "etc/motd": b"hi"}))
    [rec] = store.import_archive(str(tarball), "local/rootfs:1")
    assert rec.refs == ("docker.io/local/rootfs:1",)
    assert rec.architecture == host_platform().architecture
    assert (Path(store.layer_dirs(rec)[0]) / "etc/motd").read_bytes() == b"hi"
    with pytest.raises(PermanentError, match="give it a reference"):
        store.import_archive(str(tarball))


# ---------------------------------------------------------------------------------------------
# prune


def test_prune_removes_unreferenced(store: ImageStore, busybox: str, tmp_path: Path) -> None:
    bb = store.pull(busybox)
    tarball = tmp_path / "rootfs.tar.gz"
    tarball.write_bytes(rootfs_tar({"only-here": b"1"}))
    [other] = store.import_archive(str(tarball), "local/prune-me:1")
    other_layer = store.layer_dirs(other)[0]
    other_only = set(other.blobs) - set(bb.blobs)
    assert other_only and all(store.blobs.has(d) for d in other_only)

    assert store.prune({busybox}) == [other.id]
    assert store.resolve("local/prune-me:1") is None
    assert not os.path.exists(other_layer)
    assert not any(store.blobs.has(d) for d in other_only)
    assert all(store.blobs.has(d) for d in bb.blobs)
    assert store.resolve(busybox) == bb and os.path.isdir(store.layer_dirs(bb)[0])

    assert store.prune({bb.id}) == []
    assert store.prune(set()) == [bb.id]
    assert store.list() == []
    assert list(store.blobs.digests()) == []
    assert os.listdir(store.layers_dir) == []
