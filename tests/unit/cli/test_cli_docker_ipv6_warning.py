"""The IPv6 limits of each runtime, said when a stack goes to it. On docker, a network with
enable_ipv6 gets a located warning that dockerd isolates IPv6
only with its own ip6tables setting (runtime/docker/ipv6.py), unless dockerd is seen to have
it on; other runtimes say nothing of it. A port on [::1] is no error on any runtime (native
serves it through its userland proxy, runtime/native/portproxy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyapply.reconciler.cli.common import load_or_fail
from pyapply.runtime.docker import ipv6

COMPOSE = """\
services:
  web: {image: busybox}
networks:
  default: {enable_ipv6: true}
  plain: {}
"""


@pytest.mark.parametrize(
    ("runtime", "isolates", "said"),
    [
        ("docker", False, True),
        ("docker", None, True),
        ("docker", True, False),
        ("native", False, False),
    ],
)
def test_the_ipv6_gap_of_docker_is_said_at_the_network(
    runtime: str,
    isolates: bool | None,
    said: bool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    monkeypatch.setattr(ipv6, "dockerd_isolates_ipv6", lambda: isolates)
    f = tmp_path / "compose.yaml"
    f.write_text(COMPOSE)
    load_or_fail([str(f)], runtime_name=runtime, for_runtime=True)
    err = capsys.readouterr().err
    expected = f"{f}:4:3: warning: networks.default: {ipv6.GAP}"
    assert (expected in err) is said, err
    assert "networks.plain" not in err
    # what only loads the manifests (config, validate, build) says nothing of the runtime
    load_or_fail([str(f)], runtime_name=runtime)
    assert ipv6.GAP not in capsys.readouterr().err


def test_a_port_on_ipv6_loopback_loads_for_every_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYAPPLY_RUNTIME", raising=False)
    monkeypatch.setattr(ipv6, "dockerd_isolates_ipv6", lambda: True)
    f = tmp_path / "compose.yaml"
    f.write_text(
        'services:\n  web:\n    image: busybox\n    ports: ["127.0.0.1:80:80", "[::1]:81:80"]\n'
    )
    for runtime in ("docker", "native"):
        loaded = load_or_fail([str(f)], runtime_name=runtime, for_runtime=True)
        (web,) = loaded.stacks[0].services
        assert [p.host_ip for p in web.ports] == ["127.0.0.1", "::1"]
        assert capsys.readouterr().err == ""
