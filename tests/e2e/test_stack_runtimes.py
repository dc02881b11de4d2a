"""The stack-level loop on every runtime that runs stacks -- docker, native and swarm -- with
one compose file, through the real CLI: apply, no-op re-apply, `diff --exit-code` 0/2, scale
up and down, an environment change rolled out (the replicas replaced), prune of a removed
service, a config's new content reaching the replicas, a secret read, down. On swarm also: a
field a swarm cannot have is refused with file:line:col.

`stack_runtime` (conftest.py, tests/e2e/stacks.py) gives each test the runtime and a view of
a service's replicas that means the same on each: containers `<stack>-<service>-N` on one
host, a service's tasks on a swarm (a single-node swarm on the main dockerd,
tests/e2e/swarm.py, set up once for the module).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.runtimes import Cli
from tests.e2e.stacks import StackUnderTest
from tests.e2e.swarm import TEST_REF, docker, wait_for

pytestmark = pytest.mark.e2e

COMPOSE = """\
name: {stack}
services:
  web:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{MODE: one}}
    configs: [{{source: conf, target: /etc/app.conf}}]
    secrets: [pw]
    deploy:
      replicas: {web}
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s}}
{worker}configs:
  conf:
    content: "{conf}"
secrets:
  pw:
    file: ./pw.txt
"""

WORKER = """\
  worker:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{MODE: {mode}}}
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s}}
"""


def write(
    s: StackUnderTest,
    path: Path,
    *,
    web: int = 2,
    mode: str | None = "one",
    conf: str = "level=1",
) -> Path:
    worker = "" if mode is None else WORKER.format(image=s.image, mode=mode)
    path.write_text(COMPOSE.format(stack=s.stack, image=s.image, web=web, worker=worker, conf=conf))
    return path


def test_the_stack_loop(stack_runtime: StackUnderTest, tmp_path: Path) -> None:
    s = stack_runtime
    (tmp_path / "pw.txt").write_text("pw-1")
    f = write(s, tmp_path / "compose.yaml")
    apply = ("-f", str(f), "--wait-timeout", "60")

    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 2 and len(s.replicas("worker")) == 1
    assert s.exec("web", "cat", "/etc/app.conf") == "level=1"
    assert s.exec("web", "cat", "/run/secrets/pw") == "pw-1"
    out = s.cli.ok(*apply)  # a no-op: nothing done, nothing replaced
    assert "no changes" in out, out
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    # scale up and an environment change: drift (2), then rolled out
    worker_before = set(s.replicas("worker"))
    write(s, f, web=3, mode="two")
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 2
    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 3
    assert s.exec("worker", "sh", "-c", "echo $MODE") == "two"
    assert not set(s.replicas("worker")) & worker_before  # replaced, not changed in place
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    # scale down, prune the service no longer declared, a config's new content
    write(s, f, web=1, mode=None, conf="level=2")
    s.cli.ok(*apply)
    assert len(s.replicas("web")) == 1
    assert s.replicas("worker") == {}
    assert s.exec("web", "cat", "/etc/app.conf") == "level=2"
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    s.cli.ok("down", "-f", str(f))
    assert s.replicas("web") == {}
    assert s.leftovers() == []


def test_swarm_refuses_what_it_cannot_run(swarm_prefix: str, tmp_path: Path) -> None:
    """A field a swarm service has no place for: a located error, exit 1, nothing made."""
    stack = f"{swarm_prefix}x"
    f = tmp_path / "compose.yaml"
    f.write_text(
        f"name: {stack}\nservices:\n  a:\n    image: {TEST_REF}\n    cap_add: [NET_ADMIN]\n"
    )
    cli = Cli(stack, tmp_path / "root", 0, "swarm")
    r = cli.run("-f", str(f))
    assert r.returncode == 1
    assert f"{f}:5:5: services.a.cap_add: the swarm runtime does not set capabilities" in (
        r.stderr
    ), r.stderr
    assert "nothing was changed" in r.stderr
    assert not docker("service", "ls", "-q", "--filter", f"label=io.pyapply.stack={stack}")


DATA = """\
name: {stack}
services:
{web}  db:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{PASSWORD: {password}}}
    volumes: ["data:/data"]
    deploy:
      replicas: 1
      endpoint_mode: dnsrr
      update_config: {{monitor: 1s}}
volumes:
  data: {{}}
"""

DATA_WEB = """\
  web:
    image: {image}
    command: ["sleep", "600"]
    init: true
    stop_grace_period: 1s
    environment: {{LEVEL: {level}}}
    deploy:
      replicas: 2
      endpoint_mode: dnsrr
      update_config: {{parallelism: 2, monitor: 1s}}
"""


def gone(s: StackUnderTest, service: str) -> None:
    wait_for(lambda: s.replicas(service) == {}, 20, f"the replicas of {service} to be gone")


# docker and native run these checks, container by container, in test_apply.py
# (test_env_change_recreates_only_that_service, test_removed_service_is_pruned_and_volume_
# data_survives, test_invalid_manifest_changes_nothing): here they run on swarm only, which
# keeps the suite's time
@pytest.mark.parametrize("stack_runtime", ["swarm"], indirect=True)
def test_one_service_changed_another_pruned_and_volume_data_kept(
    stack_runtime: StackUnderTest, tmp_path: Path
) -> None:
    """test_apply.py's env-change, prune and volume tests, as services: a manifest that
    fails to load changes nothing; a change to one service replaces its replicas only; a
    service no longer declared is pruned and nothing else is touched; the data in a named
    volume outlives its service's replacement, and `down --volumes` removes it."""
    s = stack_runtime
    f = tmp_path / "compose.yaml"

    def write(level: str | None = "a", password: str = "one") -> None:
        web = "" if level is None else DATA_WEB.format(image=s.image, level=level)
        f.write_text(DATA.format(stack=s.stack, image=s.image, web=web, password=password))

    f.write_text(f"name: {s.stack}\nservices:\n  web:\n    image: {s.image}\n    ports: [x]\n")
    r = s.cli.run("-f", str(f))
    assert r.returncode == 1 and f"{f}:5:" in r.stderr and "Traceback" not in r.stderr, r
    assert s.replicas("web") == {}

    write()
    apply = ("-f", str(f), "--wait-timeout", "60")
    s.cli.ok(*apply)
    s.exec("db", "sh", "-c", "echo precious > /data/keep.txt")
    web, db = s.replicas("web"), s.replicas("db")
    assert len(web) == 2 and len(db) == 1

    write(level="b")  # web's environment: web's replicas replaced, db's untouched
    s.cli.ok(*apply)
    assert s.exec("web", "sh", "-c", "echo $LEVEL") == "b"
    assert len(s.replicas("web")) == 2 and not set(s.replicas("web")) & set(web)
    assert s.replicas("db") == db

    write(level=None)  # web no longer declared: pruned, db untouched
    s.cli.ok(*apply)
    gone(s, "web")  # (a swarm removes a removed service's containers a moment later)
    assert s.replicas("db") == db

    write(level=None, password="two")  # db replaced: the volume's data survives
    s.cli.ok(*apply)
    assert s.replicas("db") != db
    assert s.exec("db", "cat", "/data/keep.txt") == "precious"
    assert s.cli.run("diff", "--exit-code", "-f", str(f)).returncode == 0

    s.cli.ok("down", "-f", str(f), "--volumes")
    gone(s, "db")
    assert s.leftovers() == []
