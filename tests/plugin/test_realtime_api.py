"""Events, personalised search, recommendations and stock through the HTTP API.

The catalog is hand-made with hand-set vectors, so the right neighbours are known exactly:
shoes lie near one axis, kitchen products near another.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.store import VectorStore
from plugin.api import create_app
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from plugin.session_store import InMemorySessionStore, SessionStore, SessionStoreError
from plugin.settings import Settings
from tests.conftest import make_product
from tests.indexer.store_factories import STORE_KINDS, store_factory

KEY = "test-admin-key"
ADMIN = {"X-API-Key": KEY}
REDIS_URL = os.environ.get("SHOPRANK_REDIS_URL", "redis://127.0.0.1:16379/0")


def unit(*values: float) -> list[float]:
    vector = np.array(values, dtype=np.float32)
    return list(vector / np.linalg.norm(vector))


#: id, title, brand, category, price, vector (axis 0: shoes, axis 1: kitchen)
CATALOG = [
    ("s1", "running shoe light", "Acme", "Shoes", 50.0, unit(1, 0, 0.10, 0)),
    ("s2", "running shoe cushioned", "Bolt", "Shoes", 55.0, unit(1, 0, 0.20, 0)),
    ("s3", "running shoe trail", "Acme", "Shoes", 120.0, unit(1, 0, 0.40, 0.1)),
    ("s4", "running shoe budget", "Zip", "Shoes", 20.0, unit(1, 0, 0.60, 0.3)),
    ("k1", "coffee grinder burr", "Bolt", "Kitchen", 45.0, unit(0, 1, 0, 0.10)),
    ("k2", "espresso machine", "Acme", "Kitchen", 300.0, unit(0, 1, 0, 0.20)),
    ("k3", "coffee kettle gooseneck", "Zip", "Kitchen", 35.0, unit(0.1, 1, 0, 0.50)),
]


def fill(store: VectorStore) -> VectorStore:
    products = [make_product(pid, title, brand=brand, category=[category], price=price)
                for pid, title, brand, category, price, _ in CATALOG]
    store.replace_all(products, np.array([row[-1] for row in CATALOG], dtype=np.float32))
    return store


def app_client(store: VectorStore, sessions: SessionStore) -> TestClient:
    pipeline = SearchPipeline(store, BiEncoder(), sessions=sessions, settings=SearchSettings(
        candidates=10, personalization_weight=0.5))
    return TestClient(create_app(Settings(admin_api_key=KEY), pipeline))


@pytest.fixture(params=STORE_KINDS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The same API on the local store and on OpenSearch."""
    for make in store_factory(request.param, tmp_path):
        with app_client(fill(make(4)), InMemorySessionStore()) as client:
            yield client


def now(offset_seconds: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_seconds)).isoformat()


def click(session: str, pid: str, kind: str = "click", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "session_id": session, "timestamp": now(), "product_id": pid, **extra}


def post(client: TestClient, path: str, body: Any, status: int = 200) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def search(client: TestClient, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = post(client, "/search",
                                  {"query": "running shoe", "mode": "bm25", "k": 4, **body})
    return result


def ids(response: dict[str, Any]) -> list[str]:
    return [hit["id"] for hit in response["results"]]


# -- recommendations ---------------------------------------------------------------------

def test_similar_returns_the_nearest_products_never_the_item_itself(client: TestClient) -> None:
    body = client.get("/similar/s1", params={"k": 3}).json()
    assert body["source"] == "item" and body["of"] == "s1"
    assert [hit["id"] for hit in body["results"]] == ["s2", "s3", "s4"]
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1.0


def test_similar_respects_filters(client: TestClient) -> None:
    bolt = client.get("/similar/s1", params={"brand": "bolt", "k": 5}).json()
    assert [hit["id"] for hit in bolt["results"]] == ["s2", "k1"]
    cheap = client.get("/similar/k1", params={"price_max": 40, "k": 5}).json()
    assert [hit["id"] for hit in cheap["results"]] == ["k3", "s4"]
    assert cheap["filters"] == {"price_max": 40.0}


def test_similar_rejects_unknown_items_and_parameters(client: TestClient) -> None:
    missing = client.get("/similar/nope")
    assert missing.status_code == 404 and "'nope'" in missing.json()["detail"]
    unknown = client.get("/similar/s1", params={"colour": "red"})
    assert unknown.status_code == 422 and "'colour'" in unknown.json()["detail"]
    bad = client.get("/similar/s1", params={"price_min": -3})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "price_min"]
    too_many = client.get("/similar/s1", params={"k": 101})
    assert too_many.status_code == 422


