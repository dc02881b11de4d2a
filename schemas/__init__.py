"""JSON Schemas of the pyapply manifest format, shipped as package data."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["load_v1"]

_V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "v1")


def load_v1(filename: str) -> Any:
    """The decoded JSON of `v1/<filename>`. Read beside this package rather than through
    importlib.resources, whose import (tempfile, shutil, zipfile, ...) costs a no-op apply
    more than reading the schemas: pyapply is installed as files (a wheel or the source
    tree), never run from a zip."""
    with open(os.path.join(_V1, filename), encoding="utf-8") as f:
        return json.load(f)
