"""One contract, every `VectorStore`: the local store and OpenSearch behave the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import BiEncoder
from indexer.errors import (
    DimensionMismatchError,
    EncoderMismatchError,
    IndexNotFoundError,
    StoreError,
)
from indexer.indexing import upsert_products
from indexer.retrieval import retrieve
from indexer.schema import Product
from indexer.store import Filters, VectorStore, check_encoder
from tests.conftest import axis_vectors, make_product
from tests.indexer.encoder_factories import fake_model
from tests.indexer.store_factories import STORE_KINDS, StoreFactory, store_factory


@pytest.fixture(params=STORE_KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    yield from store_factory(request.param, tmp_path)


@pytest.fixture
def store(make_store: StoreFactory, tiny_products: list[Product]) -> VectorStore:
    store = make_store(8)
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


def test_implements_the_protocol(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)
    assert store.count() == 6 and store.dimension == 8


def test_get_returns_the_full_record(store: VectorStore, tiny_products: list[Product]) -> None:
    assert store.get("p3") == tiny_products[2]
    assert store.get("nope") is None
    assert set(store.get_many(["p1", "p6", "nope"])) == {"p1", "p6"}


def test_bm25_returns_term_matches_best_first(store: VectorStore) -> None:
    hits = store.search_bm25("running", 10)
    assert {h.product_id for h in hits} == {"p1", "p2", "p4", "p5"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert store.search_bm25("the", 10) == []  # stop words only: nothing to match


def test_vectors_returns_the_stored_unit_vectors_of_known_ids(store: VectorStore) -> None:
    stored = axis_vectors(6)
    found = store.vectors(["p3", "nope", "p1"])
    assert set(found) == {"p1", "p3"}
    for pid, row in (("p1", 0), ("p3", 2)):
        assert found[pid].dtype == np.float32 and found[pid].shape == (8,)
        np.testing.assert_allclose(found[pid], stored[row], atol=1e-6)
        assert float(np.linalg.norm(found[pid])) == pytest.approx(1.0, abs=1e-5)
    assert store.vectors([]) == {} and store.vectors(["nope"]) == {}
    replacement = axis_vectors(8)[7:]
    store.upsert([store.get("p3")], replacement)  # type: ignore[list-item]
    np.testing.assert_allclose(store.vectors(["p3"])["p3"], replacement[0], atol=1e-6)


def test_title_vectors_are_stored_beside_the_vectors_when_given(
    store: VectorStore, tiny_products: list[Product]
) -> None:
    assert store.title_vectors(["p1", "p3"]) == {}  # this version was written without them
    vectors = axis_vectors(len(tiny_products))
    titles = np.roll(vectors, 1, axis=0)
    store.replace_all(tiny_products, vectors, title_vectors=titles)
    found = store.title_vectors(["p3", "nope", "p1"])
    assert set(found) == {"p1", "p3"}
    np.testing.assert_allclose(found["p3"], titles[2], atol=1e-6)
    np.testing.assert_allclose(store.vectors(["p3"])["p3"], vectors[2], atol=1e-6)
    replacement = axis_vectors(8)[6:]
    p1, p2 = tiny_products[0], tiny_products[1]
    store.upsert([p1], replacement[:1], replacement[1:])
    np.testing.assert_allclose(store.title_vectors(["p1"])["p1"], replacement[1], atol=1e-6)
    store.upsert([p2], replacement[:1])  # no title vector: the old one is not kept
    assert set(store.title_vectors(["p1", "p2"])) == {"p1"}
    with pytest.raises(DimensionMismatchError, match="title vectors"):
        store.upsert([p1], replacement[:1], axis_vectors(1, dim=4))
    with pytest.raises(DimensionMismatchError, match="title vectors"):
        store.replace_all(tiny_products, vectors, title_vectors=titles[:2])
    np.testing.assert_allclose(store.title_vectors(["p3"])["p3"], titles[2], atol=1e-6)


def test_vector_search_ranks_by_cosine(store: VectorStore, tiny_products: list[Product]) -> None:
    vectors = axis_vectors(len(tiny_products))
    hits = store.search_vector(vectors[2], 3)
    assert hits[0].product_id == "p3"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    expected = np.argsort(-(vectors @ vectors[2]))[:3]
    assert [h.product_id for h in hits] == [tiny_products[i].id for i in expected]
    assert [h.score for h in hits] == pytest.approx(
        sorted(vectors @ vectors[2], reverse=True)[:3], abs=1e-4
    )


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
def test_filters_apply_inside_retrieval(
    store: VectorStore, tiny_products: list[Product], filters: Filters, expected: set[str]
) -> None:
    assert expected == {p.id for p in tiny_products if filters.matches(p)}
    hits = store.search_vector(axis_vectors(6)[5], 10, filters)
    assert {h.product_id for h in hits} == expected
    lexical = {h.product_id for h in store.search_bm25("running shoes dress jacket", 10, filters)}
    assert lexical == {p for p in expected if p != "p6"}


def with_stock(product: Product, **stock: object) -> Product:
    """``product`` with ``in_stock`` or a ``stock`` quantity as a catalog line would give it."""
    return Product.model_validate({**product.model_dump(), **stock})


@pytest.fixture
def stocked_store(make_store: StoreFactory, tiny_products: list[Product]) -> VectorStore:
    """tiny_products with p1 out of stock (0 left), p2 in stock (3 left), p4 out of stock
    (``in_stock: false``), p6 in stock (``in_stock: true``); p3 and p5 say nothing."""
    stock: dict[str, dict[str, object]] = {
        "p1": {"stock": 0}, "p2": {"stock": 3}, "p4": {"in_stock": False},
        "p6": {"in_stock": True},
    }
    products = [with_stock(p, **stock.get(p.id, {})) for p in tiny_products]
    store = make_store(8)
    store.replace_all(products, axis_vectors(len(products)))
    return store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(in_stock=True), {"p2", "p3", "p5", "p6"}),  # unknown stock counts as available
        (Filters(in_stock=False), {"p1", "p4"}),
        (Filters(brand="Acme", in_stock=True), {"p3"}),
        (Filters(category="Clothing", in_stock=False), {"p4"}),
        (Filters(price_max=60, in_stock=False), {"p1"}),
    ],
)
def test_in_stock_filter_applies_inside_retrieval(
    stocked_store: VectorStore, filters: Filters, expected: set[str]
) -> None:
    products = stocked_store.get_many([f"p{i}" for i in range(1, 7)]).values()
    assert expected == {p.id for p in products if filters.matches(p)}
    hits = stocked_store.search_vector(axis_vectors(6)[5], 10, filters)
    assert {h.product_id for h in hits} == expected
    lexical = stocked_store.search_bm25("running shoes dress jacket coffee", 10, filters)
    assert {h.product_id for h in lexical} == expected


def test_an_upsert_to_out_of_stock_is_seen_by_the_next_filtered_search(
    stocked_store: VectorStore,
) -> None:
    dress = stocked_store.get("p3")
    assert dress is not None and dress.in_stock is None
    vector = axis_vectors(6)[2:3]
    query = axis_vectors(6)[2]
    assert stocked_store.upsert([with_stock(dress, stock=0)], vector) == 1
    assert stocked_store.get("p3").in_stock is False  # type: ignore[union-attr]
    in_stock, out = Filters(in_stock=True), Filters(in_stock=False)
    assert "p3" not in {h.product_id for h in stocked_store.search_bm25("dress", 10, in_stock)}
    assert "p3" not in {h.product_id for h in stocked_store.search_vector(query, 10, in_stock)}
    assert [h.product_id for h in stocked_store.search_bm25("dress", 10, out)] == ["p3"]
    assert stocked_store.search_vector(query, 1, out)[0].product_id == "p3"
    # Back in stock: unknown-or-true passes again, and "out of stock" no longer lists it.
    stocked_store.upsert([with_stock(dress, in_stock=True)], vector)
    assert [h.product_id for h in stocked_store.search_bm25("dress", 10, in_stock)] == ["p3"]
    assert stocked_store.search_bm25("dress", 10, out) == []


def test_filtered_query_still_returns_k_when_k_match(make_store: StoreFactory) -> None:
    # The nearest products are all "Common"; a filtered top 5 must still hold five "Rare" ones.
    products = [
        make_product(f"x{i:03d}", f"widget {i}", brand="Rare" if i % 10 == 0 else "Common")
        for i in range(200)
    ]
    noise = axis_vectors(200) * 0.1
    query = np.eye(8, dtype=np.float32)[0]
    vectors = np.array(
        [(-query if i % 10 == 0 else query) + noise[i] for i in range(200)], dtype=np.float32
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = make_store(8)
    store.replace_all(products, vectors)
    assert all(int(hit.product_id[1:]) % 10 != 0 for hit in store.search_vector(query, 5))
    hits = store.search_vector(query, 5, Filters(brand="Rare"))
    assert len(hits) == 5 and all(int(h.product_id[1:]) % 10 == 0 for h in hits)
    lexical = store.search_bm25("widget", 5, Filters(brand="Rare"))
    assert len(lexical) == 5 and all(int(h.product_id[1:]) % 10 == 0 for h in lexical)


def test_hybrid_fuses_both_lists(store: VectorStore) -> None:
    candidates = retrieve(store, "hybrid", 4, text="red running", vector=axis_vectors(6)[2])
    assert len(candidates) == 4
    assert any(c.bm25 is not None and c.vector is not None for c in candidates)
    fused = [c.fused for c in candidates]
    assert fused == sorted(fused, reverse=True)  # type: ignore[type-var]


def test_replace_all_swaps_the_whole_catalog(
    store: VectorStore, tiny_products: list[Product]
) -> None:
    fresh = [make_product("n1", "espresso machine", brand="Bolt", price=300.0)]
    store.replace_all(fresh, axis_vectors(1))
    assert store.count() == 1 and store.get("p1") is None
    assert [h.product_id for h in store.search_bm25("espresso", 5)] == ["n1"]


def test_live_upsert_and_delete_are_searchable_when_the_call_returns(
    store: VectorStore, tiny_products: list[Product]
) -> None:
    """No wait and no poll between a change and the searches that must see it: each store
    makes a change searchable before `upsert`/`delete` return (how long that takes is a
    benchmark's business, not this test's)."""
    new = make_product("p7", "espresso machine", brand="Bolt", category=["Kitchen"], price=99.0)
    cheaper = tiny_products[1].model_copy(update={"price": 20.0, "title": "blue trail shoes"})
    vectors = axis_vectors(8)[6:8]
    assert store.upsert([new, cheaper], vectors) == 2
    assert [h.product_id for h in store.search_bm25("espresso", 5)] == ["p7"]
    assert store.search_vector(vectors[0], 1)[0].product_id == "p7"
    in_range = store.search_bm25("shoes", 10, Filters(price_max=25))
    assert [h.product_id for h in in_range] == ["p2"]
    assert store.delete(["p6", "missing"]) == 1
    assert store.search_bm25("coffee grinder", 5) == [] and store.get("p6") is None
    assert store.count() == 6


def test_vectors_of_the_wrong_dimension_are_rejected(store: VectorStore) -> None:
    with pytest.raises(DimensionMismatchError, match="8-d"):
        store.search_vector(np.ones(5, dtype=np.float32), 3)
    with pytest.raises(DimensionMismatchError):
        store.upsert([make_product("z", "zzz")], np.ones((1, 5), dtype=np.float32))


def test_bad_rebuild_input_leaves_the_serving_index(
    store: VectorStore, tiny_products: list[Product]
) -> None:
    with pytest.raises(DimensionMismatchError):
        store.replace_all(tiny_products, axis_vectors(3))
    with pytest.raises(StoreError, match="empty"):
        store.replace_all([], np.zeros((0, 8), dtype=np.float32))
    assert store.count() == 6


def test_a_missing_index_is_a_clear_error(make_store: StoreFactory) -> None:
    with pytest.raises(IndexNotFoundError, match="reindex"):
        make_store(8).count()


def test_the_index_remembers_the_encoder_that_wrote_it(
    make_store: StoreFactory, tiny_products: list[Product], tmp_path: Path
) -> None:
    tuned = BiEncoder(fake_model(tmp_path / "shoes-lora"))
    store = make_store(8)
    store.replace_all(tiny_products, axis_vectors(6), encoder=tuned.stamp)
    assert store.encoder_stamp() == tuned.stamp
    check_encoder(store, tuned)
    store.replace_all(tiny_products, axis_vectors(6), encoder=BiEncoder().stamp)
    assert store.encoder_stamp() == BiEncoder().stamp


def test_another_encoder_is_refused_naming_both_and_the_fix(
    make_store: StoreFactory, tiny_products: list[Product], tmp_path: Path
) -> None:
    store = make_store(8)
    store.replace_all(tiny_products, axis_vectors(6), encoder=BiEncoder().stamp)
    check_encoder(store, BiEncoder())
    tuned = BiEncoder(fake_model(tmp_path / "shoes-full"))
    with pytest.raises(EncoderMismatchError) as refused:
        check_encoder(store, tuned)
    message = str(refused.value)
    assert "all-MiniLM-L6-v2" in message and "shoes-full" in message
    assert "shoprank reindex" in message and "unset SHOPRANK_ENCODER_PATH" in message
    # An upsert is refused before anything is encoded (this fake model could not encode).
    with pytest.raises(EncoderMismatchError):
        upsert_products(store, [make_product("z", "zzz")], tuned)
    assert store.count() == 6 and store.get("z") is None


def test_a_tuned_index_tells_how_to_get_its_encoder_back(
    make_store: StoreFactory, tiny_products: list[Product], tmp_path: Path
) -> None:
    tuned = BiEncoder(fake_model(tmp_path / "shoes-lora"))
    store = make_store(8)
    store.replace_all(tiny_products, axis_vectors(6), encoder=tuned.stamp)
    with pytest.raises(EncoderMismatchError, match=r"SHOPRANK_ENCODER_PATH=\S*shoes-lora back"):
        check_encoder(store, BiEncoder())
    longer = BiEncoder(tmp_path / "shoes-lora", max_seq_length=256)
    with pytest.raises(EncoderMismatchError, match="SHOPRANK_ENCODER_MAX_SEQ_LENGTH=128"):
        check_encoder(store, longer)


def test_an_index_without_a_stamp_counts_as_the_packaged_encoder(
    store: VectorStore, tiny_products: list[Product], tmp_path: Path
) -> None:
    assert store.encoder_stamp() is None  # written before stamps (and by tests without one)
    check_encoder(store, BiEncoder())
    with pytest.raises(EncoderMismatchError, match="packaged all-MiniLM-L6-v2"):
        check_encoder(store, BiEncoder(fake_model(tmp_path / "other")))


def test_brand_counts_cover_the_catalog_in_lower_case(store: VectorStore) -> None:
    # tiny_products: Acme x3, Bolt x2, one without a brand
    assert store.brand_counts() == {"acme": 3, "bolt": 2, "": 1}
