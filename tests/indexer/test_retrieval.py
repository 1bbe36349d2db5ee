"""`HybridRetriever`: BM25 and vector search at once, fused, with loading the encoder timed
apart from encoding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.retrieval import HybridRetriever, retrieve
from indexer.schema import Product
from tests.conftest import axis_vectors


class SlowLoadingEncoder(BiEncoder):
    """A `BiEncoder` whose model takes 50 ms to load and whose queries map to one axis."""

    def __init__(self, vector: np.ndarray) -> None:
        super().__init__()
        self.vector = vector
        self.loaded = False
        self.loads = 0

    @property
    def model(self) -> object:  # type: ignore[override]
        if not self.loaded:
            time.sleep(0.05)
            self.loaded = True
            self.loads += 1
        return object()

    def encode_query(self, text: str) -> np.ndarray:
        assert self.loaded, "encode_query ran before the model was loaded"
        return self.vector


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


def test_concurrent_hybrid_retrieval_equals_one_search_after_the_other(store: LocalStore) -> None:
    encoder = SlowLoadingEncoder(axis_vectors(6)[2])
    together = HybridRetriever(store, encoder).retrieve("hybrid", "red running", 4)
    alone = retrieve(store, "hybrid", 4, text="red running", vector=axis_vectors(6)[2])
    assert together.candidates == alone
    assert together.vector is encoder.vector
    assert any(c.bm25 is not None and c.vector is not None for c in alone)


def test_loading_the_encoder_is_timed_apart_from_encoding(store: LocalStore) -> None:
    laps: list[tuple[str, float]] = []
    last = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal last
        now = time.perf_counter()
        laps.append((step, now - last))
        last = now

    encoder = SlowLoadingEncoder(axis_vectors(6)[2])
    retriever = HybridRetriever(store, encoder)
    retriever.retrieve("vector", "red running", 3, lap=lap)
    (load, first), (encode, _) = laps
    assert (load, encode) == ("load_encoder", "encode") and first >= 0.05
    retriever.retrieve("vector", "red running", 3, lap=lap)
    assert encoder.loads == 1  # the second search found it loaded


def test_bm25_needs_no_encoder_and_vector_search_needs_one(store: LocalStore) -> None:
    retriever = HybridRetriever(store)
    assert [c.product_id for c in retriever.retrieve("bm25", "coffee", 3).candidates] == ["p6"]
    with pytest.raises(ValueError, match="query vector or an encoder"):
        retriever.retrieve("vector", "coffee", 3)
    with pytest.raises(ValueError, match="needs a query vector"):
        retrieve(store, "hybrid", 3, text="coffee")