def test_recommend_follows_the_session_and_skips_purchases(client: TestClient) -> None:
    post(client, "/events", {"events": [click("r1", "k1"), click("r1", "k2", "purchase")]})
    body = client.get("/recommend", params={"session_id": "r1", "k": 3}).json()
    assert body["source"] == "session"
    assert [hit["id"] for hit in body["results"]][:2] == ["k1", "k3"]
    assert "k2" not in [hit["id"] for hit in body["results"]]
    shoes = client.get("/recommend", params={"session_id": "r1", "k": 2, "category": "shoes"})
    assert all(hit["category"] == ["Shoes"] for hit in shoes.json()["results"])


def test_recommend_without_history_is_a_clear_404(client: TestClient) -> None:
    response = client.get("/recommend", params={"session_id": "nobody"})
    assert response.status_code == 404 and "POST /events" in response.json()["detail"]


# -- events ------------------------------------------------------------------------------

def test_a_bad_event_names_the_problem_and_nothing_of_the_batch_is_kept(
    client: TestClient,
) -> None:
    batch = {"events": [click("b1", "s1"), click("b1", "ghost")]}
    detail = post(client, "/events", batch, 422)["detail"]
    assert detail == ["events[1].product_id: no product with id 'ghost'"]
    assert client.get("/sessions/b1", headers=ADMIN).status_code == 404

    future = post(client, "/events", {**click("b1", "s1"), "timestamp": now(3600)}, 422)
    assert "events[0].timestamp" in future["detail"][0] and "in the future" in future["detail"][0]

    shown = {"type": "impression", "session_id": "b1", "timestamp": now(), "request_id": "r",
             "items": [{"product_id": "s1", "position": 1}, {"product_id": "s2", "position": 1}]}
    twice = post(client, "/events", shown, 422)["detail"]
    assert twice == ["events[0].items: position 1 is given to more than one product"]

    zero = post(client, "/events", click("b1", "s1", position=0), 422)["detail"][0]
    assert zero["loc"][-1] == "position" and "greater than or equal to 1" in zero["msg"]
    unknown_type = post(client, "/events", {**click("b1", "s1"), "type": "wishlist"}, 422)
    assert "click" in unknown_type["detail"][0]["msg"]
    naive = post(client, "/events", {**click("b1", "s1"), "timestamp": "2026-11-28T10:00:00"},
                 422)["detail"][0]
    assert naive["loc"][-1] == "timestamp" and "timezone" in naive["msg"]
    assert client.get("/sessions/b1", headers=ADMIN).status_code == 404


def test_impressions_are_kept_with_the_session(client: TestClient) -> None:
    response = search(client, session_id="i1")
    shown = [{"product_id": pid, "position": rank} for rank, pid in enumerate(ids(response), 1)]
    impression = {"type": "impression", "session_id": "i1", "timestamp": now(),
                  "request_id": response["request_id"], "query": "running shoe",
                  "items": shown}
    assert post(client, "/events", impression) == {"accepted": 1, "sessions": 1}
    session = client.get("/sessions/i1", headers=ADMIN).json()
    assert session["history"] is False  # seeing is not engaging
    assert session["events"][0]["request_id"] == response["request_id"]
    assert len(session["events"][0]["items"]) == 4
    assert client.get("/sessions/i1").status_code in (401, 403)


class DownSessionStore(InMemorySessionStore):
    """A session store whose server cannot be reached."""

    def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise SessionStoreError("redis://sessions:6379 refused the connection")

    get = update = events = delete = _down


