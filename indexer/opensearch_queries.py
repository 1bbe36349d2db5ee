"""OpenSearch request bodies, built by pure functions (unit-tested without a server).

Field names and the analyzer come from `indexer.schema` and `indexer.analysis`, the one source
of truth shared with the local store.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.analysis import ANALYZER_NAME, opensearch_analysis_settings
from indexer.encoder_stamp import EncoderStamp
from indexer.schema import LEXICAL_FIELDS, Product, lexical_texts
from indexer.store import Filters

VECTOR_FIELD = "embedding"
#: The title embedding: little-endian float32 bytes, base64, kept in ``_source`` and not
#: indexed (nothing searches it; the final stage reads it back by id).
TITLE_VECTOR_FIELD = "title_embedding"
RECORD_FIELD = "product"
#: Indexed copy of `Product.in_stock`: null (not indexed) when the catalog does not say.
STOCK_FIELD = "in_stock"
META_KEY = "shoprank"
#: Key of the encoder stamp inside the ``_meta.shoprank`` of an index version.
ENCODER_KEY = "encoder"
#: The most distinct brands `build_brand_counts_query` asks for (more are not counted).
BRAND_BUCKETS = 50_000
_NORMALIZER = "shoprank_lower"


@dataclass(frozen=True)
class IndexLayout:
    """How a versioned index is built."""

    dimension: int
    shards: int = 1
    replicas: int = 0
    engine: str = "lucene"
    hnsw_m: int = 16
    ef_construction: int = 128


def build_version_meta(
    count: int,
    metadata: dict[str, Any] | None = None,
    encoder: EncoderStamp | None = None,
    *,
    complete: bool = False,
) -> dict[str, Any]:
    """What an index version records in its mapping ``_meta`` (under `META_KEY`)."""
    meta: dict[str, Any] = {**(metadata or {}), "complete": complete, "count": count}
    if encoder is not None:
        meta[ENCODER_KEY] = encoder.to_meta()
    return meta


def version_meta(mapping: dict[str, Any]) -> dict[str, Any]:
    """The shoprank ``_meta`` of one index's ``get_mapping`` entry (empty if it has none)."""
    meta = mapping.get("mappings", {}).get("_meta", {}).get(META_KEY, {})
    return meta if isinstance(meta, dict) else {}


def build_index_body(layout: IndexLayout, meta: dict[str, Any]) -> dict[str, Any]:
    """Settings and mapping of one index version; ``meta`` comes from `build_version_meta`."""
    analysis = opensearch_analysis_settings()
    analysis["normalizer"] = {_NORMALIZER: {"type": "custom", "filter": ["lowercase"]}}
    text_fields = {name: {"type": "text", "analyzer": ANALYZER_NAME} for name in LEXICAL_FIELDS}
    return {
        "settings": {
            "index": {
                "knn": True,
                "number_of_shards": layout.shards,
                "number_of_replicas": layout.replicas,
                "refresh_interval": "1s",
            },
            "analysis": analysis,
        },
        "mappings": {
            "dynamic": False,
            "_meta": {META_KEY: meta},
            "properties": {
                "id": {"type": "keyword"},
                **text_fields,
                "brand": {"type": "keyword", "normalizer": _NORMALIZER},
                "category": {"type": "keyword", "normalizer": _NORMALIZER},
                "price": {"type": "double"},
                **build_stock_mapping()["properties"],
                VECTOR_FIELD: {
                    "type": "knn_vector",
                    "dimension": layout.dimension,
                    "method": {
                        "name": "hnsw",
                        "engine": layout.engine,
                        "space_type": "cosinesimil",
                        "parameters": {
                            "m": layout.hnsw_m,
                            "ef_construction": layout.ef_construction,
                        },
                    },
                },
                TITLE_VECTOR_FIELD: {"type": "binary"},
                RECORD_FIELD: {"type": "object", "enabled": False},
            },
        },
    }


def build_stock_mapping() -> dict[str, Any]:
    """The mapping of `STOCK_FIELD`; also what `put_mapping` adds to an index built before it."""
    return {"properties": {STOCK_FIELD: {"type": "boolean"}}}


