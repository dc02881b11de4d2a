"""The Docker Engine driver (Docker SDK for Python)."""
