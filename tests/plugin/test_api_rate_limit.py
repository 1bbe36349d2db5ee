"""Per-client rate limits on `/search` and `/events`: 429 with Retry-After past a client's burst,
other clients and `/healthz` untouched, nothing when turned off. The clock is the test's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from plugin.api import create_app
from plugin.api.rate_limit import TokenBuckets
from plugin.settings import Settings

SEARCH = {"query": "running shoes", "mode": "bm25"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limited_app(clock: FakeClock, **overrides: Any) -> FastAPI:
    settings = Settings(index="empty", rate_limit=True, rate_limit_per_second=0.5,
                        rate_limit_burst=3, **overrides)
    return create_app(settings, clock=clock)


@pytest.fixture
def app(clock: FakeClock) -> FastAPI:
    return limited_app(clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def statuses(client: TestClient, count: int, path: str = "/search") -> list[int]:
    return [client.post(path, json=SEARCH).status_code for _ in range(count)]


def test_a_burst_past_the_limit_gets_429_with_retry_after(
    client: TestClient, clock: FakeClock
) -> None:
    # No index: a request the limit lets through is a 503 from the handler.
    assert statuses(client, 3) == [503, 503, 503]
    refused = client.post("/search", json=SEARCH)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 per second
    detail = refused.json()["detail"]
    assert "0.5 requests per second per client" in detail and "bursts of 3" in detail
    clock.now += 1.0
    assert client.post("/search", json=SEARCH).headers["Retry-After"] == "1"
    clock.now += 1.0
    assert statuses(client, 2) == [503, 429]


def test_another_client_is_not_affected(app: FastAPI, client: TestClient) -> None:
    assert statuses(client, 4)[-1] == 429
    # A second client of the same running app (the lifespan ran once, in `client`).
    other = TestClient(app, client=("192.0.2.7", 40000))
    assert statuses(other, 3) == [503, 503, 503]
    assert statuses(client, 1) == [429]


def test_search_and_events_have_budgets_of_their_own(client: TestClient) -> None:
    assert statuses(client, 4)[-1] == 429
    events = [client.post("/events", json={"events": []}).status_code for _ in range(4)]
    assert events == [422, 422, 422, 429]


def test_healthz_and_other_routes_are_never_limited(client: TestClient) -> None:
    assert statuses(client, 4)[-1] == 429
    assert {client.get("/healthz").status_code for _ in range(20)} == {200}
    assert {client.get("/products/p1").status_code for _ in range(10)} == {503}


def test_turned_off_nothing_is_limited(clock: FakeClock) -> None:
    app = create_app(Settings(index="empty", rate_limit_burst=1), clock=clock)
    with TestClient(app) as client:
        assert set(statuses(client, 30)) == {503}


def test_off_by_default() -> None:
    assert Settings().rate_limit is False


def test_the_limited_routes_document_429() -> None:
    app = create_app(Settings(index="empty"))
    paths = app.openapi()["paths"]
    for path in ("/search", "/events"):
        assert "429" in paths[path]["post"]["responses"]
    assert "429" not in paths["/healthz"]["get"]["responses"]


# -- the buckets ---------------------------------------------------------------------------

def test_a_bucket_refills_at_the_rate_up_to_the_burst(clock: FakeClock) -> None:
    buckets = TokenBuckets(per_second=2, burst=2, max_clients=10, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [None, None, 0.5]
    clock.now += 10  # idle for long: full again, never more than the burst
    assert [buckets.take("a") for _ in range(3)] == [None, None, 0.5]
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)


def test_memory_stays_bounded(clock: FakeClock) -> None:
    buckets = TokenBuckets(per_second=1, burst=5, max_clients=100, clock=clock)
    for n in range(1000):
        buckets.take(f"10.0.{n // 256}.{n % 256}")
    assert len(buckets) == 100
    # A bucket idle long enough to be full is forgotten: a new one would be the same.
    clock.now += 5
    buckets.take("198.51.100.1")
    assert len(buckets) == 1


def test_a_forgotten_client_starts_with_a_full_bucket(clock: FakeClock) -> None:
    buckets = TokenBuckets(per_second=1, burst=2, max_clients=1, clock=clock)
    assert [buckets.take("a"), buckets.take("a"), buckets.take("a")] == [None, None, 1.0]
    buckets.take("b")  # pushes "a" out of the table
    assert buckets.take("a") is None
