"""The search page's routes and judgments on a tiny store (no model, no browser): what the
server renders for a URL, bad URLs, judging into qrels that `shoprank eval` reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from indexer.local_store import LocalStore
from indexer.schema import Product
from plugin.api import create_app
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from plugin.web.judgments import Judgments
from plugin.web.views import PageQuery, moves, ndcg10
from reranker.metrics import load_qrels, load_queries
from tests.conftest import axis_vectors
from tests.plugin.test_offline_eval import AxisEncoder

KEY = "web-unit-key"


@pytest.fixture
def judgments_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "judgments"
    monkeypatch.setenv("SHOPRANK_QRELS", str(folder / "qrels.txt"))
    monkeypatch.setenv("SHOPRANK_QUERIES", str(folder / "queries.tsv"))
    return folder


@pytest.fixture
def client(tmp_path: Path, tiny_products: list[Product]) -> Iterator[TestClient]:
    vectors = axis_vectors(len(tiny_products))
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, vectors)
    pipeline = SearchPipeline(store, AxisEncoder({"red shoes": vectors[2]}))  # type: ignore[arg-type]
    with TestClient(create_app(Settings(index="tiny", admin_api_key=KEY), pipeline)) as client:
        yield client


def test_the_server_renders_the_results_of_a_url(client: TestClient) -> None:
    page = client.get("/", params={"q": "running shoes"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="results"' in page.text and 'data-product-id="p1"' in page.text
    assert page.cookies.get("shoprank_session", "").startswith("web-")

    filtered = client.get("/", params={"q": "running", "brand": "Bolt"})
    assert 'data-product-id="p2"' in filtered.text and 'data-product-id="p1"' not in filtered.text


def test_a_bad_url_names_its_parameter(client: TestClient) -> None:
    too_many = client.get("/", params={"q": "shoes", "k": "1000"})
    assert too_many.status_code == 422 and "k: " in too_many.text
    unknown = client.get("/compare", params={"q": "shoes", "a": "magic"})
    assert unknown.status_code == 422 and "unknown configuration &#39;magic&#39;" in unknown.text


def test_the_page_serves_only_its_own_static_files(client: TestClient) -> None:
    script = client.get("/ui/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/router.py").status_code == 404


def test_judging_needs_the_admin_key_and_appends_what_eval_reads(
    client: TestClient, judgments_dir: Path
) -> None:
    body = {"query": "Red  Shoes", "product_id": "p1", "grade": 3}
    assert client.post("/ui/judgments", json=body).status_code == 401
    assert not (judgments_dir / "qrels.txt").exists()

    saved = client.post("/ui/judgments", json=body, headers={"X-API-Key": KEY})
    assert saved.status_code == 200, saved.text
    qid = saved.json()["qid"]
    again = client.post("/ui/judgments", json={**body, "grade": 1}, headers={"X-API-Key": KEY})
    assert again.json()["qid"] == qid
    assert load_queries(judgments_dir / "queries.tsv") == {qid: "Red Shoes"}
    assert load_qrels(judgments_dir / "qrels.txt") == {qid: {"p1": 1}}  # the newest grade counts
    assert len((judgments_dir / "qrels.txt").read_text().splitlines()) == 2  # history kept

    page = client.get("/compare", params={"q": "red shoes", "a": "hybrid", "b": "default"})
    assert 'class="grade" data-grade="1"' in page.text and "nDCG@10" in page.text

    bad = client.post("/ui/judgments", json={**body, "grade": 4}, headers={"X-API-Key": KEY})
    assert bad.status_code == 422 and "grade" in bad.text


def test_judging_is_off_without_the_files(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOPRANK_QRELS", raising=False)
    monkeypatch.delenv("SHOPRANK_QUERIES", raising=False)
    off = client.post("/ui/judgments", json={"query": "q", "product_id": "p1", "grade": 2},
                      headers={"X-API-Key": KEY})
    assert off.status_code == 409 and "SHOPRANK_QRELS" in off.json()["detail"]


def test_judgments_see_an_edit_made_outside_the_page(tmp_path: Path) -> None:
    judgments = Judgments(tmp_path / "qrels.txt", tmp_path / "queries.tsv")
    assert judgments.grades("desk lamp") is None
    (tmp_path / "queries.tsv").write_text("q7\tdesk lamp\n")
    (tmp_path / "qrels.txt").write_text("q7 0 p9 2\n")
    assert judgments.grades("Desk Lamp") == {"p9": 2}
    assert judgments.record("desk lamp", "p3", 0) == "q7"


def test_moves_against_the_other_side() -> None:
    assert moves(["a", "b", "c", "d"], ["b", "a", "c", "x"]) == {"a": "up 1", "b": "down 1",
                                                                  "d": "new"}
    assert ndcg10(["a"], None) is None
    assert ndcg10(["a", "b"], {"b": 3}) == pytest.approx(1 / 1.584962500721156)


def test_a_page_url_keeps_its_settings() -> None:
    page = PageQuery.from_params({"q": "lamp", "price_max": "", "in_stock": "true", "k": "20"},
                                 ["Ikea", ""])
    assert page.filters() is not None and page.filters().brand == ["Ikea"]  # type: ignore[union-attr]
    assert page.url() == "/?q=lamp&brand=Ikea&in_stock=1&k=20"
    assert page.url("/compare", k=None) == "/compare?q=lamp&brand=Ikea&in_stock=1"


def test_a_judgments_file_that_cannot_be_written_is_a_503_and_nothing_is_claimed(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SHOPRANK_QRELS", str(blocker / "qrels.txt"))
    monkeypatch.setenv("SHOPRANK_QUERIES", str(blocker / "queries.tsv"))
    failed = client.post("/ui/judgments", json={"query": "q", "product_id": "p1", "grade": 2},
                         headers={"X-API-Key": KEY})
    assert failed.status_code == 503 and "cannot write" in failed.json()["detail"]


def test_the_page_says_when_the_index_is_missing() -> None:
    with TestClient(create_app(Settings(index="empty"))) as client:
        empty = client.get("/")
        assert empty.status_code == 200 and 'id="q"' in empty.text
        missing = client.get("/", params={"q": "lamp"})
        assert missing.status_code == 503 and "search is not available" in missing.text


def test_the_page_spends_the_search_rate_limit(
    tiny_products: list[Product], tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    pipeline = SearchPipeline(store, AxisEncoder({}))  # type: ignore[arg-type]
    settings = Settings(index="tiny", rate_limit=True, rate_limit_burst=2,
                        rate_limit_per_second=0.01)
    with TestClient(create_app(settings, pipeline)) as client:
        assert client.get("/").status_code == 200  # no search, no token
        assert client.get("/", params={"q": "shoes"}).status_code == 200
        assert client.post("/search", json={"query": "shoes"}).status_code == 200
        limited = client.get("/", params={"q": "shoes"})
        assert limited.status_code == 429 and "Retry-After" in limited.headers


def test_compare_runs_fairness_off_against_on_and_names_a_stage_the_server_lacks(
    client: TestClient,
) -> None:
    fair = client.get("/compare", params={"q": "running", "a": "no-fair", "b": "fair"})
    assert fair.status_code == 200
    assert 'data-config="no-fair"' in fair.text and "fairness group_cap moved" in fair.text
    lacking = client.get("/compare", params={"q": "running", "a": "rerank", "b": "default"})
    assert lacking.status_code == 400 and "config &#39;rerank&#39;" in lacking.text
