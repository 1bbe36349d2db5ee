"""Pseudo-queries written from product fields: what they contain and what counts as alike."""

from __future__ import annotations

import random

from reranker.pseudo_queries import (
    _alike,
    product_kind,
    pseudo_queries_for,
    sample_pseudo_queries,
)
from tests.conftest import make_product


def test_queries_name_the_kind_and_descriptive_title_words_not_codes_or_brand() -> None:
    lamp = make_product("1", "Ikea Tertial LX-200 work lamp, dark grey 45 cm", brand="Ikea",
                        category=["Home", "Desk lamps"])
    for seed in range(20):
        queries = {q.kind: q.text for q in pseudo_queries_for(lamp, random.Random(seed))}
        assert queries["category"] in ("desk lamps", "ikea desk lamps")
        words = queries["title_words"].split()
        assert 2 <= len(words) <= 4
        assert not {"ikea", "lx-200", "45", "cm"} & set(words)


def test_product_kind_falls_back_to_a_product_type_attribute() -> None:
    assert product_kind(make_product("1", "x", category=["A", "Toner"])) == "toner"
    assert product_kind(make_product("2", "x", attributes={"product_type": "Notebook"})) == (
        "notebook"
    )
    assert product_kind(make_product("3", "x")) is None


def test_products_alike_to_the_source_are_never_negatives() -> None:
    source = make_product("1", "blue steel water bottle", category=["Bottles"])
    same_kind = make_product("2", "glass carafe", category=["Bottles"])
    same_words = make_product("3", "Water bottle, steel, blue", category=["Sport"])
    other = make_product("4", "steel lunch box", category=["Boxes"])
    terms = {"steel", "water", "bottle"}
    assert _alike(terms, source, same_kind) and _alike(terms, source, same_words)
    assert not _alike(terms, source, other)


def test_sampling_is_one_query_per_product_and_the_same_for_a_seed() -> None:
    products = [make_product(str(i), f"red cotton shirt model {i}", category=[f"Kind {i}"])
                for i in range(30)]
    first = sample_pseudo_queries(products, 10, seed=4)
    assert first == sample_pseudo_queries(products, 10, seed=4)
    assert len(first) == 10 and len({q.product_id for q in first}) == 10
    assert len({q.text for q in first}) == 10
