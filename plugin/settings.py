"""Server and pipeline settings, read from the environment (prefix ``SHOPRANK_``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from indexer.settings import IndexerSettings
from plugin.models import FairnessPolicy, OutOfStock

RerankerKind = Literal["none", "cross-encoder", "onnx", "triton"]
SessionStoreKind = Literal["memory", "redis"]


class Settings(BaseSettings):
    """Everything the server needs; each field can be set as ``SHOPRANK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SHOPRANK_", extra="ignore")

    #: Lower case, so that the same name works as a folder and as an OpenSearch alias.
    index: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    #: The packaged cross-encoder (plugin/artifacts/reranker) reranks by default, on ONNX
    #: Runtime INT8 (exported once under the ONNX cache on first use): on 2 CPU cores a whole
    #: search with it stays under 300 ms at p95, which the torch model does not (README).
    reranker: RerankerKind = "onnx"
    #: The tuned artifact: loaded in process (cross-encoder, onnx), or, for triton, the one the
    #: server runs (its model card gives the tokenizer's max_length); unset: the packaged one.
    reranker_checkpoint: Path | None = None
    #: Reranker "onnx": which graph of an `export onnx` folder runs (int8 unless told).
    reranker_precision: Literal["int8", "fp32"] = "int8"
    #: Tokens of each (query, product) pair the cross-encoder reads; unset: the checkpoint's
    #: (its training length, else 256). Fewer tokens rerank faster but may rank worse.
    reranker_max_length: int | None = Field(default=None, ge=16, le=512)
    #: The Triton server's HTTP endpoint, for reranker "triton".
    triton_url: str = "http://127.0.0.1:8000"
    #: Per-call limit on a Triton rerank; past it, search answers in retrieval order (degraded).
    triton_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    #: The learned final stage: "default" (the packaged one when it exists), "none", or a path
    #: to a ranker written by `shoprank tune ranker`.
    final_ranker: str = "default"
    #: How many candidates retrieval hands to the later stages.
    candidates: int = Field(default=100, ge=1, le=1000)
    #: How many of the best candidates the cross-encoder rescores (20: the packaged
    #: cross-encoder, a feature of the packaged final stage, measured there; README).
    rerank_window: int = Field(default=20, ge=1, le=1000)
    #: A latency budget (ms) for each search up to the end of reranking: the rerank window
    #: shrinks per query to the candidates predicted to fit (unset: always `rerank_window`).
    rerank_budget_ms: float | None = Field(default=None, gt=0, le=60_000)
    #: The fewest candidates a budgeted search reranks.
    min_rerank_window: int = Field(default=10, ge=1, le=1000)
    #: Reranks that run at once (the others wait): bounds memory and keeps a loaded server's
    #: latency from multiplying. About the machine's core count on CPU.
    max_concurrent_reranks: int = Field(default=2, ge=1, le=256)
    #: Run BM25 beside the query encoder and the vector search in hybrid mode.
    concurrent_retrieval: bool = True
    #: Threads numpy's BLAS may use in `serve` (the vector search's matrix products): 1 lets
    #: concurrent searches share the cores instead of fighting over them; 0 keeps the library's.
    blas_threads: int = Field(default=1, ge=0, le=1024)
    #: The fairness policy of searches that do not name one, as JSON in the environment
    #: (SHOPRANK_FAIRNESS='{"policy": "group_cap", "cap": 3}'); unset: none.
    fairness: FairnessPolicy | None = None

    @field_validator("fairness", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An empty SHOPRANK_FAIRNESS (how env files unset a variable) means no policy; other
        text must be a JSON object."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError as e:
            raise ValueError(f"SHOPRANK_FAIRNESS is not valid JSON ({e}): {value!r}") from e
    #: How many recent queries `amortized` fairness balances exposure over.
    fairness_window: int = Field(default=500, ge=1, le=100_000)
    #: Where session states live: this process's memory, or Redis (shared by every server).
    session_store: SessionStoreKind = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: A session is forgotten this long after its last event.
    session_ttl_seconds: float = Field(default=86_400.0, gt=0, le=30 * 86_400)
    #: The most sessions the in-memory store keeps (the least recently active go first).
    max_sessions: int = Field(default=100_000, ge=1, le=10_000_000)
    #: How much a session's history may move a result: its term, at most this in either
    #: direction, is added to the ordering score rescaled to [0, 1]; 0 switches it off.
    personalization_weight: float = Field(default=0.3, ge=0, le=1)
    #: What searches do with products marked out of stock unless they say otherwise.
    out_of_stock: OutOfStock = "demote"
    #: Key for the admin endpoints (PUT/DELETE /products); unset disables them.
    admin_api_key: SecretStr | None = None
    #: Per-client token buckets on `/search` and `/events` (each its own), keyed by the client
    #: address. Off by default: behind a shop's backend or a proxy that uvicorn does not trust
    #: for X-Forwarded-For, one address stands for every shopper (README, "Security").
    rate_limit: bool = False
    #: Requests per second each client's bucket refills with, and how many it holds (a burst).
    rate_limit_per_second: float = Field(default=10.0, gt=0, le=100_000)
    rate_limit_burst: int = Field(default=20, ge=1, le=100_000)
    #: The most clients a bucket table remembers; the least recently seen go first.
    rate_limit_max_clients: int = Field(default=10_000, ge=1, le=10_000_000)
    #: Request bodies over this many bytes are refused (413) before they are read: 2 MiB holds
    #: a batch of 1,000 impression events of 24 results each (about 1.4 MB).
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=1 << 30)
    #: Origins browsers may call the API from (CORS), as a JSON list or separated by commas;
    #: empty: no CORS headers at all.
    cors_allow_origins: Annotated[list[str], NoDecode] = []

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        """A JSON list or comma-separated text; each entry a bare ``scheme://host[:port]``."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if not isinstance(value, list):
            return value
        return [_origin(str(entry)) for entry in value if str(entry).strip()]

    indexer: IndexerSettings = Field(default_factory=IndexerSettings)

    @property
    def index_root(self) -> Path:
        return self.indexer.indexes_dir / self.index


def _origin(text: str) -> str:
    """One CORS origin as browsers send it (no trailing slash), or a ValueError naming it."""
    origin = text.strip().rstrip("/")
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f"SHOPRANK_CORS_ALLOW_ORIGINS: {text!r} is not an origin like https://shop.example"
        )
    return origin
