"""The native builder end to end, through the real CLI (`pyapply image build`) on a private
state root holding the busybox test image (the `native` fixture): a multi-stage Dockerfile
with ARG, RUN, COPY --from a stage, .dockerignore, USER and HEALTHCHECK, run with
`pyapply -f`; the cache (a rebuild executes no RUN, a changed file rebuilds from its step
on); reproducible layers with --no-cache; and the errors.

RUN steps count themselves on a small HTTP server on the host's loopback that the test runs
(builds have the host's network): each executed RUN fetches a path of its own, a cached one
fetches nothing. Nothing but loopback is reached.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import NativeUnderTest

pytestmark = pytest.mark.e2e

DOCKERFILE = f"""\
ARG BASE={TEST_IMAGE}
FROM $BASE AS build
ARG GREETING=hello
ARG PORT
RUN wget -q -O- http://127.0.0.1:$PORT/build && mkdir /out \\
    && echo "$GREETING from the build stage" > /out/msg
COPY lib/ /out/lib/

FROM $BASE
ARG PORT
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd \\
    && echo "app:x:1000:" >> /etc/group && wget -q -O- http://127.0.0.1:$PORT/base
COPY --from=build /out /app
COPY conf/ /app/conf/
RUN wget -q -O- http://127.0.0.1:$PORT/after-conf && cat /app/conf/* > /app/conf.all
COPY . /app/ctx/
USER app
WORKDIR /app
HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD test -f /app/msg
CMD ["sleep", "100000"]
"""


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: Counter[str]

    def do_GET(self) -> None:
        self.hits[self.path.strip("/")] += 1
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hits() -> Iterator[tuple[int, Counter[str]]]:
    """(port, counter of paths fetched) of an HTTP server on 127.0.0.1, for this test."""
    counter: Counter[str] = Counter()
    handler = type("Handler", (_Counter,), {"hits": counter})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _context(tmp: Path) -> Path:
    ctx = tmp / "ctx"
    for rel, text in {
        "Dockerfile": DOCKERFILE,
        ".dockerignore": "secret.txt\n*.log\nlib/*.tmp\n!lib/keep.tmp\n",
        "lib/util.sh": "echo util\n",
        "lib/drop.tmp": "dropped\n",
        "lib/keep.tmp": "kept\n",
        "conf/a.conf": "alpha\n",
        "conf/b.conf": "beta\n",
        "secret.txt": "do not ship\n",
        "debug.log": "noise\n",
    }.items():
        path = ctx / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ctx


def _image(native: NativeUnderTest, ref: str) -> dict[str, object] | None:
    rec = native.native.image_store.resolve(ref)
    return None if rec is None else {"id": rec.id, "diff_ids": rec.diff_ids}


def _manifest(stack: str, image: str) -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app:
      image: {image}
      stop_grace_period: 1s
"""


