"""The agent agrees with the CLI on two decisions that were once written twice (issue 10):
a one-shot that did its job is Healthy to `status` as it is "no drift" to `diff`, and the
removal of a stack whose manifests are gone (`--allow-empty`) cleans up as `down` does."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeRuntime

from pyapply.reconciler.agent.agent import Agent, AgentOptions
from pyapply.reconciler.agent.sources import Source
from pyapply.runtime.base import ImageInfo

IMAGE = "pyapply-test/busybox:latest"


def fake_agent(tmp_path: Path, path: Path, **options: object) -> tuple[Agent, FakeRuntime]:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one", ())})
    agent = Agent(
        Source.of(str(path)),
        str(tmp_path / "root"),
        AgentOptions(runtime_events=False, **options),  # type: ignore[arg-type]
        lambda: rt,
    )
    return agent, rt


def one_shot(restart: str) -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: jobs}}
spec:
  services:
    job:
      image: {IMAGE}
      command: ["true"]
      restart: {restart}
    web:
      image: {IMAGE}
      command: ["sleep", "1000"]
"""


def test_a_one_shot_that_exited_0_is_healthy_to_status_as_it_is_synced_to_diff(
    tmp_path: Path,
) -> None:
    for restart in ("on-failure", "on-failure:3", '"no"'):
        d = tmp_path / restart.strip('"').replace(":", "-")
        d.mkdir()
        (d / "s.yaml").write_text(one_shot(restart))
        agent, rt = fake_agent(tmp_path / d.name, d)
        agent.reconcile({"start"})
        assert sorted(rt.containers) == ["jobs-job-1", "jobs-web-1"]
        rt.mutate("jobs-job-1", status="exited", exit_code=0)
        assert all(p.empty for p in agent.diff(rt)), restart  # diff: no drift
        status = agent.status(rt)
        assert status["sync"] == "Synced", restart
        (stack,) = status["stacks"]
        job = next(s for s in stack["services"] if s["name"] == "job")
        assert (job["health"], job["running"]) == ("Healthy", 0), restart
        assert stack["health"] == "Healthy", restart
        # a failure of the same one-shot is drift and Degraded to both
        rt.mutate("jobs-job-1", status="exited", exit_code=3)
        assert not all(p.empty for p in agent.diff(rt)), restart
        status = agent.status(rt)
        assert status["sync"] == "OutOfSync"
        assert status["stacks"][0]["health"] == "Degraded", restart


def stack_with_files(name: str) -> str:
    return f"""apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {name}}}
spec:
  configs:
    settings: {{content: "a=1\\n"}}
  secrets:
    token: {{content: "s3cr3t-value"}}
  services:
    app:
      image: {IMAGE}
      command: ["sleep", "1000"]
      configs: [settings]
      secrets: [token]
"""


def test_removing_a_stack_whose_manifests_are_gone_removes_its_files(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.yaml").write_text(stack_with_files("keep"))
    (d / "gone.yaml").write_text(stack_with_files("gone"))
    agent, rt = fake_agent(tmp_path, d, allow_empty=True)
    agent.reconcile({"start"})
    files = tmp_path / "root" / "files"
    assert sorted(rt.containers) == ["gone-app-1", "keep-app-1"]
    assert any((files / "gone").iterdir()) and any((files / "keep").iterdir())
    (d / "gone.yaml").unlink()
    agent.reconcile({"file"})
    assert agent.history.passes()[0].outcome == "succeeded"
    assert sorted(rt.containers) == ["keep-app-1"]
    assert agent.history.managed_stacks() == {"keep"}
    # as `pyapply down` does: the stack's config and secret files go with it
    assert not (files / "gone").exists()
    assert any((files / "keep").iterdir())
