"""Changing one product: the encoder runs only when the product's model text changed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from indexer.local_store import LocalStore
from indexer.schema import Product
from indexer.updates import update_product
from tests.conftest import axis_vectors


class CountingEncoder:
    """Stands in for the packaged bi-encoder: every text gets one fixed vector."""

    is_packaged = True

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode_texts(
        self, texts: Sequence[str], *, progress: bool = False
    ) -> npt.NDArray[np.float32]:
        self.texts += texts
        return np.repeat(axis_vectors(8)[-1:], len(texts), axis=0)


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    vectors = axis_vectors(len(tiny_products))
    store.replace_all(tiny_products, vectors, title_vectors=vectors[::-1].copy())
    return store


def test_a_price_or_stock_change_keeps_the_stored_vectors(store: LocalStore) -> None:
    before = store.get("p1")
    assert before is not None
    vector, title = store.vectors(["p1"])["p1"], store.title_vectors(["p1"])["p1"]
    encoder = CountingEncoder()
    after = Product.model_validate({**before.model_dump(), "price": 9.5, "stock": 0})
    assert update_product(store, before, after, encoder) is False  # type: ignore[arg-type]
    assert encoder.texts == []
    assert store.get("p1") == after
    assert np.array_equal(store.vectors(["p1"])["p1"], vector)
    assert np.array_equal(store.title_vectors(["p1"])["p1"], title)


def test_a_title_change_embeds_the_product_again(store: LocalStore) -> None:
    before = store.get("p1")
    assert before is not None
    encoder = CountingEncoder()
    after = Product.model_validate({**before.model_dump(), "title": "red trail running shoes"})
    assert update_product(store, before, after, encoder) is True  # type: ignore[arg-type]
    assert "red trail running shoes" in encoder.texts
    assert store.get("p1") == after
    assert np.array_equal(store.vectors(["p1"])["p1"], axis_vectors(8)[-1])
    assert np.array_equal(store.title_vectors(["p1"])["p1"], axis_vectors(8)[-1])
