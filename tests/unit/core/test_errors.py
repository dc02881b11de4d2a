"""One exception root: every error class `reconciler/` defines derives from `PyapplyError`,
so that the CLI maps them all to a message and exit status 1 in one place. Two kinds stay
apart: the runtime's failures (`RuntimeFailure`, whose root is in `runtime/`, which never
imports `reconciler/`), and a module's private exceptions, which never leave it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pyapply.reconciler
from pyapply.reconciler.cli.main import EXIT_ERROR, run
from pyapply.reconciler.core.errors import PyapplyError
from pyapply.runtime.base import RuntimeFailure


def reconciler_modules() -> list[str]:
    return [
        m.name
        for m in pkgutil.walk_packages(pyapply.reconciler.__path__, "pyapply.reconciler.")
        if not m.ispkg
    ]


def test_every_error_class_of_the_reconciler_derives_from_pyapply_error() -> None:
    found: dict[str, bool] = {}
    for name in reconciler_modules():
        module = importlib.import_module(name)
        for attr, cls in inspect.getmembers(module, inspect.isclass):
            if (
                cls.__module__ == name
                and issubclass(cls, BaseException)
                and not issubclass(cls, RuntimeFailure)
                and not attr.startswith("_")
            ):
                found[f"{name}.{attr}"] = issubclass(cls, PyapplyError)
    assert len(found) >= 15, found  # ManifestError, PassError, LockTimeout, HistoryError...
    assert [n for n, ok in found.items() if not ok] == []


def test_run_maps_any_pyapply_error_to_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyapply.reconciler.engine.lock import LockTimeout

    def boom(*args: object, **kwargs: object) -> None:
        raise LockTimeout("another pyapply holds the lock")

    monkeypatch.setattr("pyapply.reconciler.cli.main.main.main", boom)
    assert run() == EXIT_ERROR
    assert capsys.readouterr().err == "error: another pyapply holds the lock\n"
