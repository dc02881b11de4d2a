"""An OCI distribution (Docker Registry HTTP API v2) client: auth, manifests and blobs (the
references and platforms it takes are in reference.py). Standard library only (http.client, imported on the first request:
a build or a run whose images are all local never pays for it, nor for ssl).

- Transport: HTTPS with verified certificates by default. Registries named in `insecure`
  (`host`, `host:port` or a CIDR such as `10.0.0.0/8`) and loopback addresses (as dockerd
  does; `insecure_loopback=False` turns that off) are tried over HTTPS without verification
  first, then plain HTTP; the scheme that answered is remembered. `ca_file` adds trusted CAs.
  No proxy from the environment.
- Auth: anonymous first; on 401 the `WWW-Authenticate` challenge decides: `Basic` sends the
  configured credentials, `Bearer realm=...,service=...,scope=...` fetches a token from the
  realm (with the credentials, if any) and retries. Credentials: the `credentials` argument
  (host -> (user, password)), then `auths` of `$DOCKER_CONFIG/config.json` or
  `~/.docker/config.json`.
- Errors: connection refused/reset, timeouts, 5xx and 429 are TransientError; 401/403 after
  authenticating are PermanentError; 404 and MANIFEST_UNKNOWN/NAME_UNKNOWN/BLOB_UNKNOWN are
  NotFound; other 4xx are PermanentError with the registry's own message.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from pyapply.runtime.base import NotFound, PermanentError, TransientError
from pyapply.runtime.native.layers import BlobStore, DigestMismatch, check_digest, sha256_bytes
from pyapply.runtime.native.reference import (
    DOCKER_HUB,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_DOCKER_SCHEMA1,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    Platform,
    Reference,
    select_platform,
)

if TYPE_CHECKING:
    import http.client
    import ssl

DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io")

ACCEPT = ", ".join((MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST))
MAX_MANIFEST = 4 << 20
USER_AGENT = "pyapply-native/0.1"


def _hostname(host: str) -> str:
    """host[:port] -> host (IPv6 in brackets keeps them)."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    if host.count(":") == 1:
        return host.split(":")[0]
    return host


def is_loopback(host: str) -> bool:
    h = _hostname(host).strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Auth


class Challenge(msgspec.Struct, frozen=True):
    scheme: str  # "basic" | "bearer"
    params: Mapping[str, str]


_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge | None:
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "")
        for m in _PARAM_RE.finditer(rest)
    }
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}
    return Challenge(scheme.lower(), params)