def test_a_failing_session_store_is_a_503_naming_it(tmp_path: Path) -> None:
    with app_client(fill(LocalStore(tmp_path / "idx")), DownSessionStore()) as client:
        answers = [
            client.post("/events", json=click("d1", "s1")),
            client.get("/recommend", params={"session_id": "d1"}),
            client.get("/sessions/d1", headers=ADMIN),
            client.delete("/sessions/d1", headers=ADMIN),
        ]
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == (
            "session store failed: redis://sessions:6379 refused the connection"
        )


# -- personalised search -----------------------------------------------------------------

def test_a_click_changes_the_sessions_next_search_and_explains_why(client: TestClient) -> None:
    plain = search(client)
    assert ids(plain)[0] != "s4"
    post(client, "/events", {"events": [click("p1", "s4", "add_to_cart") for _ in range(3)]})
    mine = search(client, session_id="p1", explain=True)
    assert mine["personalized"] is True and ids(mine)[0] == "s4"
    top = mine["results"][0]
    assert top["explanation"]["ordered_by"] == "personalized"
    assert top["explanation"]["personalization"]["brand"] > 0
    assert all(abs(hit["scores"]["personal"]) <= 0.5 for hit in mine["results"])
    off = search(client, session_id="p1", personalize=False)
    assert ids(off) == ids(plain) and off["personalized"] is False


def test_a_session_without_history_gets_the_plain_ranking(client: TestClient) -> None:
    plain = search(client)
    fresh = search(client, session_id="new-session")
    assert ids(fresh) == ids(plain) and fresh["personalized"] is False
    assert [hit["score"] for hit in fresh["results"]] == [hit["score"] for hit in plain["results"]]
    problem = post(client, "/search", {"query": "shoe", "personalize": True}, 422)
    assert "needs a session_id" in problem["detail"][0]["msg"]


def test_forgetting_a_session_removes_its_personalisation(client: TestClient) -> None:
    post(client, "/events", click("f1", "s4", "purchase"))
    assert search(client, session_id="f1")["personalized"] is True
    assert client.delete("/sessions/f1", headers=ADMIN).status_code == 204
    assert search(client, session_id="f1")["personalized"] is False


# -- stock -------------------------------------------------------------------------------

def test_out_of_stock_products_are_demoted_or_hidden(client: TestClient) -> None:
    first = ids(search(client))[0]
    patched = client.patch(f"/products/{first}", json={"in_stock": False}, headers=ADMIN)
    assert patched.status_code == 200 and patched.json()["in_stock"] is False
    demoted = search(client, k=7, explain=True)
    assert ids(demoted)[-1] == first
    assert "out of stock" in demoted["results"][-1]["explanation"]["stock"]
    hidden = search(client, k=7, out_of_stock="hide")
    assert first not in ids(hidden)
    kept = search(client, k=7, out_of_stock="keep")
    assert ids(kept)[0] == first


def test_patch_validates_and_needs_the_admin_key(client: TestClient) -> None:
    bad = client.patch("/products/s1", json={"price": -5}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "price"]
    assert client.patch("/products/s1", json={"price": 5}).status_code in (401, 403)
    assert client.patch("/products/zz", json={"price": 5}, headers=ADMIN).status_code == 404


# -- Redis: two servers, one session -----------------------------------------------------

@pytest.mark.integration
def test_an_event_on_one_server_personalises_the_next_search_on_another(
    tmp_path: Path,
) -> None:
    from plugin.redis_session_store import RedisSessionStore

    store = fill(LocalStore(tmp_path / "idx"))
    prefix = f"shoprank-test:{uuid.uuid4().hex[:8]}:"
    first = RedisSessionStore(REDIS_URL, prefix=prefix, ttl_seconds=60)
    second = RedisSessionStore(REDIS_URL, prefix=prefix, ttl_seconds=60)
    with app_client(store, first) as one, app_client(store, second) as two:
        plain = ids(search(two))
        post(one, "/events", {"events": [click("shared", "s4", "purchase")]})
        after = search(two, session_id="shared")
        assert after["personalized"] is True and ids(after)[0] == "s4" != plain[0]
        assert two.delete("/sessions/shared", headers=ADMIN).status_code == 204
