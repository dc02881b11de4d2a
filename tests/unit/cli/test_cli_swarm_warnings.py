"""The loader's warnings about what the runtimes of one host do with a field (ignore a
swarm-only `deploy` field, lack the overlay driver) are said for those runtimes and not for
a swarm, which has the concept; every other warning is said on every runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyapply.reconciler.cli.common import load_or_fail

COMPOSE = """\
services:
  web:
    image: busybox
    develop: {watch: [{path: ./src, action: sync, target: /src}]}
    deploy:
      endpoint_mode: dnsrr
      update_config: {monitor: 1s}
    networks: [net]
networks:
  net:
    driver: overlay
"""


@pytest.mark.parametrize("runtime", ["docker", "native", "swarm"])
def test_one_host_warnings_are_not_said_on_a_swarm(
    runtime: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE)
    loaded = load_or_fail([str(f)], runtime_name=runtime)
    err = capsys.readouterr().err
    one_host = [w for w in loaded.warnings if w.one_host]
    assert {w.path for w in one_host} >= {
        "services.web.deploy.endpoint_mode",
        "services.web.deploy.update_config.monitor",
        "networks.net.driver",
    }
    for w in one_host:
        assert (str(w) in err) is (runtime != "swarm"), (runtime, str(w), err)
    others = [w for w in loaded.warnings if not w.one_host]
    assert others, loaded.warnings  # develop (not run): said everywhere
    for w in others:
        assert str(w) in err


def test_the_runtime_may_come_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYAPPLY_RUNTIME", "swarm")
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE)
    load_or_fail([str(f)])
    assert "the runtimes of one host ignore it" not in capsys.readouterr().err
