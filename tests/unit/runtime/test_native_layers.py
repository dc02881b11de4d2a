"""Unit tests of the native image store's primitives: safe layer unpacking (whiteouts, opaque
directories, links, devices, every escape attempt refused), the blob store's digest checks,
and the registry client's pure parts (references, platforms, challenges). Tarballs are built
here, in memory. Whiteouts and owners need root, as the native runtime does."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pyapply.runtime.base import NotFound, PermanentError, TransientError
from pyapply.runtime.native.images import ImageStore
from pyapply.runtime.native.layers import (
    BlobStore,
    DigestMismatch,
    UnsafeLayerError,
    diff_id_of,
    unpack_layer,
)
from pyapply.runtime.native.reference import (
    Platform,
    host_platform,
    parse_platform,
    parse_reference,
    select_platform,
)
from pyapply.runtime.native.registry import (
    RegistryClient,
    docker_config_credentials,
    parse_challenge,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and owners need root")


def make_tar(
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], gz: bool = False
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tuple):
                info, data = e
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(e)
    raw = buf.getvalue()
    return gzip.compress(raw) if gz else raw


def f(
    name: str, data: bytes = b"x", mode: int = 0o644, **kw: object
) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    ti.mtime = 1_600_000_000
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def d(name: str, mode: int = 0o755, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = 1_500_000_000
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    ti.linkname = target
    ti.mode = 0o777
    return ti


def dev(name: str, kind: bytes, major: int = 1, minor: int = 3) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.devmajor, ti.devminor = major, minor
    ti.mode = 0o666
    return ti


@pytest.fixture
def unpack(tmp_path: Path) -> Callable[..., Path]:
    """unpack(tar_bytes, expected_diff_id=None) -> the unpacked layer directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    counter = [0]

    def run(data: bytes, expected: str | None = None) -> Path:
        counter[0] += 1
        blob = tmp_path / f"blob{counter[0]}"
        blob.write_bytes(data)
        dest = tmp_path / f"layer{counter[0]}"
        unpack_layer(str(blob), str(dest), str(tmp), expected)
        return dest

    return run


def assert_nothing_left(tmp_path: Path) -> None:
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("layer")]


# ---------------------------------------------------------------------------------------------
# plain content


@needs_root
def test_files_dirs_modes_owners_mtimes(unpack: Callable[..., Path]) -> None:
    data = make_tar(
        [
            d("./", mode=0o755),
            d("etc", mode=0o750, uid=0, gid=42),
            f("etc/passwd", b"root:x:0:0\n", mode=0o644, uid=0, gid=0),
            f("usr/bin/su", b"#!su", mode=0o4755, uid=0, gid=0),  # implicit parents
            f("home/u/file", b"mine", mode=0o600, uid=1000, gid=1000),
            d("ro", mode=0o555),
            f("ro/inside", b"ok"),
        ]
    )
    root = unpack(data)
    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    st = os.stat(root / "etc")
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == 42
    assert int(st.st_mtime) == 1_500_000_000
    su = os.stat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755  # setuid kept (chmod after chown)
    home = os.stat(root / "home/u/file")
    assert (home.st_uid, home.st_gid) == (1000, 1000)
    assert int(home.st_mtime) == 1_600_000_000
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o555
    assert (root / "ro/inside").read_bytes() == b"ok"


@needs_root
def test_symlinks_hardlinks_devices_fifos_xattrs(unpack: Callable[..., Path]) -> None:
    xf, xdata = f("bin/tool", b"binary", mode=0o755)
    xf.pax_headers = {"SCHILY.xattr.user.comment": "hello"}
    data = make_tar(
        [
            (xf, xdata),
            link("bin/alias", "tool"),
            link("bin/abs", "/etc/shadow"),  # a dangling/absolute symlink is just a symlink
            link("bin/tool2", "bin/tool", hard=True),
            link("bin/tool3", "/bin/tool", hard=True),  # absolute hardlink names: archive-relative
            dev("dev/null", tarfile.CHRTYPE, 1, 3),
            dev("dev/loop0", tarfile.BLKTYPE, 7, 0),
            dev("run/fifo", tarfile.FIFOTYPE),
        ]
    )
    root = unpack(data)
    assert os.readlink(root / "bin/alias") == "tool"
    assert os.readlink(root / "bin/abs") == "/etc/shadow"
    assert os.stat(root / "bin/tool").st_ino == os.stat(root / "bin/tool2").st_ino
    assert os.stat(root / "bin/tool").st_nlink == 3
    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(os.lstat(root / "dev/loop0").st_mode)
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    try:
        assert os.getxattr(root / "bin/tool", "user.comment") == b"hello"
    except OSError:
        pytest.skip("no user xattrs on this file system")


