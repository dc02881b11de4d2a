"""JSON Schemas of the pyapply manifest format, shipped as package data."""
