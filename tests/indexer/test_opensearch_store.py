"""What only the OpenSearch store does: bring an index built before `in_stock` up to date."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import indexer.opensearch_store as opensearch_store
from indexer.opensearch_queries import build_bulk_actions, build_index_body
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from indexer.store import Filters
from tests.conftest import axis_vectors
from tests.indexer.store_factories import StoreFactory, store_factory

pytestmark = pytest.mark.integration


@pytest.fixture
def make_store(tmp_path: Path) -> Iterator[StoreFactory]:
    yield from store_factory("opensearch", tmp_path)


def _old_index_body(*args: Any, **kwargs: Any) -> dict[str, Any]:
    body: dict[str, Any] = build_index_body(*args, **kwargs)
    del body["mappings"]["properties"]["in_stock"]
    return body


def _old_documents(
    index: str,
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> Iterator[dict[str, Any]]:
    """Documents as shoprank wrote them before `in_stock`: the stock is only in the record's
    extra ``stock`` field."""
    for action in build_bulk_actions(index, products, vectors, title_vectors):
        del action["_source"]["in_stock"]
        del action["_source"]["product"]["in_stock"]
        yield action


@pytest.fixture
def old_store(
    make_store: StoreFactory, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> OpenSearchStore:
    """An index version built before `in_stock` existed: p1 and p4 have 0 left, p2 has 5."""
    stock = {"p1": 0, "p2": 5, "p4": 0}
    products = [
        Product.model_validate({**p.model_dump(exclude={"in_stock"}), "stock": stock[p.id]})
        if p.id in stock else p
        for p in tiny_products
    ]
    store = make_store(8)
    assert isinstance(store, OpenSearchStore)
    with monkeypatch.context() as patch:
        patch.setattr(opensearch_store, "build_index_body", _old_index_body)
        patch.setattr(opensearch_store, "build_bulk_actions", _old_documents)
        store.replace_all(products, axis_vectors(len(products)))
    assert "in_stock" not in _properties(store)
    return store


def _properties(store: OpenSearchStore) -> dict[str, Any]:
    (mapping,) = store.client.indices.get_mapping(index=store.alias).values()
    properties: dict[str, Any] = mapping["mappings"]["properties"]
    return properties


def test_a_stock_filter_on_an_old_index_fills_the_field_in_first(
    old_store: OpenSearchStore,
) -> None:
    query = axis_vectors(6)[0]
    out = {h.product_id for h in old_store.search_vector(query, 10, Filters(in_stock=False))}
    assert out == {"p1", "p4"}
    assert _properties(old_store)["in_stock"] == {"type": "boolean"}
    lexical = old_store.search_bm25("running shoes jacket", 10, Filters(in_stock=True))
    assert {h.product_id for h in lexical} == {"p2", "p5"}  # p5's stock is unknown


def test_an_upsert_into_an_old_index_is_filterable(
    old_store: OpenSearchStore, tiny_products: list[Product]
) -> None:
    sold_out = Product.model_validate({**tiny_products[5].model_dump(), "stock": 0})
    old_store.upsert([sold_out], axis_vectors(6)[5:])
    assert "in_stock" in _properties(old_store)
    out = old_store.search_bm25("coffee running dress", 10, Filters(in_stock=False))
    assert {h.product_id for h in out} == {"p1", "p4", "p6"}
