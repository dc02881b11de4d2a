"""Images from a registry, through the real command line: pull_policy missing / always /
never, a tag that moves in the registry, and a registry that does not answer.

The registry is the local one that `make setup` starts (`registry` fixture). Each test pushes
under its own repository, `<registry>/pyatest/<stack>`, and removes what it created: the
stack's objects, local tags, the images it committed and the manifests it pushed.
"""

from __future__ import annotations

import io
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.e2e.helpers import TEST_IMAGE, cleanup_stack
from tests.e2e.runtimes import Cli, free_port

pytestmark = pytest.mark.e2e

# Registry traffic only goes to loopback: never through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Images:
    """Pushes, tags and commits images for one test, and undoes all of it in `cleanup`."""

    def __init__(self, client: Any, registry: str, stack: str) -> None:
        self.client = client
        self.registry = registry
        self.path = f"pyatest/{stack}"  # the repository's name inside the registry
        self.repo = f"{registry}/{self.path}"
        self._refs: set[str] = set()  # local tags made (by the test or by pyapply's pulls)
        self._committed: list[str] = []  # image ids made by `variant`
        self._digests: set[str] = set()  # manifests pushed to the registry

    def ref(self, tag: str = "v1") -> str:
        return f"{self.repo}:{tag}"

    def tag(self, image: str, tag: str = "v1") -> str:
        """Point the local `repo:tag` at `image` (a name or an id); returns the ref."""
        assert self.client.images.get(image).tag(self.repo, tag)
        self._refs.add(self.ref(tag))
        return self.ref(tag)

    def untag(self, tag: str = "v1") -> None:
        """Remove the local `repo:tag` only (the image stays under its other names/ids)."""
        self._refs.add(self.ref(tag))
        self.client.images.remove(self.ref(tag))

    def push(self, image: str, tag: str = "v1") -> str:
        """Tag `image` as `repo:tag` and push it; returns the pushed manifest's digest."""
        self.tag(image, tag)
        digest = ""
        for line in self.client.images.push(self.repo, tag=tag, stream=True, decode=True):
            assert "error" not in line, f"push {self.ref(tag)}: {line}"
            digest = (line.get("aux") or {}).get("Digest", digest)
        assert digest.startswith("sha256:"), f"push {self.ref(tag)}: no digest reported"
        self._digests.add(digest)
        return digest

    def variant(self, marker: str) -> str:
        """A new image: the test image plus /variant containing `marker`. Returns its id."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            body = f"{marker}\n".encode()
            info = tarfile.TarInfo("variant")
            info.size = len(body)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(body))
        container = self.client.containers.create(TEST_IMAGE, command=["true"])
        try:
            assert container.put_archive("/", data.getvalue())
            image = container.commit(message=f"pyapply pull test variant {marker}")
        finally:
            container.remove(force=True)
        self._committed.append(image.id)
        return str(image.id)

    def image_id(self, ref: str) -> str:
        return str(self.client.images.get(ref).id)

    def cleanup(self) -> list[str]:
        """Remove local tags, committed images and pushed manifests; returns problems."""
        problems: list[str] = []
        for ref in sorted(self._refs):
            try:
                self.client.images.remove(ref)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"tag {ref}: {e}")
        # Pulls and pushes also leave `repo@sha256:...` names, which outlive the tags.
        for image in self.client.images.list():
            for name in image.attrs.get("RepoDigests") or ():
                if name.startswith(self.repo + "@"):
                    try:
                        self.client.images.remove(name)
                    except docker.errors.ImageNotFound:
                        pass
                    except docker.errors.APIError as e:
                        problems.append(f"digest reference {name}: {e}")
        for image_id in self._committed:
            try:
                self.client.images.remove(image_id, force=True)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError as e:
                problems.append(f"image {image_id}: {e}")
        for digest in sorted(self._digests):
            url = f"http://{self.registry}/v2/{self.path}/manifests/{digest}"
            try:
                with _OPENER.open(urllib.request.Request(url, method="DELETE"), timeout=10):
                    pass
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    problems.append(f"registry manifest {self.path}@{digest}: HTTP {e.code}")
            except OSError as e:
                problems.append(f"registry manifest {self.path}@{digest}: {e}")
        return problems


@pytest.fixture
def cli(stack_name: str, tmp_path: Path) -> Cli:
    return Cli(stack_name, tmp_path / "root", free_port())


@pytest.fixture
def images(docker_client: Any, registry: str, stack_name: str) -> Iterator[Images]:
    imgs = Images(docker_client, registry, stack_name)
    yield imgs
    # The stack's containers first: an image a container still uses cannot be removed.
    problems = cleanup_stack(docker_client, stack_name)
    problems += imgs.cleanup()
    if problems:
        pytest.fail("cleanup failed:\n" + "\n".join(problems), pytrace=False)


def write_stack(tmp_path: Path, stack: str, image: str, pull_policy: str | None) -> Path:
    policy = f"      pull_policy: {pull_policy}\n" if pull_policy else ""
    manifest = tmp_path / "manifests" / "stack.yaml"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    app:
      image: {image}
{policy}      command: ["sleep", "100000"]
      init: true
      stop_grace_period: 1s
"""
    )
    return manifest


