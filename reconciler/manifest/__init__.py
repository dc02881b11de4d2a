"""Files -> Stack: discovery, YAML with positions, schema, values, builders, compose, revision."""
