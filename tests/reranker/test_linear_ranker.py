"""The linear final-stage ranker and its features, on hand-built cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from indexer.retrieval import Candidate
from reranker.errors import CheckpointError
from reranker.features import (
    CROSS_ENCODER_FEATURE,
    FEATURE_NAMES,
    FEEDBACK_DEPTH,
    FEEDBACK_FEATURES,
    TITLE_FEATURES,
    Embeddings,
    candidate_features,
    feedback_features,
    stage_features,
    title_features,
)
from reranker.linear_ranker import LinearRanker, RankingGroup, fit_linear_ranker
from tests.conftest import make_product


def test_pairwise_fit_learns_which_feature_predicts_the_gain() -> None:
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(20):
        features = rng.normal(size=(8, 2))  # column 0 carries the signal, column 1 is noise
        groups.append(RankingGroup(features, list(np.clip(np.round(features[:, 0] + 1), 0, 3))))
    ranker = fit_linear_ranker(groups, ("signal", "noise"))
    assert ranker.weights[0] > 0
    assert abs(ranker.weights[1]) < ranker.weights[0] / 3
    assert max(ranker.importance(), key=lambda name: abs(ranker.importance()[name])) == "signal"


def test_pairs_with_an_unjudged_candidate_count_less_than_judged_pairs() -> None:
    # Judged: the better product has the larger x. Unjudged: many products with a larger x still,
    # which at full weight would teach the ranker that x means "unjudged, so irrelevant".
    features = np.array([[1.0], [0.0]] + [[2.0]] * 6)
    group = RankingGroup(features, [1.0, 0.0] + [0.0] * 6, [True, True] + [False] * 6)
    assert fit_linear_ranker([group], ("x",), unjudged_weight=1.0).weights[0] < 0
    assert fit_linear_ranker([group], ("x",), unjudged_weight=0.05).weights[0] > 0


def test_a_ranker_without_pairs_to_learn_from_is_refused() -> None:
    with pytest.raises(ValueError, match="different gains"):
        fit_linear_ranker([RankingGroup(np.ones((3, 1)), [1, 1, 1])], ("x",))


def test_ranker_round_trips_and_explains_a_score(tmp_path: Path) -> None:
    ranker = LinearRanker(("a", "b"), (2.0, -1.0), (1.0, 1.0), {"name": "toy"})
    ranker.save(tmp_path / "r.json")
    loaded = LinearRanker.load(tmp_path / "r.json")
    assert loaded == ranker
    assert loaded.contributions([1.0, 3.0]) == {"b": -3.0, "a": 2.0}
    assert loaded.score(np.array([[1.0, 3.0]])).tolist() == [-1.0]


def test_a_file_that_is_not_a_ranker_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"weights": [1]}')
    with pytest.raises(CheckpointError, match="not a shoprank linear ranker"):
        LinearRanker.load(tmp_path / "x.json")
    with pytest.raises(CheckpointError, match="cannot read"):
        LinearRanker.load(tmp_path / "missing.json")


def test_features_read_the_query_against_each_field() -> None:
    products = {
        "lamp": make_product("lamp", "Desk lamp", brand="Ikea", category=["Home", "Lighting"],
                             price=20.0),
        "chair": make_product("chair", "Office chair", brand="Herman", category=["Home"]),
    }
    candidates = [
        Candidate("lamp", bm25=4.0, bm25_rank=1),
        Candidate("chair", vector=0.5, vector_rank=1),
    ]
    rows = candidate_features("ikea desk lamps", candidates, products)
    lamp, chair = (dict(zip(FEATURE_NAMES, row, strict=True)) for row in rows)
    assert lamp["title_coverage"] == pytest.approx(2 / 3)  # "lamps" stems to "lamp"
    assert lamp["brand_in_query"] == 1.0 and chair["brand_in_query"] == 0.0
    assert lamp["title_bigrams"] == 0.5  # "desk lamp" yes, "ikea desk" no
    assert lamp["bm25_relative"] == 1.0 and chair["bm25_relative"] == 1.0  # missing -> lowest seen
    assert chair["bm25_rank"] == 0.0 and lamp["bm25_rank"] == 1.0
    assert lamp["vector_cosine"] == 0.5  # not retrieved by vector: the lowest cosine seen


def test_cross_encoder_column_fills_the_unscored_with_the_lowest_score() -> None:
    products = {p: make_product(p, p) for p in ("a", "b", "c")}
    candidates = [Candidate(p, bm25=1.0, bm25_rank=i) for i, p in enumerate("abc", 1)]
    names = (*FEATURE_NAMES, CROSS_ENCODER_FEATURE)
    # Scores are sigmoids; the column holds their logits, the unscored get the lowest.
    matrix = stage_features("a", candidates, products, [0.9, 0.2, None], names)
    assert matrix[:, -1] == pytest.approx([math.log(9), math.log(0.25), math.log(0.25)])
    with pytest.raises(ValueError, match="unknown final-stage features"):
        stage_features("a", candidates, products, [None] * 3, ("bm25_relative",))


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_feedback_compares_each_candidate_with_the_head_of_the_list() -> None:
    # Five lamps head the list; a chair further down resembles none of them.
    titles = ["desk lamp", "desk lamp led", "floor lamp", "lamp shade", "desk lamp", "desk chair"]
    ids = [f"p{i}" for i in range(len(titles))]
    products = {pid: make_product(pid, title) for pid, title in zip(ids, titles, strict=True)}
    candidates = [Candidate(pid, bm25=1.0, bm25_rank=i) for i, pid in enumerate(ids, 1)]
    vectors = {pid: _unit(1.0, 0.0) for pid in ids[:FEEDBACK_DEPTH]} | {"p5": _unit(0.0, 1.0)}
    rows = feedback_features(candidates, products, vectors)
    first, chair = (dict(zip(FEEDBACK_FEATURES, rows[i], strict=True)) for i in (0, 5))
    assert first["feedback_cosine"] == pytest.approx(1.0)
    assert chair["feedback_cosine"] == pytest.approx(0.0, abs=1e-6)
    # "desk lamp": both terms in 3 head titles, one ("lamp") in the other 2: (2+2+1+1+2)/(5*2)
    assert first["feedback_title_overlap"] == pytest.approx(0.8)
    # "desk chair": "desk" in 3 head titles, "chair" in none: 3 / (5 * 2)
    assert chair["feedback_title_overlap"] == pytest.approx(0.3)


def test_feedback_without_a_stored_embedding_scores_zero_and_needs_the_vectors() -> None:
    products = {p: make_product(p, p) for p in ("a", "b")}
    candidates = [Candidate(p, bm25=1.0, bm25_rank=i) for i, p in enumerate("ab", 1)]
    rows = feedback_features(candidates, products, {"a": _unit(1.0, 1.0)})
    assert rows[1, 0] == 0.0 and rows[0, 0] == pytest.approx(1.0)
    names = (*FEATURE_NAMES, *FEEDBACK_FEATURES)
    with pytest.raises(ValueError, match="stored embeddings"):
        stage_features("a", candidates, products, [None, None], names)
    matrix = stage_features("a", candidates, products, [None, None], names, Embeddings())
    assert matrix.shape == (2, len(names))


def test_title_cosine_compares_the_query_with_each_title_or_falls_back_to_the_text() -> None:
    candidates = [Candidate("a", vector=0.2, vector_rank=1), Candidate("b", vector=0.4,
                                                                     vector_rank=2)]
    query = _unit(1.0, 0.0)
    embeddings = Embeddings(query, titles={"a": _unit(1.0, 1.0)})  # "b" has no stored title
    rows = title_features(candidates, embeddings)
    assert rows[:, 0].tolist() == pytest.approx([2**-0.5, 0.4])
    products = {p: make_product(p, p) for p in ("a", "b")}
    names = (*FEATURE_NAMES, *FEEDBACK_FEATURES, *TITLE_FEATURES)
    matrix = stage_features("a", candidates, products, [None, None], names, embeddings)
    assert matrix[:, -1].tolist() == pytest.approx([2**-0.5, 0.4])
    with pytest.raises(ValueError, match="query embedding"):
        title_features(candidates, Embeddings(titles={"a": _unit(1.0, 1.0)}))


def test_cached_terms_follow_a_changed_product() -> None:
    from reranker.features import product_terms

    before = product_terms(make_product("p", "red lamp"))
    after = product_terms(make_product("p", "blue chair"))
    assert "red" in before.title and "chair" in after.title and "red" not in after.title
