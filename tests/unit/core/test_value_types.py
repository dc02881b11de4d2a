"""The value types (msgspec Structs) and what their dataclasses said with field options:
fields left out of ==, hash() and spec hashes (`Uncompared`), fields never in repr()
(`Hidden`), and no dataclass made on a command's path."""

from __future__ import annotations

import ast
from pathlib import Path

import msgspec

from pyapply.reconciler.agent.notify import Target
from pyapply.reconciler.core import identity
from pyapply.reconciler.core.model import Location, NetworkSpec, ServiceSpec, Stack
from pyapply.reconciler.core.translate import DesiredFile
from pyapply.runtime.base import BuildConfig, MountConfig

REPO = Path(__file__).resolve().parents[3]
HERE = Location("stack.yaml", 3, 5)
THERE = Location("other.yaml", 9, 1)


def test_where_a_spec_was_written_is_not_part_of_it() -> None:
    a = ServiceSpec(name="web", image="busybox", location=HERE, seccomp_file="/a.json")
    b = ServiceSpec(name="web", image="busybox", location=THERE, seccomp_file=None)
    assert a == b
    assert hash(a) == hash(b)
    assert identity.digest(a) == identity.digest(b)
    assert a != msgspec.structs.replace(b, image="busybox:2")
    assert identity.digest(a) != identity.digest(msgspec.structs.replace(b, image="busybox:2"))


def test_a_stack_compares_without_its_sources_and_location() -> None:
    nets = (NetworkSpec("front", location=HERE),)
    a = Stack(name="shop", networks=nets, sources=("a.yaml",), location=HERE)
    b = Stack(name="shop", networks=(NetworkSpec("front"),), sources=(), location=None)
    assert a == b
    assert {a, b} == {a}
    assert identity.canonical_json(a) == identity.canonical_json(b)
    assert "location" not in identity.canonical_json(a)


def test_uncompared_fields_keep_their_values_and_their_place_in_repr() -> None:
    m = MountConfig("bind", "/data", "/srv", create_host_path=True)
    assert m.create_host_path is True
    assert m == MountConfig("bind", "/data", "/srv")
    assert "create_host_path=True" in repr(m)
    # an equality across types is not claimed
    assert m != ("bind", "/data", "/srv")


def test_compared_fields_give_defaults_made_by_factories_once() -> None:
    fields = dict(identity.compared_fields(BuildConfig))
    assert fields["args"] == {}
    assert fields["tags"] == ()
    assert "context" in fields  # no default: compared, never omitted
    assert "location" not in dict(identity.compared_fields(ServiceSpec))
    assert identity.canonical_json(BuildConfig("ctx")) == '{"context":"ctx"}'


def test_secrets_stay_out_of_reprs() -> None:
    f = DesiredFile("secret", "db_pw", "/run/x", b"hunter2", 0o400)
    shown = repr(f)
    assert "hunter2" not in shown
    assert shown.startswith("DesiredFile(kind='secret', key='db_pw', path='/run/x', mode=256")
    assert f.content == b"hunter2"
    b = BuildConfig("ctx", secrets={"npm": b"tok-123"})
    assert "tok-123" not in repr(b) and "secrets" not in repr(b)
    t = Target(url="https://user:pw@example.test/x", fmt="json", shown="https://example.test/x")
    assert "pw@" not in repr(t) and "url" not in repr(t)


def test_no_dataclass_is_made_outside_the_setup_script() -> None:
    """Every value type is a Struct (a dataclass class costs ~1 ms at import); the one
    exception runs under the system's python, before msgspec is installed."""
    found = []
    for path in sorted((REPO / "reconciler").rglob("*.py")) + sorted(
        (REPO / "runtime").rglob("*.py")
    ):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "dataclasses":
                found.append(str(path.relative_to(REPO)))
            if isinstance(node, ast.Import) and any(a.name == "dataclasses" for a in node.names):
                found.append(str(path.relative_to(REPO)))
    assert found == ["runtime/native/hostbins.py"]
