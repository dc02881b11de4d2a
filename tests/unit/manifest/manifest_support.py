"""Loading small manifests written into the working directory, for the manifest tests: error
messages then name `stack.yaml` exactly as a user would see them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from support import write

from pyapply.reconciler.core.model import ManifestError, Stack
from pyapply.reconciler.manifest.loader import Loaded, load

DATA = Path(__file__).parents[1] / "data" / "manifests"


def load_text(
    here: Path, text: str, env: Mapping[str, str] | None = None, name: str = "stack.yaml"
) -> Loaded:
    write(here, {name: text})
    return load([name], environ=dict(env or {}))


def errors(here: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_text(here, text, env)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def warnings(here: Path, text: str, env: Mapping[str, str] | None = None) -> list[str]:
    return [str(w) for w in load_text(here, text, env).warnings]


def only_stack(loaded: Loaded) -> Stack:
    assert len(loaded.stacks) == 1
    return loaded.stacks[0]