def running_image(client: Any, name: str) -> tuple[str, str]:
    """(container id, image id) of a running container."""
    c = client.containers.get(name)
    assert c.status == "running", f"{name} is {c.status}"
    return str(c.id), str(c.attrs["Image"])


def nothing_created(client: Any, stack: str) -> None:
    label = {"label": f"io.pyapply.stack={stack}"}
    assert client.containers.list(all=True, filters=label) == []
    assert client.networks.list(filters=label) == []
    assert client.volumes.list(filters=label) == []


def test_pull_missing_image_then_reapply_is_a_noop(
    cli: Cli, images: Images, docker_client: Any, tmp_path: Path
) -> None:
    ref = images.ref()
    images.push(TEST_IMAGE)
    images.untag()  # only the registry has it now
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    manifest = write_stack(tmp_path, cli.stack, ref, "missing")

    plan = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert f"+ image {ref}: pull (not present locally)" in plan.stdout

    out = cli.ok("-f", str(manifest))
    assert f"+ image {ref}: pull (not present locally)" in out
    assert images.image_id(ref) == images.image_id(TEST_IMAGE)
    cid, image_id = running_image(docker_client, f"{cli.stack}-app-1")
    assert image_id == images.image_id(TEST_IMAGE)

    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr
    assert "no changes" in cli.ok("-f", str(manifest))
    assert running_image(docker_client, f"{cli.stack}-app-1")[0] == cid


def test_moving_tag_with_pull_always_recreates_on_the_new_image(
    cli: Cli, images: Images, docker_client: Any, tmp_path: Path
) -> None:
    ref = images.ref()
    name = f"{cli.stack}-app-1"
    image_a = images.image_id(TEST_IMAGE)
    images.push(TEST_IMAGE)
    images.untag()
    manifest = write_stack(tmp_path, cli.stack, ref, "always")

    cli.ok("-f", str(manifest))
    cid_a, got = running_image(docker_client, name)
    assert got == image_a
    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr

    # The tag moves in the registry; only the registry knows B under that name.
    image_b = images.variant("B")
    assert image_b != image_a
    images.push(image_b)
    images.untag()

    # Once the host pulls, the running container is on an image the tag no longer names.
    docker_client.images.pull(images.repo, tag="v1")
    assert images.image_id(ref) == image_b
    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 2, d.stdout + d.stderr
    assert f"~ container {name}: recreate (image tag now points to a different image)" in (d.stdout)

    cli.ok("-f", str(manifest))
    cid_b, got = running_image(docker_client, name)
    assert cid_b != cid_a and got == image_b
    code, out = docker_client.containers.get(name).exec_run(["cat", "/variant"])
    assert (code, out) == (0, b"B\n")
    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr

    # With a stale local tag (still B) and C in the registry, apply itself pulls C.
    image_c = images.variant("C")
    images.push(image_c)
    images.tag(image_b)
    assert images.image_id(ref) == image_b
    cli.ok("-f", str(manifest))
    cid_c, got = running_image(docker_client, name)
    assert cid_c != cid_b and got == image_c
    assert images.image_id(ref) == image_c
    d = cli.run("diff", "-f", str(manifest), "--exit-code")
    assert d.returncode == 0, d.stdout + d.stderr
    assert "no changes" in cli.ok("-f", str(manifest))
    assert running_image(docker_client, name)[0] == cid_c


def test_pull_policy_never_with_the_image_absent_fails_and_creates_nothing(
    cli: Cli, images: Images, docker_client: Any, tmp_path: Path
) -> None:
    ref = images.ref()
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    manifest = write_stack(tmp_path, cli.stack, ref, "never")

    out = cli.run("-f", str(manifest))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{ref} is not present and pull_policy is never" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    nothing_created(docker_client, cli.stack)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)


@pytest.mark.parametrize("pull_policy", ["missing", "always"])
def test_unreachable_registry_fails_in_bounded_time(
    cli: Cli, docker_client: Any, tmp_path: Path, pull_policy: str
) -> None:
    ref = f"127.0.0.1:{free_port()}/x/y:1"  # nothing listens there
    manifest = write_stack(tmp_path, cli.stack, ref, pull_policy)

    started = time.monotonic()
    out = cli.run("-f", str(manifest))
    elapsed = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot pull image {ref}" in out.stdout + out.stderr, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert elapsed < 40, f"apply took {elapsed:.1f}s to give up"
    # A failed pull touches nothing: networks, volumes and files wait for the pulls.
    nothing_created(docker_client, cli.stack)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
