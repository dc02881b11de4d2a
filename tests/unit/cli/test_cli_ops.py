"""Global options before or after the command name, and the everyday commands (exec, run,
restart, events, top, ps) on a fake runtime: their arguments, their errors, the exit code
passed through, the rolling restart's batches. The real runtimes are driven by
tests/e2e/test_everyday_commands.py."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import pytest
from fakes import FakeRuntime

from pyapply.reconciler.cli import main as cli
from pyapply.reconciler.cli import ops
from pyapply.reconciler.core import identity
from pyapply.reconciler.view.objects import process_lines
from pyapply.runtime.base import Attachment, ContainerConfig, ContainerState, Event

COMMANDS = set(cli.LAZY_COMMANDS)


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        # the example: before the command name, moved after it
        (["--runtime", "docker", "diff", "-f", "x"], ["diff", "--runtime", "docker", "-f", "x"]),
        (["--runtime=docker", "--root", "/r", "get"], ["get", "--runtime", "docker", "--root", "/r"]),
        (["-f", "x", "exec", "web", "sh"], ["exec", "--file", "x", "web", "sh"]),
        (["--age-key-file", "k", "--profile", "p", "ps"],
         ["ps", "--age-key-file", "k", "--profile", "p"]),
        # -f before logs is the file, not --follow
        (["-f", "x", "logs", "web"], ["logs", "--file", "x", "web"]),
        # no command name: apply, as `pyapply -f x` always meant
        (["-f", "x"], ["apply", "--file", "x"]),
        (["-fx", "-ojson", "diff"], ["diff", "--file", "x", "--output", "json"]),
        (["--file=x", "get"], ["get", "--file", "x"]),
        (["--runtime", "docker", "-f", "x", "--dry-run"],
         ["apply", "--runtime", "docker", "--file", "x", "--dry-run"]),
        (["--dry-run", "-f", "x"], ["apply", "--dry-run", "-f", "x"]),
        # after the command name: left to the command
        (["diff", "-f", "x", "--runtime", "docker"], ["diff", "-f", "x", "--runtime", "docker"]),
        (["--help"], ["--help"]),
        (["--version"], ["--version"]),
        (["--runtime", "docker", "--help"], ["--help"]),
        ([], []),
        (["nosuch"], ["nosuch"]),
    ],
)  # fmt: skip
def test_global_options_are_moved_after_the_command_name(
    given: list[str], parsed: list[str]
) -> None:
    assert cli.hoist_globals(given, COMMANDS) == parsed


def test_a_global_option_without_its_value_is_a_usage_error() -> None:
    with pytest.raises(click.UsageError, match="--runtime needs a value"):
        cli.hoist_globals(["--runtime"], COMMANDS)


STACK = """\
name: shop
services:
  web:
    image: busybox
    environment: {GREETING: hello}
    deploy:
      replicas: 3
      update_config: {parallelism: 2, delay: 10ms}
    networks: [front]
    ports: ["8080"]
