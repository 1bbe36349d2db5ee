"""The search page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against a real `shoprank serve` over a slice of the bundled catalog: search and filter,
a click that personalises the next search, the explain view, the compare view, judging.

Screenshots and the page's paint timings are kept under ``SHOPRANK_TEST_ARTIFACTS`` (default
``.cache/test-artifacts/web``). Without a browser the tests skip, except in CI (``CI=true``),
where a missing browser fails: scripts/test installs it (scripts/chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from reranker.metrics import load_qrels, load_queries
from tests.conftest import REPO, demo_slice
from tests.plugin.test_end_to_end import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Products indexed: the first of the bundled catalog hold a few dozen silicone sealants of
#: several brands (GE, Gorilla, SILA-SEAL, ...), enough to filter, page and personalise.
SLICE = 80
QUERY = "silicone sealant"
ADMIN_KEY = "web-admin-key"
ARTIFACTS = Path(os.environ.get("SHOPRANK_TEST_ARTIFACTS", REPO / ".cache" / "test-artifacts"))
WAIT_S = 60


def _browser_or_skip() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    message = "chromium and chromedriver are not installed: run scripts/chromium install"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the browser tests; {message}")
    pytest.skip(message)


@dataclass(frozen=True)
class Site:
    url: str
    qrels: Path
    queries: Path

    def session(self, session_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/sessions/{session_id}",
                             headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        return response.json() if response.status_code == 200 else {}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _browser_or_skip()
    folder = tmp_path_factory.mktemp("web")
    catalog = folder / "slice.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in demo_slice(SLICE)), encoding="utf-8")
    redis_url = os.environ.get("SHOPRANK_REDIS_URL")
    env = {
        **os.environ,
        "SHOPRANK_HOME": str(folder / "home"),
        "SHOPRANK_STORE": "local",
        "SHOPRANK_INDEX": "web",
        # The torch cross-encoder loads in seconds (the ONNX default exports on first use);
        # a window of 5 keeps each search quick on a busy machine.
        "SHOPRANK_RERANKER": "cross-encoder",
        "SHOPRANK_RERANK_WINDOW": "5",
        "SHOPRANK_MIN_RERANK_WINDOW": "5",
        "SHOPRANK_ADMIN_API_KEY": ADMIN_KEY,
        "SHOPRANK_QRELS": str(folder / "judgments" / "qrels.txt"),
        "SHOPRANK_QUERIES": str(folder / "judgments" / "queries.tsv"),
        # The Redis that scripts/test starts holds the sessions when there is one.
        "SHOPRANK_SESSION_STORE": "redis" if redis_url else "memory",
    }
    subprocess.run([sys.executable, "-m", "plugin", "reindex", "--catalog", str(catalog)],
                   env=env, check=True, capture_output=True, timeout=900)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "plugin", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not _up(url):
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the server did not start in 300 s"
            time.sleep(0.5)
        yield Site(url, Path(env["SHOPRANK_QRELS"]), Path(env["SHOPRANK_QUERIES"]))
    finally:
        process.terminate()
        process.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_or_skip()
    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1280,1400", "--lang=en-US"):
        options.add_argument(argument)
    # The demo's pictures live on the shop's image host, which a test machine may not reach:
    # wait for the page's own content (DOMContentLoaded), not for every picture.
    options.page_load_strategy = "eager"
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, site: Site, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The browser with a fresh session (no cookie); a screenshot of the last page is kept."""
    browser.get(f"{site.url}/ui/static/app.css")
    browser.delete_all_cookies()
    yield browser
    folder = ARTIFACTS / "web"
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{request.node.name}.png"))


def wait(browser: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, WAIT_S, poll_frequency=0.2).until(condition, what)


def css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.find_elements(By.CSS_SELECTOR, selector))


def results(browser: Any) -> list[Any]:
    return css(browser, "#results li.result")


def test_search_and_filter(page: Any, site: Site) -> None:
    from selenium.webdriver.common.keys import Keys

    page.get(f"{site.url}/")
    box = css(page, "#q")[0]
    box.send_keys(QUERY, Keys.ENTER)  # the keyboard alone runs a search
    wait(page, lambda b: results(b), "results after Enter")
    assert parse_qs(urlsplit(page.current_url).query)["q"] == [QUERY]
    titles = [r.find_element("css selector", ".result-link").text.lower() for r in results(page)]
    assert len(titles) == 10
    assert sum("silicone" in t for t in titles) >= 5, titles
    _record_paint(page, site)

    page.find_element("css selector", "input[name=brand]").send_keys("GE")
    page.find_element("css selector", "input[name=in_stock]").click()
    page.find_element("css selector", "form.search button[type=submit]").click()
    wait(page, lambda b: "brand=GE" in b.current_url and results(b), "filtered results")
    brands = {r.find_element("css selector", ".brand-name").text for r in results(page)}
    assert brands == {"GE"}, brands
    assert css(page, "input[name=in_stock]")[0].is_selected()

    # A shared URL renders the same results on the server, without the form.
    shared = page.current_url
    page.get(shared)
    assert {r.find_element("css selector", ".brand-name").text for r in results(page)} == {"GE"}

    page.get(f"{site.url}/?q=silicone&price_max=12")
    prices = [r.find_element("css selector", ".price").text for r in results(page)]
    assert prices and all(float(p.lstrip("$")) <= 12 for p in prices), prices

    page.get(f"{site.url}/?q={QUERY.replace(' ', '+')}")
    css(page, "#more")[0].click()
    wait(page, lambda b: len(results(b)) == 20, "20 results after 'More results'")
    assert "k=20" in page.current_url  # a reload shows all 20
    ids = [r.get_attribute("data-product-id") for r in results(page)]
    assert len(set(ids)) == 20
    css(page, "details.similar summary")[0].send_keys(Keys.ENTER)  # opens from the keyboard
    wait(page, lambda b: css(b, ".similar-items li[data-product-id]"), "similar products")


