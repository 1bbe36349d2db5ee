"""Bad requests get a 422 that names the field and the limit; nothing needs a model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from plugin.api import create_app
from plugin.settings import Settings


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(index="empty"))) as client:
        yield client


def problems(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


def test_empty_and_blank_queries_are_rejected(client: TestClient) -> None:
    for query in ("", "   "):
        (problem,) = problems(client.post("/search", json={"query": query}))
        assert problem["loc"] == ["body", "query"]
        assert problem["ctx"]["min_length"] == 1


def test_oversized_query_names_the_limit(client: TestClient) -> None:
    (problem,) = problems(client.post("/search", json={"query": "x" * 513}))
    assert problem["loc"] == ["body", "query"]
    assert "at most 512 characters" in problem["msg"]
    assert problem["ctx"]["max_length"] == 512


@pytest.mark.parametrize(("k", "limit"), [(0, "greater than or equal to 1"),
                                          (101, "less than or equal to 100")])
def test_k_out_of_range(client: TestClient, k: int, limit: str) -> None:
    (problem,) = problems(client.post("/search", json={"query": "shoes", "k": k}))
    assert problem["loc"] == ["body", "k"] and limit in problem["msg"]


def test_unknown_filter_is_named(client: TestClient) -> None:
    body = {"query": "shoes", "filters": {"brand": "Acme", "colour": "red"}}
    (problem,) = problems(client.post("/search", json=body))
    assert problem["loc"] == ["body", "filters", "colour"]
    assert problem["type"] == "extra_forbidden"


def test_unknown_mode_and_inverted_price_range(client: TestClient) -> None:
    (problem,) = problems(client.post("/search", json={"query": "shoes", "mode": "fuzzy"}))
    assert problem["loc"] == ["body", "mode"] and "'hybrid'" in problem["msg"]
    body = {"query": "shoes", "filters": {"price_min": 50, "price_max": 10}}
    (problem,) = problems(client.post("/search", json=body))
    assert "price_min (50.0) must not exceed price_max (10.0)" in problem["msg"]
    body = {"query": "shoes", "filters": {"price_min": -1}}
    (problem,) = problems(client.post("/search", json=body))
    assert problem["loc"] == ["body", "filters", "price_min"]


def test_unknown_top_level_field_is_rejected(client: TestClient) -> None:
    (problem,) = problems(client.post("/search", json={"query": "shoes", "size": 5}))
    assert problem["loc"] == ["body", "size"]


def test_without_an_index_search_is_unavailable_but_the_process_is_alive(
    client: TestClient,
) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "shoprank reindex" in ready.json()["detail"]["detail"]
    response = client.post("/search", json={"query": "shoes", "mode": "bm25"})
    assert response.status_code == 503 and "shoprank reindex" in response.json()["detail"]


def test_rerank_without_a_reranker_is_a_clear_error(client: TestClient) -> None:
    response = client.post("/search", json={"query": "shoes", "rerank": True})
    assert response.status_code == 400
    assert "without a reranker" in response.json()["detail"]


def test_openapi_documents_the_search_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/search", "/products/{product_id}", "/healthz", "/readyz"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert props["k"]["maximum"] == 100


def test_admin_endpoints_are_off_without_a_key(client: TestClient) -> None:
    response = client.put("/products/a1", json={"id": "a1", "title": "x"})
    assert response.status_code == 403 and "SHOPRANK_ADMIN_API_KEY" in response.json()["detail"]


def test_admin_endpoints_reject_a_wrong_key() -> None:
    settings = Settings(index="empty", admin_api_key="s3cret")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        for headers in ({}, {"X-API-Key": "guess"}):
            response = client.delete("/products/a1", headers=headers)
            assert response.status_code == 401, headers
            assert "X-API-Key" in response.json()["detail"]
        bad = client.put("/products/a1", headers={"X-API-Key": "s3cret"},
                         json={"id": "a1", "title": "x", "price": -2})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "price"]
        other = client.put("/products/a1", headers={"X-API-Key": "s3cret"},
                           json={"id": "b2", "title": "x"})
        assert other.status_code == 422 and "does not match" in other.json()["detail"]


def test_unreachable_opensearch_is_a_503_naming_the_url() -> None:
    settings = Settings.model_validate(
        {"index": "x", "indexer": {"store": "opensearch",
                                   "opensearch_url": "http://127.0.0.1:9"}}
    )
    with TestClient(create_app(settings)) as client:
        response = client.post("/search", json={"query": "shoes", "mode": "bm25"})
        assert response.status_code == 503
        assert "http://127.0.0.1:9" in response.json()["detail"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/products/a1").status_code == 503
