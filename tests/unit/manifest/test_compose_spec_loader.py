"""The loader where the Compose Specification (and its reference loader) says how a project is
found and read: no `-f` (the project in this or a parent directory, COMPOSE_FILE), the project
name's order, ports, dotenv lines, include, override files, extends, newer fields, and which
checks `config` only warns about (issue 16)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import write

from pyapply.reconciler.cli.main import main
from pyapply.reconciler.core.model import ManifestError, Port
from pyapply.reconciler.manifest.discovery import find_project
from pyapply.reconciler.manifest.loader import Loaded, load
from pyapply.reconciler.manifest.values import Bad, long_port, short_ports


@pytest.fixture(autouse=True)
def _no_compose_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "COMPOSE_FILE",
        "COMPOSE_PATH_SEPARATOR",
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_PROFILES",
    ):
        monkeypatch.delenv(name, raising=False)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def config_json(*args: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    out = run("config", *args, "-o", "json", env=env)
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


# ---------------------------------------------------------------------------------------------
# 2. Without -f: the project as compose finds it


def test_find_project_prefers_compose_yaml_and_adds_its_override(here: Path) -> None:
    write(
        here,
        {
            "docker-compose.yml": "services: {old: {image: img}}\n",
            "compose.yaml": "services: {web: {image: img}}\n",
            "compose.override.yaml": "services: {web: {environment: {A: '1'}}}\n",
        },
    )
    assert find_project(str(here), {}) == ["compose.yaml", "compose.override.yaml"]


def test_find_project_legacy_names_and_their_override(here: Path) -> None:
    write(
        here,
        {
            "docker-compose.yml": "services: {web: {image: img}}\n",
            "docker-compose.override.yml": "services: {web: {image: other}}\n",
        },
    )
    assert find_project(str(here), {}) == ["docker-compose.yml", "docker-compose.override.yml"]


def test_find_project_looks_in_parent_directories(here: Path) -> None:
    write(here, {"compose.yml": "services: {web: {image: img}}\n", "src/deep/x.txt": ""})
    assert find_project(str(here / "src" / "deep"), {}) == ["../../compose.yml"]


def test_compose_file_variable_and_its_separator(here: Path) -> None:
    assert find_project(str(here), {"COMPOSE_FILE": "a.yaml:b/c.yaml"}) == ["a.yaml", "b/c.yaml"]
    env = {"COMPOSE_FILE": "a.yaml;b.yaml", "COMPOSE_PATH_SEPARATOR": ";"}
    assert find_project(str(here), env) == ["a.yaml", "b.yaml"]


def test_config_without_f_reads_the_project_here_and_in_parents(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": "services: {web: {image: img}}\n",
            "compose.override.yaml": "services: {web: {environment: {A: '1'}}}\n",
            "sub/dir/keep": "",
        },
    )
    doc = config_json()
    assert doc["services"]["web"]["environment"] == {"A": "1"}
    os.chdir(here / "sub" / "dir")
    assert config_json()["services"]["web"]["image"] == "img"
    out = run("validate")
    assert out.exit_code == 0, out.output


def test_config_honours_compose_file(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": "services: {web: {image: here}}\n",
            "one.yaml": "services: {a: {image: img}}\n",
            "two.yaml": "services: {a: {image: other}, b: {image: img}}\n",
        },
    )
    doc = config_json(env={"COMPOSE_FILE": "one.yaml:two.yaml"})
    assert sorted(doc["services"]) == ["a", "b"] and doc["services"]["a"]["image"] == "other"


def test_no_project_and_no_f_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if find_project(str(tmp_path), {}):
        pytest.fail(f"a compose file above {tmp_path} makes this test meaningless")
    out = run("config")
    assert out.exit_code == 2
    assert "no -f given, and no compose.yaml" in out.output


# ---------------------------------------------------------------------------------------------
# 3. The project name: -p, then COMPOSE_PROJECT_NAME (environment, then .env), then name:,
# then the directory; ${COMPOSE_PROJECT_NAME} is the name


NAMED = "name: from-file\nservices: {web: {image: img, labels: {p: '${COMPOSE_PROJECT_NAME}'}}}\n"


def test_project_name_from_name_field_and_variable(here: Path) -> None:
    write(here, {"app/compose.yaml": NAMED})
    doc = config_json("-f", "app")
    assert doc["name"] == "from-file"
    assert doc["services"]["web"]["labels"] == {"p": "from-file"}


def test_project_name_environment_wins_over_name_field(here: Path) -> None:
    write(here, {"app/compose.yaml": NAMED})
    doc = config_json("-f", "app", env={"COMPOSE_PROJECT_NAME": "from-env"})
    assert doc["name"] == "from-env"
    assert doc["services"]["web"]["labels"] == {"p": "from-env"}


def test_project_name_dotenv_wins_over_name_field(here: Path) -> None:
    write(here, {"app/compose.yaml": NAMED, "app/.env": "COMPOSE_PROJECT_NAME=from-dotenv\n"})
    assert config_json("-f", "app")["name"] == "from-dotenv"
    env = {"COMPOSE_PROJECT_NAME": "from-env"}
    assert config_json("-f", "app", env=env)["name"] == "from-env"


def test_project_name_option_wins_over_everything(here: Path) -> None:
    write(here, {"app/compose.yaml": NAMED, "app/.env": "COMPOSE_PROJECT_NAME=from-dotenv\n"})
    env = {"COMPOSE_PROJECT_NAME": "from-env"}
    for flag in ("-p", "--project-name"):
        doc = config_json("-f", "app", flag, "cli", env=env)
        assert doc["name"] == "cli"
        assert doc["services"]["web"]["labels"] == {"p": "cli"}


def test_project_name_defaults_to_the_directory_and_reaches_merged_files(here: Path) -> None:
    write(
        here,
        {
            "My_App/compose.yaml": "services: {web: {image: img}}\n",
            "My_App/compose.override.yaml": "services: {web: {labels: {p: $COMPOSE_PROJECT_NAME}}}\n",
        },
    )
    doc = config_json("-f", "My_App")
    assert doc["name"] == "my_app"
    assert doc["services"]["web"]["labels"] == {"p": "my_app"}


def test_invalid_project_name_option_is_located(here: Path) -> None:
    write(here, {"app/compose.yaml": NAMED})
    out = run("config", "-f", "app", "-p", "Bad Name!")
    assert out.exit_code == 1
    assert '--project-name "Bad Name!" is not a valid stack name' in out.stderr


# ---------------------------------------------------------------------------------------------
# 4. Ports: a host range for one container port, IPv6 host addresses with or without brackets


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        # the spec's short-syntax examples (05-services.md, ports)
        ("8000-9000:80", Port(80, 8000, published_last=9000)),
        ("127.0.0.1:8000-9000:80/udp", Port(80, 8000, "127.0.0.1", "udp", published_last=9000)),
        ("::1:6000:6000", Port(6000, 6000, "::1")),
        ("[::1]:6000:6000", Port(6000, 6000, "::1")),
        ("fe80::1:6001:6001/udp", Port(6001, 6001, "fe80::1", "udp")),
        ("9090-9091:8080-8081", Port(8080, 9090)),  # equal ranges still map one to one
    ],
)
def test_short_port_syntax_from_the_spec(item: str, expected: Port) -> None:
    assert short_ports(item)[0] == expected


def test_long_port_published_range() -> None:
    assert long_port({"target": 80, "published": "8000-9000"}) == Port(
        80, 8000, published_last=9000
    )
    assert long_port({"target": 80, "published": "8080"}) == Port(80, 8080)
    with pytest.raises(Bad):
        long_port({"target": 80, "published": "9000-8000"})


def test_port_range_and_ipv6_through_config(here: Path) -> None:
    write(
        here,
        {
            "app/compose.yaml": """
                services:
                  web:
                    image: img
                    ports: ["8000-9000:80", "::1:6000:6000", {target: 81, published: "7000-7010"}]
            """
        },
    )
    ports = config_json("-f", "app")["services"]["web"]["ports"]
    assert {"target": 80, "published": "8000-9000", "protocol": "tcp"} in ports
    assert {"target": 6000, "published": 6000, "host_ip": "::1", "protocol": "tcp"} in ports
    assert {"target": 81, "published": "7000-7010", "protocol": "tcp"} in ports


# ---------------------------------------------------------------------------------------------
# 6. include (14-include.md)


def load_here(*paths: str, environ: dict[str, str] | None = None) -> Loaded:
    return load(list(paths), environ=environ or {})


def test_the_same_file_included_twice_loads_once(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": """
                name: app
                include: [lib/db.yaml, lib/cache.yaml, lib/db.yaml]
                services: {web: {image: img, depends_on: [db, cache]}}
            """,
            # cache.yaml includes db.yaml too: still one "db"
            "lib/cache.yaml": "include: [db.yaml]\nservices: {cache: {image: redis}}\n",
            "lib/db.yaml": "services: {db: {image: postgres}}\n",
        },
    )
    loaded = load_here("compose.yaml")
    assert loaded.warnings == ()
    assert sorted(s.name for s in loaded.stacks[0].services) == ["cache", "db", "web"]


def test_a_local_definition_wins_over_an_included_one_with_a_warning(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": """
                name: app
                include: [lib.yaml]
                services:
                  db: {image: local-db}
            """,
            "lib.yaml": "services:\n  db: {image: included-db}\n  other: {image: o}\n",
        },
    )
    loaded = load_here("compose.yaml")
    assert loaded.stacks[0].service("db").image == "local-db"
    assert loaded.stacks[0].service("other").image == "o"
    assert [str(w) for w in loaded.warnings] == [
        'compose.yaml:4:3: warning: services.db: service "db" is also defined by the included '
        "file lib.yaml:2:3; this one is kept"
    ]


def test_two_includes_defining_one_service_is_an_error(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": "name: app\ninclude: [a.yaml, b.yaml]\n",
            "a.yaml": "services: {db: {image: a}}\n",
            "b.yaml": "services: {db: {image: b}}\n",
        },
    )
    with pytest.raises(ManifestError, match='service "db" is also defined by the included file'):
        load_here("compose.yaml")


def test_an_include_env_file_feeds_bare_environment_entries(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": """
                name: app
                include:
                  - path: lib/compose.yaml
                    env_file: lib/lib.env
            """,
            "lib/compose.yaml": """
                services:
                  api: {image: "img:${TAG}", environment: [TOKEN, PLAIN=1, ABSENT]}
                  worker: {image: img, environment: {TOKEN: null, X: y}}
            """,
            "lib/lib.env": "TAG=2\nTOKEN=from-env-file\n",
        },
    )
    stack = load_here("compose.yaml").stacks[0]
    assert stack.service("api").image == "img:2"
    assert dict(stack.service("api").environment) == {"TOKEN": "from-env-file", "PLAIN": "1"}
    assert dict(stack.service("worker").environment) == {"TOKEN": "from-env-file", "X": "y"}


# ---------------------------------------------------------------------------------------------
# 7. Override files without services, multi-document files, empty files


def test_an_override_may_hold_only_networks(here: Path) -> None:
    # 13-merge.md: `!reset` removes what the file before defined
    write(
        here,
        {
            "compose.yaml": """
                name: app
                services: {web: {image: img}}
                networks: {x: {driver: bridge}}
            """,
            "compose.override.yaml": "networks:\n  x: !reset {}\n",
        },
    )
    loaded = load_here("compose.yaml", "compose.override.yaml")
    assert "x" not in [n.name for n in loaded.stacks[0].networks]
    assert config_json()["services"]["web"]["image"] == "img"


def test_a_multi_document_compose_file_is_one_project_merged_in_order(here: Path) -> None:
    write(
        here,
        {
            "app/compose.yaml": """
                name: app
                services: {web: {image: first, environment: {A: "1"}}}
                ---
                services: {web: {image: second}, db: {image: pg}}
            """
        },
    )
    loaded = load_here("app")
    assert [s.name for s in loaded.stacks] == ["app"]
    stack = loaded.stacks[0]
    assert stack.service("web").image == "second"
    assert dict(stack.service("web").environment) == {"A": "1"}
    assert stack.service("db").image == "pg"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_compose_file_is_an_error(here: Path, text: str) -> None:
    write(here, {"app/compose.yaml": text, "other.yaml": text})
    for given, shown in (("app", "app/compose.yaml"), ("other.yaml", "other.yaml")):
        with pytest.raises(ManifestError) as info:
            load_here(given)
        assert [str(p) for p in info.value.problems] == [f"{shown}:1:1: empty compose file"]


# ---------------------------------------------------------------------------------------------
# 8. extends inherits depends_on (merged with the service's own)


def test_extends_inherits_and_merges_depends_on(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": """
                name: app
                services:
                  db: {image: pg}
                  cache: {image: redis}
                  base: {image: img, depends_on: {db: {condition: service_started}}}
                  web: {extends: base, depends_on: [cache]}
            """
        },
    )
    web = load_here("compose.yaml").stacks[0].service("web")
    assert sorted(d.service for d in web.depends_on) == ["cache", "db"]


# ---------------------------------------------------------------------------------------------
# 9. Fields newer than the schema are warnings, not schema errors


def test_fields_newer_than_the_schema_are_warnings(here: Path) -> None:
    write(
        here,
        {
            "compose.yaml": """
                name: app
                services:
                  web:
                    image: img
                    pull_policy: daily
                    pre_start: [{command: echo hi}]
                    provider: {type: model, options: {model: ai/x}}
                    networks: {front: {interface_name: eth5}}
                    volumes:
                      - {type: image, source: alpine, target: /data, image: {subpath: etc}}
                  batch: {image: img, pull_policy: every_12h}
                  weekly: {image: img, pull_policy: weekly}
                networks: {front: {}}
                secrets: {token: {content: t, labels: {a: b}}}
                configs: {conf: {content: c, labels: [a=b]}}
                models: {llm: {model: ai/smollm2}}
            """
        },
    )
    loaded = load_here("compose.yaml")
    stack = loaded.stacks[0]
    assert stack.service("web").mounts == ()
    assert {stack.service(n).pull_policy for n in ("web", "batch", "weekly")} == {"missing"}
    assert [str(w) for w in loaded.warnings] == [
        'compose.yaml:5:18: warning: services.web.pull_policy: pull_policy "daily" is not '
        'supported; "missing" is used',
        'compose.yaml:6:5: warning: services.web.pre_start: "pre_start" is not supported and '
        "is ignored",
        'compose.yaml:7:5: warning: services.web.provider: "provider" is not supported and is '
        "ignored",
        "compose.yaml:8:24: warning: services.web.networks.front.interface_name: "
        '"interface_name" is not supported and is ignored',
        'compose.yaml:10:16: warning: services.web.volumes[0].type: a mount of type "image" is '
        "not supported and is ignored",
        "compose.yaml:11:36: warning: services.batch.pull_policy: pull_policy "
        '"every_12h" is not supported; "missing" is used',
        'compose.yaml:12:37: warning: services.weekly.pull_policy: pull_policy "weekly" is not '
        'supported; "missing" is used',
        'compose.yaml:14:31: warning: secrets.token.labels: "labels" is not supported and is '
        "ignored",
        'compose.yaml:15:30: warning: configs.conf.labels: "labels" is not supported and is '
        "ignored",
        'compose.yaml:16:1: warning: models: "models" is not supported and is ignored',
    ]


def test_an_unknown_pull_policy_is_still_a_schema_error(here: Path) -> None:
    write(here, {"compose.yaml": "name: app\nservices: {web: {image: img, pull_policy: hourly}}\n"})
    with pytest.raises(ManifestError, match="pull_policy"):
        load_here("compose.yaml")


# ---------------------------------------------------------------------------------------------
# 10. config renders as compose would (warns); validate and apply refuse (error)

# the spec's extends example (05-services.md, extends): two services publishing 8000
RUN_ONLY = {
    "compose.yaml": """
        name: app
        services:
          web:
            extends: {file: common-services.yml, service: webapp}
            env_file: missing.env
          webapp:
            extends: {file: common-services.yml, service: webapp}
            secrets: [token]
        secrets: {token: {file: ./missing-token.txt}}
    """,
    "common-services.yml": """
        services:
          webapp:
            image: img
            ports: ["8000:8000"]
    """,
}


def test_config_warns_about_what_only_running_needs(here: Path) -> None:
    write(here, RUN_ONLY)
    out = run("config", "-o", "json")
    assert out.exit_code == 0, out.output
    assert sorted(json.loads(out.stdout)["services"]) == ["web", "webapp"]
    warnings = [line for line in out.stderr.splitlines() if ": warning: " in line]
    assert any('env file "missing.env" does not exist' in w for w in warnings), warnings
    assert any('file "missing-token.txt" does not exist' in w for w in warnings), warnings
    assert any("host port 8000/tcp is already published" in w for w in warnings), warnings


def test_validate_refuses_what_only_running_needs(here: Path) -> None:
    write(here, RUN_ONLY)
    out = run("validate")
    assert out.exit_code == 1
    assert ": warning: " not in out.stderr
    assert 'compose.yaml:5:15: services.web.env_file: env file "missing.env" does not exist' in (
        out.stderr
    )
    assert 'compose.yaml:9:25: secrets.token.file: file "missing-token.txt" does not exist' in (
        out.stderr
    )
    assert "host port 8000/tcp is already published" in out.stderr
    with pytest.raises(ManifestError):
        load_here("compose.yaml")


def test_stack_names_of_down_get_and_logs_come_from_the_project_here(here: Path) -> None:
    # `down`, `get` and `logs` also take --stack, so they look for the project themselves
    from pyapply.reconciler.cli.common import stack_names

    write(here, {"compose.yaml": "name: here-app\nservices: {web: {image: img}}\n", "sub/x": ""})
    os.chdir(here / "sub")
    assert stack_names((), ()) == ["here-app"]
    assert stack_names((), ("other",)) == ["other"]  # --stack alone: the project is not read
