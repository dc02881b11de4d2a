"""The version of pyapply."""

__version__ = "0.1.0"
