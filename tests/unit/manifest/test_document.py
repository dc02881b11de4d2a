"""One document: interpolation inside manifests, YAML (anchors, merge keys, positions,
syntax errors), the envelope (apiVersion/kind or compose) and stack names
(reconciler/manifest/document.py, stack.py, yamlpos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from manifest_support import errors, load_text, only_stack, warnings
from support import write

from pyapply.reconciler.core.model import ManifestError, Port, Stack
from pyapply.reconciler.manifest.loader import load

# ---------------------------------------------------------------------------------------------
# Interpolation inside manifests


def test_dotenv_beside_the_manifest_and_environ_override(here: Path) -> None:
    write(here, {"app/.env": "TAG=from-dotenv\nPORT=8080\nREPLICAS=3\nRO=yes\n"})
    write(
        here,
        {
            "app/stack.yaml": """
                services:
                  web:
                    image: "nginx:${TAG}"
                    ports: ["${PORT}"]
                    deploy: {replicas: "${REPLICAS}"}
                    read_only: ${RO}
                    environment: {PRICE: "$$5", NESTED: "${NOPE:-${TAG}}"}
            """
        },
    )
    web = only_stack(load(["app"], environ={"PORT": "9090"})).service("web")
    assert web.image == "nginx:from-dotenv"
    assert web.ports == (Port(9090),)
    assert web.replicas == 3
    assert web.read_only is True
    assert web.environment == (("NESTED", "from-dotenv"), ("PRICE", "$5"))


def test_unset_variable_warns_once_per_file(here: Path) -> None:
    assert warnings(
        here,
        """
        services:
          web:
            image: "nginx:${TAG}"
            labels: {a: "${TAG}", b: "$OTHER"}
        """,
    ) == [
        'stack.yaml:3:12: warning: services.web.image: variable "TAG" is not set; using an '
        "empty string",
        'stack.yaml:4:30: warning: services.web.labels.b: variable "OTHER" is not set; using an '
        "empty string",
    ]


def test_required_variable_error_names_the_value(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            image: img
            environment:
              - PASSWORD=${DB_PASSWORD:?set DB_PASSWORD in .env}
            command: echo ${1A}
        """,
    ) == [
        'stack.yaml:5:9: services.web.environment[0]: required variable "DB_PASSWORD" is not set: '
        "set DB_PASSWORD in .env",
        'stack.yaml:6:14: services.web.command: invalid interpolation "${1A}": expected a '
        "variable name",
    ]


