"""Indexer settings, read from the environment (prefix ``SHOPRANK_``) when asked for."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Default of ``$SHOPRANK_HOME``: ``$XDG_DATA_HOME/shoprank`` or ``~/.local/share/shoprank``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "shoprank"


class IndexerSettings(BaseSettings):
    """Where indexes live and how products are embedded."""

    model_config = SettingsConfigDict(env_prefix="SHOPRANK_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    #: Folder of a sentence-transformers bi-encoder; empty means the packaged all-MiniLM-L6-v2.
    encoder_path: Path | None = None
    encode_batch_size: int = Field(default=64, ge=1, le=4096)
    encoder_max_seq_length: int = Field(default=128, ge=16, le=512)
    query_cache_size: int = Field(default=4096, ge=0)

    @property
    def indexes_dir(self) -> Path:
        return self.home / "indexes"
