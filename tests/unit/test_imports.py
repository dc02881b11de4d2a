"""How the code imports itself: through the one package `pyapply` only, and never a
private class of another module.

The folders reconciler/, runtime/ and schemas/ sit at the repository root (and the tests put
that root on sys.path), so `import runtime.base` would work here and break once installed,
where only `pyapply` exists (pyapply/ links to the three folders). A class named `_X` is its
module's own business: a second module using it ties the two together unseen; a class two
modules share gets a public name. The rooms' boundaries themselves are import-linter
contracts (pyproject.toml, `make imports`)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("reconciler", "runtime", "tests")
TOP_LEVEL = {"reconciler", "runtime", "schemas"}


def python_files() -> list[Path]:
    files = [p for d in SCANNED for p in (REPO / d).rglob("*.py")]
    assert len(files) > 100, files  # the tree was found, not an empty glob
    return sorted(files)


def imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every import at any depth (function-level ones
    too); `import a.b` gives ("a.b", [])."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


class Resolver:
    """Finds a module's file: pyapply.* and tests.* by path, the test helpers imported by
    basename (fakes, support, test_reconcile ...) by their unique name in tests/."""

    def __init__(self) -> None:
        self.by_basename = {p.stem: p for p in (REPO / "tests").rglob("*.py")}
        self.trees: dict[Path, ast.Module] = {}

    def file(self, module: str) -> Path | None:
        parts = module.split(".")
        if parts[0] == "pyapply":
            parts = parts[1:]
        elif parts[0] != "tests":
            found = self.by_basename.get(module)
            return found if len(parts) == 1 else None
        base = REPO.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    def tree(self, path: Path) -> ast.Module:
        if path not in self.trees:
            self.trees[path] = ast.parse(path.read_text(), str(path))
        return self.trees[path]

    def is_class(self, module: str, name: str, depth: int = 0) -> bool:
        """Whether `module`'s `name` is a class defined there or imported from where it is."""
        path = self.file(module)
        if path is None or depth > 5:
            return False
        tree = self.tree(path)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return True
        for _, source, names in imports(tree):
            if name in names:
                return self.is_class(source, name, depth + 1)
        return False


def test_code_imports_the_package_pyapply_only() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line}: import {module}"
        for path in python_files()
        for line, module, _ in imports(ast.parse(path.read_text(), str(path)))
        if module.split(".")[0] in TOP_LEVEL
    ]
    assert bad == []


def test_no_private_class_is_imported_from_another_module() -> None:
    resolver = Resolver()
    bad = [
        f"{path.relative_to(REPO)}:{line}: from {module} import {name}"
        for path in python_files()
        for line, module, names in imports(resolver.tree(path))
        for name in names
        if name.startswith("_") and resolver.is_class(module, name)
    ]
    assert bad == []


def test_the_checks_above_can_fail(tmp_path: Path) -> None:
    """The scanner sees what it must refuse (so an empty list above means something)."""
    src = "def f() -> None:\n    import runtime.base\n    from reconciler.core import plan\n"
    found = [m for _, m, _ in imports(ast.parse(src))]
    assert [m.split(".")[0] in TOP_LEVEL for m in found] == [True, True]
    resolver = Resolver()
    assert resolver.is_class("pyapply.runtime.statefs", "_Level")
    assert not resolver.is_class("pyapply.runtime.statefs", "_open_dir")  # a function
    assert resolver.is_class("pyapply.runtime.base", "Runtime")