def test_multistage_build_cache_and_run(
    native: NativeUnderTest, tmp_path: Path, hits: tuple[int, Counter[str]]
) -> None:
    port, counter = hits
    ctx = _context(tmp_path)
    cli = native.cli()
    ref = "local/built-app:1"
    build = ("image", "build", str(ctx), "-t", ref, "--build-arg", f"PORT={port}")
    build_args = (*build, "--build-arg", "GREETING=bonjour")

    t0 = time.monotonic()
    out = cli.ok(*build_args)
    cold = time.monotonic() - t0
    assert counter == Counter({"build": 1, "base": 1, "after-conf": 1}), out
    assert "[8/16] RUN echo" in out and "DONE" in out and "CACHED" not in out
    first = _image(native, ref)
    assert first is not None

    # run it with pyapply -f: the stage's output, the user, .dockerignore, the healthcheck
    stack = native.stack
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(_manifest(stack, ref))
    cli.ok("-f", str(manifest))
    name = f"{stack}-app-1"
    code, text = native.exec(name, "sh", "-c", "cat /app/msg; id -u; pwd; cat /app/conf.all")
    assert code == 0 and text.split("\n")[:5] == [
        "bonjour from the build stage",
        "1000",
        "/app",
        "alpha",
        "beta",
    ], text
    code, text = native.exec(name, "sh", "-c", "cd /app && find lib ctx | sort")
    listed = set(text.split())
    assert {"lib/util.sh", "lib/keep.tmp", "ctx/conf/a.conf", "ctx/Dockerfile"} <= listed, text
    assert not {"lib/drop.tmp", "ctx/secret.txt", "ctx/debug.log"} & listed, text
    deadline = time.monotonic() + 20
    while native.observe.must(name).health != "healthy" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert native.observe.must(name).health == "healthy"

    # the same build again: every file step from the cache, no RUN executed, same image
    t0 = time.monotonic()
    out = cli.ok(*build_args)
    warm = time.monotonic() - t0
    assert counter == Counter({"build": 1, "base": 1, "after-conf": 1}), out
    assert out.count("CACHED") == 8 and "(16 steps, 8 cached)" in out, out
    assert _image(native, ref) == first
    assert cli.run("diff", "-f", str(manifest), "--exit-code").returncode == 0

    # one copied file changes: its COPY and what follows run again, nothing before it
    (ctx / "conf" / "b.conf").write_text("beta, changed\n")
    out = cli.ok(*build_args)
    assert counter == Counter({"build": 1, "base": 1, "after-conf": 2}), out
    changed = _image(native, ref)
    assert changed is not None and changed["id"] != first["id"]
    # base, RUN, COPY --from: the same layers; COPY conf/ (the 4th) on: new ones
    assert changed["diff_ids"][:3] == first["diff_ids"][:3]  # type: ignore[index]
    assert changed["diff_ids"][3] != first["diff_ids"][3]  # type: ignore[index]

    # --no-cache executes everything and gives the very same layers and image
    out = cli.ok(*build_args, "--no-cache", "-o", "json")
    assert counter == Counter({"build": 2, "base": 2, "after-conf": 3}), out
    result = json.loads(out)
    assert result["cached"] == 0 and result["image_id"] == changed["id"]
    assert _image(native, ref) == changed
    cli.ok("down", "-f", str(manifest))
    print(f"16-step build: cold {cold:.2f}s, warm {warm:.2f}s")


def _fails(native: NativeUnderTest, ctx: Path, dockerfile: str, *extra: str) -> str:
    (ctx / "Dockerfile").write_text(dockerfile)
    out = native.cli().run("image", "build", str(ctx), "-t", "local/broken:1", *extra)
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr
    assert native.native.image_store.resolve("local/broken:1") is None
    return out.stderr


