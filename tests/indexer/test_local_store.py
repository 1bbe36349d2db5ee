from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import DimensionMismatchError, IndexNotFoundError, StoreError
from indexer.local_store import LocalStore
from indexer.retrieval import retrieve
from indexer.schema import Product
from indexer.store import Filters, VectorStore
from tests.conftest import axis_vectors


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


def test_local_store_satisfies_the_protocol(store: LocalStore) -> None:
    assert isinstance(store, VectorStore)


def test_bm25_finds_term_matches_only(store: LocalStore) -> None:
    hits = store.search_bm25("running", 10)
    assert {h.product_id for h in hits} == {"p1", "p2", "p4", "p5"}
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_vector_search_ranks_by_cosine(store: LocalStore, tiny_products: list[Product]) -> None:
    vectors = axis_vectors(len(tiny_products))
    hits = store.search_vector(vectors[2], 3)
    assert hits[0].product_id == "p3"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(vectors @ vectors[2]))[:3]
    assert [h.product_id for h in hits] == [tiny_products[i].id for i in expected]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(brand="acme"), {"p1", "p3", "p4"}),
        (Filters(brand=["Acme", "Bolt"]), {"p1", "p2", "p3", "p4", "p6"}),
        (Filters(category="running"), {"p1", "p2"}),
        (Filters(category="Clothing"), {"p3", "p4", "p5"}),
        (Filters(price_min=40, price_max=80), {"p1", "p2", "p6"}),
        (Filters(price_max=10), set()),
        (Filters(brand="Acme", category="Clothing", price_min=100), {"p4"}),
    ],
)
def test_filters_apply_inside_vector_retrieval(
    store: LocalStore, tiny_products: list[Product], filters: Filters, expected: set[str]
) -> None:
    hits = store.search_vector(axis_vectors(6)[5], 10, filters)
    assert {h.product_id for h in hits} == expected
    assert expected == {p.id for p in tiny_products if filters.matches(p)}


def test_filtered_query_still_returns_k_when_k_match(tmp_path: Path) -> None:
    # 200 products, only every tenth is brand "Rare": the nearest 5 overall are all "Common",
    # yet a filtered top-5 must still hold five "Rare" products.
    products = [
        Product(id=f"x{i:03d}", title=f"widget {i}", brand="Rare" if i % 10 == 0 else "Common")
        for i in range(200)
    ]
    noise = axis_vectors(200) * 0.1
    query = np.eye(8, dtype=np.float32)[0]
    vectors = np.array(
        [(-query if i % 10 == 0 else query) + noise[i] for i in range(200)], dtype=np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = LocalStore(tmp_path / "idx")
    store.replace_all(products, vectors)
    assert all(int(hit.product_id[1:]) % 10 != 0 for hit in store.search_vector(query, 5))
    hits = store.search_vector(query, 5, Filters(brand="Rare"))
    assert len(hits) == 5 and all(int(h.product_id[1:]) % 10 == 0 for h in hits)
    lexical = store.search_bm25("widget", 5, Filters(brand="Rare"))
    assert len(lexical) == 5 and all(int(h.product_id[1:]) % 10 == 0 for h in lexical)


def test_hybrid_fuses_both_lists_and_keeps_stage_scores(store: LocalStore) -> None:
    vector = axis_vectors(6)[2]  # nearest to p3, "red summer dress"
    candidates = retrieve(store, "hybrid", 4, text="red running", vector=vector)
    assert len(candidates) == 4
    top = candidates[0]
    assert top.fused is not None and top.fused > 0
    both = [c for c in candidates if c.bm25 is not None and c.vector is not None]
    assert both, "products found by both retrievers carry both scores"
    assert all(c.bm25_rank is not None or c.vector_rank is not None for c in candidates)
    fused = [c.fused for c in candidates]
    assert fused == sorted(fused, reverse=True)


def test_store_reopens_from_disk_without_rebuilding(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    reopened = LocalStore(store.root)
    assert reopened.count() == len(tiny_products)
    assert reopened.get("p3") == tiny_products[2]
    assert [h.product_id for h in reopened.search_bm25("coffee", 3)] == ["p6"]
    assert reopened.dimension == 8


def test_missing_index_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError, match="shoprank reindex"):
        LocalStore(tmp_path / "nothing").count()


def test_query_vector_of_wrong_dimension_is_rejected(store: LocalStore) -> None:
    with pytest.raises(DimensionMismatchError, match="8-d"):
        store.search_vector(np.ones(5, dtype=np.float32), 3)


def test_failed_rebuild_leaves_serving_index_untouched(
    store: LocalStore, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.version

    def broken_build(texts: list[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("indexer.local_store.LexicalIndex.build", broken_build)
    with pytest.raises(OSError, match="disk full"):
        store.replace_all(tiny_products[:2], axis_vectors(2))
    reader = LocalStore(store.root)
    assert reader.version == before and reader.count() == len(tiny_products)
    monkeypatch.undo()
    store.replace_all(tiny_products[:2], axis_vectors(2))
    leftovers = [p.name for p in store.root.iterdir() if p.name.startswith(".building")]
    assert leftovers == [], "the next rebuild cleans up what the failed one left"
    assert LocalStore(store.root).count() == 2


def test_mismatched_vectors_are_refused_before_writing(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    before = store.version
    with pytest.raises(DimensionMismatchError):
        store.replace_all(tiny_products, axis_vectors(3))
    with pytest.raises(StoreError, match="empty"):
        store.replace_all([], np.zeros((0, 8), dtype=np.float32))
    assert LocalStore(store.root).version == before


def test_old_versions_are_pruned(store: LocalStore, tiny_products: list[Product]) -> None:
    for _ in range(3):
        store.replace_all(tiny_products, axis_vectors(6))
    versions = [p for p in store.root.iterdir() if p.is_dir()]
    assert len(versions) == 2


def test_a_reader_picks_up_a_rebuild_from_another_process(
    store: LocalStore, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.local_store.RECHECK_SECONDS", 0.0)
    reader = LocalStore(store.root)
    assert reader.count() == 6
    LocalStore(store.root).replace_all(tiny_products[:3], axis_vectors(3))
    assert reader.count() == 3
    assert reader.get("p6") is None