networks: {front: {}}
"""


def replica(name: str, n: int, status: str = "running") -> ContainerState:
    return ContainerState(
        id=f"id-{name}",
        name=name,
        image="busybox",
        image_id="sha256:1",
        labels={identity.STACK: "shop", identity.SERVICE: "web", identity.REPLICA: str(n)},
        status=status,  # type: ignore[arg-type]
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, here: Path) -> FakeRuntime:
    rt = FakeRuntime()
    for n in (1, 2, 3):
        rt.containers[f"shop-web-{n}"] = replica(f"shop-web-{n}", n)
    monkeypatch.setattr(ops, "connect", lambda name, root=None, swarm="": rt)
    monkeypatch.setattr(ops, "connect_any", lambda name, root=None: rt)
    (here / "compose.yaml").write_text(STACK)
    return rt


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["pyapply", *args])
    return cli.run()


def test_exec_passes_the_command_and_its_exit_code(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.exec_code = 3
    # global options first, then exec's own, then the command with options of its own
    code = run(monkeypatch, "--runtime", "fake", "--stack", "shop", "exec", "-it", "--index",
               "2", "web", "sh", "-c", "exit 3")  # fmt: skip
    assert code == 3
    assert fake.calls == ["exec shop-web-2 sh -c exit 3 -i -t"]


def test_exec_reads_the_stack_from_the_file_after_the_name(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(monkeypatch, "exec", "-f", "compose.yaml", "web", "ls", "-l") == 0
    assert fake.calls == ["exec shop-web-1 ls -l"]


def test_exec_takes_kubectls_double_dash_before_the_command(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(monkeypatch, "exec", "-f", "compose.yaml", "web", "--", "ls", "--", "-l") == 0
    assert fake.calls == ["exec shop-web-1 ls -- -l"]  # only the first `--` is pyapply's


def test_exec_without_f_finds_the_project_here(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as compose does: no -f and no --stack, so the compose.yaml of the working directory
    assert run(monkeypatch, "exec", "web", "true") == 0
    assert fake.calls == ["exec shop-web-1 true"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exec", "--stack", "shop", "web"], "exec web: name the command to run"),
        (["exec", "--stack", "shop", "--index", "0", "web", "true"], "replicas are numbered"),
        (["exec", "--stack", "shop", "--index", "7", "web", "true"],
         "service web has no replica 7 (replicas: 1, 2, 3)"),
        (["exec", "--stack", "shop", "db", "true"], "no containers of service db in stack shop"),
        (["run", "--stack", "shop", "web"], "run needs the manifests (-f FILE)"),
        (["run", "-f", "compose.yaml", "-e", "NOEQUALS", "web"], "expected KEY=VALUE"),
        (["run", "-f", "compose.yaml", "db"], "no service db in shop"),
        (["restart", "--stack", "shop"], "Missing argument 'SERVICES...'"),
        (["top", "--stack", "shop", "db"], "no containers of service db"),
    ],
)  # fmt: skip
def test_each_command_s_mistakes_are_one_sentence(
    fake: FakeRuntime,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert run(monkeypatch, *args) == 1
    out = capsys.readouterr()
    assert message in out.err
    assert "Traceback" not in out.err
    assert not [c for c in fake.calls if not c.startswith("top")]


def test_exec_refuses_a_stopped_replica(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.containers["shop-web-1"] = replica("shop-web-1", 1, status="exited")
    assert run(monkeypatch, "exec", "--stack", "shop", "web", "true") == 1
    assert "container shop-web-1 is not running (exited)" in capsys.readouterr().err


def test_restart_rolls_in_batches_of_the_update_config(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "restart", "-f", "compose.yaml", "web") == 0
    assert fake.calls == [
        "stop shop-web-1", "start shop-web-1", "stop shop-web-2", "start shop-web-2",
        "stop shop-web-3", "start shop-web-3",
    ]  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [f"restarted shop-web-{n}" for n in (1, 2, 3)]


def test_restart_waits_for_a_batch_to_be_healthy(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.healthy_after_start = False
    for n in (1, 2, 3):
        c = fake.containers[f"shop-web-{n}"]
        fake.containers[c.name] = msgspec.structs.replace(c, health="starting")
    code = run(monkeypatch, "restart", "-f", "compose.yaml", "--wait-timeout", "0.2", "web")
    assert code == 1
    assert "shop-web-1, shop-web-2 not running and healthy after 0s" in capsys.readouterr().err
    assert "stop shop-web-3" not in fake.calls  # the next batch never started


def test_stop_and_start_name_services_or_take_them_all(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(monkeypatch, "stop", "--stack", "shop", "--timeout", "2", "web") == 0
    assert fake.calls == [f"stop shop-web-{n}" for n in (1, 2, 3)]
    assert capsys.readouterr().out.splitlines() == [f"stopped shop-web-{n}" for n in (1, 2, 3)]
    fake.calls.clear()
    assert run(monkeypatch, "start", "--stack", "shop") == 0  # no service: every one
    assert fake.calls == [f"start shop-web-{n}" for n in (1, 2, 3)]
    assert run(monkeypatch, "stop", "--stack", "shop", "db") == 1
    assert "no containers of service db in stack shop" in capsys.readouterr().err


def test_events_prints_the_stack_s_events(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = {identity.STACK: "shop", identity.SERVICE: "web"}
    fake.events_ = [
        Event("container", "die", "shop-web-1", labels),
        Event("container", "die", "other-web-1", {identity.STACK: "other"}),
    ]
    assert run(monkeypatch, "events", "--stack", "shop") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].endswith(" container die shop-web-1")
    assert run(monkeypatch, "events", "--stack", "shop", "-o", "json") == 0
    doc = __import__("json").loads(capsys.readouterr().out)
    assert doc["service"] == "web" and doc["action"] == "die" and doc["stack"] == "shop"


def test_top_lists_each_running_replica(
    fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.containers["shop-web-3"] = replica("shop-web-3", 3, status="exited")
    assert run(monkeypatch, "top", "--stack", "shop", "web") == 0
    out = capsys.readouterr().out
    assert "shop-web-1\n  PID  CMD\n  1    sleep shop-web-1\n" in out
    assert "shop-web-3" not in out


def test_process_lines_pads_all_but_the_command() -> None:
    assert process_lines("c", ["UID", "PID", "CMD"], [["0", "12345", "sh -c x"]]) == [
        "c",
        "  UID  PID    CMD",
        "  0    12345  sh -c x",
    ]


def test_a_one_off_is_no_replica() -> None:
    template = ContainerConfig(
        name="shop-web-1",
        image="busybox",
        labels={identity.STACK: "shop", identity.SERVICE: "web", "team": "a"},
        command=("httpd",),
        env=("A=1", "B=2"),
        networks=(Attachment("shop_front", aliases=("web",), ipv4_address="10.0.0.5"),),
        restart_policy="always",
    )
    c = ops.one_off(template, "shop", "web", ["sh", "-c", "env"], ["B=3"])
    assert c.name.startswith("shop-web-run-") and len(c.name) == len("shop-web-run-") + 8
    assert c.labels == {"team": "a", ops.RUN_OF: "shop/web"}
    assert c.command == ("sh", "-c", "env") and c.env == ("A=1", "B=3")
    assert c.networks == (Attachment("shop_front"),) and c.ports == ()
    assert c.restart_policy == "no" and c.health is None
    assert ops.one_off(template, "shop", "web", [], []).command == ("httpd",)


class SwarmLike:
    """What `open_runtime` gives for --runtime swarm, as far as the refusal looks."""

    name = "swarm"
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["exec", "--stack", "s", "web", "true"], "use `docker exec` on the node"),
        (["top", "--stack", "s", "web"], "use `docker top` on the node"),
        (["run", "-f", "compose.yaml", "web", "true"], "a swarm service is not"),
    ],
)
def test_a_swarm_refuses_the_container_commands_saying_why(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    here: Path,
    args: list[str],
    why: str,
) -> None:
    (here / "compose.yaml").write_text(STACK)
    swarm = SwarmLike()
    monkeypatch.setattr("pyapply.runtime.drivers.open_runtime", lambda name, root=None: swarm)
    assert run(monkeypatch, "--runtime", "swarm", *args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and why in err, err
    assert swarm.closed
