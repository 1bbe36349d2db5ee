"""`GET /metrics` after real searches through the API, on an embedded store of the bundled
demo catalog: the text parses as Prometheus, every stage a search times has a histogram,
requests are labelled by route template, and a reranker that is down shows as degraded
searches by cause and as an open circuit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from indexer.circuit import CircuitBreaker
from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from indexer.settings import IndexerSettings
from plugin.api import create_app
from plugin.components import build_final_rankers
from plugin.pipeline import SearchPipeline
from plugin.redis_session_store import RedisSessionStore
from plugin.search_plan import SearchSettings
from plugin.session_store import SessionStore
from plugin.settings import Settings
from reranker.errors import UNAVAILABLE_CAUSES
from reranker.triton import TritonReranker
from tests.conftest import demo_slice

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[Product]]:
    products = [Product.model_validate(record) for record in demo_slice(60)]
    store = LocalStore(Path(tmp_path_factory.mktemp("metrics")) / "idx")
    index_products(store, products, BiEncoder())
    return store, products


def pipeline_on(
    store: LocalStore, reranker: TritonReranker | None = None,
    sessions: SessionStore | None = None,
) -> SearchPipeline:
    return SearchPipeline(
        store, BiEncoder(), reranker,
        rankers=build_final_rankers(Settings(), has_reranker=reranker is not None),
        sessions=sessions,
        settings=SearchSettings(candidates=30, rerank_window=10, personalization_weight=0.5),
    )


@pytest.fixture
def client(catalog: tuple[LocalStore, list[Product]]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), pipeline_on(catalog[0]))) as client:
        yield client


def scrape(client: TestClient) -> tuple[Samples, dict[str, str]]:
    """Every sample of ``GET /metrics`` by name and labels, and each family's type."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def search(client: TestClient, query: str, **body: Any) -> dict[str, Any]:
    response = client.post("/search", json={"query": query, "k": 5, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_searches_fill_every_stage_histogram_and_the_counters(
    client: TestClient, catalog: tuple[LocalStore, list[Product]]
) -> None:
    products = catalog[1]
    answers = [search(client, product.title[:40]) for product in products[:3]]
    stages = set(answers[0]["timings_ms"])
    assert {"encode", "retrieve", "final", "total"} <= stages

    samples, types = scrape(client)
    assert types["shoprank_search_stage_seconds"] == "histogram"
    assert value(samples, "shoprank_search_total") == 3
    for stage in stages:
        assert value(samples, "shoprank_search_stage_seconds_count", stage=stage) == 3, stage
        assert value(samples, "shoprank_search_stage_seconds_bucket", stage=stage, le="+Inf") == 3
    assert value(samples, "shoprank_search_stage_seconds_sum", stage="total") > 0
    for cause in UNAVAILABLE_CAUSES:  # every cause is there, at 0
        assert ("shoprank_search_degraded_total", frozenset({("reason", cause)})) in samples
    assert value(samples, "shoprank_reranker_circuit_open") == 0
    assert value(samples, "shoprank_http_request_duration_seconds_count",
                 route="/search", method="POST", status="2xx") == 3


def test_requests_are_labelled_by_route_template_and_errors_by_status(
    client: TestClient, catalog: tuple[LocalStore, list[Product]]
) -> None:
    product = catalog[1][0]
    assert client.get(f"/products/{product.id}").status_code == 200
    assert client.get("/products/no-such-product").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/search", json={"query": ""}).status_code == 422

    samples, _ = scrape(client)
    products = "/products/{product_id}"
    assert value(samples, "shoprank_http_request_duration_seconds_count",
                 route=products, method="GET", status="2xx") == 1
    assert value(samples, "shoprank_http_request_duration_seconds_count",
                 route=products, method="GET", status="4xx") == 1
    assert value(samples, "shoprank_http_errors_total", route=products, status="404") == 1
    assert value(samples, "shoprank_http_errors_total", route="unrouted", status="404") == 1
    assert value(samples, "shoprank_http_errors_total", route="/search", status="422") == 1
    routes = {dict(labels).get("route") for name, labels in samples
              if name.startswith("shoprank_http_")}
    assert product.id not in "".join(r or "" for r in routes)  # no raw ids as labels
    assert "/no/such/path" not in routes


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_reranker_that_is_down_counts_degraded_searches_by_cause_and_opens_the_circuit(
    catalog: tuple[LocalStore, list[Product]]
) -> None:
    reranker = TritonReranker(_dead_url(), timeout_seconds=1.0,
                              breaker=CircuitBreaker(failures=1, reset_seconds=600))
    with TestClient(create_app(Settings(), pipeline_on(catalog[0], reranker))) as client:
        before, _ = scrape(client)
        assert value(before, "shoprank_reranker_circuit_open") == 0
        first = search(client, "water bottle")  # fails: the circuit opens
        second = search(client, "water bottle")  # skipped: the circuit is open
        assert first["degraded"] and second["degraded"]
        samples, _ = scrape(client)
    degraded = {cause: value(samples, "shoprank_search_degraded_total", reason=cause)
                for cause in UNAVAILABLE_CAUSES}
    assert degraded["circuit_open"] == 1
    assert degraded["failed"] + degraded["timeout"] == 1
    assert value(samples, "shoprank_search_total") == 2
    assert value(samples, "shoprank_reranker_circuit_open") == 1
    # a degraded search still answers 200, and still times its rerank attempt
    assert value(samples, "shoprank_search_stage_seconds_count", stage="rerank") == 2


def test_personalised_and_unpersonalisable_searches_are_counted(
    catalog: tuple[LocalStore, list[Product]]
) -> None:
    store, products = catalog
    with TestClient(create_app(Settings(), pipeline_on(store))) as client:
        click = {"type": "add_to_cart", "session_id": "m1", "product_id": products[5].id,
                 "timestamp": datetime.now(UTC).isoformat()}
        assert client.post("/events", json={"events": [click] * 3}).status_code == 200
        assert search(client, products[5].title[:30], session_id="m1")["personalized"]
        samples, _ = scrape(client)
    assert value(samples, "shoprank_search_personalized_total") == 1
    assert value(samples, "shoprank_personalization_unavailable_total") == 0

    unreachable = RedisSessionStore(f"redis{_dead_url().removeprefix('http')}/0",
                                    timeout_seconds=0.5)
    with TestClient(create_app(Settings(), pipeline_on(store, sessions=unreachable))) as client:
        assert not search(client, "water bottle", session_id="m1")["personalized"]
        samples, _ = scrape(client)
    assert value(samples, "shoprank_personalization_unavailable_total") == 1


def test_two_apps_in_one_process_keep_their_own_metrics(
    catalog: tuple[LocalStore, list[Product]]
) -> None:
    store = catalog[0]
    with (
        TestClient(create_app(Settings(), pipeline_on(store))) as one,
        TestClient(create_app(Settings(), pipeline_on(store))) as two,
    ):
        search(one, "water bottle")
        search(one, "phone case")
        search(two, "phone case")
        assert value(scrape(one)[0], "shoprank_search_total") == 2
        assert value(scrape(two)[0], "shoprank_search_total") == 1


def test_a_guards_answer_is_counted_as_unrouted_with_its_status(
    catalog: tuple[LocalStore, list[Product]]
) -> None:
    settings = Settings(rate_limit=True, rate_limit_per_second=0.01, rate_limit_burst=1)
    with TestClient(create_app(settings, pipeline_on(catalog[0]))) as client:
        search(client, "water bottle")
        assert client.post("/search", json={"query": "water bottle"}).status_code == 429
        samples, _ = scrape(client)
    assert value(samples, "shoprank_http_errors_total", route="unrouted", status="429") == 1
    assert value(samples, "shoprank_search_total") == 1  # the refused one never searched


def test_an_opensearch_that_is_gone_opens_the_store_circuit() -> None:
    settings = IndexerSettings(store="opensearch", opensearch_url=_dead_url(),
                               opensearch_circuit_failures=2, opensearch_circuit_reset_s=600)
    pipeline = SearchPipeline(OpenSearchStore(settings, "metrics"), BiEncoder(),
                              rankers=build_final_rankers(Settings(), has_reranker=False))
    with TestClient(create_app(Settings(), pipeline)) as client:
        samples, _ = scrape(client)
        assert value(samples, "shoprank_store_circuit_open") == 0
        for _ in range(3):
            assert client.post("/search", json={"query": "shoes"}).status_code == 503
        samples, _ = scrape(client)
    assert value(samples, "shoprank_store_circuit_open") == 1
    assert value(samples, "shoprank_http_errors_total", route="/search", status="503") == 3