def encode_title_vector(vector: npt.NDArray[np.float32]) -> str:
    """`TITLE_VECTOR_FIELD`'s value: exact float32, a third of the size of a JSON list."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_title_vector(value: str) -> npt.NDArray[np.float32]:
    return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)


def build_document(
    product: Product,
    vector: npt.NDArray[np.float32],
    title_vector: npt.NDArray[np.float32] | None = None,
) -> dict[str, Any]:
    """The indexed document: search fields, the vectors and the full record for lookups."""
    title = {} if title_vector is None else {TITLE_VECTOR_FIELD: encode_title_vector(title_vector)}
    return {
        "id": product.id,
        **lexical_texts(product),
        "brand": product.brand,
        "category": product.category,
        "price": product.price,
        STOCK_FIELD: product.in_stock,
        VECTOR_FIELD: [float(x) for x in vector],
        **title,
        RECORD_FIELD: product.model_dump(mode="json"),
    }


def build_bulk_actions(
    index: str,
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> Iterator[dict[str, Any]]:
    titles = [None] * len(products) if title_vectors is None else list(title_vectors)
    for product, vector, title in zip(products, vectors, titles, strict=True):
        yield {
            "_op_type": "index",
            "_index": index,
            "_id": product.id,
            "_source": build_document(product, vector, title),
        }


def build_delete_actions(index: str, product_ids: Sequence[str]) -> list[dict[str, Any]]:
    """One bulk delete per distinct id, in first-seen order."""
    return [
        {"_op_type": "delete", "_index": index, "_id": pid} for pid in dict.fromkeys(product_ids)
    ]


def build_filter_clauses(filters: Filters | None) -> list[dict[str, Any]]:
    """Filters as OpenSearch ``filter`` clauses (same semantics as `Filters.matches`)."""
    if filters is None:
        return []
    clauses: list[dict[str, Any]] = []
    if filters.brand is not None:
        clauses.append({"terms": {"brand": [brand.lower() for brand in filters.brand]}})
    if filters.category is not None:
        clauses.append({"term": {"category": filters.category.lower()}})
    if filters.price_min is not None or filters.price_max is not None:
        bounds = {}
        if filters.price_min is not None:
            bounds["gte"] = filters.price_min
        if filters.price_max is not None:
            bounds["lte"] = filters.price_max
        clauses.append({"range": {"price": bounds}})
    # Unknown stock is not indexed: "in stock" excludes only what is known to be out of it.
    if filters.in_stock is True:
        clauses.append({"bool": {"must_not": [{"term": {STOCK_FIELD: False}}]}})
    elif filters.in_stock is False:
        clauses.append({"term": {STOCK_FIELD: False}})
    return clauses


def build_stock_backfill(index: str, hits: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Bulk updates that index `STOCK_FIELD` on documents written before it existed.

    ``hits`` are search hits with ``_source`` holding `RECORD_FIELD`, ``_seq_no`` and
    ``_primary_term``: an update only applies if the document did not change since it was read,
    so a concurrent upsert is never overwritten with the older record's stock. Products whose
    stock is unknown need no update.
    """
    for hit in hits:
        in_stock = Product.model_validate(hit["_source"][RECORD_FIELD]).in_stock
        if in_stock is None:
            continue
        yield {
            "_op_type": "update",
            "_index": index,
            "_id": hit["_id"],
            "if_seq_no": hit["_seq_no"],
            "if_primary_term": hit["_primary_term"],
            "doc": {STOCK_FIELD: in_stock},
        }


# Equal scores are ordered by id, as in the local store.
_SORT = [{"_score": {"order": "desc"}}, {"id": {"order": "asc"}}]


def build_bm25_query(text: str, n: int, filters: Filters | None = None) -> dict[str, Any]:
    """BM25 over every lexical field, scores summed with the field weights (``most_fields``)."""
    fields = [f"{name}^{weight}" for name, weight in LEXICAL_FIELDS.items()]
    return {
        "size": n,
        "_source": False,
        "track_scores": True,
        "sort": _SORT,
        "query": {
            "bool": {
                "must": [
                    {"multi_match": {"query": text, "type": "most_fields", "fields": fields}}
                ],
                "filter": build_filter_clauses(filters),
            }
        },
    }


def build_knn_query(
    vector: npt.NDArray[np.float32],
    n: int,
    filters: Filters | None = None,
    *,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """Approximate k-NN with the filters applied inside the graph search (efficient filtering)."""
    knn: dict[str, Any] = {"vector": [float(x) for x in vector], "k": n}
    clauses = build_filter_clauses(filters)
    if clauses:
        knn["filter"] = {"bool": {"filter": clauses}}
    if ef_search is not None:
        knn["method_parameters"] = {"ef_search": max(ef_search, n)}
    return {
        "size": n,
        "_source": False,
        "track_scores": True,
        "sort": _SORT,
        "query": {"knn": {VECTOR_FIELD: knn}},
    }


def build_brand_counts_query() -> dict[str, Any]:
    """A terms aggregation over the (lower-cased) brand keyword, plus the products without one."""
    return {
        "size": 0,
        "aggs": {
            "brands": {"terms": {"field": "brand", "size": BRAND_BUCKETS}},
            "none": {"missing": {"field": "brand"}},
        },
    }


def read_brand_counts(response: dict[str, Any]) -> dict[str, int]:
    """Products per brand from the response to `build_brand_counts_query`; products without a
    brand count under ""."""
    aggregations = response["aggregations"]
    counts = {str(bucket["key"]): int(bucket["doc_count"])
              for bucket in aggregations["brands"]["buckets"]}
    if aggregations["none"]["doc_count"]:
        counts[""] = counts.get("", 0) + int(aggregations["none"]["doc_count"])
    return counts


def cosine_from_score(score: float) -> float:
    """OpenSearch reports cosine similarity as ``(1 + cos) / 2``; undo that."""
    return 2.0 * score - 1.0


def build_alias_swap(alias: str, new_index: str, old_indices: Sequence[str]) -> dict[str, Any]:
    """One atomic ``_aliases`` request: the alias leaves the old versions and joins the new."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}} for old in old_indices
    ]
    actions.append({"add": {"index": new_index, "alias": alias, "is_write_index": True}})
    return {"actions": actions}
