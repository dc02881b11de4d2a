"""Compose details that used to be dropped without a word, each now run or warned with
its location: env_file `format: raw`, the `name:` of a secret or config, a port's `name`
and `app_protocol`, `nocopy`, `bind.create_host_path`, and the short syntax's `:z`,
`:Z`, `:cached`, `:delegated` and propagation options."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from manifest_support import errors, load_text, only_stack, warnings
from support import write

from pyapply.reconciler.core.model import Mount
from pyapply.reconciler.core.translate import container_config
from pyapply.reconciler.manifest import dump


def service_doc(body: str, extra: str = "") -> str:
    lines = "".join(f"    {line}\n" for line in body.splitlines())
    return f"name: t\nservices:\n  a:\n    image: img\n{lines}{extra}"


def test_env_file_raw_is_taken_as_written(here: Path) -> None:
    write(here, {"raw.env": '# c\nA="x ${HOME}" # y\n\nB= spaced \n'})
    svc = only_stack(
        load_text(here, service_doc("env_file: [{path: raw.env, format: raw}]"), {"HOME": "/h"})
    ).service("a")
    assert dict(svc.environment) == {"A": '"x ${HOME}" # y', "B": " spaced "}
    # the same file as dotenv is unquoted and interpolated
    dotenv = only_stack(
        load_text(here, service_doc("env_file: [{path: raw.env}]"), {"HOME": "/h"})
    ).service("a")
    assert dict(dotenv.environment)["A"] == "x /h"


def test_env_file_formats(here: Path) -> None:
    write(here, {"raw.env": "A=1\nnot a pair\n", "x.env": "A=1\n"})
    assert errors(here, service_doc("env_file: [{path: raw.env, format: raw}]")) == [
        'raw.env:2:1: "not a pair" is not of the form KEY=VALUE'
    ]
    assert errors(here, service_doc("env_file: [{path: x.env, format: yaml}]")) == [
        'stack.yaml:5:38: services.a.env_file[0].format: env file format "yaml" is not '
        'supported: "dotenv" or "raw"'
    ]


def test_port_metadata_is_warned(here: Path) -> None:
    got = warnings(here, service_doc("ports: [{target: 80, name: web, app_protocol: http}]"))
    assert got == [
        'stack.yaml:5:26: warning: services.a.ports[0].name: port "name" is metadata no runtime '
        "here records; it is ignored",
        'stack.yaml:5:37: warning: services.a.ports[0].app_protocol: port "app_protocol" is '
        "metadata no runtime here records; it is ignored",
    ]


@pytest.mark.parametrize(
    ("option", "phrase"),
    [
        ("z", 'SELinux relabelling ("z") is not supported'),
        ("Z", 'SELinux relabelling ("Z") is not supported'),
        ("cached", 'consistency "cached" is for Docker Desktop'),
        ("delegated", 'consistency "delegated" is for Docker Desktop'),
        ("rshared", 'bind propagation "rshared" is not supported'),
    ],
)
def test_short_syntax_options_are_warned(here: Path, option: str, phrase: str) -> None:
    (here / "d").mkdir()
    got = warnings(here, service_doc(f"volumes: ['./d:/d:ro,{option}']"))
    assert len(got) == 1 and got[0].startswith("stack.yaml:5:15: warning: services.a.volumes[0]: ")
    assert phrase in got[0]


def test_long_syntax_consistency_is_warned(here: Path) -> None:
    (here / "d").mkdir()
    got = warnings(
        here, service_doc("volumes: [{type: bind, source: ./d, target: /d, consistency: cached}]")
    )
    assert len(got) == 1 and "services.a.volumes[0].consistency: consistency" in got[0]


def test_nocopy(here: Path) -> None:
    doc = service_doc(
        "volumes: ['v:/a:nocopy', {type: volume, source: v, target: /b, volume: {nocopy: true}},"
        " v:/c]",
        "volumes: {v: {}}\n",
    )
    stack = only_stack(load_text(here, doc))
    assert [m.nocopy for m in stack.service("a").mounts] == [True, True, False]
    cfg = container_config(stack, stack.service("a"), 1, file_paths={})
    assert [m.no_copy for m in cfg.mounts] == [True, True, False]
    assert "nocopy" in errors(here, service_doc("volumes: ['./d:/d:nocopy']"))[0]


def test_create_host_path(here: Path) -> None:
    doc = service_doc(
        "volumes: ['./short:/s', {type: bind, source: ./made, target: /m, "
        "bind: {create_host_path: true}}, {type: bind, source: ./long, target: /l}]"
    )
    loaded = load_text(here, doc)
    assert [str(w) for w in loaded.warnings] == [
        'stack.yaml:5:124: warning: services.a.volumes[2].source: bind source "long" does not '
        "exist, and the container cannot be created without it (bind.create_host_path: true "
        "makes it)"
    ]
    stack = only_stack(loaded)
    mounts = stack.service("a").mounts
    assert [m.create_host_path for m in mounts] == [True, True, False]
    cfg = container_config(stack, stack.service("a"), 1, file_paths={})
    assert [m.create_host_path for m in cfg.mounts] == [True, True, False]
    # how a container is made, not what it is: never a reason to recreate it
    assert msgspec.structs.replace(cfg.mounts[0], create_host_path=False) == cfg.mounts[0]
    # config says it, and reads back the same
    printed = dump.dump_yaml([dump.compose_document(stack)])
    assert "create_host_path: false" in printed
    assert only_stack(load_text(here, printed, name="again.yaml")) == stack
    assert Mount(type="bind", target="/x", source="/y").create_host_path is True


def test_secret_name_finds_an_external_one(here: Path) -> None:
    doc = service_doc(
        "secrets: [s1, s2]",
        "secrets:\n  s1: {external: true, name: real}\n  s2: {content: x, name: shown}\n",
    )
    loaded = load_text(here, doc)
    stack = only_stack(loaded)
    assert stack.secrets[0].external_name == "real" and stack.secrets[1].external_name is None
    assert [str(w) for w in loaded.warnings] == [
        'stack.yaml:8:20: warning: secrets.s2.name: "name" is only used to find an external '
        "secret; pyapply names the secrets it makes <stack>_<key>_<digest>, and this one is "
        "ignored"
    ]
    printed = dump.dump_yaml([dump.compose_document(stack)])
    assert only_stack(load_text(here, printed, name="again.yaml")) == stack
