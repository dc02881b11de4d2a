"""The host lock, revisions from git, and how plans are rendered."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import jsonschema
import msgspec
import pytest
from fakes import FakeRuntime
from test_reconcile import IMAGE, plan_of, web_db_stack

from pyapply.reconciler.engine.lock import LockTimeout, host_lock
from pyapply.reconciler.manifest.revision import identify
from pyapply.reconciler.view.plan_text import plan_text, plans_json
from pyapply.runtime.base import ImageInfo


def test_second_holder_waits_then_gives_up(tmp_path: Path) -> None:
    messages: list[str] = []
    with host_lock(str(tmp_path), timeout_s=1):
        t0 = time.monotonic()
        with (
            pytest.raises(LockTimeout, match=r"gave up after 0\.3s"),
            host_lock(str(tmp_path), timeout_s=0.3, on_wait=messages.append),
        ):
            pass
        assert time.monotonic() - t0 >= 0.3
    assert messages and "waiting for another pyapply" in messages[0]


def test_waiter_gets_the_lock_when_released(tmp_path: Path) -> None:
    release = threading.Event()
    got = threading.Event()

    def holder() -> None:
        with host_lock(str(tmp_path), timeout_s=1):
            got.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    got.wait(5)
    threading.Timer(0.3, release.set).start()
    with host_lock(str(tmp_path), timeout_s=5):
        pass
    t.join()


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pyapply.reconciler.engine.lock import host_lock\n"
        f"with host_lock({str(tmp_path)!r}, timeout_s=1):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    with host_lock(str(tmp_path), timeout_s=2):
        pass


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(cwd), "-c", "user.email=t@t", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
    )


def test_revision_is_the_commit_or_a_content_hash(tmp_path: Path) -> None:
    f = tmp_path / "stack.yaml"
    f.write_text("a: 1\n")
    assert identify((str(f),), "ab" * 32).id == "sha256:" + "ab" * 6
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "first stack")
    rev = identify((str(f),), "cd" * 32)
    assert rev.commit is not None and rev.id == rev.commit[:12]
    assert rev.subject == "first stack"
    f.write_text("a: 2\n")
    assert identify((str(f),), "ef" * 32).id == rev.commit[:12] + "+efefefef"


def test_plan_text_marks_and_redacts() -> None:
    rt = FakeRuntime(images_={IMAGE: ImageInfo("sha256:one")})
    plan = plan_of(rt, web_db_stack())
    text = plan_text(plan)
    assert "  + network shop_back: create (missing)" in text
    assert "  + container shop-web-1: create (missing)" in text
    assert "plan: 6 to create" in text
    # a recreate shows the fields, with secret-looking values redacted
    from pyapply.reconciler.engine.execute import Executor, Settings

    Executor(rt, Settings(sleep=lambda s: None)).run(plan)
    stack = web_db_stack()
    db = stack.service("db")

    changed = msgspec.structs.replace(
        stack,
        services=(
            msgspec.structs.replace(db, environment=(("DB_PASSWORD", "hunter3"),)),
            stack.service("web"),
        ),
    )
    plan2 = plan_of(rt, changed)
    text2 = plan_text(plan2)
    assert "~ container shop-db-1: recreate (spec changed)" in text2
    assert "env.DB_PASSWORD: (sensitive value) -> (sensitive value)" in text2
    assert "hunter" not in text2
    doc = plans_json([plan2])
    assert "hunter" not in json.dumps(doc)
    schema = json.loads(
        resources.files("pyapply.schemas").joinpath("v1/plan.schema.json").read_text()
    )
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert doc["drift"] is True


def test_secret_from_dotenv_reaches_the_materialised_file(tmp_path: Path) -> None:
    from pyapply.reconciler.engine.reconcile import desired_for
    from pyapply.reconciler.manifest.loader import load

    (tmp_path / ".env").write_text("TOKEN=from-dotenv\n")
    (tmp_path / "stack.yaml").write_text(
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: sec}\nspec:\n"
        "  services:\n    app:\n      image: busybox\n      secrets: [tok]\n"
        "  secrets:\n    tok: {environment: TOKEN}\n"
    )
    loaded = load([str(tmp_path)], environ={})
    stack = loaded.stacks[0]
    desired = desired_for(
        stack, revision="r", root=str(tmp_path / "root"), environ=loaded.environments["sec"]
    )
    (f,) = desired.files
    assert f.content == b"from-dotenv" and f.kind == "secret"
    (container,) = desired.containers
    mount = next(m for m in container.config.mounts if m.target == "/run/secrets/tok")
    assert mount.source == f.path and mount.read_only


def test_secret_modes_and_owners_are_files_of_their_own(tmp_path: Path) -> None:
    """A bind mount shows the host file's mode and owner: each (mode, uid, gid) a service
    asks for is materialised apart, secrets default to 0400 and configs to 0444."""
    from pyapply.reconciler.engine.execute import write_file_atomic
    from pyapply.reconciler.engine.reconcile import desired_for
    from pyapply.reconciler.manifest.loader import load

    (tmp_path / "stack.yaml").write_text(
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: sec}\nspec:\n"
        "  services:\n"
        "    a:\n      image: busybox\n      secrets: [tok]\n      configs: [conf]\n"
        "    b:\n      image: busybox\n"
        "      secrets: [{source: tok, target: t, mode: 0440, uid: '1000', gid: 1000}]\n"
        "  secrets:\n    tok: {environment: TOKEN}\n"
        "  configs:\n    conf: {content: hello}\n"
    )
    loaded = load([str(tmp_path)], environ={"TOKEN": "s3"})
    desired = desired_for(
        loaded.stacks[0], revision="r", root=str(tmp_path / "root"), environ={"TOKEN": "s3"}
    )
    files = {(f.kind, f.mode, f.uid, f.gid): f for f in desired.files}
    assert sorted(files) == [
        ("config", 0o444, None, None),
        ("secret", 0o400, None, None),
        ("secret", 0o440, 1000, 1000),
    ]
    mounts = {
        c.config.name: {m.target: m.source for m in c.config.mounts} for c in desired.containers
    }
    assert mounts["sec-a-1"]["/run/secrets/tok"] == files[("secret", 0o400, None, None)].path
    assert mounts["sec-b-1"]["/run/secrets/t"] == files[("secret", 0o440, 1000, 1000)].path
    f = files[("secret", 0o440, 1000, 1000)]
    write_file_atomic(f.path, f.content, f.mode, owner=(f.uid, f.gid))
    st = Path(f.path).stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o440, 1000, 1000)


def test_file_owner_must_be_numeric(tmp_path: Path) -> None:
    from pyapply.reconciler.manifest.loader import ManifestError, load

    (tmp_path / "stack.yaml").write_text(
        "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: sec}\nspec:\n"
        "  services:\n    a:\n      image: busybox\n"
        "      secrets: [{source: tok, uid: www-data}]\n"
        "  secrets:\n    tok: {environment: TOKEN}\n"
    )
    with pytest.raises(ManifestError) as e:
        load([str(tmp_path)], environ={"TOKEN": "x"})
    assert "stack.yaml:8:36: spec.services.a." in str(e.value)
    assert "secrets[0].uid: must be a numeric id such as 1000, got" in str(e.value)
