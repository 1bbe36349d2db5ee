"""`VectorStore` on OpenSearch: versioned indexes behind an alias, k-NN plus BM25.

Every shoprank index is an alias (``<prefix>-<name>``) over one concrete index version
(``<alias>-v<timestamp>-<hex>``). A rebuild fills a new version, checks its document count,
marks it complete in its mapping ``_meta`` (which also records the encoder that wrote it) and
swaps the alias in one atomic request; a failed or killed rebuild never touches the alias, and
the next rebuild deletes what it left.
A version built before the ``in_stock`` field existed gets it on its first upsert or
stock-filtered search: `put_mapping` adds the field and the stored records fill it in (once per
version; until then such an index treats every product's stock as unknown, i.e. available).
No OpenSearch exception leaves this module: they become `indexer.errors` types
(`indexer.opensearch_client.translated_errors`).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from opensearchpy import OpenSearch, helpers

from indexer.circuit import CircuitBreaker, CircuitGuard
from indexer.encoder_stamp import EncoderStamp
from indexer.errors import (
    DimensionMismatchError,
    IndexNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from indexer.opensearch_client import (
    connect,
    mget_every_shard,
    search_every_shard,
    send_bulk,
    translated_errors,
)
from indexer.opensearch_queries import (
    ENCODER_KEY,
    META_KEY,
    RECORD_FIELD,
    STOCK_FIELD,
    TITLE_VECTOR_FIELD,
    VECTOR_FIELD,
    IndexLayout,
    build_alias_swap,
    build_bm25_query,
    build_brand_counts_query,
    build_bulk_actions,
    build_delete_actions,
    build_index_body,
    build_knn_query,
    build_stock_backfill,
    build_stock_mapping,
    build_version_meta,
    cosine_from_score,
    decode_title_vector,
    read_brand_counts,
    version_meta,
)
from indexer.progress import IndexProgress
from indexer.schema import EMBEDDING_DIM, Product
from indexer.settings import IndexerSettings
from indexer.store import Filters, ScoredId, check_rebuild, check_vectors

logger = logging.getLogger(__name__)

#: How long a read encoder stamp is trusted, so a per-query `check_encoder` costs no request.
STAMP_RECHECK_SECONDS = 1.0


class OpenSearchStore:
    """A `VectorStore` backed by an OpenSearch cluster; connects on first use."""

    def __init__(
        self, settings: IndexerSettings, index: str, *, dimension: int = EMBEDDING_DIM
    ) -> None:
        self.settings = settings
        self.alias = f"{settings.opensearch_alias_prefix}-{index}"
        self.url = settings.opensearch_url
        self._layout = IndexLayout(
            dimension=dimension,
            shards=settings.opensearch_shards,
            replicas=settings.opensearch_replicas,
            engine=settings.opensearch_engine,
            hnsw_m=settings.opensearch_hnsw_m,
            ef_construction=settings.opensearch_ef_construction,
        )
        self._client: OpenSearch | None = None
        self._lock = threading.Lock()
        self._dimension: int | None = None
        self._stamp: tuple[float, EncoderStamp | None] | None = None
        self._stock_checked_at: float | None = None
        breaker = CircuitBreaker(failures=settings.opensearch_circuit_failures,
                                 reset_seconds=settings.opensearch_circuit_reset_s)
        # An open circuit drops the connections (a dead node leaves them half-closed).
        self._guard = CircuitGuard(breaker, StoreUnavailableError, self._circuit_open,
                                   opened=self.close)

    @property
    def client(self) -> OpenSearch:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self.settings)
        return self._client

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Client errors as indexer errors naming the URL, behind the circuit breaker."""
        with self._guard.call(), translated_errors(self.url, self.alias, action):
            yield

    def _circuit_open(self) -> StoreUnavailableError:
        breaker = self._guard.breaker
        return StoreUnavailableError(
            f"OpenSearch at {self.url} is not called for {breaker.reset_seconds:g} s after "
            f"{breaker.threshold} failures in a row (circuit open)"
        )

    # -- reading -------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return f"{self.url} (alias {self.alias})"

    @property
    def circuit_open(self) -> bool:
        return self._guard.breaker.state != "closed"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            mapping = self._serving_mapping()
            self._dimension = int(mapping["mappings"]["properties"][VECTOR_FIELD]["dimension"])
        return self._dimension

    def encoder_stamp(self) -> EncoderStamp | None:
        """Read from the serving version's ``_meta``, at most once per `STAMP_RECHECK_SECONDS`."""
        cached = self._stamp
        if cached is not None and time.monotonic() - cached[0] < STAMP_RECHECK_SECONDS:
            return cached[1]
        stamp = EncoderStamp.from_meta(version_meta(self._serving_mapping()).get(ENCODER_KEY))
        self._stamp = (time.monotonic(), stamp)
        return stamp

    def _serving_mapping(self) -> dict[str, Any]:
        with self._translated("read the mapping"):
            mappings = self.client.indices.get_mapping(index=self.alias)
        (mapping,) = mappings.values()
        return dict(mapping)

    def exists(self) -> bool:
        with self._translated("look up the alias"):
            return bool(self.client.indices.exists_alias(name=self.alias))

    def count(self) -> int:
        with self._translated("count documents"):
            return int(self.client.count(index=self.alias)["count"])

    def brand_counts(self) -> dict[str, int]:
        """A terms aggregation over the (lower-cased) brand keyword; products without a brand
        count under ""."""
        with self._translated("count brands"):
            response = search_every_shard(
                self.client, self.alias, build_brand_counts_query(), self.url
            )
        return read_brand_counts(response)

    def get(self, product_id: str) -> Product | None:
        return self.get_many([product_id]).get(product_id)

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        records = self._fetch(product_ids, RECORD_FIELD, "fetch products")
        return {pid: Product.model_validate(record) for pid, record in records.items()}

    def vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        found = self._fetch(product_ids, VECTOR_FIELD, "fetch vectors")
        return {pid: np.asarray(vector, dtype=np.float32) for pid, vector in found.items()}

    def title_vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        found = self._fetch(product_ids, TITLE_VECTOR_FIELD, "fetch title vectors")
        return {pid: decode_title_vector(value) for pid, value in found.items()}

    def _fetch(self, product_ids: Sequence[str], field: str, action: str) -> dict[str, Any]:
        """One ``_source`` field of each id that exists and has it, in one ``mget``."""
        if not product_ids:
            return {}
        with self._translated(action):
            response = mget_every_shard(
                self.client, self.alias, {"ids": list(product_ids)}, self.url, _source=[field]
            )
        return {
            doc["_id"]: doc["_source"][field]
            for doc in response["docs"]
            if doc.get("found") and field in doc.get("_source", {})
        }

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]:
        self._ensure_stock_filterable(filters)
        with self._translated("run a BM25 query"):
            response = search_every_shard(
                self.client, self.alias, build_bm25_query(text, n, filters), self.url
            )
        return [ScoredId(hit["_id"], float(hit["_score"])) for hit in response["hits"]["hits"]]

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]:
        self._check_dimension(vector.shape[-1])
        self._ensure_stock_filterable(filters)
        body = build_knn_query(vector, n, filters, ef_search=self.settings.opensearch_ef_search)
        with self._translated("run a k-NN query"):
            response = search_every_shard(self.client, self.alias, body, self.url)
        return [
            ScoredId(hit["_id"], cosine_from_score(float(hit["_score"])))
            for hit in response["hits"]["hits"]
        ]

    def _check_dimension(self, dim: int) -> None:
        if dim != self.dimension:
            raise DimensionMismatchError(
                f"vectors have {dim} dimensions, alias {self.alias!r} at {self.url} "
                f"holds {self.dimension}-d vectors"
            )

    def close(self) -> None:
        """Closes the client's connections; the next call connects anew."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- writing -------------------------------------------------------------------------

    def upsert(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        title_vectors: npt.NDArray[np.float32] | None = None,
    ) -> int:
        """Index products into the serving version; searchable when this returns."""
        check_vectors(products, vectors, title_vectors)
        self._check_dimension(vectors.shape[1])
        with self._translated("index products"):
            target = self._serving_index()
            self._ensure_stock_field()
            actions = build_bulk_actions(target, products, vectors, title_vectors)
            send_bulk(self.client, actions, target, refresh=True)
        return len(products)

    def delete(self, product_ids: Sequence[str]) -> int:
        """Remove products; returns how many existed."""
        with self._translated("delete products"):
            target = self._serving_index()
            actions = build_delete_actions(target, product_ids)
            missing = send_bulk(self.client, actions, target, refresh=True, tolerated=(404,))
        return len(actions) - missing

    def _ensure_stock_filterable(self, filters: Filters | None) -> None:
        if filters is not None and filters.in_stock is not None:
            self._ensure_stock_field()

    def _ensure_stock_field(self) -> None:
        """Give serving versions built before `STOCK_FIELD` existed the field, filled in.

        Without it the mapping (``dynamic: false``) would not index the stock of new writes, and
        a stock filter would see every product as unknown. Checked before every upsert and
        stock-filtered search, at most once per `STAMP_RECHECK_SECONDS` (one mapping read).
        """
        checked = self._stock_checked_at
        if checked is not None and time.monotonic() - checked < STAMP_RECHECK_SECONDS:
            return
        with self._translated("add the in_stock field"):
            mappings = self.client.indices.get_mapping(index=self.alias)
            for index, mapping in mappings.items():
                if STOCK_FIELD not in mapping.get("mappings", {}).get("properties", {}):
                    self._add_stock_field(index)
        self._stock_checked_at = time.monotonic()

    def _add_stock_field(self, index: str) -> None:
        logger.warning("index %s predates the %s field: adding it and filling it in from the "
                       "stored records", index, STOCK_FIELD)
        self.client.indices.put_mapping(index=index, body=build_stock_mapping())
        hits = helpers.scan(
            self.client, index=index, _source=[RECORD_FIELD], seq_no_primary_term=True,
            query={"query": {"match_all": {}}},
        )
        skipped = send_bulk(self.client, build_stock_backfill(index, hits), index, refresh=True,
                            tolerated=(404, 409))
        logger.info("filled in %s on %s (%d products rewritten or deleted meanwhile left as "
                    "they are)", STOCK_FIELD, index, skipped)

    def _serving_index(self) -> str:
        serving = self._aliased_indices()
        if not serving:
            raise IndexNotFoundError(
                f"OpenSearch at {self.url} has no alias {self.alias!r} "
                f"(run `shoprank reindex --store opensearch --catalog PATH`)"
            )
        return serving[-1]

    def replace_all(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        *,
        title_vectors: npt.NDArray[np.float32] | None = None,
        metadata: dict[str, Any] | None = None,
        encoder: EncoderStamp | None = None,
        progress: IndexProgress | None = None,
    ) -> str:
        """Build a new version, verify it, then swap the alias atomically. Returns its name."""
        check_rebuild(products, vectors, title_vectors)
        layout = replace(self._layout, dimension=int(vectors.shape[1]))
        with self._translated("rebuild the index"):
            self.remove_leftovers()
            stamp = datetime.now(UTC).strftime("%Y%m%dt%H%M%S%f")  # sorts by age
            version = f"{self.alias}-v{stamp}-{secrets.token_hex(3)}"
            meta = build_version_meta(len(products), metadata, encoder)
            self.client.indices.create(index=version, body=build_index_body(layout, meta))
            try:
                actions = build_bulk_actions(version, products, vectors, title_vectors)
                send_bulk(self.client, actions, version,
                          on_written=None if progress is None else progress.advance)
                self.client.indices.refresh(index=version)
                indexed = int(self.client.count(index=version)["count"])
                if indexed != len(products):
                    raise StoreError(
                        f"index {version} holds {indexed} documents, expected {len(products)}"
                    )
            except BaseException:
                logger.error("rebuild of %s failed; the alias still serves the old version",
                             self.alias)
                self.client.indices.delete(index=version, ignore_unavailable=True)
                raise
            old = self._aliased_indices()
            self.client.indices.update_aliases(body=build_alias_swap(self.alias, version, old))
            # Marked complete only once it served: a version killed before its swap stays
            # incomplete and the next rebuild removes it.
            self.client.indices.put_mapping(
                index=version, body={"_meta": {META_KEY: {**meta, "complete": True}}}
            )
            self._dimension = layout.dimension
            self._stamp = None
            logger.info("alias %s now serves %s (%d products)", self.alias, version, indexed)
            self._prune()
        return version

    def _aliased_indices(self) -> list[str]:
        if not self.client.indices.exists_alias(name=self.alias):
            return []
        return sorted(self.client.indices.get_alias(name=self.alias))

    def _versions(self) -> dict[str, bool]:
        """Every version index of this alias -> whether it was completed."""
        found = self.client.indices.get_mapping(index=f"{self.alias}-v*", allow_no_indices=True)
        pattern = re.compile(re.escape(self.alias) + r"-v\d{8}t\d{6}(\d{6})?-[0-9a-f]{6}")
        return {
            name: bool(version_meta(body).get("complete"))
            for name, body in found.items()
            if pattern.fullmatch(name)
        }

    def remove_leftovers(self) -> list[str]:
        """Delete versions that never served and no alias points to (failed rebuilds)."""
        serving = set(self._aliased_indices())
        stale = [
            name for name, complete in self._versions().items()
            if not complete and name not in serving
        ]
        for name in stale:
            logger.warning("removing leftover of an interrupted rebuild: %s", name)
            self.client.indices.delete(index=name, ignore_unavailable=True)
        return stale

    def _prune(self) -> None:
        """Keep the serving version and the newest ones that served before it."""
        serving = set(self._aliased_indices())
        served = sorted(n for n, done in self._versions().items() if done and n not in serving)
        keep_old = self.settings.opensearch_keep_versions - 1
        for name in served[: max(0, len(served) - keep_old)]:
            self.client.indices.delete(index=name, ignore_unavailable=True)

    def drop(self) -> None:
        """Delete the alias and every version (tests and `shoprank` admin use)."""
        with self._translated("drop the index"):
            for name in self._versions():
                self.client.indices.delete(index=name, ignore_unavailable=True)
