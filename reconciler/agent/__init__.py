"""The watch agent: triggers, sources, status, history, metrics, API."""
