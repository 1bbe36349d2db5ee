"""The local store past its exact-search size: an HNSW index, filters inside it, live changes.

The store is built with a low ``exact_below`` so that a small catalog takes the ANN path; a
second store over the same folder with a huge ``exact_below`` searches the same version exactly
and is the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.local_segment import ANN_FILE
from indexer.local_store import LocalStore
from indexer.schema import Product
from indexer.store import Filters
from tests.conftest import make_product

SIZE = 3000
DIM = 32


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def catalog() -> tuple[list[Product], np.ndarray]:
    products = [
        make_product(f"p{i:05d}", f"widget model {i}", brand=f"brand{i % 200}",
                     price=float(i % 100))
        for i in range(SIZE)
    ]
    return products, unit_rows(SIZE, seed=0)


@pytest.fixture
def stores(
    tmp_path: Path, catalog: tuple[list[Product], np.ndarray]
) -> tuple[LocalStore, LocalStore]:
    products, vectors = catalog
    ann = LocalStore(tmp_path / "idx", exact_below=100)
    ann.replace_all(products, vectors)
    exact = LocalStore(tmp_path / "idx", exact_below=10**9)
    return ann, exact


def ids(hits: list) -> list[str]:
    return [hit.product_id for hit in hits]


def test_a_large_version_gets_an_hnsw_index_that_finds_what_exact_search_finds(
    stores: tuple[LocalStore, LocalStore],
) -> None:
    ann, exact = stores
    assert (ann.root / ann.version / ANN_FILE).is_file()
    recalls = []
    for query in unit_rows(50, seed=1):
        found, truth = ann.search_vector(query, 20), exact.search_vector(query, 20)
        assert len(found) == 20
        recalls.append(len(set(ids(found)) & set(ids(truth))) / 20)
        by_id = {hit.product_id: hit.score for hit in truth}
        for hit in found:  # scores are exact cosines, not quantised ones
            if hit.product_id in by_id:
                assert hit.score == pytest.approx(by_id[hit.product_id], abs=1e-6)
    assert np.mean(recalls) >= 0.95


def test_a_small_version_is_searched_exactly_without_an_index(
    tmp_path: Path, catalog: tuple[list[Product], np.ndarray]
) -> None:
    products, vectors = catalog
    store = LocalStore(tmp_path / "small", exact_below=1000)
    store.replace_all(products[:500], vectors[:500])
    assert not (store.root / store.version / ANN_FILE).exists()
    query = vectors[7]
    assert ids(store.search_vector(query, 1)) == ["p00007"]


@pytest.mark.parametrize("exact_below", [10**9, 0], ids=["exact-over-rows", "graph-walk"])
def test_a_filter_inside_the_index_returns_k_when_k_match(
    stores: tuple[LocalStore, LocalStore], monkeypatch: pytest.MonkeyPatch, exact_below: int
) -> None:
    """15 products of one brand among 3,000: a post-filtered top 100 would miss most. Below
    `FILTERED_EXACT_BELOW` matching rows (or where the graph walk would need more than
    `MAX_EXPANSION` candidates) the store searches them exactly; otherwise the walk skips the
    others, keeping more candidates the fewer are allowed, and still returns k."""
    monkeypatch.setattr("indexer.local_snapshot.FILTERED_EXACT_BELOW", exact_below)
    monkeypatch.setattr("indexer.local_snapshot.MAX_EXPANSION", 10**9 if not exact_below else 0)
    ann, exact = stores
    filters = Filters(brand="brand7", price_max=50)
    query = unit_rows(1, seed=2)[0]
    found = ann.search_vector(query, 10, filters)
    truth = exact.search_vector(query, 10, filters)
    assert len(found) == 10
    assert all(ann.get(pid).brand == "brand7" for pid in ids(found))  # type: ignore[union-attr]
    if exact_below:
        assert ids(found) == ids(truth)


def test_live_changes_reach_the_indexed_version_without_a_rebuild(
    stores: tuple[LocalStore, LocalStore], catalog: tuple[list[Product], np.ndarray]
) -> None:
    ann, _ = stores
    _, vectors = catalog
    version = ann.version
    query = vectors[42]
    assert ids(ann.search_vector(query, 1)) == ["p00042"]
    ann.delete(["p00042"])
    assert "p00042" not in ids(ann.search_vector(query, 50))
    moved = make_product("p00043", "widget model 43, new", brand="brand43")
    ann.upsert([moved, make_product("new1", "gadget", brand="brand7")],
               np.stack([query, vectors[1000]]))
    assert ids(ann.search_vector(query, 1)) == ["p00043"]  # its new vector, from the overlay
    assert ids(ann.search_vector(vectors[43], 100)).count("p00043") <= 1
    assert ann.count() == SIZE  # one gone, one new, one replaced
    assert ann.get("p00043") == moved
    assert ann.brand_counts()["brand7"] == 16
    assert ids(ann.search_bm25("gadget", 5)) == ["new1"]
    assert ann.version == version, "no rebuild"
    reopened = LocalStore(ann.root, exact_below=100)  # another process replays the log
    assert ids(reopened.search_vector(query, 1)) == ["p00043"]
    assert reopened.get("p00042") is None and reopened.count() == SIZE


def test_a_filtered_scan_shortlists_from_8_bit_codes_and_scores_exactly(
    stores: tuple[LocalStore, LocalStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the catalog allowed, scanned row by row: the 8-bit codes pick 2 x k candidates,
    the float32 vectors order them, and the answer is the exact one."""
    monkeypatch.setattr("indexer.local_snapshot.FILTERED_EXACT_BELOW", 10**9)
    ann, exact = stores
    filters = Filters(price_max=49)
    for query in unit_rows(20, seed=3):
        found = ann.search_vector(query, 10, filters)
        truth = exact.search_vector(query, 10, filters)
        assert ids(found) == ids(truth)
        assert [h.score for h in found] == pytest.approx([h.score for h in truth], abs=1e-6)