@needs_root
def test_gzip_layer_and_diff_id(tmp_path: Path, unpack: Callable[..., Path]) -> None:
    raw = make_tar([f("a", b"1")])
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    root = unpack(gzip.compress(raw), diff_id)
    assert (root / "a").read_bytes() == b"1"
    blob = tmp_path / "g"
    blob.write_bytes(gzip.compress(raw))
    assert diff_id_of(str(blob)) == diff_id


@needs_root
def test_zstd_layer_and_diff_id(tmp_path: Path, unpack: Callable[..., Path]) -> None:
    import zstandard

    raw = make_tar([f("z", b"zstd")])
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    packed = zstandard.ZstdCompressor().compress(raw)
    assert packed[:4] == b"\x28\xb5\x2f\xfd"  # zstd's magic: sniffed, not told
    root = unpack(packed, diff_id)
    assert (root / "z").read_bytes() == b"zstd"
    blob = tmp_path / "z"
    blob.write_bytes(packed)
    assert diff_id_of(str(blob)) == diff_id


@needs_root
def test_diff_id_mismatch_refused_nothing_kept(tmp_path: Path, unpack: Callable[..., Path]) -> None:
    with pytest.raises(DigestMismatch, match="expected diff_id"):
        unpack(make_tar([f("a")]), "sha256:" + "0" * 64)
    assert_nothing_left(tmp_path)


