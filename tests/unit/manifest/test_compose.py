"""Compose projects (reconciler/manifest/compose.py, the project rules in reconciler/manifest/loader.py) and
`pyapply config` / `pyapply convert` (reconciler/manifest/dump.py, reconciler/cli/compose.py).

The fixtures under data/compose/ each exercise one part of the Compose Specification; every
one of them, and every project of the real-world corpus, must survive the round trip: the
printed `config` and `convert` output loads back into an equal model.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from support import value_paths, write

from pyapply.reconciler.core.model import (
    Dependency,
    Healthcheck,
    ManifestError,
    Mount,
    Port,
    Resources,
    ServiceNetwork,
    Stack,
)
from pyapply.reconciler.manifest import compose, yamlpos
from pyapply.reconciler.manifest import dump as compose_render
from pyapply.reconciler.manifest.loader import Loaded, load
from tests import corpus as test_corpus

DATA = Path(__file__).parents[1] / "data" / "compose"
FIXTURES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
REPO = Path(__file__).resolve().parents[3]
PYAPPLY = str(Path(sys.executable).parent / "pyapply")


def only(loaded: Loaded) -> Stack:
    assert len(loaded.stacks) == 1, loaded.stacks
    return loaded.stacks[0]


def problems(paths: list[str], env: Mapping[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(paths, environ=dict(env or {}), **kw)  # type: ignore[arg-type]
    return [str(p) for p in info.value.problems]


def fixture(name: str, env: Mapping[str, str] | None = None, **kw: object) -> Loaded:
    return load([str(DATA / name)], environ=dict(env or {}), **kw)  # type: ignore[arg-type]


def assert_round_trip(loaded: Loaded, where: Path) -> None:
    """`convert` and `config` output, written to a file and loaded again, give equal
    models (in the environment the original saw)."""
    for stack in loaded.stacks:
        env = dict(loaded.environments.get(stack.name, {}))
        for kind, render in (
            ("convert", compose_render.stack_document),
            ("config", compose_render.compose_document),
        ):
            out = where / f"{stack.name}-{kind}.yaml"
            out.write_text(compose_render.dump_yaml([render(stack)]))
            again = load([str(out)], environ=env)
            assert again.stacks == (stack,), f"{kind} of {stack.name} does not round-trip"


# ---------------------------------------------------------------------------------------------
# Fixtures: one rule each


def test_merge_of_base_and_override_file() -> None:
    stack = only(fixture("merge"))
    web, db, cache = stack.service("web"), stack.service("db"), stack.service("cache")
    assert stack.name == "merged"
    assert web.command == ("sleep", "1")  # replaced, not appended
    assert web.environment == (("A", "1"), ("B", "20"), ("C", "3"))  # list + mapping by key
    assert web.labels == (("extra", "yes"), ("tier", "web"))
    # ports unique: "8080:80" written twice is one port
    assert web.ports == (Port(80, 8080), Port(90, 9090, "127.0.0.1"), Port(443, 8443))
    # volumes by target: the override's bind replaces ./conf on /etc/conf; paths are
    # relative to the project directory (the first file's), whichever file says them
    assert web.mounts == (
        Mount("volume", "/data", "data"),
        # the long syntax: no host directory is made unless create_host_path says so
        Mount("bind", "/etc/conf", str(DATA / "merge" / "other"), create_host_path=False),
    )
    assert web.cap_add == ("NET_ADMIN", "SYS_TIME")
    assert web.depends_on == (Dependency("cache"), Dependency("db"))
    assert web.networks == (ServiceNetwork("back", ("www",)), ServiceNetwork("front"))
    assert web.healthcheck == Healthcheck(("CMD", "false"), interval=10.0)
    assert db.ports == ()  # !reset
    assert db.environment == (("POSTGRES_DB", "other"),)  # !override
    assert cache.image == "redis:7"
    assert stack.sources == (
        str(DATA / "merge" / "compose.yaml"),
        str(DATA / "merge" / "compose.override.yaml"),
    )


def test_extends_in_the_file_and_from_another_file() -> None:
    stack = only(fixture("extends"))
    web, worker = stack.service("web"), stack.service("worker")
    assert web.image == "busybox:1"
    assert web.environment == (("LEVEL", "debug"), ("SHARED", "1"))
    assert web.labels == (("team", "a"),)
    assert web.init is True
    # inherited, as the reference loader does (issue 16)
    assert web.depends_on == (Dependency("db"),)
    assert stack.service("base").depends_on == (Dependency("db"),)
    # two levels, from another file: its relative paths are relative to that file
    assert worker.image == "alpine:3"
    assert worker.command == ("sleep", "100")
    assert worker.user == "1000"
    assert worker.environment == (("JOB_MODE", "batch"),)
    assert worker.mounts == (
        Mount("bind", "/scripts", str(DATA / "extends" / "common" / "scripts"), read_only=True),
    )
    assert worker.stop_grace_period == 1.0


def test_include_short_and_long_form() -> None:
    loaded = fixture("include")
    stack = only(loaded)
    assert [s.name for s in stack.services] == ["app", "cache", "db"]
    db = stack.service("db")
    assert db.image == "postgres:16"  # from db/.env, the included project's own
    assert db.environment == (("POSTGRES_DB", "app"),)  # db/db.env, relative to db/
    assert db.mounts[0] == Mount(
        "bind", "/docker-entrypoint-initdb.d", str(DATA / "include" / "db" / "init"), True
    )
    assert stack.service("cache").image == "redis:7"  # the long form's env_file
    assert stack.service("app").image == "app:1"
    assert [v.name for v in stack.volumes] == ["pgdata"]
    assert str(DATA / "include" / "db" / "compose.yaml") in loaded.files


def test_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [s.name for s in only(fixture("profiles")).services]
    assert names == ["db", "web"]  # the optional dependency on "debugger" is dropped
    assert only(fixture("profiles")).service("web").depends_on == (Dependency("db"),)
    debug = only(fixture("profiles", profiles=["debug"]))
    assert [s.name for s in debug.services] == ["db", "debugger", "tools", "web"]
    assert [s.name for s in only(fixture("profiles", profiles=["tools"])).services] == [
        "db",
        "tools",
        "web",
    ]
    everything = only(fixture("profiles", profiles=["*"]))
    assert len(everything.services) == 4
    # COMPOSE_PROFILES, comma-separated, when no --profile is given
    by_env = only(fixture("profiles", env={"COMPOSE_PROFILES": "tools,other"}))
    assert [s.name for s in by_env.services] == ["db", "tools", "web"]


def test_reset_applies_to_what_extends_inherits() -> None:
    stack = only(fixture("reset"))
    assert [s.name for s in stack.services] == ["other", "web"]  # base: profile "never"
    web = stack.service("web")
    assert (web.image, web.ports, web.environment) == ("x", (), (("A", "1"),))
    assert stack.service("other").user is None  # `!reset` in the only file: unset


def test_anchors_aliases_merge_keys_and_extension_fields() -> None:
    loaded = fixture("anchors")
    stack = only(loaded)
    one, two = stack.service("one"), stack.service("two")
    assert one.restart == two.restart == "unless-stopped"
    assert one.resources == Resources(memory=64 << 20, cpus=0.25)
    assert one.environment == (("LANG", "C"), ("TZ", "UTC"))
    assert two.environment == (("LANG", "en_US.UTF-8"), ("TZ", "UTC"))
    assert loaded.warnings == ()


def test_dotenv_and_env_file_long_form() -> None:
    stack = only(fixture("envfiles"))
    assert stack.name == "envproject"  # COMPOSE_PROJECT_NAME from .env
    app = stack.service("app")
    assert app.image == "busybox:1.36"
    assert app.environment == (
        ("A", "1"),
        ("B", "override"),
        ("BARE", "from-dotenv"),
        ("FROM_ENV", "hello"),
    )


def test_links_order_the_start_like_depends_on(here: Path) -> None:
    write(
        here, {"c/compose.yaml": "services:\n  a: {image: x, links: ['b:bee']}\n  b: {image: y}\n"}
    )
    assert only(load(["c"], environ={})).service("a").depends_on == (Dependency("b"),)
    write(here, {"c/compose.yaml": "services:\n  a: {image: x, links: [nope]}\n"})
    assert problems(["c"]) == [
        'c/compose.yaml:2:25: services.a.links[0]: depends on unknown service "nope"'
    ]


def test_legacy_fields() -> None:
    loaded = fixture("legacy")
    app = only(loaded).service("app")
    assert app.resources == Resources(memory=64 << 20, cpus=0.5)
    assert app.container_name == "my-app"  # honoured: one replica
    f = "legacy/docker-compose.yml"
    assert [str(w).replace(str(DATA) + "/", "") for w in loaded.warnings] == [
        f'{f}:1:1: warning: version: "version" is obsolete and ignored',
        f'{f}:8:5: warning: services.app.links: "links" is legacy: the linked services start '
        'first, as with "depends_on"; services reach each other by service name on the '
        'networks they share (link aliases are not created: use network "aliases")',
    ]


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_round_trips(name: str, tmp_path: Path) -> None:
    for profiles in ([], ["*"]):
        assert_round_trip(fixture(name, profiles=profiles), tmp_path)


MANIFESTS = Path(__file__).parents[1] / "data" / "manifests"


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.iterdir() if p.is_dir()))
def test_every_manifest_fixture_round_trips(name: str, tmp_path: Path) -> None:
    loaded = load([str(MANIFESTS / name)], environ={})
    assert loaded.stacks
    assert_round_trip(loaded, tmp_path)


def test_demo_manifests_round_trip(tmp_path: Path) -> None:
    for profiles in ([], ["debug"]):
        loaded = load([str(REPO / "manifests")], environ={}, profiles=profiles)
        assert len(loaded.stacks) >= 3
        assert_round_trip(loaded, tmp_path)


# ---------------------------------------------------------------------------------------------
# Which files make a project


def test_directory_project_is_compose_file_plus_override_only(here: Path) -> None:
    write(
        here,
        {
            "app/docker-compose.yml": "services: {web: {image: a}}\n",
            "app/compose.yaml": "services: {web: {image: b}}\n",  # first in the search order
            "app/compose.override.yaml": "services: {web: {user: nobody}}\n",
            "app/prometheus.yml": "global: {scrape_interval: 15s}\n",  # not a manifest: unread
            "app/sub/stack.yaml": "not: [valid",
        },
    )
    loaded = load(["app"], environ={})
    web = only(loaded).service("web")
    assert (web.image, web.user) == ("b", "nobody")
    assert loaded.files == (
        str(here / "app" / "compose.override.yaml"),
        str(here / "app" / "compose.yaml"),
    )
    # in a recursive walk, a directory with a compose file is that project too
    write(here, {"tree/one/compose.yaml": "services: {a: {image: a}}\n", "tree/x.yaml": ""})
    assert [s.name for s in load(["tree"], environ={}).stacks] == ["one"]


def test_explicit_files_merge_in_order_and_name_the_project(here: Path) -> None:
    write(
        here,
        {
            "base/compose.yaml": "services: {web: {image: a, environment: [X=1]}}\n",
            "prod.yaml": "name: prod\nservices: {web: {image: b}}\n",
        },
    )
    stack = only(load(["base/compose.yaml", "prod.yaml"], environ={}))
    assert stack.name == "prod"
    assert stack.service("web").image == "b"
    assert stack.service("web").environment == (("X", "1"),)
    # files that name different projects stay different stacks
    write(here, {"other.yaml": "name: other\nservices: {x: {image: x}}\n"})
    names = [s.name for s in load(["prod.yaml", "other.yaml"], environ={}).stacks]
    assert names == ["other", "prod"]


# ---------------------------------------------------------------------------------------------
# Errors, with their exact messages


def test_extends_cycle(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": """
                services:
                  a:
                    extends: b
                  b:
                    extends: {service: a}
                    image: x
            """
        },
    )
    assert problems(["c"]) == ["c/compose.yaml:3:5: services.a.extends: extends cycle: a -> b -> a"]


def test_include_cycle(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": "include: [other.yaml]\nservices: {a: {image: x}}\n",
            "c/other.yaml": "include: [compose.yaml]\nservices: {b: {image: x}}\n",
        },
    )
    assert problems(["c"]) == [
        "c/other.yaml:1:11: include[0]: include cycle: c/compose.yaml -> c/other.yaml -> "
        "c/compose.yaml"
    ]


def test_dependency_on_a_disabled_profile(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": """
                services:
                  web: {image: x, depends_on: [dbg]}
                  dbg: {image: x, profiles: [debug]}
            """
        },
    )
    assert problems(["c"]) == [
        'c/compose.yaml:2:32: services.web.depends_on[0]: service "web" depends on "dbg", which '
        "is not enabled: enable its profile (debug) with --profile or COMPOSE_PROFILES"
    ]
    assert [s.name for s in only(load(["c"], environ={}, profiles=["debug"])).services] == [
        "dbg",
        "web",
    ]


def test_depends_on_cycle_across_merged_files(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": "services: {a: {image: x, depends_on: [b]}, b: {image: x}}\n",
            "c/compose.override.yaml": "services:\n  b:\n    depends_on: [a]\n",
        },
    )
    assert problems(["c"]) == [
        "c/compose.yaml:1:39: services.a.depends_on[0]: dependency cycle: a -> b -> a"
    ]


def test_include_and_extends_errors(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": """
                include:
                  - missing.yaml
                  - path: dup.yaml
                  - {project_directory: .}
                services:
                  a: {image: x, extends: {service: nope, file: nofile.yaml}}
                  b: {image: x, extends: {service: zz}}
                  c: {extends: {service: c2, file: dup.yaml}}
                  d: {image: x, extends: {file: dup.yaml}}
            """,
            "c/dup.yaml": "services:\n  a: {image: y}\n  c2: {image: z}\n",
        },
    )
    assert problems(["c"]) == [
        'c/compose.yaml:2:5: include[0]: included file "c/missing.yaml" does not exist',
        'c/compose.yaml:4:5: include[2]: an include is a file path or a mapping with "path"',
        'c/compose.yaml:6:48: services.a.extends.file: file "c/nofile.yaml" does not exist',
        'c/compose.yaml:7:26: services.b.extends: service "b" extends "zz", which is not defined',
        'c/compose.yaml:9:26: services.d.extends: extends needs "service": the name of the '
        "service to extend",
    ]


def test_merge_errors_name_the_file_they_are_in(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": "services: {web: {image: x}}\n",
            "c/compose.override.yaml": "services:\n  web:\n    ports: ['99999:80']\n",
        },
    )
    assert problems(["c"]) == [
        'c/compose.override.yaml:3:13: services.web.ports[0]: "99999:80" is not a valid port '
        "mapping: port 99999 is out of range (1-65535)"
    ]


# ---------------------------------------------------------------------------------------------
# Pieces


def test_yaml_merge_tags_are_recorded() -> None:
    doc = next(yamlpos.parse("a: !reset null\nb: !override [1]\nc: !override 5\n"))
    assert doc.data == {"a": None, "b": [1], "c": 5}
    assert doc.tags == {("a",): "!reset", ("b",): "!override", ("c",): "!override"}
    assert doc.errors == []


def test_merge_rules_directly() -> None:
    def tree(text: str) -> compose.Node:
        return compose.to_tree(next(yamlpos.parse(text)), "f.yaml", "/f.yaml")

    base = tree(
        "services:\n  s:\n    dns: [a, b]\n    entrypoint: [x]\n    secrets: [pw]\n"
        "    depends_on: {db: {condition: service_healthy}}\n"
    )
    over = tree(
        "services:\n  s:\n    dns: [b, c]\n    entrypoint: [y]\n"
        "    secrets: [{source: pw, mode: 0400}]\n    depends_on: [cache]\n"
    )
    merged = compose.merge(base, over)
    assert merged is not None
    assert merged.plain() == {
        "services": {
            "s": {
                "dns": ["a", "b", "c"],
                "entrypoint": ["y"],
                "secrets": [{"source": "pw", "mode": 0o400}],
                "depends_on": {
                    "db": {"condition": "service_healthy"},
                    "cache": {"condition": "service_started"},
                },
            }
        }
    }


# ---------------------------------------------------------------------------------------------
# The corpus of real compose files


def corpus() -> Path:
    """The compose corpus's folder (the one holding awesome-compose/)."""
    return test_corpus.need("compose", "awesome-compose").parent


