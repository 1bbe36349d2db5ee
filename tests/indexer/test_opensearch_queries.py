"""OpenSearch request bodies, checked without a server."""

from __future__ import annotations

import numpy as np

from indexer.analysis import STOPWORDS
from indexer.encoder_stamp import EncoderStamp
from indexer.opensearch_queries import (
    IndexLayout,
    build_alias_swap,
    build_bm25_query,
    build_brand_counts_query,
    build_delete_actions,
    build_document,
    build_filter_clauses,
    build_index_body,
    build_knn_query,
    build_stock_backfill,
    build_version_meta,
    cosine_from_score,
    read_brand_counts,
    version_meta,
)
from indexer.store import Filters
from tests.conftest import make_product


def test_index_body_declares_lucene_hnsw_and_the_shared_analyzer() -> None:
    body = build_index_body(IndexLayout(dimension=384), {"complete": False})
    assert body["settings"]["index"]["knn"] is True
    vector = body["mappings"]["properties"]["embedding"]
    assert vector["dimension"] == 384
    assert vector["method"]["engine"] == "lucene"
    assert vector["method"]["space_type"] == "cosinesimil"
    analysis = body["settings"]["analysis"]
    assert analysis["filter"]["shoprank_stop"]["stopwords"] == list(STOPWORDS)
    assert body["mappings"]["properties"]["title"]["analyzer"] == "shoprank_text"
    assert body["mappings"]["_meta"]["shoprank"] == {"complete": False}


def test_knn_query_filters_inside_the_graph_search() -> None:
    query = build_knn_query(
        np.ones(3, dtype=np.float32), 10, Filters(brand="Acme", price_max=20), ef_search=4
    )
    knn = query["query"]["knn"]["embedding"]
    assert knn["k"] == 10 and query["size"] == 10
    assert knn["filter"] == {"bool": {"filter": [
        {"terms": {"brand": ["acme"]}}, {"range": {"price": {"lte": 20}}}
    ]}}
    assert knn["method_parameters"] == {"ef_search": 10}  # never below k
    assert "filter" not in build_knn_query(np.ones(3, dtype=np.float32), 5)["query"]["knn"][
        "embedding"
    ]


def test_bm25_query_sums_weighted_fields() -> None:
    query = build_bm25_query("red shoes", 7, Filters(category="Shoes"))
    match = query["query"]["bool"]["must"][0]["multi_match"]
    assert match == {"query": "red shoes", "type": "most_fields",
                     "fields": ["text^1.0", "title^0.5"]}
    assert query["query"]["bool"]["filter"] == [{"term": {"category": "shoes"}}]
    assert query["sort"][1] == {"id": {"order": "asc"}}


def test_document_keeps_the_full_record_and_the_vector() -> None:
    product = make_product("a", "Desk lamp", brand="Ikea", price=10.0)
    doc = build_document(product, np.array([0.5, 0.5], dtype=np.float32))
    assert doc["embedding"] == [0.5, 0.5]
    assert doc["product"]["title"] == "Desk lamp" and doc["text"].startswith("Desk lamp")


def test_stock_is_an_indexed_boolean_written_as_the_product_says() -> None:
    body = build_index_body(IndexLayout(dimension=8), {})
    assert body["mappings"]["properties"]["in_stock"] == {"type": "boolean"}
    vector = np.zeros(2, dtype=np.float32)
    assert build_document(make_product("a", "x", stock=0), vector)["in_stock"] is False
    assert build_document(make_product("a", "x", in_stock=True), vector)["in_stock"] is True
    unknown = build_document(make_product("a", "x"), vector)
    assert "in_stock" in unknown and unknown["in_stock"] is None  # null: not indexed


def test_in_stock_filter_clauses_treat_unknown_as_available() -> None:
    not_out = {"bool": {"must_not": [{"term": {"in_stock": False}}]}}
    assert build_filter_clauses(Filters(in_stock=True)) == [not_out]
    assert build_filter_clauses(Filters(in_stock=False)) == [{"term": {"in_stock": False}}]
    assert build_filter_clauses(Filters(in_stock=None)) == []
    assert build_filter_clauses(Filters(brand="Acme", in_stock=True)) == [
        {"terms": {"brand": ["acme"]}}, not_out
    ]
    knn = build_knn_query(np.ones(3, dtype=np.float32), 5, Filters(in_stock=False))
    assert knn["query"]["knn"]["embedding"]["filter"] == {
        "bool": {"filter": [{"term": {"in_stock": False}}]}
    }
    bm25 = build_bm25_query("lamp", 5, Filters(in_stock=True))
    assert bm25["query"]["bool"]["filter"] == [not_out]


def test_stock_backfill_updates_only_known_stock_and_only_unchanged_documents() -> None:
    def hit(pid: str, **record: object) -> dict[str, object]:
        return {"_id": pid, "_seq_no": 7, "_primary_term": 2,
                "_source": {"product": {"id": pid, "title": "x", **record}}}

    hits = [hit("a", stock=0), hit("b"), hit("c", in_stock=True, stock=0), hit("d", stock=4)]
    actions = list(build_stock_backfill("shop-v1", hits))
    assert [(a["_id"], a["doc"]) for a in actions] == [
        ("a", {"in_stock": False}), ("c", {"in_stock": True}), ("d", {"in_stock": True})
    ]
    assert actions[0] == {"_op_type": "update", "_index": "shop-v1", "_id": "a",
                          "if_seq_no": 7, "if_primary_term": 2, "doc": {"in_stock": False}}


def test_delete_actions_name_each_id_once() -> None:
    actions = build_delete_actions("idx-v1", ["a", "b", "a"])
    assert [action["_id"] for action in actions] == ["a", "b"]
    assert all(a["_op_type"] == "delete" and a["_index"] == "idx-v1" for a in actions)


def test_brand_counts_add_products_without_a_brand_under_the_empty_name() -> None:
    body = build_brand_counts_query()
    assert body["size"] == 0 and body["aggs"]["brands"]["terms"]["field"] == "brand"
    response = {"aggregations": {
        "brands": {"buckets": [{"key": "acme", "doc_count": 3}, {"key": "zeta", "doc_count": 1}]},
        "none": {"doc_count": 2},
    }}
    assert read_brand_counts(response) == {"acme": 3, "zeta": 1, "": 2}
    response["aggregations"]["none"]["doc_count"] = 0
    assert read_brand_counts(response) == {"acme": 3, "zeta": 1}


def test_alias_swap_is_one_request() -> None:
    body = build_alias_swap("shop", "shop-v2", ["shop-v1"])
    assert body["actions"] == [
        {"remove": {"index": "shop-v1", "alias": "shop"}},
        {"add": {"index": "shop-v2", "alias": "shop", "is_write_index": True}},
    ]


def test_cosine_from_score_undoes_the_shift() -> None:
    assert cosine_from_score(1.0) == 1.0 and cosine_from_score(0.5) == 0.0


def test_version_meta_records_the_encoder_and_reads_back() -> None:
    stamp = EncoderStamp("tuned:shoes", "0123456789abcdef", 128, "/models/shoes")
    meta = build_version_meta(6, {"catalog": "c.jsonl", "complete": True}, stamp)
    assert meta == {"catalog": "c.jsonl", "complete": False, "count": 6,
                    "encoder": stamp.to_meta()}
    body = build_index_body(IndexLayout(dimension=8), meta)
    assert version_meta(body) == meta
    assert EncoderStamp.from_meta(version_meta(body)["encoder"]) == stamp
    assert "encoder" not in build_version_meta(6)
    assert version_meta({"mappings": {}}) == {}
