"""The JSON Schemas and their errors in words; whatever shape a value has, loading ends in a
model or in located errors (reconciler/manifest/schema.py)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from manifest_support import DATA, errors
from support import value_paths

from pyapply.reconciler.core.model import ManifestError
from pyapply.reconciler.manifest import loader as manifest
from pyapply.reconciler.manifest.loader import load

# ---------------------------------------------------------------------------------------------
# Schema errors, in words


def test_schema_errors_in_words(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            imagee: nginx
            image: 5
            ports: "80:80"
            pull_policy: sometimes
            deploy: {replicas: -1, update_config: {order: sideways}}
            healthcheck: {retries: "many"}
            read_only: maybe
            depends_on: {db: {condition: started}}
            networks: {front: [x]}
          db: []
        """,
    ) == [
        'stack.yaml:3:5: services.web.imagee: unknown field "imagee" (did you mean "image"?)',
        "stack.yaml:4:12: services.web.image: must be a string, got a number",
        "stack.yaml:5:12: services.web.ports: must be a list, got a string",
        'stack.yaml:6:18: services.web.pull_policy: must be one of "missing", "always", "never", '
        '"build" or "if_not_present" (or "daily", "weekly", "every_<duration>"), got "sometimes"',
        "stack.yaml:7:24: services.web.deploy.replicas: must be at least 0, got -1",
        'stack.yaml:7:51: services.web.deploy.update_config.order: must be one of "stop-first" '
        'or "start-first", got "sideways"',
        "stack.yaml:8:28: services.web.healthcheck.retries: must be an integer, got a string",
        "stack.yaml:9:16: services.web.read_only: must be true or false, got a string",
        'stack.yaml:10:34: services.web.depends_on.db.condition: must be one of "service_started", '
        '"service_healthy" or "service_completed_successfully", got "started"',
        "stack.yaml:11:16: services.web.networks.front: must be a mapping or empty, got a list",
        "stack.yaml:12:3: services.db: must be a mapping, got a list",
    ]


def test_missing_image_and_long_form_required_fields(here: Path) -> None:
    assert errors(
        here,
        """
        services:
          web:
            ports: [{published: 80}]
            volumes: [{target: /x}]
        """,
    ) == [
        'stack.yaml:2:3: services.web: missing required field "image"',
        'stack.yaml:3:13: services.web.ports[0]: missing required field "target"',
        'stack.yaml:4:15: services.web.volumes[0]: missing required field "type"',
    ]


# ---------------------------------------------------------------------------------------------
# Schemas


def test_schemas_are_valid_and_packaged() -> None:
    for name in ("stack", "compose"):
        text = (resources.files("pyapply.schemas") / "v1" / f"{name}.schema.json").read_text()
        Draft202012Validator.check_schema(json.loads(text))
        assert manifest.schema(name) == json.loads(text)


def test_compose_schema_validates_a_plain_compose_file() -> None:
    compose = manifest.schema("compose")
    stack = manifest.schema("stack")
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (stack, compose)]
    )
    validator = Draft202012Validator(compose, registry=registry)
    assert validator.is_valid({"services": {"web": {"image": "img", "x-a": 1}}, "x-top": 2})
    assert not validator.is_valid({"services": {"web": {"image": "img", "imagee": 1}}})
    assert not validator.is_valid({"apiVersion": "pyapply/v1"})


# ---------------------------------------------------------------------------------------------
# Robustness: whatever shape a value has, loading ends in a model or a ManifestError


def test_any_value_of_the_wrong_shape_is_reported_not_crashed(here: Path) -> None:
    base = yaml.safe_load((DATA / "rich" / "compose.yaml").read_text())
    replacements: list[Any] = [None, 7, "x", [], {}, True, ["x"], {"x": None}]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    (here / "app").mkdir()
    paths = value_paths(base)
    assert len(paths) > 100
    for n, path in enumerate(paths):
        # one shape per value, cycling through the list, keeps the test fast
        for replacement in (replacements[n % len(replacements)],):
            doc = json.loads(json.dumps(base))
            node = doc
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = replacement
            (here / "app" / "compose.yaml").write_text(yaml.dump(doc, Dumper=dumper))
            try:
                load(["app"], environ={})
            except ManifestError as e:
                assert e.problems
                assert all(p.location is not None for p in e.problems), e
