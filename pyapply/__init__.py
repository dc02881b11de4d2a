"""The pyapply import package: `pyapply.reconciler`, `pyapply.runtime`, `pyapply.schemas`.

In the source tree these are links to the folders `reconciler/`, `runtime/` and `schemas/`.
"""
