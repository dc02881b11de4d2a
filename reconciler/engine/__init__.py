"""One pass with effects: observe, reconcile, apply, down, execute, lock."""
