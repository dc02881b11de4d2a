"""pyapply: manifests -> desired model -> diff -> plan -> execute."""

__version__ = "0.1.0"