def test_keys_and_extension_fields_are_not_interpolated(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            x-template: {image: "${REQUIRED:?never evaluated}"}
            services:
              web:
                image: img
                x-note: "${ALSO:?not evaluated}"
                labels: {"$KEY": "$VALUE"}
            """,
            {"VALUE": "v"},
        )
    )
    assert stack.service("web").labels == (("$KEY", "v"),)


def test_dotenv_errors_name_the_file(here: Path) -> None:
    write(here, {".env": "GOOD=1\nBAD LINE\n"})
    assert errors(here, "services: {web: {image: img}}\n") == [
        '.env:2:1: "BAD LINE" is not a KEY=VALUE line'
    ]


# ---------------------------------------------------------------------------------------------
# YAML


def test_anchors_aliases_and_merge_keys(here: Path) -> None:
    stack = only_stack(
        load_text(
            here,
            """
            x-common: &common
              image: base:1
              restart: always
              environment: &env {A: "1"}
            x-more: &more
              restart: on-failure
              user: nobody
            services:
              a:
                <<: *common
              b:
                <<: [*more, *common]
                environment: *env
                labels: {x: "${V}"}
              c:
                <<: *common
                image: override:2
            """,
            {"V": "v"},
        )
    )
    assert stack.service("a").image == "base:1"
    assert stack.service("a").restart == "always"
    assert stack.service("b").restart == "on-failure"  # the earlier mapping wins
    assert stack.service("b").user == "nobody"
    assert stack.service("b").environment == (("A", "1"),)
    assert stack.service("c").image == "override:2"


def test_merged_fields_report_the_anchor_position(here: Path) -> None:
    assert errors(
        here,
        """
        x-common: &common
          image: img
          restart: sometimes
        services:
          web:
            <<: *common
        """,
    ) == [
        'stack.yaml:3:12: services.web.restart: "sometimes" is not a restart policy: use "no", '
        '"always", "on-failure", "on-failure:N" or "unless-stopped"'
    ]


def test_yaml_syntax_error(here: Path) -> None:
    (problem,) = errors(here, "services:\n  web:\n    image: [a\n    b: c\n")
    # the wording is PyYAML's (or libyaml's); the position is the one that matters
    assert problem.startswith("stack.yaml:4:6: invalid YAML: ")
    assert "flow sequence" in problem


def test_yaml_syntax_error_keeps_earlier_documents_errors(here: Path) -> None:
    text = "services: {web: {image: 1}}\n---\nfoo: [\n"
    problems = errors(here, text)
    assert problems[0] == "stack.yaml:1:25: services.web.image: must be a string, got a number"
    assert problems[1].startswith("stack.yaml:4:1: invalid YAML:")


def test_duplicate_key(here: Path) -> None:
    assert errors(here, "services:\n  web:\n    image: a\n    image: b\n") == [
        'stack.yaml:4:5: duplicate key "image" (first written at line 3)'
    ]


def test_unsupported_tag(here: Path) -> None:
    assert errors(here, "services:\n  web:\n    image: !vault abc\n") == [
        'stack.yaml:3:12: unsupported YAML tag "!vault"'
    ]


def test_not_utf8(here: Path) -> None:
    (here / "stack.yaml").write_bytes(b"services:\n  web: {image: \xff}\n")
    with pytest.raises(ManifestError) as info:
        load(["stack.yaml"], environ={})
    assert [str(p) for p in info.value.problems] == ["stack.yaml:2:1: the file is not UTF-8 text"]


# ---------------------------------------------------------------------------------------------
# Documents, names, files and directories


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: pyapply/v2\nkind: Stack\n",
            'stack.yaml:1:13: apiVersion: unknown apiVersion "pyapply/v2": this pyapply reads '
            '"pyapply/v1"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Deployment\n",
            'stack.yaml:2:7: kind: unknown kind "Deployment": pyapply/v1 defines only "Stack"',
        ),
        (
            "apiVersion: pyapply/v1\nmetadata: {name: x}\n",
            'stack.yaml:1:1: missing "kind": a pyapply/v1 document is "kind: Stack"',
        ),
        (
            "kind: Stack\nmetadata: {name: x}\n",
            'stack.yaml:1:1: not a pyapply manifest: expected "apiVersion: pyapply/v1" and '
            '"kind: Stack", or a compose file with top-level "services"',
        ),
        ("- a\n- b\n", "stack.yaml:1:1: a manifest document must be a mapping, got a list"),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: Shop}\nspec: {}\n",
            'stack.yaml:3:18: metadata.name: invalid stack name "Shop": use lower-case letters, '
            'digits, "_" and "-", starting with a letter or digit',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {}\nspec: {}\n",
            'stack.yaml:3:1: metadata: missing required field "name"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: a}\n",
            'stack.yaml:1:1: missing required field "spec"',
        ),
        (
            "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: a}\nspec: {services: []}\n",
            "stack.yaml:4:8: spec.services: must be a mapping or empty, got a list",
        ),
        (
            "name: My App\nservices: {}\n",
            'stack.yaml:1:7: name: invalid stack name "My App": use lower-case letters, digits, '
            '"_" and "-", starting with a letter or digit',
        ),
    ],
)
def test_document_errors(here: Path, text: str, message: str) -> None:
    assert errors(here, text) == [message]


def test_stack_document_and_version_key(here: Path) -> None:
    loaded = load_text(
        here,
        """
        apiVersion: pyapply/v1
        kind: Stack
        x-owner: team-a
        metadata: {name: shop}
        spec:
          services: {web: {image: img}}
        """,
    )
    assert only_stack(loaded).name == "shop"
    assert only_stack(load_text(here, "version: '3.8'\nname: v\nservices: {}\n")).name == "v"


def test_empty_services_and_sections(here: Path) -> None:
    stack = only_stack(load_text(here, "name: e\nservices:\nnetworks:\nvolumes:\n"))
    assert stack == Stack("e")


@pytest.mark.parametrize(
    ("directory", "env", "expected"),
    [
        ("My Project.v2", {}, "myprojectv2"),
        ("plain", {"COMPOSE_PROJECT_NAME": "from-env"}, "from-env"),
        ("__Under_", {}, "under_"),
    ],
)
def test_compose_stack_named_by_directory(
    here: Path, directory: str, env: dict[str, str], expected: str
) -> None:
    write(here, {f"{directory}/compose.yaml": "services: {web: {image: img}}\n"})
    assert only_stack(load([directory], environ=env)).name == expected


def test_compose_environment_beats_name_key(here: Path) -> None:
    # compose's order: -p, then COMPOSE_PROJECT_NAME, then `name:`, then the directory
    write(here, {"d/compose.yaml": "name: named\nservices: {}\n"})
    assert only_stack(load(["d"], environ={"COMPOSE_PROJECT_NAME": "env"})).name == "env"
    assert only_stack(load(["d"], environ={})).name == "named"
    assert only_stack(load(["d"], environ={}, project_name="opt")).name == "opt"


def test_compose_project_name_from_dotenv(here: Path) -> None:
    write(here, {"d/compose.yaml": "services: {}\n", "d/.env": "COMPOSE_PROJECT_NAME=dotenv\n"})
    assert only_stack(load(["d"], environ={})).name == "dotenv"


def test_directory_that_cannot_name_a_stack(here: Path) -> None:
    write(here, {"___/compose.yaml": "services: {}\n"})
    with pytest.raises(ManifestError) as info:
        load(["___"], environ={})
    assert [str(p) for p in info.value.problems] == [
        '___/compose.yaml:1:1: cannot name the stack after its directory "___": add a top-level '
        '"name:"'
    ]


def test_duplicate_stack_names(here: Path) -> None:
    write(
        here,
        {
            "a.yaml": "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: shop}\nspec: {}\n",
            "b/shop/compose.yaml": "services: {}\n",
        },
    )
    with pytest.raises(ManifestError) as info:
        load(["a.yaml", "b"], environ={})
    assert [str(p) for p in info.value.problems] == [
        'b/shop/compose.yaml:1:1: stack "shop" is declared twice, here and at a.yaml:3:18'
    ]


def test_duplicate_stack_names_in_one_file(here: Path) -> None:
    # (compose documents in one file are one project, merged: Stack documents here)
    stack = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {name: x}\nspec: {}\n"
    assert errors(here, stack + "---\n" + stack) == [
        'stack.yaml:8:18: metadata.name: stack "x" is declared twice, here and at stack.yaml:3:18'
    ]
