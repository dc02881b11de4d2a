"""The compose `build:` field (reconciler/manifest/build.py): both forms -> `BuildSpec`, the
image name compose gives a service without `image:`, the located problems, the same field in
a pyapply/v1 manifest, and `config`/`convert` printing it back (loading what they print gives
the same model)."""

from __future__ import annotations

from pathlib import Path

from manifest_support import errors, load_text, only_stack, warnings
from support import write

from pyapply.reconciler.core.model import BuildSpec
from pyapply.reconciler.manifest import dump
from pyapply.reconciler.manifest.loader import load


def test_the_short_form_is_a_context_and_names_the_image(here: Path) -> None:
    (here / "app").mkdir()
    stack = only_stack(
        load_text(here, "name: shop\nservices:\n  web:\n    build: ./app\n", name="c.yaml")
    )
    web = stack.service("web")
    assert web.image == "shop-web"  # compose's <project>-<service>
    assert web.build == BuildSpec(context=str(here / "app"))
    assert web.build.location is not None and str(web.build.location) == "c.yaml:4:12"
    assert web.build.path == "services.web.build"


def test_the_long_form_every_field(here: Path) -> None:
    (here / "app").mkdir()
    stack = only_stack(
        load_text(
            here,
            """\
name: shop
services:
  api:
    image: reg.local:5000/shop/api:${TAG}
    build:
      context: app
      dockerfile: docker/Dockerfile.prod
      args: [VERSION=1.2, FROM_ENV, UNSET]
      target: runtime
      labels: {team: a, "x-extra": "kept: a label's key, not an extension"}
      tags: ["reg.local:5000/shop/api:latest"]
      no_cache: "${NO_CACHE}"
      pull: true
  inline:
    build:
      context: .
      dockerfile_inline: "FROM scratch\\nCOPY $$HOME /x\\n"
      args: {A: 1, B: null, C: ""}
""",
            env={"TAG": "7", "FROM_ENV": "from-the-env", "NO_CACHE": "yes", "B": "bee"},
        )
    )
    api = stack.service("api")
    assert api.image == "reg.local:5000/shop/api:7"
    assert api.build == BuildSpec(
        context=str(here / "app"),
        dockerfile="docker/Dockerfile.prod",
        args=(("FROM_ENV", "from-the-env"), ("VERSION", "1.2")),
        target="runtime",
        labels=(("team", "a"), ("x-extra", "kept: a label's key, not an extension")),
        tags=("reg.local:5000/shop/api:latest",),
        no_cache=True,
        pull=True,
        pull_first=True,  # `image:` named, no pull_policy: the registry's image first
    )
    assert api.build is not None and api.build.path == "services.api.build.context"
    inline = stack.service("inline")
    assert inline.image == "shop-inline"
    assert inline.build == BuildSpec(
        context=str(here),
        dockerfile_inline="FROM scratch\nCOPY $HOME /x\n",
        args=(("A", "1"), ("B", "bee"), ("C", "")),
    )


def test_a_pyapply_v1_manifest_takes_the_same_field(here: Path) -> None:
    (here / "ctx").mkdir()
    stack = only_stack(
        load_text(
            here,
            """\
apiVersion: pyapply/v1
kind: Stack
metadata: {name: shop}
spec:
  services:
    web:
      build: {context: ctx, target: prod}
      pull_policy: build
""",
        )
    )
    web = stack.service("web")
    assert web.image == "shop-web" and web.pull_policy == "build"
    assert web.build == BuildSpec(context=str(here / "ctx"), target="prod")
    assert web.build.path == "spec.services.web.build.context"


def test_no_warning_that_build_is_unsupported_only_what_is(here: Path) -> None:
    (here / "app").mkdir()
    assert warnings(
        here,
        """\
name: s
services:
  web:
    build:
      context: app
      cache_from: [x]
      ssh: [default]
  gone:
    build: ./nowhere
""",
    ) == [
        'stack.yaml:6:7: warning: services.web.build.cache_from: "cache_from" is not '
        "supported and is ignored",
        'stack.yaml:7:7: warning: services.web.build.ssh: "ssh" is not supported and is ignored',
        'stack.yaml:9:12: warning: services.gone.build: build context "nowhere" does not '
        "exist: the image cannot be built here",
    ]