def corpus_projects(root: Path) -> list[Path]:
    projects = sorted(p for p in (root / "awesome-compose").iterdir() if p.is_dir())
    assert len(projects) >= 39
    return projects


def test_corpus_round_trips_in_process(tmp_path: Path) -> None:
    root = corpus()
    assert root is not None
    for project in corpus_projects(root):
        loaded = load([str(project)], environ={"HOME": "/home/u"})
        assert only(loaded).services, project
        for warning in loaded.warnings:
            assert warning.location is not None and warning.path, warning
        assert_round_trip(loaded, tmp_path)


def test_corpus_through_the_command_line(tmp_path: Path) -> None:
    """validate, config (YAML and JSON) and convert exit 0 for every corpus project, and the
    converted output validates (that it loads into the same model is checked in-process)."""
    root = corpus()
    assert root is not None
    env = {**os.environ, "HOME": "/home/u", "PYAPPLY_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("COMPOSE_PROJECT_NAME", None)
    env.pop("COMPOSE_PROFILES", None)

    def run(*args: str) -> str:
        out = subprocess.run([PYAPPLY, *args], capture_output=True, text=True, env=env, check=False)
        assert out.returncode == 0, f"pyapply {' '.join(args)}:\n{out.stderr}"
        return out.stdout

    def check(project: Path) -> None:
        work = tmp_path / project.name
        work.mkdir()
        run("validate", "-f", str(project))
        config = run("config", "-f", str(project))
        as_json = json.loads(run("config", "-f", str(project), "-o", "json"))
        assert as_json == yaml.safe_load(config)
        converted = run("convert", "-f", str(project))
        (work / "stack.yaml").write_text(converted)
        run("validate", "-f", str(work / "stack.yaml"))

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(check, corpus_projects(root)))


