"""Encoder folders for tests that need an encoder's identity but never its vectors."""

from __future__ import annotations

from pathlib import Path


def fake_model(folder: Path, weights: bytes = b"weights") -> Path:
    """A folder shaped like a model: enough to fingerprint, not to load."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder
