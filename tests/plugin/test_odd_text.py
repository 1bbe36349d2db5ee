"""Odd text through the API, on the embedded store and on OpenSearch: control characters,
emoji, right-to-left scripts, combining marks, zero-width characters, unpaired surrogates and
very long words, in catalog titles and in queries.

A product with such a title is indexed and found by a word of its title; every such query is
answered 200 in every mode, or 422 naming the field and the limit; every answer is UTF-8 JSON
that reads back to the text the server holds. BM25's analysis never blows up, and the local
store's analysis gives the terms OpenSearch's analyzer gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.analysis import ANALYZER_NAME, MAX_TERM_CHARS, analyze
from indexer.encoder import BiEncoder
from indexer.indexing import reindex_catalog
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import EMBEDDING_DIM, MAX_NAME_CHARS
from indexer.store import VectorStore
from indexer.text import clean_text
from plugin.api import create_app
from plugin.models import MAX_QUERY_CHARS
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from plugin.session_store import InMemorySessionStore
from plugin.settings import Settings
from tests.indexer.store_factories import STORE_KINDS, store_factory

KEY = "odd-text-admin-key"
ADMIN = {"X-API-Key": KEY}

#: id -> (title as the catalog has it, a word of it a shopper types, the title as served).
ODD_TITLES: dict[str, tuple[str, str, str]] = {
    "control": ("desk\x00lamp \x07\x1b[31m red", "lamp", "desk lamp   [31m red"),
    "emoji": ("coffee \u2615 mug \U0001f600 big", "mug", "coffee \u2615 mug \U0001f600 big"),
    "arabic": ("حذاء رياضي للجري", "رياضي", "حذاء رياضي للجري"),
    "hebrew": ("נעלי ריצה לגברים", "ריצה", "נעלי ריצה לגברים"),
    "combining": ("cafe\u0301 noir grinder", "caf\u00e9", "caf\u00e9 noir grinder"),
    "hindi": ("हिन्दी किताब", "हिन्दी", "हिन्दी किताब"),
    "zero-width": ("blue\u200bberry jam\u200d", "berry", "blue\u200bberry jam\u200d"),
    "bidi-override": ("\u202eelbat\u202c oak", "oak", "\u202eelbat\u202c oak"),
    "surrogate": ("broken \ud800 teapot", "teapot", "broken \ufffd teapot"),
    "turkish": ("\u0130stanbul harita", "istanbul", "\u0130stanbul harita"),
    "word-512": ("w" * 512 + " widget", "w" * 512, "w" * 512 + " widget"),
    "word-40000": ("v" * 40_000 + " gadget", "gadget", "v" * 40_000 + " gadget"),
}
#: Queries every mode answers 200: each holds something odd, and most nothing else.
ODD_QUERIES = [
    "lamp\x00\x1b", "\U0001f600", "\u2615 mug", "رياضي", "ריצה", "\u0301", "e\u0301" * 200,
    "\u200b", "\u200d\u200c", "\u202e", "\ufeff mug", "\ud800", "x" * MAX_QUERY_CHARS,
    "İ", "\u0000 a", "\x85next line",
]


def catalog_line(pid: str, title: str) -> bytes:
    """One line as a catalog would hold it: UTF-8 where it can be, JSON escapes elsewhere."""
    record = json.dumps({"id": pid, "title": title}, ensure_ascii=False)
    return record.encode("utf-8", errors="backslashreplace") + b"\n"


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    return BiEncoder()


@pytest.fixture(scope="module", params=STORE_KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, encoder: BiEncoder
) -> Iterator[VectorStore]:
    """A store indexed from a catalog of odd titles (all but the last, which the API adds)."""
    folder = tmp_path_factory.mktemp("odd")
    catalog = folder / "odd.jsonl"
    lines = [catalog_line(pid, title) for pid, (title, _, _) in list(ODD_TITLES.items())[:-1]]
    catalog.write_bytes(b"".join(lines) + catalog_line("plain", "plain steel kettle")
                        + b'{"id": "nan-extra", "title": "kitchen scale", "weight": NaN}\n')
    for make in store_factory(request.param, folder):
        store = make(EMBEDDING_DIM)
        report, load = reindex_catalog(store, catalog, encoder)
        assert load.errors == [] and report.indexed == len(ODD_TITLES) + 1
        yield store


@pytest.fixture(scope="module")
def client(store: VectorStore, encoder: BiEncoder) -> Iterator[TestClient]:
    pipeline = SearchPipeline(store, encoder, sessions=InMemorySessionStore(),
                              settings=SearchSettings(candidates=20))
    with TestClient(create_app(Settings(admin_api_key=KEY), pipeline)) as client:
        pid, (title, _, _) = list(ODD_TITLES.items())[-1]
        put = client.put(f"/products/{pid}", headers=ADMIN, json={"id": pid, "title": title})
        assert put.status_code == 200, put.text
        yield client


def answer(response: Any) -> Any:
    """The answer's JSON, read as a client reads it: UTF-8 bytes, then JSON."""
    return json.loads(response.content.decode("utf-8"))


