"""Which files a load reads: directories walked (multi-document files, dot-files skipped,
a compose project and nothing else below it), missing paths, and the content digest
(reconciler/manifest/discovery.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support import write

from pyapply.reconciler.core.model import Location, ManifestError
from pyapply.reconciler.manifest import discovery
from pyapply.reconciler.manifest.loader import load


def test_directory_loading_multi_document_and_skipping(here: Path) -> None:
    write(
        here,
        {
            "tree/b/stacks.yml": """
                apiVersion: pyapply/v1
                kind: Stack
                metadata: {name: two}
                spec: {services: {web: {image: img}}}
                ---
                # an empty document is skipped
                ---
                apiVersion: pyapply/v1
                kind: Stack
                metadata: {name: one}
                spec: {}
            """,
            "tree/a/app/compose.yaml": "services: {api: {image: img}}\n",
            "tree/.hidden/x.yaml": "not: [valid",
            "tree/a/.secret.yaml": "not: [valid",
            "tree/a/.env": "X=1\n",
            "tree/a/notes.txt": "not: [yaml",
            "tree/c/empty.yaml": "# nothing here\n",
        },
    )
    loaded = load(["tree"], environ={})
    assert [s.name for s in loaded.stacks] == ["app", "one", "two"]
    assert loaded.files == tuple(
        str(here / "tree" / f) for f in ("a/app/compose.yaml", "b/stacks.yml", "c/empty.yaml")
    )
    assert loaded.stacks[1].location == Location("tree/b/stacks.yml", 10, 18)
    assert loaded.stacks[2].sources == (str(here / "tree" / "b" / "stacks.yml"),)


def test_content_digest(here: Path) -> None:
    write(here, {"d/a.yaml": "services: {}\nname: a\n", "d/b.yaml": "services: {}\nname: b\n"})
    first = load(["d"], environ={})
    expected = hashlib.sha256()
    for name in ("a", "b"):
        path = str(here / "d" / f"{name}.yaml")
        content = (here / "d" / f"{name}.yaml").read_bytes()
        expected.update(f"{path}\0{len(content)}\0".encode() + content)
    assert first.content_digest == expected.hexdigest()
    # the same files named twice, in another order: same result
    again = load(["d/b.yaml", "d", str(here / "d" / "a.yaml")], environ={})
    assert again.content_digest == first.content_digest
    assert again.files == first.files
    (here / "d" / "b.yaml").write_text("services: {}\nname: bb\n")
    assert load(["d"], environ={}).content_digest != first.content_digest


def test_missing_paths_and_empty_directories(here: Path) -> None:
    (here / "empty").mkdir()
    write(here, {"ok.yaml": "services: {web: {image: img}}\nname: ok\n"})
    with pytest.raises(ManifestError) as info:
        load(["nope.yaml", "empty", "ok.yaml", "also/missing"], environ={})
    assert [str(p) for p in info.value.problems] == [
        "also/missing: no such file or directory",
        "nope.yaml: no such file or directory",
    ]
    loaded = load(["empty", "ok.yaml"], environ={})
    assert [str(w) for w in loaded.warnings] == [
        "warning: empty: no *.yaml or *.yml files in this directory"
    ]


def test_the_walk_and_the_digest_are_the_loaders(here: Path) -> None:
    """`manifest_files` and `digest_files` (what the agent identifies a directory by) are
    exactly the files a load of that directory reads, and the digest it computes."""
    stack = "apiVersion: pyapply/v1\nkind: Stack\nmetadata: {{name: {n}}}\nspec: {{}}\n"
    write(
        here,
        {
            "d/a.yaml": stack.format(n="a"),
            "d/sub/b.yml": stack.format(n="b"),
            "d/.hidden/c.yaml": "not: read",
            "d/.dot.yaml": "not: read",
            "d/notes.txt": "not yaml",
            "d/shop/compose.yaml": "services: {web: {image: img}}\n",
            "d/shop/compose.override.yaml": "services: {web: {init: true}}\n",
            "d/shop/notes.yaml": "not: part of the project",
            "d/shop/deeper/x.yaml": "not: below a project",
        },
    )
    loaded = load(["d"], environ={})
    files = discovery.manifest_files("d")
    assert files == list(loaded.files)
    assert [os.path.relpath(f, here / "d") for f in files] == [
        "a.yaml",
        "shop/compose.override.yaml",
        "shop/compose.yaml",
        "sub/b.yml",
    ]
    assert discovery.digest_files(files) == loaded.content_digest
    # one file given: that file
    assert discovery.manifest_files("d/a.yaml") == [str(here / "d" / "a.yaml")]
    assert discovery.manifest_files("nowhere") == []