def _record_paint(page: Any, site: Site) -> None:
    """Keep the server-rendered page's paint timings (reported, not asserted: the machine
    running the tests may be busy)."""
    page.get(f"{site.url}/?q={QUERY.replace(' ', '+')}")
    wait(page, lambda b: b.execute_script(
        "return performance.getEntriesByName('first-contentful-paint').length"), "a paint")
    timing = page.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "const p = performance.getEntriesByName('first-contentful-paint')[0];"
        "return {response_end_ms: n.responseEnd, dom_content_loaded_ms: n.domContentLoadedEventEnd,"
        " first_contentful_paint_ms: p.startTime};")
    folder = ARTIFACTS / "web"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paint-timing.json").write_text(json.dumps(timing, indent=2) + "\n")


def test_a_click_records_an_event_and_personalises_the_next_search(
    page: Any, site: Site
) -> None:
    page.get(f"{site.url}/?q={QUERY.replace(' ', '+')}&explain=1")
    session_id = css(page, "#session-id")[0].text
    assert not css(page, ".badge.personalized")
    wait(page, lambda b: site.session(session_id), "the impression reaching the server")
    clicked = next(r for r in results(page)[1:] if r.find_elements("css selector", ".brand-name"))
    product_id = clicked.get_attribute("data-product-id")
    brand = clicked.find_element("css selector", ".brand-name").text
    clicked.find_element("css selector", ".result-link").click()
    wait(page, lambda b: "/ui/products/" in b.current_url, "the product page")
    wait(page, lambda b: any(e.get("type") == "click" and e.get("product_id") == product_id
                             for e in site.session(session_id).get("events", [])),
         "the click event in the session")

    page.get(f"{site.url}/?q={QUERY.replace(' ', '+')}&explain=1")
    assert css(page, "#session-id")[0].text == session_id
    assert css(page, ".badge.personalized"), "the next search says it is personalised"
    same_brand = [r for r in results(page)
                  if r.find_elements("css selector", ".brand-name")
                  and r.find_element("css selector", ".brand-name").text == brand]
    assert same_brand, f"no {brand} result in the personalised search"
    signal = same_brand[0].find_element("css selector", "[data-signal=brand]")
    assert float(signal.get_attribute("data-value")) > 0


def test_the_explain_view_shows_every_stage_and_its_timings(page: Any, site: Site) -> None:
    page.get(f"{site.url}/")
    page.find_element("css selector", "#q").send_keys(QUERY)
    page.find_element("css selector", "#explain").click()
    page.find_element("css selector", "form.search button[type=submit]").click()
    wait(page, lambda b: css(b, "table.stages"), "the stage tables")
    timed = {cell.get_attribute("data-stage") for cell in css(page, "table.timings td")}
    assert {"retrieve", "rerank", "final", "total"} <= timed
    first = results(page)[0]
    rows = {row.get_attribute("data-stage"): row.text
            for row in first.find_elements("css selector", "table.stages tr[data-stage]")}
    assert {"bm25", "vector", "fused", "rerank", "final"} <= set(rows)
    assert any(ch.isdigit() for ch in rows["rerank"]) and any(ch.isdigit() for ch in rows["final"])
    assert first.find_elements("css selector", "p.contrib span"), "the final stage's features"


def test_the_compare_view_highlights_moved_results_and_scores_each_side(
    page: Any, site: Site
) -> None:
    grade = httpx.post(f"{site.url}/ui/judgments", headers={"X-API-Key": ADMIN_KEY}, json={
        "query": QUERY, "product_id": _first_hybrid_id(site), "grade": 3}, timeout=30)
    assert grade.status_code == 200, grade.text
    page.get(f"{site.url}/compare?q={QUERY.replace(' ', '+')}&a=hybrid&b=default")
    sides = css(page, "section.side")
    assert [s.get_attribute("data-config") for s in sides] == ["hybrid", "default"]
    assert css(page, "section.side li.moved .move"), "the reranked side moves some results"
    for side in sides:
        assert side.find_element("css selector", ".ndcg strong").text.startswith(("0.", "1."))
    assert css(page, "section.side .grade[data-grade='3']")


def _first_hybrid_id(site: Site) -> str:
    response = httpx.post(f"{site.url}/search", json={
        "query": QUERY, "k": 10, "rerank": False, "final": False}, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["id"])


def test_judging_from_the_page_appends_a_qrels_line_eval_reads(page: Any, site: Site) -> None:
    query = f"clear silicone {uuid.uuid4().hex[:6]}"
    page.get(f"{site.url}/?q={query.replace(' ', '+')}&explain=1")
    judge = css(page, "fieldset.judge")[1]
    product_id = judge.get_attribute("data-product-id")

    judge.find_element("css selector", "[data-grade='2']").click()  # no key yet: refused
    wait(page, lambda b: "not saved" in css(b, "#status")[0].text, "the refusal")

    css(page, "#admin-key")[0].send_keys(ADMIN_KEY)
    judge.find_element("css selector", "[data-grade='2']").click()
    wait(page, lambda b: judge.get_attribute("data-saved") == "2", "the saved grade")
    queries = load_queries(site.queries)
    qid = next(qid for qid, text in queries.items() if text == query)
    assert load_qrels(site.qrels)[qid] == {product_id: 2}
    assert f"{qid} 0 {product_id} 2" in site.qrels.read_text().splitlines()

    page.refresh()  # the page now shows the grade it saved
    wait(page, lambda b: css(b, f"li[data-product-id='{product_id}'] .grade[data-grade='2']"),
         "the grade shown after a reload")