@needs_root
def test_replacing_entries_never_writes_through(
    tmp_path: Path, unpack: Callable[..., Path]
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    data = make_tar(
        [
            link("x", str(outside)),
            f("x", b"replaced"),  # replaces the symlink, does not follow it
            d("dir"),
            f("dir/child"),
            f("dir", b"now a file"),  # a non-dir over a dir removes the dir
        ]
    )
    root = unpack(data)
    assert outside.read_bytes() == b"precious"
    assert not os.path.islink(root / "x") and (root / "x").read_bytes() == b"replaced"
    assert (root / "dir").read_bytes() == b"now a file"


@needs_root
def test_replaced_directory_attributes_never_land_outside(
    tmp_path: Path, unpack: Callable[..., Path]
) -> None:
    """A directory's owner/mode/mtime are applied at the end; if the directory was replaced
    by a symlink meanwhile (itself or a parent), they must not follow it out of the layer."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b").mkdir()
    os.chmod(outside, 0o700)
    os.chmod(outside / "b", 0o700)
    before = {p: os.stat(p) for p in (outside, outside / "b")}
    data = make_tar(
        [
            d("d", mode=0o777, uid=1234),
            link("d", str(outside)),
            d("a", mode=0o777),
            d("a/b", mode=0o777, uid=1234),
            link("a", str(outside)),
        ]
    )
    root = unpack(data)
    assert os.readlink(root / "d") == str(outside) and os.readlink(root / "a") == str(outside)
    for p, st in before.items():
        now = os.stat(p)
        assert (now.st_mode, now.st_uid, now.st_mtime_ns) == (st.st_mode, st.st_uid, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# whiteouts


@needs_root
def test_whiteouts_become_overlay_char_devices(unpack: Callable[..., Path]) -> None:
    data = make_tar([d("etc"), f("etc/.wh.motd", b""), f(".wh.tmp", b"")])
    root = unpack(data)
    for p in (root / "etc/motd", root / "tmp"):
        st = os.lstat(p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert not (root / "etc/.wh.motd").exists()
    assert not os.path.lexists(root / ".wh.tmp")


@needs_root
def test_opaque_directory(unpack: Callable[..., Path]) -> None:
    data = make_tar([d("var/cache"), f("var/cache/.wh..wh..opq", b""), f("var/cache/new")])
    root = unpack(data)
    assert os.getxattr(root / "var/cache", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(root / "var/cache")) == ["new"]
    # an opaque marker for a directory with no entry of its own creates it
    root2 = unpack(make_tar([f("lonely/.wh..wh..opq", b"")]))
    assert os.getxattr(root2 / "lonely", "trusted.overlay.opaque") == b"y"


@needs_root
def test_aufs_metadata_ignored_and_overlay_xattrs_dropped(unpack: Callable[..., Path]) -> None:
    evil = d("d")
    evil.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc"}
    data = make_tar([f(".wh..wh.plnk/123.456", b""), f(".wh..wh.aufs", b""), evil])
    root = unpack(data)
    assert not any(n.startswith(".wh.") for n in os.listdir(root))
    assert "trusted.overlay.redirect" not in os.listxattr(root / "d")


# ---------------------------------------------------------------------------------------------
# escapes


ESCAPES: list[tuple[str, list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], str]] = [
    ("dotdot", [f("../evil")], "'..' component"),
    ("dotdot-deep", [f("a/b/../../../evil")], "'..' component"),
    ("abs-dotdot", [f("/../../etc/evil")], "'..' component"),
    ("symlink-out-prefix", [link("up", "../../.."), f("up/evil")], "goes through the symlink"),
    ("symlink-abs-prefix", [link("etc", "/etc"), f("etc/passwd")], "goes through the symlink"),
    (
        "symlink-nested-prefix",
        [d("a"), link("a/b", "/"), f("a/b/c/evil")],
        "goes through the symlink",
    ),
    (
        "symlink-dir-entry",
        [link("out", "/tmp"), d("out/newdir")],
        "goes through the symlink",
    ),
    ("hardlink-dotdot", [link("h", "../../etc/passwd", hard=True)], "'..' component"),
    (
        "hardlink-outside-abs",
        [link("h", "/etc/passwd", hard=True)],
        "does not exist in the layer",
    ),
    (
        "hardlink-through-symlink",
        [link("s", "/etc"), link("h", "s/passwd", hard=True)],
        "goes through the symlink",
    ),
    ("hardlink-missing", [d("etc"), link("h", "etc/passwd", hard=True)], "not an earlier entry"),
    ("hardlink-to-dir", [d("dir"), link("h", "dir", hard=True)], "a directory"),
    ("whiteout-dotdot", [f("a/.wh...", b"")], "invalid whiteout"),
    ("whiteout-through-symlink", [link("s", "/etc"), f("s/.wh.passwd", b"")], "symlink"),
    ("parent-is-file", [f("file"), f("file/child")], "is not a directory"),
    # a directory the extractor already went through, replaced by a later entry: the
    # lookup cache of known directories must forget it
    (
        "known-dir-replaced-by-symlink",
        [d("a"), d("a/b"), f("a/b/ok"), link("a", "/etc"), f("a/b/evil")],
        "goes through the symlink",
    ),
    (
        "implicit-dir-replaced-by-symlink",
        [f("a/b/ok"), link("a", "/tmp"), f("a/b/evil")],
        "goes through the symlink",
    ),
    (
        "nested-known-dir-replaced",
        [d("a"), d("a/b"), f("a/b/ok"), link("a/b", "/"), f("a/b/evil")],
        "goes through the symlink",
    ),
    ("known-dir-whited-out", [d("a"), f("a/ok"), f(".wh.a", b""), f("a/x")], "not a directory"),
    (
        "known-dir-replaced-by-hardlink",
        [d("a"), f("a/ok"), f("t"), link("a", "t", hard=True), f("a/x")],
        "not a directory",
    ),
]


@needs_root
@pytest.mark.parametrize(("case", "entries", "message"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escapes_refused(
    tmp_path: Path,
    unpack: Callable[..., Path],
    case: str,
    entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]],
    message: str,
) -> None:
    before = set(os.listdir("/etc"))
    with pytest.raises(UnsafeLayerError, match=message) as err:
        unpack(make_tar(entries))
    assert isinstance(err.value, PermanentError)
    assert_nothing_left(tmp_path)
    assert set(os.listdir("/etc")) == before
    assert not (tmp_path.parent / "evil").exists()


@needs_root
def test_absolute_names_are_normalised_inside(tmp_path: Path, unpack: Callable[..., Path]) -> None:
    root = unpack(make_tar([f("/etc/hostname", b"box"), f("//./usr/./bin//x", b"y")]))
    assert (root / "etc/hostname").read_bytes() == b"box"
    assert (root / "usr/bin/x").read_bytes() == b"y"


def test_not_a_tar_refused(tmp_path: Path, unpack: Callable[..., Path]) -> None:
    with pytest.raises(PermanentError, match="not a valid tar"):
        unpack(gzip.compress(b"this is not a tar archive" * 40))
    assert_nothing_left(tmp_path)


# ---------------------------------------------------------------------------------------------
# blob store


def test_blob_store_verifies_and_is_content_addressed(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"), str(tmp_path / "tmp"))
    data = b"hello blobs"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.put_bytes(data, digest) == digest
    assert store.has(digest)
    assert Path(store.path(digest)) == tmp_path / "blobs/sha256" / digest[7:]
    assert store.read(digest) == data
    assert store.put_bytes(data) == digest  # stored once: same name
    assert list(store.digests()) == [digest]

    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(DigestMismatch, match="expected"):
        store.put_bytes(data, wrong)
    assert not store.has(wrong)
    with pytest.raises(DigestMismatch, match="longer"):
        store.ingest(io.BytesIO(data).read, digest, size=3)
    with pytest.raises(TransientError, match="truncated"):
        store.ingest(io.BytesIO(data).read, digest, size=len(data) + 10)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(store.digests()) == [digest]


@pytest.mark.parametrize("bad", ["sha256:../../etc", "sha256:ABC", "md5:00", "sha256:" + "g" * 64])
def test_blob_store_refuses_bad_digests(tmp_path: Path, bad: str) -> None:
    store = BlobStore(str(tmp_path / "blobs"), str(tmp_path / "tmp"))
    with pytest.raises(PermanentError, match="digest"):
        store.path(bad)


# ---------------------------------------------------------------------------------------------
# image store without a registry: rootfs import, remove, prune


@needs_root
def test_rootfs_import_remove_prune(tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    tarball.write_bytes(
        make_tar([f("bin/hello", b"hi", mode=0o755), f("etc/os-release", b"x")], gz=True)
    )
    store = ImageStore(str(tmp_path / "root"))
    [rec] = store.import_archive(str(tarball), "local/hello:1")
    assert rec.refs == ("docker.io/local/hello:1",)
    assert store.resolve("local/hello:1") == rec
    assert store.resolve(rec.id[7:19]) == rec
    [layer] = store.layer_dirs(rec)
    assert (Path(layer) / "bin/hello").read_bytes() == b"hi"
    assert any(e.startswith("PATH=") for e in rec.config.env)
    # importing again changes nothing but the record's refs
    [again] = store.import_archive(str(tarball), "local/hello:2")
    assert again.id == rec.id and again.refs == (
        "docker.io/local/hello:1",
        "docker.io/local/hello:2",
    )
    store.remove("local/hello:1")
    assert store.resolve("local/hello:1") is None and store.resolve("local/hello:2") is not None
    with pytest.raises(NotFound):
        store.remove("local/hello:1")
    assert store.prune({"local/hello:2"}) == []
    assert os.path.isdir(layer)
    assert store.prune(set()) == [rec.id]
    assert store.list() == []
    assert not os.path.exists(layer)
    assert list(store.blobs.digests()) == []
    with pytest.raises(PermanentError, match="give it a reference"):
        store.import_archive(str(tarball))


@needs_root
def test_remove_deletes_the_files_no_image_or_container_needs(tmp_path: Path) -> None:
    """`image rm` used to say "deleted" and leave every blob and layer until a prune."""
    shared = f("bin/shared", b"same base", mode=0o755)
    store = ImageStore(str(tmp_path / "root"))
    paths = {}
    for name in ("a", "b", "c"):
        tarball = tmp_path / f"{name}.tar"
        tarball.write_bytes(make_tar([shared] if name != "c" else [f("only-c", b"c")]))
        [rec] = store.import_archive(str(tarball), f"local/{name}:1")
        paths[name] = (rec, store.layer_dirs(rec)[0])
    (rec_a, layer_ab), (rec_b, _), (_, layer_c) = paths["a"], paths["b"], paths["c"]
    assert layer_ab == paths["b"][1] != layer_c  # a and b share their one layer

    store.remove("local/a:1")  # b still needs the layer: only a's config blob goes
    assert os.path.isdir(layer_ab) and store.resolve("local/b:1") is not None
    assert not store.blobs.has(rec_a.id) and store.blobs.has(rec_b.id)
    store.remove("local/b:1")
    assert not os.path.exists(layer_ab) and not store.blobs.has(rec_b.id)
    # a container still runs on c's layer (rm --force): the layer stays, the blobs go
    store.remove("local/c:1", keep_layers=[layer_c])
    assert os.path.isdir(layer_c) and list(store.blobs.digests()) == []
    assert store.prune(set()) == [] and not os.path.exists(layer_c)  # prune takes it


def test_index_is_json_and_atomic(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "root"))
    assert store.list() == []
    assert store.resolve("busybox") is None
    assert not (tmp_path / "root/images/index.json").exists()
    (tmp_path / "root/images/index.json").write_text(json.dumps({"version": 1}))
    assert store.list() == []


# ---------------------------------------------------------------------------------------------
# registry client: the pure parts


@pytest.mark.parametrize(
    ("ref", "registry", "repo", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("library/x:1.2", "docker.io", "library/x", "1.2", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
        ("127.0.0.1:5000/a/b:tag", "127.0.0.1:5000", "a/b", "tag", None),
        ("localhost/a", "localhost", "a", "latest", None),
        ("registry.local:5000/shop/web:1.4", "registry.local:5000", "shop/web", "1.4", None),
        ("busybox@sha256:" + "a" * 64, "docker.io", "library/busybox", None, "sha256:" + "a" * 64),
        ("h:1/x:t@sha256:" + "b" * 64, "h:1", "x", "t", "sha256:" + "b" * 64),
    ],
)
def test_parse_reference(
    ref: str, registry: str, repo: str, tag: str | None, digest: str | None
) -> None:
    r = parse_reference(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)


@pytest.mark.parametrize("bad", ["", "UPPER/case", "a//b", "x@sha256:123", "x:bad tag", "x:"])
def test_parse_reference_refuses(bad: str) -> None:
    with pytest.raises(PermanentError, match="reference"):
        parse_reference(bad)


def _index(*platforms: tuple[str, str, str | None]) -> dict[str, object]:
    return {
        "manifests": [
            {
                "digest": f"sha256:{i:064x}",
                "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})},
            }
            for i, (o, a, v) in enumerate(platforms)
        ]
    }


def test_select_platform() -> None:
    idx = _index(
        ("linux", "amd64", None),
        ("linux", "arm64", "v8"),
        ("linux", "arm", "v6"),
        ("linux", "arm", "v7"),
        ("unknown", "unknown", None),
    )
    assert select_platform(idx, Platform("linux", "amd64"))["digest"].endswith("0")
    assert select_platform(idx, parse_platform("linux/aarch64"))["digest"].endswith("1")
    assert select_platform(idx, Platform("linux", "arm64", "v8"))["digest"].endswith("1")
    assert select_platform(idx, Platform("linux", "arm", "v7"))["digest"].endswith("3")
    assert select_platform(_index(("linux", "arm", "v6")), Platform("linux", "arm", "v7"))
    assert select_platform(_index(("linux", "arm64", None)), Platform("linux", "arm64", "v8"))
    with pytest.raises(NotFound, match="linux/s390x"):
        select_platform(idx, Platform("linux", "s390x"))
    with pytest.raises(NotFound):
        select_platform(_index(("linux", "arm", "v7")), Platform("linux", "arm", "v6"))
    assert host_platform().os == "linux"


def test_parse_challenge() -> None:
    ch = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert ch is not None and ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic"


def test_docker_config_credentials(tmp_path: Path) -> None:
    import base64

    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "auths": {
                    "127.0.0.1:5001": {"auth": base64.b64encode(b"alice:s3:cret").decode()},
                    "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
                    "broken": {"auth": "!!!"},
                }
            }
        )
    )
    creds = docker_config_credentials(str(cfg))
    assert creds["127.0.0.1:5001"] == ("alice", "s3:cret")
    assert creds["index.docker.io"] == ("bob", "pw")
    assert "broken" not in creds
    assert docker_config_credentials(str(tmp_path / "missing.json")) == {}


def test_insecure_registries_and_https_default() -> None:
    client = RegistryClient(
        insecure=["reg.local:5000", "plain.example", "10.1.0.0/16"], docker_config=False
    )
    assert client.is_insecure("reg.local:5000")
    assert not client.is_insecure("reg.local:5001")
    assert client.is_insecure("plain.example:8080")  # a bare host: any port
    assert client.is_insecure("10.1.2.3:5000") and not client.is_insecure("10.2.0.1:5000")
    assert client.is_insecure("127.0.0.1:5000") and client.is_insecure("localhost:5000")
    assert client.is_insecure("[::1]:5000")
    assert client.base_url("registry.example") == "https://registry.example"
    assert client.base_url("docker.io") == "https://registry-1.docker.io"
    strict = RegistryClient(insecure_loopback=False, docker_config=False)
    assert not strict.is_insecure("127.0.0.1:5000")
    assert strict.base_url("127.0.0.1:5000") == "https://127.0.0.1:5000"
    with pytest.raises(PermanentError, match="insecure registry"):
        RegistryClient(insecure=["10.0.0.0/99"], docker_config=False)
