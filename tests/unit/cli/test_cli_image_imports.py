"""What `pyapply image build` and `image push` import: a warm build is mostly the start of
the process, so the modules on their path stay free of the manifest side (loader, YAML,
the reconcile engine, the guard) and of http.client and ssl, which only a registry request
needs (imported at the first one)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "http.client",
    "ssl",
    "yaml",
    "pyapply.reconciler.manifest.loader",
    "pyapply.reconciler.engine.reconcile",
    "pyapply.reconciler.core.guard",
    "pyapply.reconciler.core.model",
)


def test_the_build_and_push_path_imports_nothing_it_does_not_use() -> None:
    code = (
        "import sys\n"
        "import pyapply.reconciler.cli.main, pyapply.reconciler.cli.image\n"
        "import pyapply.runtime.native.driver, pyapply.runtime.native.build.builder\n"
        "import pyapply.runtime.native.push, pyapply.reconciler.view.build_progress\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_modules_left_out_are_real_and_imported_where_needed() -> None:
    # the check above cannot pass by a typo: each name is a module that `pyapply -f` (the
    # loader) or a registry request (http.client) does import
    code = (
        "import sys\n"
        "import pyapply.reconciler.cli.common as c, pyapply.runtime.native.registry as r\n"
        "import pyapply.reconciler.manifest.loader, pyapply.reconciler.engine.reconcile\n"
        "import pyapply.reconciler.core.guard\n"
        "r.RegistryClient(docker_config=False).unverified_context\n"
        "try:\n"
        "    r.RegistryClient(docker_config=False, timeout=1)._open('GET', 'http://127.0.0.1:9/', {})\n"
        "except Exception:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m not in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
