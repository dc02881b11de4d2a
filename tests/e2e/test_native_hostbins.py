"""A host program the native runtime needs is missing at run time: the real CLI says which one
and how to get it, once, and makes nothing for the service.

The init binary is hidden the way a fresh machine lacks it: in a private mount namespace,
/dev/null is bind-mounted over each of its candidate paths (a character device is not an
executable file). Only that one `pyapply -f` runs in the namespace, and it gets no further
than the check, so no mount, namespace or process of the stack is made there.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from pyapply.runtime.native.hostbins import INIT
from tests.e2e.helpers import TEST_IMAGE, Workdir
from tests.e2e.runtimes import PYAPPLY, RuntimeUnderTest

pytestmark = pytest.mark.e2e

STACK = """\
apiVersion: pyapply/v1
kind: Stack
metadata: {{name: {stack}}}
spec:
  services:
    job:
      image: {image}
      command: ["sleep", "300"]
      init: true
      stop_grace_period: 1s
"""


def test_missing_init_is_named_once_with_its_package_and_nothing_is_made(
    native: RuntimeUnderTest, workdir: Workdir
) -> None:
    manifest = workdir.write("stack.yaml", STACK.format(stack=native.stack, image=TEST_IMAGE))
    hidden = [p for p in INIT.paths if os.path.exists(p)]
    assert hidden, f"no init binary on this machine to hide: {INIT.missing()}"
    hide = " && ".join(f"mount --bind /dev/null {shlex.quote(p)}" for p in hidden)
    cli = native.cli()
    out = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private"),
            *("sh", "-c", f'{hide} && exec "$@"', "sh", PYAPPLY, "-f", str(manifest)),
        ],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    said = out.stdout + out.stderr
    assert out.returncode == 1, said
    assert said.count("apt-get install tini") == 1, said
    assert "Traceback" not in said
    assert native.observe.containers(native.stack) == {}
    made = native.root / "containers"
    assert not made.exists() or list(made.iterdir()) == []

    # with the binary visible again, the same manifest applies and the init is pid 1
    cli.ok("-f", str(manifest))
    name = f"{native.stack}-job-1"
    assert native.observe.running(name)
    code, comm = native.exec(name, "cat", "/proc/1/comm")
    assert code == 0 and comm.strip() in ("tini", "tini-static", "docker-init"), comm
