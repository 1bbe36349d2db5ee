"""The learned final stage inside the pipeline, cross-validation folds and tuned fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.retrieval import Candidate
from indexer.schema import Product
from plugin.errors import RerankNotConfiguredError
from plugin.final_stage_fitting import FusionParameters, folds_of, fused, tune_fusion
from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.search_plan import FinalRankers
from reranker.errors import CheckpointError
from reranker.features import (
    FEATURE_NAMES,
    FEEDBACK_FEATURES,
    TITLE_FEATURES,
    feedback_features,
)
from reranker.linear_ranker import LinearRanker
from tests.conftest import axis_vectors
from tests.plugin.test_offline_eval import pipeline  # noqa: F401  (fixture)


def _title_ranker() -> LinearRanker:
    weights = [1.0 if name == "title_coverage" else 0.0 for name in FEATURE_NAMES]
    return LinearRanker(FEATURE_NAMES, tuple(weights), card={"name": "title"})


def test_final_stage_orders_by_its_score_and_explains_it(pipeline: SearchPipeline) -> None:  # noqa: F811
    pipeline.final.rankers = FinalRankers(_title_ranker())
    response = pipeline.search(SearchRequest(query="red summer dress", explain=True))
    top = response.results[0]
    assert top.id == "p3" and response.final_stage == "linear:title"
    assert top.explanation is not None and top.explanation.ordered_by == "final"
    assert top.scores.final == pytest.approx(1.0)
    assert top.explanation.final_contributions is not None
    assert top.explanation.final_contributions["title_coverage"] == pytest.approx(1.0)
    off = pipeline.search(SearchRequest(query="red summer dress", final=False))
    assert off.final_stage == "none" and off.results[0].scores.final is None
    lexical = pipeline.search(SearchRequest(query="red summer dress", mode="bm25"))
    assert lexical.final_stage == "none"  # learned on hybrid candidates: hybrid only
    with pytest.raises(RerankNotConfiguredError, match="needs mode 'hybrid'"):
        pipeline.search(SearchRequest(query="red summer dress", mode="bm25", final=True))


def test_a_final_stage_with_feedback_reads_the_stored_embeddings(pipeline: SearchPipeline) -> None:  # noqa: F811
    names = (*FEATURE_NAMES, *FEEDBACK_FEATURES)
    weights = [1.0 if name == "feedback_cosine" else 0.0 for name in names]
    pipeline.final.rankers = FinalRankers(
        LinearRanker(names, tuple(weights), card={"name": "feedback"})
    )
    response = pipeline.search(SearchRequest(query="red summer dress", explain=True))
    plain = pipeline.search(SearchRequest(query="red summer dress", final=False, explain=True))
    retrieval = [hit.id for hit in plain.results]  # no final stage: retrieval order
    ids = [hit.id for hit in response.results]
    assert sorted(ids) == sorted(retrieval)
    by_id = {hit.id: hit for hit in plain.results}
    candidates = [
        Candidate(pid, bm25=by_id[pid].scores.bm25, vector=by_id[pid].scores.vector)
        for pid in retrieval
    ]
    expected = feedback_features(
        candidates, pipeline.store.get_many(retrieval), pipeline.store.vectors(retrieval)
    )[:, 0]
    served = {hit.id: hit.scores.final for hit in response.results}
    assert [served[pid] for pid in retrieval] == pytest.approx(expected.tolist())
    top = response.results[0]
    assert top.explanation is not None and top.explanation.final_contributions is not None
    assert top.explanation.final_contributions["feedback_cosine"] == pytest.approx(expected.max())


def _title_cosine_ranker() -> LinearRanker:
    names = (*FEATURE_NAMES, *FEEDBACK_FEATURES, *TITLE_FEATURES)
    weights = [1.0 if name == "title_cosine" else 0.0 for name in names]
    return LinearRanker(names, tuple(weights), card={"name": "title-cosine"})


def test_title_cosine_reads_the_stored_title_embeddings(
    pipeline: SearchPipeline,  # noqa: F811
    tiny_products: list[Product],
) -> None:
    # Titles point elsewhere than the texts: the title of p(i) is embedded like the text of p(i+1).
    vectors = axis_vectors(len(tiny_products))
    titles = np.roll(vectors, -1, axis=0)
    pipeline.store.replace_all(tiny_products, vectors, title_vectors=titles)
    pipeline.final.rankers = FinalRankers(_title_cosine_ranker())
    response = pipeline.search(SearchRequest(query="red shoes", explain=True))
    query = pipeline.encoder.encode_query("red shoes")
    by_title = {p.id: float(titles[i] @ query) for i, p in enumerate(tiny_products)}
    served = {hit.id: hit.scores.final for hit in response.results}
    assert served == pytest.approx({pid: by_title[pid] for pid in served})
    assert response.results[0].id == "p2"  # its title is embedded like p3's text, the query


def test_title_cosine_falls_back_to_the_text_cosine_on_an_index_without_titles(
    pipeline: SearchPipeline,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline.final.rankers = FinalRankers(_title_cosine_ranker())  # no title vectors stored
    response = pipeline.search(SearchRequest(query="red shoes", explain=True))
    for hit in response.results:
        assert hit.scores.final == pytest.approx(hit.scores.vector)
    assert "holds no title embeddings" in caplog.text and "shoprank reindex" in caplog.text


def test_asking_for_a_final_stage_the_server_lacks_is_an_error(pipeline: SearchPipeline) -> None:  # noqa: F811
    with pytest.raises(RerankNotConfiguredError, match="final=true"):
        pipeline.search(SearchRequest(query="red", final=True))


def test_folds_split_whole_queries_the_same_way_for_a_seed() -> None:
    qids = [f"q{i}" for i in range(11)]
    folds = folds_of(qids, 5, seed=3)
    assert sorted(q for fold in folds for q in fold) == sorted(qids)
    assert folds == folds_of(list(reversed(qids)), 5, seed=3)
    assert [len(f) for f in folds] == [3, 2, 2, 2, 2]
    with pytest.raises(ValueError):
        folds_of(qids, 1, seed=0)


def test_weighted_fusion_and_its_tuning_follow_the_judgments() -> None:
    lists = {"q": (["a", "b", "c"], ["c", "b", "a"])}
    assert fused(lists["q"], FusionParameters(k=1, window=3, bm25_weight=3.0))[0] == "a"
    assert fused(lists["q"], FusionParameters(k=1, window=1, bm25_weight=1.0)) == ["a", "c"]
    best = tune_fusion(lists, {"q": {"c": 3}}, ["q"], gains=None)
    assert fused(lists["q"], best)[0] == "c"


@pytest.mark.parametrize("protocol", ["full", "pool"])
def test_cross_validation_scores_every_query_with_models_fitted_on_the_others(
    pipeline: SearchPipeline, protocol: str  # noqa: F811
) -> None:
    from plugin.offline_eval import CrossValidation, evaluate_stages
    from tests.plugin.test_offline_eval import QRELS, QUERIES

    results = evaluate_stages(
        pipeline, QUERIES, QRELS, ["hybrid", "tuned-hybrid", "final"],
        protocol=protocol,  # type: ignore[arg-type]
        cross_validation=CrossValidation(folds=2, seed=0),
    )
    tuned, final = results[1], results[2]
    assert set(tuned.run) == set(final.run) == set(QUERIES)
    assert "fold parameters" in tuned.note and "per fold" in final.note
    assert final.versus_first is not None
    with pytest.raises(ValueError, match="needs --cv"):
        evaluate_stages(pipeline, QUERIES, QRELS, ["tuned-hybrid"])


def test_tuned_vector_stage_runs_through_the_tuned_encoders_pipeline(
    pipeline: SearchPipeline,  # noqa: F811
) -> None:
    from plugin.offline_eval import evaluate_stages
    from tests.plugin.test_offline_eval import QRELS, QUERIES

    vector, tuned = evaluate_stages(
        pipeline, QUERIES, QRELS, ["vector", "tuned-vector"], tuned_encoder=pipeline
    )
    assert tuned.run == vector.run  # the same encoder and index: the same ranking
    with pytest.raises(ValueError, match="tuned encoder"):
        evaluate_stages(pipeline, QUERIES, QRELS, ["tuned-vector"])


class _DownReranker:
    """A remote reranker that is down: every call fails as Triton's client does."""

    name = "down"
    circuit_open = False

    def score(self, query: str, texts: object) -> list[float]:
        from reranker.errors import RerankerUnavailableError

        raise RerankerUnavailableError("reranker down")

    def close(self) -> None:
        pass


def test_without_the_cross_encoder_score_the_fallback_final_stage_ranks(
    pipeline: SearchPipeline,  # noqa: F811
) -> None:
    """A final stage that reads the cross-encoder hands over to its retrieval-only twin when
    the score is missing (reranking off or the reranker down), instead of skipping the stage."""
    names = (*FEATURE_NAMES, "cross_encoder")
    weights = [1.0 if name == "cross_encoder" else 0.0 for name in names]
    with_ce = LinearRanker(names, tuple(weights), card={"name": "with-ce"})
    pipeline.final.rankers = FinalRankers(with_ce, fallback=_title_ranker())
    pipeline.reranking.reranker = _DownReranker()
    down = pipeline.search(SearchRequest(query="red summer dress", explain=True))
    assert down.degraded and down.final_stage == "linear:title"
    assert down.results[0].id == "p3" and down.results[0].scores.final == pytest.approx(1.0)
    off = pipeline.search(SearchRequest(query="red summer dress", rerank=False))
    assert off.final_stage == "linear:title" and not off.degraded
    pipeline.final.rankers = FinalRankers(with_ce)
    skipped = pipeline.search(SearchRequest(query="red summer dress"))
    assert skipped.degraded and skipped.final_stage == "none"
    with pytest.raises(RerankNotConfiguredError, match="needs rerank=true"):
        pipeline.search(SearchRequest(query="red summer dress", rerank=False))


def test_a_ranker_fitted_on_sigmoid_cross_encoder_scores_is_refused(tmp_path: Path) -> None:
    names = (*FEATURE_NAMES, "cross_encoder")
    old = LinearRanker(names, (0.0,) * len(names), card={"name": "old"})
    old.save(tmp_path / "old.json")
    with pytest.raises(CheckpointError, match="refit it"):
        LinearRanker.load(tmp_path / "old.json")
    new = LinearRanker(names, (0.0,) * len(names), card={"cross_encoder_scale": "logit"})
    new.save(tmp_path / "new.json")
    assert LinearRanker.load(tmp_path / "new.json").feature_names == names
