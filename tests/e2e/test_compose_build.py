"""A compose project with `build:` through the real CLI, on both runtimes (native's own
builder, dockerd's): `pyapply -f` builds the missing image of one service (the other runs
the local busybox test image as it is) and runs it; a re-apply changes nothing and builds
nothing; `apply --build` with an unchanged context answers every step from the cache and
recreates nothing; a build that fails makes nothing at all; a changed file of the context gives a new image id, and exactly the
built service's container is recreated (container ids compared); a failing build exits 1
with the step, its exit code and its last lines, and changes nothing; a missing context is
an error located in the compose file; `pyapply build -f` builds from the cache, `-o json`;
`pyapply push -f` ships the built image and its build tag to a registry of this module's
own (test_push's `own_registry`: a docker-registry on a free loopback port).

The built image is `<stack>-web`, the name compose gives it; on docker it is removed
afterwards (on native it goes with the test's private state root).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.e2e.helpers import TEST_IMAGE
from tests.e2e.runtimes import Cli, RuntimeUnderTest
from tests.e2e.test_push import own_registry, registry_api  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

LABEL = "io.pyapply.test-stack"


def dockerfile_text(stack: str) -> str:
    """Labelled from its second step on, so that on docker every image of the test's builds
    (intermediate ones of a failed build too) is found and removed afterwards."""
    return f"""\
