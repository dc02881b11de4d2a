"""Container output on both runtimes: `pyapply logs` (with --tail), and the compose
`logging` options max-size / max-file, which rotate the log by size on both runtimes
(dockerd's json-file driver; on native, the root's keeper and conmon)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.runtimes import DockerUnderTest, NativeUnderTest, RuntimeUnderTest

pytestmark = pytest.mark.e2e

STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata:
  name: ${STACK}
spec:
  services:
    chatty:
      image: pyapply-test/busybox:latest
      init: true
      stop_grace_period: 1s
      command:
        - sh
        - -c
        - i=0; while [ $$i -lt 1500 ]; do echo "line $$i of the chatty service"; i=$$((i+1)); sleep 0.002; done; sleep 1000
      logging:
        driver: json-file
        options: {max-size: 8k, max-file: "2"}
"""


def _wait(what: str, ok: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_logs_tail_and_rotation_by_size(runtime: RuntimeUnderTest, tmp_path: Path) -> None:
    manifest = tmp_path / "stack.yaml"
    manifest.write_text(STACK)
    cli = runtime.cli()
    cli.ok("-f", str(manifest))
    name = f"{runtime.stack}-chatty-1"

    _wait("the last line", lambda: "line 1499 " in runtime.observe.logs(name, tail=1))
    out = cli.ok("logs", "chatty", "--file", str(manifest), "--tail", "2")
    assert out.splitlines() == [  # one replica: no prefix
        "line 1498 of the chatty service",
        "line 1499 of the chatty service",
    ], out

    # the rotated log keeps at most max-file files of about max-size each: the first lines
    # are gone, the last ones are there and in order
    kept = [int(line.split()[1]) for line in runtime.observe.logs(name).splitlines()]
    assert kept == list(range(kept[0], 1500)), kept[:3]
    assert kept[0] > 0 and len(kept) < 1500
    if isinstance(runtime, DockerUnderTest):
        cfg = runtime.attrs(name)["HostConfig"]["LogConfig"]
        assert cfg == {"Type": "json-file", "Config": {"max-size": "8192", "max-file": "2"}}
    else:
        assert isinstance(runtime, NativeUnderTest)
        key = runtime.rt.key(name)  # type: ignore[attr-defined]
        cdir = runtime.root / "containers" / str(key)
        # rotated as the keeper finds it past max-size (it looks four times a second)
        assert (cdir / "ctr.log.1").exists() and not (cdir / "ctr.log.2").exists()
    cli.ok("down", "-f", str(manifest))
