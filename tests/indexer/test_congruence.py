"""The local store and OpenSearch return the same top 10 on the same real data.

Differences that remain have two known causes, both measured here: BM25 scores differ only by
float rounding (Lucene scores in float32), which can swap products with nearly equal scores;
vector search in OpenSearch is approximate (HNSW), the local store is exact.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product, product_to_text
from reranker.metrics import ESCI_GAINS, evaluate_run, load_qrels, load_queries
from tests.conftest import SHARED_DATA, demo_slice
from tests.indexer.store_factories import opensearch_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLICE = 2000


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    path = SHARED_DATA / "esci-us" / "queries.tsv"
    assert path.is_file(), f"the congruence test needs the shared ESCI queries at {path}"
    return load_queries(path)


@pytest.fixture(scope="module")
def stores(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalStore, OpenSearchStore, BiEncoder]]:
    products = [Product.model_validate(r) for r in demo_slice(SLICE)]
    encoder = BiEncoder()
    vectors = encoder.encode_texts([product_to_text(p) for p in products])
    local = LocalStore(Path(tmp_path_factory.mktemp("congruence")) / "idx")
    local.replace_all(products, vectors)
    remote = OpenSearchStore(opensearch_settings(), f"congruence-{uuid.uuid4().hex[:8]}")
    remote.replace_all(products, vectors)
    yield local, remote, encoder
    remote.drop()
    remote.close()


def compare(
    runs: tuple[dict[str, list[str]], dict[str, list[str]]], queries: dict[str, str]
) -> tuple[float, float, float]:
    local, remote = runs
    overlap = float(np.mean([len(set(local[q]) & set(remote[q])) / 10 for q in queries
                             if local[q] or remote[q]]))
    qrels = load_qrels(SHARED_DATA / "esci-us" / "qrels.txt")
    judged = {q: qrels[q] for q in queries if q in qrels}
    ndcg_local = evaluate_run(local, judged, gains=ESCI_GAINS).ndcg
    ndcg_remote = evaluate_run(remote, judged, gains=ESCI_GAINS).ndcg
    return overlap, ndcg_local, ndcg_remote


def test_bm25_top10_agrees(
    stores: tuple[LocalStore, OpenSearchStore, BiEncoder], queries: dict[str, str]
) -> None:
    local, remote, _ = stores
    runs: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    worst = 0.0
    for qid, text in queries.items():
        mine = local.search_bm25(text, 10)
        theirs = remote.search_bm25(text, 10)
        runs[0][qid] = [h.product_id for h in mine]
        runs[1][qid] = [h.product_id for h in theirs]
        scores = {h.product_id: h.score for h in mine}
        for hit in theirs:
            if hit.product_id in scores:
                worst = max(worst, abs(hit.score - scores[hit.product_id]) / hit.score)
    overlap, ndcg_local, ndcg_remote = compare(runs, queries)
    assert worst < 1e-4, "BM25 scores must match Lucene's up to float rounding"
    assert overlap >= 0.9
    assert abs(ndcg_local - ndcg_remote) <= 0.01


def test_vector_top10_agrees(
    stores: tuple[LocalStore, OpenSearchStore, BiEncoder], queries: dict[str, str]
) -> None:
    local, remote, encoder = stores
    runs: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})
    for qid, text in queries.items():
        vector = encoder.encode_query(text)
        mine = local.search_vector(vector, 10)
        theirs = remote.search_vector(vector, 10)
        runs[0][qid] = [h.product_id for h in mine]
        runs[1][qid] = [h.product_id for h in theirs]
        exact = {h.product_id: h.score for h in mine}
        for hit in theirs:
            if hit.product_id in exact:
                assert hit.score == pytest.approx(exact[hit.product_id], abs=1e-4)
    overlap, ndcg_local, ndcg_remote = compare(runs, queries)
    assert overlap >= 0.9
    assert abs(ndcg_local - ndcg_remote) <= 0.01