@pytest.mark.parametrize("pid", list(ODD_TITLES))
def test_a_product_with_odd_text_is_found_by_a_word_of_its_title(
    client: TestClient, pid: str
) -> None:
    _, word, served = ODD_TITLES[pid]
    response = client.post("/search", json={"query": word, "mode": "bm25", "k": 5})
    assert response.status_code == 200, response.text
    hits = {hit["id"]: hit for hit in answer(response)["results"]}
    assert pid in hits, f"{word!r} did not find {pid}: {list(hits)}"
    assert hits[pid]["title"] == served
    assert answer(client.get(f"/products/{pid}"))["title"] == served


@pytest.mark.parametrize("mode", ["bm25", "vector", "hybrid"])
def test_odd_queries_are_answered_in_every_mode(client: TestClient, mode: str) -> None:
    for query in ODD_QUERIES:
        body = json.dumps({"query": query, "mode": mode, "explain": True})  # \ud800 escaped
        response = client.post("/search", content=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 200, (query, response.text)
        assert answer(response)["query"] == clean_text(query).strip()


def test_over_the_limits_is_a_422_naming_the_field_and_the_limit(client: TestClient) -> None:
    long = client.post("/search", json={"query": "x" * (MAX_QUERY_CHARS + 1)})
    assert problem(long) == (["body", "query"], {"max_length": MAX_QUERY_CHARS})
    only_control = client.post("/search", json={"query": "\x00\x01\x1f"})
    assert problem(only_control) == (["body", "query"], {"min_length": 1})
    brand = client.put("/products/b1", headers=ADMIN,
                       json={"id": "b1", "title": "t", "brand": "b" * (MAX_NAME_CHARS + 1)})
    assert problem(brand) == (["body", "brand"], {"max_length": MAX_NAME_CHARS})
    control_id = client.put("/products/a%00b", headers=ADMIN, json={"id": "a\x00b", "title": "t"})
    assert control_id.status_code == 422
    (detail,) = answer(control_id)["detail"]
    assert detail["loc"] == ["body", "id"] and "control characters" in detail["msg"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/search", '{"query": "mug", "k": NaN}', ["body", "k"]),
    ("/search", '{"query": "mug", "rerank_budget_ms": Infinity}', ["body", "rerank_budget_ms"]),
    ("/search", '{"query": "mug", "colour": "\\ud800"}', ["body", "colour"]),
    ("/events", '{"type": "click", "session_id": "s1", "product_id": "plain", '
                '"timestamp": "2026-01-01T00:00:00\\udfffZ"}', ["body", "click", "timestamp"]),
])
def test_what_python_reads_but_json_forbids_is_a_422_not_a_500(
    client: TestClient, path: str, body: str, field: list[str]
) -> None:
    """NaN, Infinity and an unpaired surrogate escape: the 422 repeats the input it refuses,
    which strict JSON cannot hold (this was a 500)."""
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    (detail,) = answer(response)["detail"]
    assert detail["loc"] == field


