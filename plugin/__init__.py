"""The composition root: query pipeline, HTTP API and CLI."""
