"""The command line: one module per command group; parse options, call engine and view."""
