"""Indexer settings, read from the environment (prefix ``SHOPRANK_``) when asked for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Default of ``$SHOPRANK_HOME``: ``$XDG_DATA_HOME/shoprank`` or ``~/.local/share/shoprank``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "shoprank"


#: One OpenSearch URL: scheme, host, optional port and path prefix (no commas: they separate URLs).
_URL = r"https?://[^\s/:?#,]+(:\d{1,5})?(/[^\s,]*)?"


class IndexerSettings(BaseSettings):
    """Where indexes live and how products are embedded."""

    model_config = SettingsConfigDict(env_prefix="SHOPRANK_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    #: Folder of a sentence-transformers bi-encoder or of a ``shoprank tune encoder`` artifact
    #: (LoRA adapter or full model); empty means the packaged all-MiniLM-L6-v2. An index only
    #: answers vector queries from the encoder that wrote it.
    encoder_path: Path | None = None
    encode_batch_size: int = Field(default=64, ge=1, le=4096)
    encoder_max_seq_length: int = Field(default=128, ge=16, le=512)
    query_cache_size: int = Field(default=4096, ge=0)
    #: How queries are encoded: ``torch`` (the default), or ONNX Runtime (``onnx-int8``,
    #: ``onnx`` for fp32) from an export made on first use under `onnx_cache_dir`. Encoder
    #: fingerprints do not depend on it.
    query_backend: Literal["torch", "onnx-int8", "onnx"] = "torch"
    #: How products are encoded: ``torch`` (the default) or ONNX Runtime (``onnx-int8``, ``onnx``
    #: for fp32; the same export, length-sorted batches on every core). Vectors stay comparable
    #: (same fingerprint); the index records the backend.
    document_backend: Literal["torch", "onnx-int8", "onnx"] = "torch"

    #: ``local`` (embedded, the default) or ``opensearch``.
    store: Literal["local", "opensearch"] = "local"
    #: One node's URL, or several separated by commas (nodes of one cluster): requests go
    #: round-robin, and one that fails to connect or times out is retried on another node.
    opensearch_url: str = Field(
        default="http://127.0.0.1:9200", pattern=rf"^{_URL}(\s*,\s*{_URL})*$"
    )
    #: Each shoprank index is an OpenSearch alias ``<prefix>-<index name>``.
    opensearch_alias_prefix: str = Field(default="shoprank", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    opensearch_username: str | None = None
    opensearch_password: SecretStr | None = None
    opensearch_verify_certs: bool = True
    #: PEM bundle of the CA(s) that signed the cluster's certificates (default: the system's).
    opensearch_ca_certs: Path | None = None
    #: PEM client certificate and key, for clusters that authenticate clients by certificate.
    opensearch_client_cert: Path | None = None
    opensearch_client_key: Path | None = None
    opensearch_timeout_s: float = Field(default=10.0, gt=0)
    #: After this many searches or writes in a row that OpenSearch could not answer (refused,
    #: timed out, shards lost), calls are refused at once for ``opensearch_circuit_reset_s``,
    #: then one trial call goes out: a hung node costs one timeout per reset, not one per query.
    opensearch_circuit_failures: int = Field(default=3, ge=1)
    opensearch_circuit_reset_s: float = Field(default=5.0, gt=0)
    opensearch_shards: int = Field(default=1, ge=1)
    opensearch_replicas: int = Field(default=0, ge=0)
    #: k-NN engine: ``lucene`` runs everywhere; ``faiss`` needs the native k-NN libraries.
    opensearch_engine: Literal["lucene", "faiss", "nmslib"] = "lucene"
    opensearch_hnsw_m: int = Field(default=16, ge=2)
    opensearch_ef_construction: int = Field(default=128, ge=2)
    opensearch_ef_search: int = Field(default=100, ge=1)
    opensearch_keep_versions: int = Field(default=2, ge=1)

    @property
    def opensearch_hosts(self) -> list[str]:
        """`opensearch_url` split into one URL per node."""
        return [url.strip() for url in self.opensearch_url.split(",")]

    @property
    def indexes_dir(self) -> Path:
        return self.home / "indexes"

    @property
    def onnx_cache_dir(self) -> Path:
        """ONNX exports made on first use (the query encoder's), one folder per encoder."""
        return self.home / "cache" / "onnx"