FROM {TEST_IMAGE}
LABEL {LABEL}={stack}
COPY msg /msg
RUN cat /msg > /copy && echo built-by-run >> /copy
CMD ["sleep", "100000"]
"""


def _project(tmp: Path, stack: str) -> Path:
    """Two services: `web` built from ./app (no image: so named <stack>-web), `plain` the
    test image. SIGKILL stops them at once (sleep as pid 1 ignores SIGTERM)."""
    project = tmp / "project"
    app = project / "app"
    app.mkdir(parents=True)
    (app / "Dockerfile").write_text(dockerfile_text(stack))
    (app / "msg").write_text(f"v1 {stack}\n")  # the stack's own: dockerd's cache is shared
    (project / "compose.yaml").write_text(
        f"name: {stack}\n"
        "services:\n"
        "  web:\n"
        "    build: ./app\n"
        "    stop_signal: SIGKILL\n"
        "  plain:\n"
        f"    image: {TEST_IMAGE}\n"
        '    command: ["sleep", "100000"]\n'
        "    stop_signal: SIGKILL\n"
    )
    return project


@pytest.fixture
def built_images(runtime: RuntimeUnderTest, request: pytest.FixtureRequest) -> Iterator[None]:
    """On docker, the images the test builds are removed afterwards, pass or fail."""
    yield
    if runtime.name != "docker":
        return
    client: Any = request.getfixturevalue("docker_client")
    runtime.cleanup()  # the stack's containers first (the fixture checks again): they hold them
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(f"{runtime.stack}-web", force=True)
    labelled = {"label": f"{LABEL}={runtime.stack}"}
    for _ in range(10):  # children before parents: a parent goes in a later round
        left = client.images.list(all=True, filters=labelled)
        for image in left:
            with contextlib.suppress(docker.errors.ImageNotFound, docker.errors.APIError):
                client.images.remove(image.id, force=True)
    left = client.images.list(all=True, filters=labelled)
    assert not left, f"images of the test left in dockerd: {[i.id for i in left]}"


def _ids(runtime: RuntimeUnderTest) -> dict[str, str]:
    return {name: c.id for name, c in runtime.observe.containers(runtime.stack).items()}


def _copy(runtime: RuntimeUnderTest) -> str:
    code, out = runtime.exec(f"{runtime.stack}-web-1", "cat", "/copy")
    assert code == 0, out
    return out


def test_compose_build_apply_rebuild_and_failure(
    runtime: RuntimeUnderTest, tmp_path: Path, built_images: None
) -> None:
    stack = runtime.stack
    web, plain = f"{stack}-web-1", f"{stack}-plain-1"
    project = _project(tmp_path, stack)
    cli: Cli = runtime.cli()

    # the missing image's build fails: the plan's build action goes first and everything
    # else waits for it, so nothing at all is made (not even the other service or the network)
    dockerfile = project / "app" / "Dockerfile"
    dockerfile.write_text(
        dockerfile_text(stack).replace("COPY msg /msg", "COPY msg /msg\nRUN echo no-luck && exit 7")
    )
    failed = cli.run("-f", str(project))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"image {stack}-web: FAILED" in failed.stdout + failed.stderr
    assert "exit code 7" in failed.stdout or "exited with code 7" in failed.stdout
    # the failed step's last lines come with the error (not only in the progress above it)
    assert "  | no-luck" in failed.stdout.split(f"image {stack}-web: FAILED", 1)[1]
    assert runtime.observe.containers(stack) == {}
    assert runtime.observe.networks(stack) == {}

    # the missing image is built (a plan action before the containers), then run
    dockerfile.write_text(dockerfile_text(stack))
    out = cli.ok("-f", str(project))
    assert f"+ image {stack}-web: build (not present locally)" in out
    assert f"build {stack}-web: [4/5] RUN cat /msg" in out
    assert f"image {stack}-web: Built" in out
    assert _copy(runtime) == f"v1 {stack}\nbuilt-by-run\n"
    assert runtime.observe.must(plain).image == TEST_IMAGE
    first = _ids(runtime)
    assert set(first) == {web, plain}

    # a re-apply builds nothing and changes nothing
    out = cli.ok("-f", str(project))
    assert "no changes" in out and "build " not in out
    assert cli.run("diff", "-f", str(project), "--exit-code").returncode == 0
    # --build with the same context: every step from the cache, nothing recreated
    out = cli.ok("apply", "--build", "-f", str(project))
    assert f"build {stack}-web: [3/5] CACHED" in out
    assert f"build {stack}-web: [4/5] CACHED" in out
    assert "no changes" in out
    assert _ids(runtime) == first

    # a changed file of the context: a new image id, only the built service is recreated
    (project / "app" / "msg").write_text(f"v2 {stack}\n")
    out = cli.ok("apply", "--build", "-f", str(project))
    assert f"~ container {web}: recreate (image id changed: the image was rebuilt)" in out
    assert plain not in out
    second = _ids(runtime)
    assert second[plain] == first[plain]
    assert second[web] != first[web]
    assert _copy(runtime) == f"v2 {stack}\nbuilt-by-run\n"
    assert cli.run("diff", "-f", str(project), "--exit-code").returncode == 0

    # a failing build: exit 1 with the step, its exit code and its last lines; nothing changed
    (project / "app" / "msg").write_text(f"v3 {stack}\n")
    with dockerfile.open("a") as f:
        f.write("RUN echo the-last-words && exit 3\n")
    failed = cli.run("apply", "--build", "-f", str(project))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "build of service web failed" in failed.stderr
    assert "RUN echo the-last-words && exit 3" in failed.stderr
    assert "exit code 3" in failed.stderr or "exited with code 3" in failed.stderr
    assert "| the-last-words" in failed.stderr
    assert _ids(runtime) == second
    assert _copy(runtime) == f"v2 {stack}\nbuilt-by-run\n"

    # `pyapply build -f` (the Dockerfile fixed again): the cache answers, -o json
    dockerfile.write_text(dockerfile_text(stack))
    (project / "app" / "msg").write_text(f"v2 {stack}\n")
    built = cli.run("build", "-f", str(project), "web", "-o", "json")
    assert built.returncode == 0, built.stderr
    (doc,) = json.loads(built.stdout)
    assert doc["service"] == "web" and doc["tags"] == [f"{stack}-web"]
    assert doc["steps"] == 5 and doc["cached"] >= 2
    assert "[3/5] CACHED" in built.stderr and "[4/5] CACHED" in built.stderr
    assert cli.run("diff", "-f", str(project), "--exit-code").returncode == 0

    # a missing context is located in the compose file, and nothing is done
    (project / "compose.yaml").write_text(
        (project / "compose.yaml").read_text() + "  other:\n    build:\n      context: ./nope\n"
    )
    missing = cli.run("-f", str(project))
    assert missing.returncode == 1
    assert (
        f"compose.yaml:12:16: services.other.build.context: the build context "
        f"{project / 'nope'} does not exist" in missing.stderr
    )
    assert _ids(runtime) == second


def test_compose_build_then_push(
    runtime: RuntimeUnderTest,
    tmp_path: Path,
    built_images: None,
    request: pytest.FixtureRequest,
) -> None:
    """`pyapply build -f` then `pyapply push -f`: the built service's image and its build
    tag reach the registry (manifests there, same digest), the plain service is not pushed."""
    registry: str = request.getfixturevalue("own_registry")
    stack = runtime.stack
    project = _project(tmp_path, stack)
    ref = f"{registry}/{stack}/web:1"
    latest = f"{registry}/{stack}/web:latest"
    compose = project / "compose.yaml"
    compose.write_text(
        compose.read_text().replace(
            "    build: ./app\n",
            f"    image: {ref}\n    build:\n      context: ./app\n      tags: ['{latest}']\n",
        )
    )
    cli = runtime.cli()
    out = cli.ok("build", "-f", str(project))
    assert f"building web ({ref})" in out and f"{ref}, {latest}" in out
    pushed = cli.run("push", "-f", str(project), "-o", "json")
    assert pushed.returncode == 0, pushed.stderr
    docs = json.loads(pushed.stdout)
    assert [d["ref"] for d in docs] == [ref, latest]
    assert docs[0]["digest"] == docs[1]["digest"]
    for tag in ("1", "latest"):
        status, body = registry_api(registry, "GET", f"/v2/{stack}/web/manifests/{tag}")
        assert status == 200, body
    status, _ = registry_api(registry, "GET", f"/v2/{stack}/web/tags/list")
    assert status == 200
    # a service named in the command line that is no service is an error
    wrong = cli.run("push", "-f", str(project), "nosuch")
    assert wrong.returncode == 1 and "no such service: nosuch" in wrong.stderr


def test_build_with_image_pulls_first_and_builds_what_the_registry_lacks(
    runtime: RuntimeUnderTest,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    docker_client: Any,
) -> None:
    """The Compose Specification's rule for a service with both `build:` and `image:` and
    no pull_policy: pull first, build only if the pull fails. `pulled` names an image the
    registry has, and its Dockerfile would fail if it were built; `built` names one the
    registry lacks, and is built."""
    registry: str = request.getfixturevalue("own_registry")
    stack = runtime.stack
    there, absent = f"{registry}/{stack}/pulled:1", f"{registry}/{stack}/absent:1"
    project = tmp_path / "project"
    for name, dockerfile in (
        ("broken", f"FROM {TEST_IMAGE}\nRUN echo built-by-mistake && exit 9\n"),
        ("app", f"FROM {TEST_IMAGE}\nLABEL {LABEL}={stack}\nRUN echo built > /built\n"),
    ):
        (project / name).mkdir(parents=True)
        (project / name / "Dockerfile").write_text(dockerfile)
    (project / "compose.yaml").write_text(
        f"name: {stack}\n"
        "services:\n"
        "  pulled:\n"
        f"    image: {there}\n"
        "    build: ./broken\n"
        '    command: ["sleep", "100000"]\n'
        "    stop_signal: SIGKILL\n"
        "  built:\n"
        f"    image: {absent}\n"
        "    build: ./app\n"
        '    command: ["sleep", "100000"]\n'
        "    stop_signal: SIGKILL\n"
    )
    # the registry gets the test image as `pulled`; dockerd keeps no copy of it
    image = docker_client.images.get(TEST_IMAGE)
    image.tag(there)
    try:
        docker_client.images.push(there)
    finally:
        docker_client.images.remove(there)
    try:
        out = runtime.cli().ok("-f", str(project))
        assert f"+ image {there}: build (not present locally; pulled first, built" in out
        assert f"image {there}: Built" in out and "pulled from its registry, not built" in out
        assert "built-by-mistake" not in out
        assert f"image {absent}: Built" in out and "the pull failed first" in out
        assert runtime.exec(f"{stack}-built-1", "cat", "/built") == (0, "built\n")
        assert runtime.exec(f"{stack}-pulled-1", "test", "-e", "/built")[0] == 1
    finally:
        if runtime.name == "docker":
            runtime.cleanup()  # the containers hold the images
            for ref in (there, absent):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    docker_client.images.remove(ref, force=True)
            for leftover in docker_client.images.list(filters={"label": f"{LABEL}={stack}"}):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    docker_client.images.remove(leftover.id, force=True)