# ---------------------------------------------------------------------------------------------
# The commands


def test_config_and_convert_commands(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from pyapply.reconciler.cli.main import main

    monkeypatch.delenv("COMPOSE_PROFILES", raising=False)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    project = str(DATA / "profiles")
    runner = CliRunner()
    out = runner.invoke(main, ["config", "-f", project, "-o", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["name"] == "profiled" and sorted(doc["services"]) == ["db", "web"]
    out = runner.invoke(main, ["config", "-f", project, "--profile", "debug"])
    assert sorted(yaml.safe_load(out.stdout)["services"]) == ["db", "debugger", "tools", "web"]
    out = runner.invoke(main, ["convert", "-f", project], env={"COMPOSE_PROFILES": "tools"})
    stack = yaml.safe_load(out.stdout)
    assert (stack["apiVersion"], stack["kind"], stack["metadata"]) == (
        "pyapply/v1",
        "Stack",
        {"name": "profiled"},
    )
    assert sorted(stack["spec"]["services"]) == ["db", "tools", "web"]
    out = runner.invoke(main, ["validate", "-f", project, "--profile", "debug"])
    assert out.exit_code == 0 and "3 stack" not in out.stdout and "4 service(s)" in out.stdout
    write(here, {"bad/compose.yaml": "services:\n  a: {image: x, extends: a}\n"})
    out = runner.invoke(main, ["config", "-f", "bad"])
    assert out.exit_code != 0
    assert "bad/compose.yaml:2:17: services.a.extends: extends cycle: a -> a" in out.stderr


def test_include_long_form_with_a_list_of_paths_and_project_directory(here: Path) -> None:
    write(
        here,
        {
            "app/compose.yaml": """
                include:
                  - path: [../lib/base.yaml, ../lib/extra.yaml]
                    project_directory: ../lib/project
                services:
                  app: {image: "app:${TAG}"}
            """,
            "app/.env": "TAG=2\n",
            "lib/base.yaml": "services:\n  db: {image: 'db:${DB}', volumes: ['./data:/d']}\n",
            "lib/extra.yaml": "services:\n  db: {user: postgres}\n",
            "lib/project/.env": "DB=9\n",
        },
    )
    stack = only(load(["app"], environ={}))
    assert stack.name == "app"
    db = stack.service("db")
    assert (db.image, db.user) == ("db:9", "postgres")  # merged, with the included .env
    assert db.mounts == (Mount("bind", "/d", str(here / "lib" / "project" / "data")),)
    assert stack.service("app").image == "app:2"


def test_env_file_required_and_optional(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": """
                services:
                  a:
                    image: x
                    env_file:
                      - {path: ./maybe.env, required: false}
                      - {path: ./must.env}
            """
        },
    )
    assert problems(["c"]) == [
        'c/compose.yaml:6:9: services.a.env_file[1]: env file "c/must.env" does not exist'
    ]
    (here / "c" / "must.env").write_text("K=v\n")
    assert only(load(["c"], environ={})).service("a").environment == (("K", "v"),)


def test_override_file_named_with_f_and_override_tag(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": "services:\n  web: {image: x, ports: ['80:80', '443:443']}\n",
            "prod.yaml": "services:\n  web:\n    ports: !override ['8080:80']\n",
        },
    )
    stack = only(load(["compose.yaml", "prod.yaml"], environ={"COMPOSE_PROJECT_NAME": "p"}))
    assert stack.name == "p"
    assert stack.service("web").ports == (Port(80, 8080),)


def test_unsupported_fields_still_warn_with_file_and_line(here: Path) -> None:
    write(
        here,
        {
            "c/compose.yaml": "services:\n  a: {image: x}\n",
            "c/compose.override.yaml": """
                services:
                  a:
                    network_mode: bridge
                  b:
                    build: ./b
                networks:
                  n: {driver: macvlan}
            """,
        },
    )
    loaded = load(["c"], environ={})
    assert [str(w) for w in loaded.warnings] == [
        'c/compose.override.yaml:3:5: warning: services.a.network_mode: "network_mode: bridge" '
        "is not supported; the service is not attached to any network",
        'c/compose.override.yaml:5:12: warning: services.b.build: build context "c/b" does '
        "not exist: the image cannot be built here",
        'c/compose.override.yaml:7:15: warning: networks.n.driver: network driver "macvlan" is '
        'not supported; only "bridge" is',
    ]


def test_a_file_of_includes_only(here: Path) -> None:
    write(
        here,
        {
            "all/compose.yaml": "name: all\ninclude: [../a/compose.yaml, ../b/compose.yaml]\n",
            "a/compose.yaml": "services: {a: {image: a}}\n",
            "b/compose.yaml": "services: {b: {image: b, depends_on: [a]}}\n",
        },
    )
    stack = only(load(["all"], environ={}))
    assert [s.name for s in stack.services] == ["a", "b"]


def test_any_shape_in_a_merged_project_is_reported_not_crashed(here: Path) -> None:
    base = {
        "include": [{"path": "inc.yaml", "env_file": ["inc.env"]}],
        "services": {
            "web": {
                "image": "x",
                "extends": {"service": "tpl"},
                "profiles": ["p"],
                "depends_on": {"db": {"condition": "service_started", "required": False}},
                "environment": ["A=1"],
                "ports": ["80:80"],
                "volumes": ["./a:/a"],
                "networks": ["n"],
            },
            "tpl": {"image": "t", "extends": {"service": "db", "file": "other.yaml"}},
        },
        "networks": {"n": {}},
    }
    override = {
        "services": {
            "web": {
                "environment": {"B": "2"},
                "ports": [{"target": 443}],
                "volumes": [{"type": "bind", "source": "./b", "target": "/a"}],
                "depends_on": ["db"],
                "networks": {"n": {"aliases": ["w"]}},
                "command": ["a"],
            }
        }
    }
    write(
        here,
        {
            "p/inc.yaml": "services: {db: {image: d}}\n",
            "p/inc.env": "X=1\n",
            "p/other.yaml": "services: {db: {image: o}}\n",
        },
    )
    replacements: list[object] = [None, 7, "x", [], {}, True, ["x"], {"x": None}]
    n = 0
    for doc, name in ((base, "compose.yaml"), (override, "compose.override.yaml")):
        for path in value_paths(doc):
            for replacement in replacements[n % 3 :: 3]:
                n += 1
                changed = json.loads(json.dumps(doc))
                node = changed
                for part in path[:-1]:
                    node = node[part]
                node[path[-1]] = replacement
                (here / "p" / "compose.yaml").write_text(
                    json.dumps(changed if name == "compose.yaml" else base)
                )
                (here / "p" / "compose.override.yaml").write_text(
                    json.dumps(changed if name != "compose.yaml" else override)
                )
                for profiles in ([], ["p"]):
                    try:
                        load(["p"], environ={}, profiles=profiles)
                    except ManifestError as e:
                        assert e.problems
                        assert all(p.location is not None for p in e.problems), e
    assert n > 50