def test_mistakes_are_located(here: Path) -> None:
    assert errors(
        here,
        """\
name: s
services:
  both:
    build: {context: ., dockerfile: D, dockerfile_inline: "FROM x"}
  remote:
    build: https://github.com/example/app.git#main
  Upper:
    build: .
  policy:
    image: x
    pull_policy: build
  args:
    image: y
    build: {context: ., args: ["=nokey"]}
  flags:
    image: z
    build: {context: ., no_cache: maybe, colour: red}
""",
    ) == [
        'stack.yaml:4:5: services.both.build: "dockerfile" and "dockerfile_inline" cannot be '
        "used together",
        "stack.yaml:6:12: services.remote.build: the build context "
        '"https://github.com/example/app.git#main" is a URL; pyapply builds from a local '
        "directory only (clone it and name the directory)",
        'stack.yaml:8:5: services.Upper.build: without "image", the built image would be '
        'named "s-Upper", which is not a valid image name (lowercase letters, digits and '
        'separators): set "image"',
        'stack.yaml:11:18: services.policy.pull_policy: "pull_policy: build" needs a "build" '
        "section",
        'stack.yaml:14:32: services.args.build.args[0]: "=nokey" is not a build arg of the '
        "form KEY=value",
        "stack.yaml:17:35: services.flags.build.no_cache: must be true or false, got a string",
        'stack.yaml:17:42: services.flags.build.colour: unknown field "colour"',
    ]


def test_config_and_convert_print_it_and_load_back_equal(here: Path) -> None:
    (here / "app").mkdir()
    text = """\
name: shop
services:
  web:
    build:
      context: app
      dockerfile_inline: "FROM scratch\\nENV A=$${B}\\n"
      args: {PRICE: "$$5"}
      labels: [a=b]
      tags: [r.local/web:2]
      target: t
      no_cache: true
      pull: true
  api:
    image: api:1
    build: app
"""
    stack = only_stack(load_text(here, text))
    compose = dump.compose_document(stack)
    assert compose["services"]["web"]["image"] == "shop-web"
    assert compose["services"]["web"]["build"] == {
        "context": str(here / "app"),
        "dockerfile_inline": "FROM scratch\nENV A=$${B}\n",
        "args": {"PRICE": "$$5"},
        "target": "t",
        "labels": {"a": "b"},
        "tags": ["r.local/web:2"],
        "no_cache": True,
        "pull": True,
    }
    assert compose["services"]["api"]["build"] == {"context": str(here / "app")}
    for doc, name in ((compose, "c.yaml"), (dump.stack_document(stack), "s.yaml")):
        write(here, {name: dump.dump_yaml([doc])})
        (again,) = load([name], environ={}).stacks
        assert again == stack


def test_a_build_context_outside_the_manifest_is_an_outside_file_to_the_policy(
    here: Path,
) -> None:
    """A build reads its context's files into an image the stack runs: a context outside
    the manifest's directory (/etc) is what the policy's "outside_files" rule is about."""
    from pyapply.reconciler.manifest.policy import builtin, check

    (here / "app").mkdir()
    loaded = load_text(
        here,
        "name: s\nservices:\n  ok:\n    build: ./app\n  bad:\n    build: {context: /etc}\n"
        "  short:\n    build: /usr\n"
        "  file:\n    build: {context: app, dockerfile: /etc/shadow}\n",
    )
    got = [str(f) for f in check(loaded, builtin("restricted")) if f.rule == "outside_files"]
    assert got == [
        'stack.yaml:6:22: services.bad.build.context: build context "/etc" is outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")',
        'stack.yaml:8:12: services.short.build: build context "/usr" is outside the '
        'manifest\'s directory; the policy denies this (rule "outside_files")',
        'stack.yaml:10:39: services.file.build.dockerfile: Dockerfile "/etc/shadow" is outside '
        'the manifest\'s directory; the policy denies this (rule "outside_files")',
    ]


def test_pull_first_only_with_a_named_image_and_no_pull_policy(here: Path) -> None:
    """The Compose Specification: with both `build:` and `image:` and no pull_policy, the
    image is pulled first and built only if that fails; a pull_policy, or no `image:`,
    keeps the build."""
    (here / "app").mkdir()
    text = """\
name: shop
services:
  named: {image: "reg.local/named:1", build: app}
  policy: {image: "reg.local/policy:1", build: app, pull_policy: missing}
  unnamed: {build: app}
"""
    stack = only_stack(load_text(here, text))
    first = {s.name: s.build is not None and s.build.pull_first for s in stack.services}
    assert first == {"named": True, "policy": False, "unnamed": False}
    for doc in (dump.compose_document(stack), dump.stack_document(stack)):
        write(here, {"again.yaml": dump.dump_yaml([doc])})
        (again,) = load(["again.yaml"], environ={}).stacks
        assert again == stack  # what config prints keeps the rule
