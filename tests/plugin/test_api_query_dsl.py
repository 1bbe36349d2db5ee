"""No client-supplied query DSL reaches OpenSearch: what a request can put in a search is a
string searched as text, or typed filter values; anything shaped like a query is a 422. The
store sees exactly that, and the OpenSearch bodies built from it hold it as string values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient

from indexer.local_store import LocalStore
from indexer.opensearch_queries import build_bm25_query, build_knn_query
from indexer.schema import Product
from indexer.store import Filters, ScoredId
from plugin.api import create_app
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from tests.conftest import axis_vectors

#: Query text that is itself OpenSearch JSON.
DSL_TEXTS = [
    '{"query": {"match_all": {}}}',
    '{"script": {"source": "ctx._source.price = 0"}}',
    '{"bool": {"must_not": [{"match_all": {}}]}}, "size": 10000',
]


class RecordingStore(LocalStore):
    """The local store, noting what each search hands it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.searches: list[tuple[str, object, Filters | None]] = []

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]:
        self.searches.append(("bm25", text, filters))
        return super().search_bm25(text, n, filters)

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]:
        self.searches.append(("vector", vector, filters))
        return super().search_vector(vector, n, filters)


class FixedEncoder:
    """Encodes every query as the same unit vector; needs no model."""

    is_packaged = True  # the store has no encoder stamp: it counts as the packaged one

    def encode_query(self, text: str) -> npt.NDArray[np.float32]:
        return np.ones(8, dtype=np.float32) / np.sqrt(8)

    def clear_cache(self) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> RecordingStore:
    store = RecordingStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


@pytest.fixture
def client(store: RecordingStore) -> Iterator[TestClient]:
    pipeline = SearchPipeline(store, FixedEncoder())  # type: ignore[arg-type]
    with TestClient(create_app(Settings(index="dsl", final_ranker="none"), pipeline)) as client:
        yield client


@pytest.mark.parametrize("text", DSL_TEXTS)
def test_query_text_that_is_json_is_searched_as_plain_text(
    client: TestClient, store: RecordingStore, text: str
) -> None:
    answer = client.post("/search", json={"query": text, "mode": "hybrid"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["query"] == text
    bm25 = [(query, filters) for kind, query, filters in store.searches if kind == "bm25"]
    assert bm25 == [(text, None)]
    # As text it matches none of the products' words: nothing was matched "all".
    assert all(hit["scores"].get("bm25") is None for hit in answer.json()["results"])


@pytest.mark.parametrize("body", [
    {"query": {"match_all": {}}},
    {"query": ["shoes"]},
    {"query": "shoes", "filters": {"brand": {"$ne": ""}}},
    {"query": "shoes", "filters": {"brand": [{"match_all": {}}]}},
    {"query": "shoes", "filters": {"category": {"terms": {"category": ["shoes"]}}}},
    {"query": "shoes", "filters": {"price_min": {"gte": 0}}},
    {"query": "shoes", "filters": {"in_stock": {"exists": {"field": "id"}}}},
    {"query": "shoes", "filters": {"script": {"source": "true"}}},
    {"query": "shoes", "filters": {"bool": {"should": []}}},
    {"query": "shoes", "filters": '{"match_all": {}}'},
    {"query": "shoes", "aggs": {"all": {"terms": {"field": "brand"}}}},
    {"query": "shoes", "sort": [{"price": "asc"}]},
])
def test_query_shaped_values_are_rejected(
    client: TestClient, store: RecordingStore, body: dict[str, Any]
) -> None:
    answer = client.post("/search", json=body)
    assert answer.status_code == 422, answer.text
    assert store.searches == []


def test_query_parameters_are_filter_values_only(
    client: TestClient, store: RecordingStore
) -> None:
    dsl = '{"match_all": {}}'
    assert client.get("/similar/p1", params={"brand": dsl}).status_code == 200
    ((_, _, filters),) = store.searches
    assert filters == Filters(brand=[dsl])
    assert client.get("/similar/p1", params={"query": dsl}).status_code == 422
    assert client.get("/similar/p1", params={"price_min": dsl}).status_code == 422


# -- the request bodies ---------------------------------------------------------------------

def strings(value: object, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a request body, keys included, with where it sits."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}(key)", key
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def replaced(value: object, old: str, new: str) -> object:
    """``value`` with every string equal to ``old`` replaced by ``new``."""
    if isinstance(value, dict):
        return {key: replaced(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [replaced(item, old, new) for item in value]
    return new if value == old else value


@pytest.mark.parametrize("text", DSL_TEXTS)
def test_the_bm25_body_holds_the_text_only_as_the_match_query_string(text: str) -> None:
    body = build_bm25_query(text, 10)
    where = [path for path, value in strings(body) if text in value]
    assert where == [".query.bool.must[0].multi_match.query"]
    # The body's shape does not depend on the text: it is the body of any other query.
    assert replaced(body, text, "shoes") == build_bm25_query("shoes", 10)
    keys = {value for path, value in strings(body) if path.endswith("(key)")}
    assert not keys & {"match_all", "script", "aggs", "must_not"}
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize("text", DSL_TEXTS)
def test_filter_values_stay_string_values_of_term_clauses(text: str) -> None:
    shaped = Filters.model_validate({"brand": [text], "category": text})
    plain = Filters(brand=["acme"], category="acme")
    vector = np.ones(8, dtype=np.float32) / np.sqrt(8)
    for build in (lambda f: build_bm25_query("shoes", 10, f),
                  lambda f: build_knn_query(vector, 10, f)):
        body = build(shaped)
        where = [path for path, value in strings(body) if text.lower() in value]
        assert len(where) == 2
        assert all(path.endswith(("terms.brand[0]", "term.category")) for path in where)
        assert replaced(body, text.lower(), "acme") == build(plain)