def test_bad_builds_fail_clearly_and_tag_nothing(native: NativeUnderTest, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nRUN true\nFROB it\n")
    assert "error: Dockerfile:3: unknown instruction: FROB" in err
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nRUN <<EOF\necho never closed\n")
    assert "error: Dockerfile:2: unterminated heredoc" in err
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nRUN echo first; echo second; exit 3\nRUN true\n")
    assert "error: Dockerfile:2: RUN echo first; echo second; exit 3 failed with exit code 3" in err
    assert "  | first\n  | second\n" in err
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nADD http://example.invalid/x.tgz /x\n")
    assert "Dockerfile:2: ADD http://example.invalid/x.tgz: fetching URLs is not supported" in err
    (ctx / "local.txt").write_text("local\n")
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nADD --checksum=sha256:{'0' * 64} local.txt /\n")
    assert "error: Dockerfile:2: ADD --checksum: only a URL source can be checked" in err
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nRUN --mount=type=ssh,id=agent ssh-add -l\n")
    assert "error: Dockerfile:2: RUN --mount=type=ssh is not supported by this builder" in err
    err = _fails(native, ctx, f"FROM --platform=linux/s390x {TEST_IMAGE}\n")
    assert "Dockerfile:1: FROM --platform=linux/s390x: this builder builds for the host's" in err
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nCOPY missing.txt /\n")
    assert "Dockerfile:2: COPY: missing.txt: no such file or directory in the build context" in err
    # a symlink in the context resolves inside it, never to the host's files
    (ctx / "hostetc").symlink_to("/etc")
    err = _fails(native, ctx, f"FROM {TEST_IMAGE}\nCOPY hostetc/hostname /stolen\n")
    assert "COPY: hostetc/hostname: no such file or directory in the build context" in err
    out = native.cli().run("image", "build", str(tmp_path / "nowhere"), "-t", "local/broken:1")
    assert out.returncode == 1 and "build context" in out.stderr and "does not exist" in out.stderr
    # nothing of the failed builds is left: containers, temporary dirs (mounts, cgroups and
    # processes are checked by the fixture)
    assert not list((native.root / "containers").glob("build-*"))
    assert not list((native.root / "build" / "tmp").iterdir())


def test_more_instructions(native: NativeUnderTest, tmp_path: Path) -> None:
    """ONBUILD triggers, ADD of a local tar, globs with --chmod/--chown, COPY --from an
    image, a deletion (a whiteout layer), heredocs, SHELL, --target; the checks run as a
    RUN of the build itself (over the layers made before it), the config is read back."""
    import tarfile

    cli = native.cli()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nONBUILD RUN echo triggered > /onbuild\n")
    cli.ok("image", "build", str(ctx), "-t", "local/onbuild-base:1")
    payload = tmp_path / "payload"
    (payload / "inside").mkdir(parents=True)
    (payload / "inside" / "file.txt").write_text("from the archive\n")
    with tarfile.open(ctx / "rootfs.tar.gz", "w:gz") as tf:
        tf.add(payload / "inside", arcname="inside")
    (ctx / "a.sh").write_text("echo a\n")
    (ctx / "b.sh").write_text("echo b\n")
    # the host's resolv.conf as it is (a RUN is in the host's network namespace)
    resolv = hashlib.md5(Path("/etc/resolv.conf").read_bytes()).hexdigest()
    checks = " && ".join(
        [
            f'test "$(md5sum < /etc/resolv.conf | cut -d" " -f1)" = {resolv}',
            'test "$(cat /onbuild)" = triggered',
            'test "$(cat /opt/inside/file.txt)" = "from the archive"',
            'test "$(stat -c %a:%u:%g /scripts/a.sh)" = 700:1:2',
            "test -f /scripts/b.sh",
            "test -x /bb",
            "test ! -e /www",
            'test "$(cat /etc/motd)" = "hello world"',
        ]
    )
    (ctx / "Dockerfile").write_text(
        "FROM local/onbuild-base:1 AS checks\n"
        'SHELL ["/bin/sh", "-ec"]\n'
        "ADD rootfs.tar.gz /opt/\n"
        "COPY --chmod=700 --chown=1:2 *.sh /scripts/\n"
        f"COPY --from={TEST_IMAGE} /bin/busybox /bb\n"
        "RUN rm -rf /www\n"
        "ENV WHO=world\n"
        "RUN cat <<EOF > /etc/motd\nhello $WHO\nEOF\n"
        f"RUN {checks}\n"
        'RUN --network=none test "$(ls /sys/class/net)" = lo\n'
        'ENTRYPOINT ["/bb"]\nEXPOSE 8080\nVOLUME /data\nSTOPSIGNAL SIGINT\nLABEL tier=test\n'
        "FROM checks AS never\nRUN exit 9\n"
    )
    out = cli.ok("image", "build", str(ctx), "-t", "local/more:1", "--target", "checks")
    assert "[1/16] FROM local/onbuild-base:1 AS checks" in out and "(16 steps, 0 cached)" in out
    assert "[2/16] RUN echo triggered > /onbuild" in out and "exit 9" not in out
    store = native.native.image_store
    rec = store.resolve("local/more:1")
    assert rec is not None
    cfg = store.config_document(rec)["config"]
    assert cfg["Entrypoint"] == ["/bb"] and cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["Volumes"] == {"/data": {}} and cfg["StopSignal"] == "SIGINT"
    assert cfg["Labels"] == {"tier": "test"} and "OnBuild" not in cfg
    base = store.resolve("local/onbuild-base:1")
    assert base is not None
    assert store.config_document(base)["config"]["OnBuild"] == ["RUN echo triggered > /onbuild"]


def test_a_killed_build_is_swept_by_the_next(native: NativeUnderTest, tmp_path: Path) -> None:
    """What a build killed half-way leaves (its unlocked scratch dir with an overlay still
    mounted, a RUN container) is removed by the next build, which then succeeds."""
    from pyapply.runtime.base import ContainerConfig
    from pyapply.runtime.native import rootfs

    rt = native.native
    record = rt.image_store.resolve(TEST_IMAGE)
    assert record is not None
    lowers = rt.image_store.layer_dirs(record)
    stale = native.root / "build" / "tmp" / "0123456789ab"
    (stale / "ovl-1").mkdir(parents=True)
    rootfs.mount_overlay(
        lowers, stale / "ovl-1/upper", stale / "ovl-1/work", stale / "ovl-1/rootfs"
    )
    name = "build-0123456789ab-1"
    rt.containers.create(
        ContainerConfig(name=name, image=TEST_IMAGE, command=("sleep", "100")), lowers
    )
    rt.containers.start(name)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nRUN true\n")
    native.cli().ok("image", "build", str(ctx), "-t", "local/after-kill:1")
    assert not stale.exists() and not rootfs.is_mounted(stale / "ovl-1/rootfs")
    assert rt.containers.state(name) is None
    assert not list((native.root / "build" / "tmp").iterdir())
    # and `system reset` takes the builder's cache and scratch space with everything else
    native.cli().ok("system", "reset", "--force")
    assert not (native.root / "build").exists()


def test_base_images_are_pulled_when_missing_and_with_pull(
    native: NativeUnderTest, tmp_path: Path, registry: str, busybox_archive: Path
) -> None:
    """A base image not in the store is pulled (from the local registry, where `make setup`
    pushed the test image); one that is stored is used as it is, unless --pull, which asks
    its registry again (here an address where nothing listens: the build fails, says why,
    and tags nothing)."""
    store = native.native.image_store
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    pulled = f"{registry}/{TEST_IMAGE}"
    (ctx / "Dockerfile").write_text(f"FROM {pulled}\nRUN test -x /bin/busybox\n")
    assert store.resolve(pulled) is None
    native.cli().ok("image", "build", str(ctx), "-t", "local/pulled-base:1")
    assert store.resolve(pulled) is not None
    nowhere = "127.0.0.1:9/pyapply-test/busybox:latest"
    store.import_archive(str(busybox_archive), nowhere)
    (ctx / "Dockerfile").write_text(f"FROM {nowhere}\nRUN true\n")
    native.cli().ok("image", "build", str(ctx), "-t", "local/stored-base:1")
    out = native.cli().run("image", "build", str(ctx), "-t", "local/pulled-again:1", "--pull")
    assert out.returncode == 1 and f"Dockerfile:1: base image {nowhere}:" in out.stderr, out
    assert store.resolve("local/pulled-again:1") is None


def test_a_base_with_compressed_layers(
    native: NativeUnderTest, tmp_path: Path, busybox_archive: Path
) -> None:
    """A base image whose layer blobs are gzip (as pulled images' are: the blob's digest is
    not the layer's diff_id) is built on, its layer directories made again from the blobs
    when they went."""
    import gzip
    import io
    import shutil
    import tarfile

    # the test image's layer plus a file: a layer of its own (no other blob has its diff_id)
    with tarfile.open(busybox_archive) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = tf.extractfile(manifest[0]["Layers"][0])
        assert layer is not None
        with (
            tarfile.open(fileobj=layer) as src,
            gzip.open(tmp_path / "rootfs.tar.gz", "wb") as gz,
            tarfile.open(fileobj=gz, mode="w") as dst,
        ):
            for member in src:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
            marker = tarfile.TarInfo("gz-marker")
            dst.addfile(marker, io.BytesIO(b""))
    store = native.native.image_store
    (rec,) = store.import_archive(str(tmp_path / "rootfs.tar.gz"), "local/gz-base:1")
    assert rec.layer_blobs[0] != rec.diff_ids[0]
    shutil.rmtree(store.layer_dir(rec.diff_ids[0]))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM local/gz-base:1\nRUN test -e /gz-marker && touch /ok\n")
    out = native.cli().ok("image", "build", str(ctx), "-t", "local/on-gz:1")
    assert "(2 steps, 0 cached)" in out
    built = store.resolve("local/on-gz:1")
    assert built is not None and built.diff_ids[0] == rec.diff_ids[0]
    # its manifest names the base layer's own (gzip) blob, and the built layer's tar
    assert built.layer_blobs[0] == rec.layer_blobs[0]
    doc = json.loads(store.blobs.read(built.blobs[0]))
    assert [(x["mediaType"], x["digest"]) for x in doc["layers"]] == [
        ("application/vnd.oci.image.layer.v1.tar+gzip", rec.layer_blobs[0]),
        ("application/vnd.oci.image.layer.v1.tar", built.diff_ids[1]),
    ]