def test_a_catalog_nan_in_an_extra_field_is_served_as_null(client: TestClient) -> None:
    product = answer(client.get("/products/nan-extra"))
    assert product["weight"] is None and product["title"] == "kitchen scale"


def problem(response: Any) -> tuple[list[str], dict[str, Any]]:
    assert response.status_code == 422, response.text
    (detail,) = answer(response)["detail"]
    return detail["loc"], detail["ctx"]


# -- analysis ---------------------------------------------------------------------------------

ODD_CHARACTERS = st.sampled_from([
    "\x00", "\x1b", "\x85", "\u0301", "\u0308", "\u200b", "\u200d", "\u202e", "\ufeff",
    "\ud800", "\U0001f600", "\u2615", "\ufe0f", "\u0130", "\u03a3", "\u03c2", "\u1e9e",
    "\u01c5", "\ufb01", "\u216b", "\u0661", "\U0001d400", "\u0627", "\u05e9", "\u0939",
    "\u093f", " ", "s",
])
#: The scripts a catalog holds, in code point ranges whose letters, marks, digits and case
#: pairs have not changed since Unicode 13 (Java 17's tables; Python's `regex` has newer ones,
#: so a letter assigned since is a word locally and not to OpenSearch on Java 17).
SCRIPTS = [(0x0000, 0x024F), (0x0370, 0x03FF), (0x0400, 0x04FF), (0x0590, 0x05FF),
           (0x0600, 0x06FF), (0x0900, 0x097F), (0x2000, 0x206F), (0x4E00, 0x9FA5),
           (0xAC00, 0xD7A3), (0xD800, 0xDFFF), (0x1D400, 0x1D7FF), (0x1F300, 0x1F5FF)]


def odd_texts(characters: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Runs of ``characters`` and of the odd ones, and words of 500-700 characters."""
    return st.lists(
        st.text(characters, max_size=12) | ODD_CHARACTERS
        | st.builds(lambda c, n: c * n, ODD_CHARACTERS | st.just("w"), st.integers(500, 700)),
        max_size=6,
    ).map("".join)


any_text = odd_texts(st.characters(exclude_categories=()))
catalog_text = odd_texts(st.one_of(
    [st.characters(min_codepoint=low, max_codepoint=high, exclude_categories=())
     for low, high in SCRIPTS]
))
ANALYSIS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@ANALYSIS
@given(text=any_text)
def test_analysis_never_blows_up(text: str) -> None:
    terms = analyze(clean_text(text))
    assert len(terms) <= len(text)
    for term in terms:
        assert 0 < len(term.encode("utf-16-le")) <= 2 * MAX_TERM_CHARS
        term.encode("utf-8")  # no unpaired surrogate reaches an index
    assert clean_text(clean_text(text)) == clean_text(text)


@ANALYSIS
@given(text=catalog_text)
def test_the_local_analysis_gives_opensearch_s_terms(store: VectorStore, text: str) -> None:
    if not isinstance(store, OpenSearchStore):
        pytest.skip("the comparison is with OpenSearch's analyzer")
    cleaned = clean_text(text)
    analyzed = store.client.indices.analyze(
        index=store.alias, body={"analyzer": ANALYZER_NAME, "text": cleaned}
    )
    assert analyze(cleaned) == [as_indexed(token["token"]) for token in analyzed["tokens"]]


def as_indexed(token: str) -> str:
    """A token as Lucene writes it into the index, in UTF-8: half a surrogate pair left by the
    truncate filter becomes U+FFFD there (the ``_analyze`` API returns the token before that,
    with the lone surrogate)."""
    return token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