def docker_config_credentials(path: str | None = None) -> dict[str, tuple[str, str]]:
    """host -> (user, password) from a docker config.json's `auths` (credential helpers are
    not consulted). Missing or unreadable: no credentials."""
    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
        path = os.path.join(base, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    out: dict[str, tuple[str, str]] = {}
    auths = data.get("auths") if isinstance(data, dict) else None
    for key, entry in (auths or {}).items():
        if not isinstance(entry, dict):
            continue
        user, pw = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                user, _, pw = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
        if not user:
            continue
        host = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        out[host] = (str(user), str(pw or ""))
    return out


# ---------------------------------------------------------------------------------------------
# HTTP


class _Response:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers

    def read(self, n: int = -1) -> bytes:
        import http.client

        try:
            return self.resp.read(n)
        except (http.client.IncompleteRead, OSError) as e:
            raise TransientError(f"connection lost while reading from the registry: {e}") from e

    def read_all(self, limit: int) -> bytes:
        data = self.read(limit + 1)
        if len(data) > limit:
            raise PermanentError(f"registry response larger than {limit} bytes")
        return data

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


def _error_detail(body: bytes) -> tuple[set[str], str]:
    try:
        errors = json.loads(body).get("errors") or []
        codes = {str(e.get("code", "")) for e in errors}
        msg = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        return codes, msg
    except (ValueError, AttributeError):
        return set(), body[:200].decode("utf-8", "replace").strip()


Progress = Callable[[int], None]
BLOCK = 1 << 20  # bytes per write when a request body is streamed


class Body(msgspec.Struct, frozen=True):
    """A request body: bytes, or `length` bytes of the file at `path` from `offset` (a blob
    or a chunk of it), read afresh for each attempt (a redirect, a retry after a 401); or
    `chunks` of a length not known ahead (sent with chunked transfer encoding, once: a
    second attempt finds the stream spent and sends nothing)."""

    length: int
    data: bytes | None = None
    path: str | None = None
    offset: int = 0
    chunks: Iterable[bytes] | None = None

    @classmethod
    def of(cls, data: bytes) -> Body:
        return cls(len(data), data=data)

    def reader(self) -> Any:
        if self.chunks is not None:
            return self.chunks
        if self.data is not None:
            return self.data
        assert self.path is not None
        return _FileSlice(self.path, self.offset, self.length)


class _FileSlice:
    """`read(n)` over a slice of a file (http.client streams a body through it, and stops
    at end of data: the file is closed then)."""

    def __init__(self, path: str, offset: int, length: int) -> None:
        self._f: Any = open(path, "rb")  # noqa: SIM115 (closed at the end of the slice)
        self._f.seek(offset)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0 or self._f is None:
            self.close()
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data: bytes = self._f.read(want)
        self._left -= len(data)
        if not data:
            self.close()
        return data

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __del__(self) -> None:
        self.close()


class RegistryClient:
    """A thread-safe registry client (parallel blob fetches share tokens)."""

    def __init__(
        self,
        credentials: Mapping[str, tuple[str, str]] | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 60.0,
        docker_config: bool = True,
        ca_file: str | None = None,
        insecure_loopback: bool = True,
    ) -> None:
        self.credentials: dict[str, tuple[str, str]] = {}
        if docker_config:
            self.credentials.update(docker_config_credentials())
        self.credentials.update(credentials or {})
        self.insecure: set[str] = set()
        self.insecure_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in insecure:
            if "/" in entry:
                try:
                    self.insecure_nets.append(ipaddress.ip_network(entry, strict=False))
                    continue
                except ValueError:
                    raise PermanentError(f"invalid insecure registry {entry!r}") from None
            self.insecure.add(entry.lower())
        self.insecure_loopback = insecure_loopback
        self.timeout = timeout
        self.ca_file = ca_file
        self._auth: dict[tuple[str, str], str] = {}  # (registry, repository) -> header
        self._auth_locks: dict[tuple[str, str], threading.Lock] = {}
        self._schemes: dict[str, str] = {}  # insecure host -> the scheme that answered
        self._lock = threading.Lock()

    # -- transport --------------------------------------------------------------------------

    # made on first use: loading the CA bundle costs ~40 ms each, which commands that never
    # pull (a no-op apply finds its images locally) should not pay
    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        import ssl

        return ssl.create_default_context(cafile=self.ca_file)

    @functools.cached_property
    def unverified_context(self) -> ssl.SSLContext:
        import ssl

        # nothing is verified with it, so no CA is loaded (create_default_context reads the
        # system's bundle, ~20-40 ms, at each command that talks to an insecure registry);
        # PROTOCOL_TLS_CLIENT keeps the defaults it would have (TLS 1.2 at least)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def is_insecure(self, host: str) -> bool:
        h = host.lower()
        if h in self.insecure or _hostname(h) in self.insecure:
            return True
        if self.insecure_loopback and is_loopback(h):
            return True
        try:
            addr = ipaddress.ip_address(_hostname(h).strip("[]"))
        except ValueError:
            return False
        return any(addr in net for net in self.insecure_nets)

    def base_url(self, registry: str) -> str:
        host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        if not self.is_insecure(host):
            return f"https://{host}"
        with self._lock:
            scheme = self._schemes.get(host)
        if scheme is None:
            scheme = self._probe(host)
            with self._lock:
                self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _probe(self, host: str) -> str:
        """An insecure registry: HTTPS (unverified) if it speaks TLS, else plain HTTP."""
        import http.client

        conn = http.client.HTTPSConnection(
            host, timeout=min(self.timeout, 10.0), context=self.unverified_context
        )
        try:
            conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
            conn.getresponse().read(65536)
            return "https"
        except (OSError, http.client.HTTPException):
            return "http"
        finally:
            conn.close()

    def _creds_for(self, registry: str) -> tuple[str, str] | None:
        keys = [registry, registry.lower()]
        if registry == DOCKER_HUB:
            keys += list(DOCKER_HUB_AUTH_KEYS)
        for k in keys:
            if k in self.credentials:
                return self.credentials[k]
        return None

    def _open(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None = None
    ) -> _Response:
        """One request, following redirects (Authorization is dropped when the host changes,
        and an https -> http redirect is refused unless the target is insecure). A `body` is
        sent again from its start after a redirect."""
        import http.client
        import ssl

        hdrs = dict(headers)
        if body is not None and body.chunks is None:
            hdrs["Content-Length"] = str(body.length)
        hdrs.setdefault("User-Agent", USER_AGENT)
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(6):
            parts = urllib.parse.urlsplit(url)
            if parts.netloc != origin:
                hdrs.pop("Authorization", None)
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                context = (
                    self.unverified_context if self.is_insecure(parts.netloc) else self.ssl_context
                )
                conn = http.client.HTTPSConnection(
                    parts.netloc, timeout=self.timeout, context=context, blocksize=BLOCK
                )
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(
                    parts.netloc, timeout=self.timeout, blocksize=BLOCK
                )
            else:
                raise PermanentError(f"unsupported URL {url!r}")
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            try:
                conn.request(method, path, body=body.reader() if body else None, headers=hdrs)
                resp = conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                conn.close()
                raise PermanentError(
                    f"TLS verification of {parts.netloc} failed ({e.verify_message}); "
                    "configure it as an insecure registry only if you trust the network"
                ) from e
            except ssl.SSLError as e:
                conn.close()
                if isinstance(e, ssl.SSLEOFError):
                    raise TransientError(f"TLS connection to {parts.netloc} cut: {e}") from e
                raise PermanentError(
                    f"TLS handshake with {parts.netloc} failed ({e}); if it is a plain-HTTP "
                    "registry, configure it as insecure"
                ) from e
            except socket.gaierror as e:
                conn.close()
                if e.errno == socket.EAI_AGAIN:
                    raise TransientError(f"cannot resolve {parts.hostname}: {e}") from e
                raise PermanentError(f"cannot resolve registry host {parts.hostname}") from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                raise TransientError(f"registry {parts.netloc} unreachable: {e}") from e
            r = _Response(conn, resp)
            if r.status in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                new = urllib.parse.urljoin(url, r.headers["Location"])
                r.close()
                np = urllib.parse.urlsplit(new)
                if (
                    parts.scheme == "https"
                    and np.scheme == "http"
                    and not self.is_insecure(np.netloc)
                ):
                    raise PermanentError(f"registry redirected to insecure {new}")
                url = new
                if r.status == 303:
                    method, body = "GET", None
                    hdrs.pop("Content-Length", None)
                continue
            return r
        raise PermanentError(f"too many redirects from {url}")

    def _token(self, ch: Challenge, registry: str, repository: str, push: bool = False) -> str:
        realm = ch.params.get("realm", "")
        rp = urllib.parse.urlsplit(realm)
        if rp.scheme not in ("http", "https") or not rp.netloc:
            raise PermanentError(f"registry {registry} sent an unusable token realm {realm!r}")
        query: list[tuple[str, str]] = []
        if ch.params.get("service"):
            query.append(("service", ch.params["service"]))
        # a challenge may name several scopes (a mount needs pull on the source repository
        # too), space-separated; the token service takes each as its own parameter
        scopes = (ch.params.get("scope") or f"repository:{repository}:pull").split()
        if push:
            own = f"repository:{repository}:"
            scopes = [s for s in scopes if not s.startswith(own)] + [own + "pull,push"]
        query.extend(("scope", scope) for scope in scopes)
        sep = "&" if rp.query else "?"
        url = realm + sep + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        creds = self._creds_for(registry)
        if creds and (rp.scheme == "https" or self.is_insecure(rp.netloc)):
            headers["Authorization"] = _basic(creds)
        r = self._open("GET", url, headers)
        try:
            body = r.read_all(1 << 20)
        finally:
            r.close()
        if r.status in (401, 403):
            raise PermanentError(
                f"registry {registry}: the token service refused "
                + ("the configured credentials" if creds else "anonymous access")
                + f" for {repository} (HTTP {r.status})"
            )
        if r.status == 429 or r.status >= 500:
            raise TransientError(f"token service {rp.netloc} answered HTTP {r.status}")
        if r.status != 200:
            raise PermanentError(f"token service {rp.netloc} answered HTTP {r.status}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token or not isinstance(token, str):
            raise PermanentError(f"token service {rp.netloc} returned no token")
        return f"Bearer {token}"

    def _authorize(
        self, registry: str, repository: str, challenges: list[str], push: bool = False
    ) -> str:
        parsed = [c for c in (parse_challenge(h) for h in challenges) if c is not None]
        for ch in parsed:
            if ch.scheme == "bearer":
                return self._token(ch, registry, repository, push)
        for ch in parsed:
            if ch.scheme == "basic":
                creds = self._creds_for(registry)
                if creds is None:
                    raise PermanentError(
                        f"registry {registry} requires authentication for {repository} and "
                        "no credentials are configured for it (pass credentials or add it to "
                        "~/.docker/config.json)"
                    )
                return _basic(creds)
        raise PermanentError(
            f"registry {registry} requires an unsupported authentication: {challenges!r}"
        )

    def request(
        self,
        method: str,
        ref: Reference,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        body: Body | None = None,
        url: str | None = None,
        push: bool = False,
    ) -> _Response:
        """An authenticated request for `path` (below /v2/<repository>/) of `ref`'s
        repository, or for `url` (an upload location the registry gave, relative to its
        base); non-2xx answers are turned into errors. `push`: a token, if one is needed,
        is asked with push access from the start (a push's first request is a HEAD, whose
        challenge asks for pull only)."""
        base = self.base_url(ref.registry)
        if url is not None:
            url = urllib.parse.urljoin(base + "/", url)
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise PermanentError(f"registry {ref.registry} gave an unusable location {url!r}")
        else:
            url = f"{base}/v2/{ref.repository}/{path}"
        key = (ref.registry, ref.repository)
        hdrs = dict(headers or {})
        with self._lock:
            sent = self._auth.get(key)
        if sent:
            hdrs["Authorization"] = sent
        r = self._open(method, url, hdrs, body)
        if r.status == 401:
            challenges = r.headers.get_all("WWW-Authenticate") or []
            r.read(65536)
            r.close()
            # one authentication per repository at a time: parallel requests refused
            # together reuse what the first of them obtained
            with self._lock:
                key_lock = self._auth_locks.setdefault(key, threading.Lock())
            with key_lock:
                with self._lock:
                    auth = self._auth.get(key)
                if not auth or auth == sent:
                    auth = self._authorize(ref.registry, ref.repository, challenges, push)
                    with self._lock:
                        self._auth[key] = auth
            hdrs["Authorization"] = auth
            r = self._open(method, url, hdrs, body)
            if r.status in (401, 403):
                r.close()
                creds = self._creds_for(ref.registry)
                raise PermanentError(
                    f"registry {ref.registry} denied access to {ref.repository} "
                    f"(HTTP {r.status}) "
                    + (
                        "with the configured credentials: wrong user or password, or no "
                        + ("push" if method in ("POST", "PUT", "PATCH") else "pull")
                        + " permission"
                        if creds
                        else "to anonymous clients: credentials are needed"
                    )
                )
        if 200 <= r.status < 300:
            return r
        answer = r.read(65536)
        r.close()
        codes, detail = _error_detail(answer)
        what = f"{ref} ({method} {path or urllib.parse.urlsplit(url).path})"
        if r.status == 404 or codes & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"}:
            raise NotFound(f"not found in registry: {what}: {detail or 'HTTP 404'}")
        if r.status == 429 or r.status >= 500:
            raise TransientError(f"registry {ref.registry} answered HTTP {r.status} for {what}")
        if r.status == 403:
            raise PermanentError(f"registry {ref.registry} denied access to {what}: {detail}")
        raise PermanentError(
            f"registry {ref.registry} answered HTTP {r.status} for {what}: {detail}"
        )

    # -- API --------------------------------------------------------------------------------

    def get_manifest(self, ref: Reference, reference: str | None = None) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, its digest verified."""
        target = reference or ref.reference
        r = self.request("GET", ref, f"manifests/{target}", {"Accept": ACCEPT})
        try:
            body = r.read_all(MAX_MANIFEST)
        finally:
            r.close()
        digest = sha256_bytes(body)
        expected = target if target.startswith(("sha256:", "sha512:")) else None
        header = r.headers.get("Docker-Content-Digest")
        if expected is None and header and header.startswith("sha256:"):
            expected = header
        if expected is not None:
            algo, _ = check_digest(expected)
            if algo != "sha256":
                import hashlib

                digest = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
            if digest != expected:
                raise DigestMismatch(f"manifest of {ref} hashes to {digest}, expected {expected}")
        media_type = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise PermanentError(f"manifest of {ref} is not JSON: {e}") from e
        if isinstance(doc, dict) and doc.get("mediaType"):
            media_type = str(doc["mediaType"])
        elif isinstance(doc, dict) and media_type not in MANIFEST_TYPES + INDEX_TYPES:
            media_type = MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST
        if media_type in MT_DOCKER_SCHEMA1 or (
            isinstance(doc, dict) and doc.get("schemaVersion") == 1
        ):
            raise PermanentError(
                f"{ref} is a Docker schema 1 image, which is not supported; push it again with a "
                "recent client"
            )
        return body, media_type, digest

    def fetch_blob(
        self,
        ref: Reference,
        digest: str,
        size: int | None,
        store: BlobStore,
        progress: Progress | None = None,
    ) -> str:
        """Download blob `digest` of `ref`'s repository into `store`, verified."""
        check_digest(digest)
        r = self.request("GET", ref, f"blobs/{digest}")
        try:
            return store.ingest(r.read, digest, size, progress)
        finally:
            r.close()

    def resolve(
        self, ref: Reference, want: Platform
    ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
        """Follow `ref` down to one image manifest for `want`. Returns the documents seen
        ((digest, body), top first: index, then manifest) and the parsed image manifest."""
        chain: list[tuple[str, bytes]] = []
        body, media_type, digest = self.get_manifest(ref)
        for _ in range(3):
            chain.append((digest, body))
            doc = json.loads(body)
            if media_type in INDEX_TYPES:
                desc = select_platform(doc, want)
                body, media_type, digest = self.get_manifest(ref, str(desc.get("digest")))
                continue
            if media_type in MANIFEST_TYPES or "layers" in doc:
                if not isinstance(doc.get("config"), dict):
                    raise PermanentError(f"manifest of {ref} has no config")
                return chain, doc
            raise PermanentError(f"{ref}: unsupported manifest media type {media_type!r}")
        raise PermanentError(f"{ref}: indexes nested too deeply")

    # -- push -------------------------------------------------------------------------------

    def blob_exists(self, ref: Reference, digest: str) -> bool:
        """Whether `ref`'s repository holds blob `digest` (HEAD, as the spec's existence
        check before an upload)."""
        check_digest(digest)
        try:
            r = self.request("HEAD", ref, f"blobs/{digest}", push=True)
        except NotFound:
            return False
        r.close()
        return True

    def start_upload(self, ref: Reference, digest: str, mount_from: str | None) -> Upload | None:
        """Open an upload session for blob `digest` in `ref`'s repository. With
        `mount_from` (another repository of the same registry holding the blob), ask for a
        cross-repository mount first: None when the registry mounted it (201); a registry
        that cannot mount answers with an upload session instead (202), which is used."""
        path = "blobs/uploads/"
        if mount_from:
            path += "?" + urllib.parse.urlencode({"mount": digest, "from": mount_from})
        r = self.request("POST", ref, path, body=Body.of(b""), push=True)
        try:
            r.read(65536)
        finally:
            r.close()
        if r.status == 201 and mount_from:
            return None
        location = r.headers.get("Location")
        if r.status != 202 or not location:
            raise PermanentError(
                f"registry {ref.registry} did not open an upload for {ref.repository} "
                f"(HTTP {r.status}{'' if location else ', no Location'})"
            )
        try:
            min_chunk = int(r.headers.get("OCI-Chunk-Min-Length") or 0)
        except ValueError:
            min_chunk = 0
        return Upload(location, max(0, min_chunk))

    def upload_blob(
        self,
        ref: Reference,
        upload: Upload,
        path: str,
        size: int,
        digest: str,
        chunk_size: int = 64 << 20,
    ) -> None:
        """Send the blob at `path` through `upload`: one PUT when it fits in `chunk_size`,
        else PATCH chunks (at least the registry's minimum chunk length) and a closing PUT.
        A cut chunk is sent again from where the registry says the upload stands."""
        if size <= chunk_size:
            self.close_upload(ref, upload.location, digest, Body(size, path=path))
            return
        step = max(chunk_size, upload.min_chunk)
        while upload.offset < size:
            n = min(step, size - upload.offset)
            self.send_chunk(ref, upload, Body(n, path=path, offset=upload.offset))
        self.close_upload(ref, upload.location, digest, Body.of(b""))

    def send_chunk(self, ref: Reference, upload: Upload, body: Body) -> None:
        """PATCH `body` as the blob's bytes from `upload.offset` on. `upload` moves on to
        where the registry has got: past the chunk, or, when a transient failure cut the
        chunk, to where the registry says the upload stands (GET on the session), from
        where the caller sends again (resumable; at most RESUME_ATTEMPTS cuts per blob)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{upload.offset}-{upload.offset + body.length - 1}",
        }
        try:
            r = self.request("PATCH", ref, "", headers, body=body, url=upload.location, push=True)
        except TransientError:
            upload.resumes += 1
            if upload.resumes > RESUME_ATTEMPTS:
                raise
            upload.location, upload.offset = self._upload_status(ref, upload.location)
            return
        r.read(65536)
        r.close()
        upload.location = r.headers.get("Location") or upload.location
        upload.offset = _range_end(r.headers.get("Range"), upload.offset + body.length)

    def stream_chunk(self, ref: Reference, upload: Upload, chunks: Iterable[bytes]) -> None:
        """PATCH `chunks` to the upload session as they come, their length unknown ahead:
        chunked transfer encoding and no Content-Range (the streamed upload docker's own
        push makes, so registries take it). `upload.offset` moves to where the registry
        got, never past the bytes sent; when a transient failure cut the stream, to where
        the registry says the upload stands (GET on the session), from where the caller
        sends the rest some other way (a stream cannot be sent twice)."""
        sent = 0

        def counted() -> Iterator[bytes]:
            nonlocal sent
            for chunk in chunks:
                sent += len(chunk)
                yield chunk

        headers = {"Content-Type": "application/octet-stream"}
        start = upload.offset
        try:
            r = self.request(
                "PATCH",
                ref,
                "",
                headers,
                body=Body(-1, chunks=counted()),
                url=upload.location,
                push=True,
            )
        except TransientError:
            upload.resumes += 1
            if upload.resumes > RESUME_ATTEMPTS:
                raise
            upload.location, upload.offset = self._upload_status(ref, upload.location)
            return
        r.read(65536)
        r.close()
        upload.location = r.headers.get("Location") or upload.location
        # (a registry's `Range: 0-0` may mean no byte at all: what was sent bounds it)
        upload.offset = min(_range_end(r.headers.get("Range"), start + sent), start + sent)

    def _upload_status(self, ref: Reference, location: str) -> tuple[str, int]:
        """(location, offset) of an upload session: where to go on after a cut chunk."""
        r = self.request("GET", ref, "", url=location, push=True)
        r.read(65536)
        r.close()
        return r.headers.get("Location") or location, _range_end(r.headers.get("Range"), 0)

    def close_upload(self, ref: Reference, location: str, digest: str, body: Body) -> None:
        """The closing PUT of an upload session (with the blob, or its last bytes, or
        nothing), naming the digest the whole blob must have."""
        sep = "&" if "?" in location else "?"
        url = f"{location}{sep}{urllib.parse.urlencode({'digest': digest})}"
        headers = {"Content-Type": "application/octet-stream"}
        r = self.request("PUT", ref, "", headers, body=body, url=url, push=True)
        r.read(65536)
        r.close()
        if r.status != 201:
            raise PermanentError(
                f"registry {ref.registry} answered HTTP {r.status} to the upload of {digest}"
            )
        got = r.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatch(f"registry {ref.registry} stored {digest} as {got}")

    def put_manifest(self, ref: Reference, body: bytes, media_type: str) -> str:
        """PUT a manifest under `ref`'s tag; returns its digest (checked against the one
        the registry reports)."""
        if ref.tag is None:
            raise PermanentError(f"{ref}: a manifest is pushed under a tag")
        digest = sha256_bytes(body)
        r = self.request(
            "PUT",
            ref,
            f"manifests/{ref.tag}",
            {"Content-Type": media_type},
            body=Body.of(body),
            push=True,
        )
        r.read(65536)
        r.close()
        got = r.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise DigestMismatch(
                f"registry {ref.registry} stored the manifest as {got}, not {digest}"
            )
        return digest


RESUME_ATTEMPTS = 3


class Upload(msgspec.Struct):
    """An open blob upload session: where to send the data next, the registry's minimum
    chunk length (OCI-Chunk-Min-Length, 0 when it sets none), the bytes the registry holds
    so far and the chunks cut (and resumed) so far."""

    location: str
    min_chunk: int = 0
    offset: int = 0
    resumes: int = 0


def _range_end(header: str | None, default: int) -> int:
    """The offset after an upload's `Range: 0-N` header (N+1); `default` without one."""
    if not header:
        return default
    _, _, end = header.partition("-")
    try:
        return int(end) + 1
    except ValueError:
        return default


def _basic(creds: tuple[str, str]) -> str:
    raw = f"{creds[0]}:{creds[1]}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")
