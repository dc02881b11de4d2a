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
from pyapply.reconciler.core.model import Port
from pyapply.reconciler.manifest.discovery import find_project
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
