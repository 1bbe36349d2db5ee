"""BM25 postings on disk score as Lucene's formula says, term by term."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from indexer.analysis import analyze
from indexer.lexical import K1, B, lucene_norm_length
from indexer.postings import BM25, Postings, PostingsWriter

DOCS = [
    "red shoe",
    "red red car",
    "",
    "blue shoe " + " ".join(f"word{i}" for i in range(40)),  # long: a rounded norm
    "Ärger über Öl",
    "café 咖啡 shoe",
]


def lucene_bm25(query: str, docs: list[str]) -> list[float]:
    """The formula, computed directly from the texts."""
    analysed = [analyze(doc) for doc in docs]
    with_terms = [terms for terms in analysed if terms]
    avgdl = sum(len(terms) for terms in analysed) / len(with_terms)
    scores = []
    for terms in analysed:
        total = 0.0
        for term in analyze(query):
            tf = terms.count(term)
            if not tf:
                continue
            df = sum(term in other for other in analysed)
            idf = math.log(1 + (len(with_terms) - df + 0.5) / (df + 0.5))
            norm = lucene_norm_length(len(terms))
            total += (K1 + 1) * idf * tf / (tf + K1 * (1 - B + B * norm / avgdl))
        scores.append(total)
    return scores


@pytest.fixture
def postings(tmp_path: Path) -> Postings:
    writer = PostingsWriter()
    for doc in DOCS:
        writer.add(doc)
    writer.write(tmp_path / "field")
    return Postings.open(tmp_path / "field")


@pytest.mark.parametrize("query", ["red shoe", "shoe", "öl ärger", "咖啡 café", "missing"])
def test_scores_follow_lucenes_formula(postings: Postings, query: str) -> None:
    scores = np.zeros(len(DOCS), dtype=np.float32)
    postings.add_scores(scores, analyze(query), postings.stats, {})
    assert scores.tolist() == pytest.approx(lucene_bm25(query, DOCS), rel=1e-5)


def test_terms_are_found_by_their_bytes_and_unknown_ones_are_not(postings: Postings) -> None:
    found = postings.lookup("shoe")
    assert found is not None and found[0].tolist() == [0, 3, 5]
    assert postings.df("咖啡") == 1
    assert postings.lookup("sho") is None and postings.lookup("zzz") is None


def test_live_documents_raise_the_statistics_a_score_reads(postings: Postings) -> None:
    """Five more documents, one with "car": the version's rows score with both together."""
    more = postings.stats + BM25(doc_count=5, total_length=10)
    before = np.zeros(len(DOCS), dtype=np.float32)
    after = np.zeros(len(DOCS), dtype=np.float32)
    postings.add_scores(before, ["car"], postings.stats, {})
    postings.add_scores(after, ["car"], more, {"car": 1})
    assert more.doc_count == postings.stats.doc_count + 5
    assert after[1] > 0 and after[1] != before[1]
