"""A live catalog: changes reach a served app's searches and filters.

Two paths, on each store: the admin API (`PUT /products/{id}` answers once the change is
searchable, so the searches right after it must see it) and `shoprank upsert` run as a separate
process (the local store's server rechecks its update log every `RECHECK_SECONDS`; OpenSearch
upserts refresh before they return). The delays are printed; `bench/freshness.py` measures them
on a quiet machine. Here the deadline only has to hold on a busy one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.indexing import index_products
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from plugin.api import create_app
from plugin.components import build_pipeline
from plugin.settings import Settings
from tests.conftest import demo_slice
from tests.indexer.store_factories import OPENSEARCH_URL, STORE_KINDS

pytestmark = pytest.mark.slow

SLICE = 60
ADMIN_KEY = "freshness-admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
#: How long a separate process's change may take to show here before the test fails: the
#: promise is one recheck (0.25 s, measured by bench/freshness.py); the margin is for a busy CI.
DEADLINE_SECONDS = 15.0
POLL_SECONDS = 0.05
ALIAS_PREFIX = "shoprank-test"


@dataclass(frozen=True)
class Served:
    """A served app over a small real catalog, and the environment of a `shoprank` process
    that works on the same index."""

    store: str
    client: TestClient
    env: dict[str, str]
    records: list[dict[str, Any]]


@pytest.fixture(scope="module", params=STORE_KINDS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("freshness") / "home"
    index = f"fresh-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({
        "index": index,
        "admin_api_key": ADMIN_KEY,
        "indexer": {"home": home, "store": request.param, "opensearch_url": OPENSEARCH_URL,
                    "opensearch_alias_prefix": ALIAS_PREFIX},
    })
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SHOPRANK_HOME": str(home),
        "SHOPRANK_INDEX": index,
        "SHOPRANK_STORE": request.param,
        "SHOPRANK_OPENSEARCH_URL": OPENSEARCH_URL,
        "SHOPRANK_OPENSEARCH_ALIAS_PREFIX": ALIAS_PREFIX,
        "SHOPRANK_ADMIN_API_KEY": ADMIN_KEY,
    }
    records = list(demo_slice(SLICE))
    pipeline = build_pipeline(settings)  # one encoder load for the index and the app
    index_products(pipeline.store, [Product.model_validate(r) for r in records], pipeline.encoder)
    try:
        with TestClient(create_app(settings, pipeline)) as client:
            yield Served(request.param, client, env, records)
    finally:
        if request.param == "opensearch":
            OpenSearchStore(settings.indexer, index).drop()


def search(served: Served, query: str, **body: Any) -> list[dict[str, Any]]:
    response = served.client.post("/search", json={"query": query, "k": 10, **body})
    assert response.status_code == 200, response.text
    hits: list[dict[str, Any]] = response.json()["results"]
    return hits


def ids(hits: list[dict[str, Any]]) -> list[str]:
    return [hit["id"] for hit in hits]


def put(served: Served, record: dict[str, Any]) -> None:
    response = served.client.put(f"/products/{record['id']}", json=record, headers=ADMIN)
    assert response.status_code == 200, response.text


def test_put_price_and_stock_changes_show_in_search_and_filters_when_put_returns(
    served: Served,
) -> None:
    record = next(r for r in served.records if r.get("price") is not None)
    pid, title = record["id"], record["title"][:120]
    assert pid in ids(search(served, title))
    new_price = 1234.56  # above every price in the slice
    price_band = {"price_min": new_price - 0.01, "price_max": new_price + 0.01}
    assert search(served, title, filters=price_band) == []

    started = time.monotonic()
    put(served, {**record, "price": new_price})
    (hit,) = (h for h in search(served, title) if h["id"] == pid)
    assert hit["price"] == new_price
    assert ids(search(served, title, filters=price_band)) == [pid]
    assert pid not in ids(search(served, title, filters={"price_max": record["price"]}))
    price_delay = time.monotonic() - started

    started = time.monotonic()
    put(served, {**record, "price": new_price, "stock": 0})
    assert ids(search(served, title, filters={"in_stock": False})) == [pid]
    assert pid not in ids(search(served, title, filters={"in_stock": True}))
    stock_delay = time.monotonic() - started
    assert served.client.get(f"/products/{pid}").json()["in_stock"] is False

    print(f"\n[{served.store}] PUT price change searchable after {price_delay:.3f} s, "
          f"stock change after {stock_delay:.3f} s")

    put(served, record)  # back as it was: in stock again (unknown), old price
    assert pid in ids(search(served, title, filters={"in_stock": True}))
    assert search(served, title, filters={"in_stock": False}) == []


def test_cli_upsert_reaches_the_served_app(
    served: Served, tmp_path: Path
) -> None:
    new = {"id": "fresh-cli-1", "title": "Axolotl night light with sleep timer",
           "brand": "Lumo", "category": ["Home", "Lighting"], "price": 17.0, "stock": 4}
    query = "axolotl night light"
    assert "fresh-cli-1" not in ids(search(served, query))
    delta = tmp_path / "delta.jsonl"
    delta.write_text(json.dumps(new) + "\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "plugin", "upsert", "--catalog", str(delta)],
        env=served.env, capture_output=True, text=True, timeout=300,
    )
    returned = time.monotonic()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "upserted 1 products" in result.stderr
    while True:
        hits = search(served, query, filters={"in_stock": True, "price_max": 20})
        delay = time.monotonic() - returned
        if ids(hits)[:1] == ["fresh-cli-1"]:
            break
        assert delay < DEADLINE_SECONDS, (
            f"{served.store}: the served app did not see `shoprank upsert` after {delay:.3f} s"
        )
        time.sleep(POLL_SECONDS)
    print(f"\n[{served.store}] CLI upsert searchable {delay:.3f} s after the command returned")
    assert served.client.get("/products/fresh-cli-1").json()["in_stock"] is True
    assert served.client.delete("/products/fresh-cli-1", headers=ADMIN).status_code == 204
