"""Fit, cross-validate and compare the learned final stage on judged queries.

Training data comes from the very path a search takes (`SearchPipeline.search` with the final
stage off), so the features a ranker learns from are the features it sees when serving.
The baseline it must beat is fusion: default RRF, and RRF with its constant, window and BM25
weight tuned on the same training folds.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.fusion import reciprocal_rank_fusion
from indexer.retrieval import Candidate
from indexer.schema import Product
from plugin.folds import splits
from plugin.models import MAX_K, MAX_QUERY_CHARS, NO_FAIRNESS, SearchRequest
from plugin.pipeline import SearchPipeline
from reranker.features import (
    CROSS_ENCODER_FEATURE,
    FEATURE_NAMES,
    FEEDBACK_FEATURES,
    TITLE_FEATURES,
    Embeddings,
    stage_features,
)
from reranker.linear_ranker import (
    CROSS_ENCODER_SCALE,
    UNJUDGED_WEIGHT,
    LinearRanker,
    RankingGroup,
    fit_linear_ranker,
)
from reranker.metrics import Gains, Qrels, gain_of, ndcg_at_k


@dataclass(frozen=True)
class QueryCandidates:
    """One query's candidates as the final stage sees them (retrieval order)."""

    query: str
    candidates: list[Candidate]
    products: dict[str, Product]
    rerank: list[float | None]
    embeddings: Embeddings

    def features(self, names: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float64]]:
        key = tuple(names)
        cached = self._features.get(key)
        if cached is None:  # cross-validation asks for the same matrix many times
            cached = stage_features(
                self.query, self.candidates, self.products, self.rerank, names, self.embeddings
            )
            self._features[key] = cached
        return cached

    @functools.cached_property
    def _features(self) -> dict[tuple[str, ...], np.ndarray[Any, np.dtype[np.float64]]]:
        return {}

    def ranked_by(self, ranker: LinearRanker) -> list[str]:
        scores = ranker.score(self.features(ranker.feature_names))
        order = sorted(range(len(self.candidates)), key=lambda i: (-scores[i], i))
        return [self.candidates[i].product_id for i in order]


def collect_candidates(
    pipeline: SearchPipeline, queries: Mapping[str, str], *, rerank: bool
) -> dict[str, QueryCandidates]:
    """Run each query through retrieval (and the cross-encoder when ``rerank``)."""
    collected = {}
    for qid, text in queries.items():
        request = SearchRequest(
            query=text[:MAX_QUERY_CHARS], k=MAX_K, mode="hybrid", rerank=rerank, final=False,
            explain=True, fairness=NO_FAIRNESS,
        )
        hits = sorted(pipeline.search(request).results,
                      key=lambda h: h.explanation.retrieval_rank if h.explanation else h.rank)
        candidates = [
            Candidate(
                hit.id, bm25=hit.scores.bm25, vector=hit.scores.vector, fused=hit.scores.fused,
                bm25_rank=hit.explanation.bm25_rank if hit.explanation else None,
                vector_rank=hit.explanation.vector_rank if hit.explanation else None,
            )
            for hit in hits
        ]
        products = pipeline.store.get_many([c.product_id for c in candidates])
        kept = [c for c in candidates if c.product_id in products]
        collected[qid] = QueryCandidates(
            request.query, kept, products,
            [hit.scores.rerank for hit in hits if hit.id in products],
            stored_embeddings(pipeline, request.query, [c.product_id for c in kept]),
        )
    return collected


def stored_embeddings(pipeline: SearchPipeline, query: str, ids: Sequence[str]) -> Embeddings:
    """Everything the embedding features may read, for fitting and evaluation."""
    return Embeddings(
        pipeline.encoder.encode_query(query),
        pipeline.store.vectors(ids),
        pipeline.store.title_vectors(ids),
    )


def feature_names(with_cross_encoder: bool) -> tuple[str, ...]:
    """The features a final stage fitted now uses."""
    names = (*FEATURE_NAMES, *FEEDBACK_FEATURES, *TITLE_FEATURES)
    return (*names, CROSS_ENCODER_FEATURE) if with_cross_encoder else names


#: Regularisation strengths the inner cross-validation chooses from (strongest wins ties).
REGULARIZATION_GRID = (1e-1, 1e-2, 1e-3, 1e-4)


def _groups(
    collected: Mapping[str, QueryCandidates],
    qrels: Qrels,
    qids: Sequence[str],
    names: Sequence[str],
    gains: Gains | None,
) -> dict[str, RankingGroup]:
    return {
        qid: RankingGroup(
            collected[qid].features(names),
            [gain_of(qrels[qid].get(c.product_id, 0), gains) for c in collected[qid].candidates],
            [c.product_id in qrels[qid] for c in collected[qid].candidates],
        )
        for qid in qids
        if qid in qrels and collected[qid].candidates
    }


def choose_regularization(
    groups: Mapping[str, RankingGroup],
    collected: Mapping[str, QueryCandidates],
    qrels: Qrels,
    names: Sequence[str],
    *,
    gains: Gains | None,
    prior: LinearRanker | None = None,
    unjudged_weight: float = UNJUDGED_WEIGHT,
    folds: int = 4,
    seed: int = 0,
) -> float:
    """The strength from `REGULARIZATION_GRID` with the best inner cross-validated nDCG@10 on
    these queries only; with fewer queries than folds, the strongest."""
    qids = sorted(groups)
    if len(qids) < folds:
        return REGULARIZATION_GRID[0]
    inner = folds_of(qids, folds, seed)
    best, best_quality = REGULARIZATION_GRID[0], -1.0
    for strength in REGULARIZATION_GRID:
        values = []
        for test in inner:
            train = [groups[q] for fold in inner if fold is not test for q in fold]
            ranker = fit_linear_ranker(
                train, names, regularization=strength, prior=prior,
                unjudged_weight=unjudged_weight,
            )
            values += [ndcg_at_k(collected[q].ranked_by(ranker), qrels[q], 10, gains) for q in test]
        quality = float(np.mean(values))
        if quality > best_quality + 1e-9:
            best, best_quality = strength, quality
    return best


def fit_final_stage(
    collected: Mapping[str, QueryCandidates],
    qrels: Qrels,
    qids: Sequence[str],
    *,
    gains: Gains | None,
    with_cross_encoder: bool,
    prior: LinearRanker | None = None,
    card: dict[str, Any] | None = None,
    unjudged_weight: float = UNJUDGED_WEIGHT,
) -> LinearRanker:
    """Fit a linear ranker on ``qids``; unjudged candidates count as gain 0, and pairs with one
    count ``unjudged_weight`` of a judged pair (see `reranker.linear_ranker`).

    Its regularisation is chosen by an inner cross-validation over ``qids`` alone.
    """
    names = feature_names(with_cross_encoder)
    groups = _groups(collected, qrels, qids, names, gains)
    strength = choose_regularization(
        groups, collected, qrels, names, gains=gains, prior=prior, unjudged_weight=unjudged_weight
    )
    card = {
        **(card or {}), "regularization": strength, "unjudged_weight": unjudged_weight,
        "prior": _prior_name(prior),
        **({CROSS_ENCODER_SCALE[1]: CROSS_ENCODER_SCALE[2]} if with_cross_encoder else {}),
    }
    return fit_linear_ranker(
        list(groups.values()), names, regularization=strength, prior=prior, card=card,
        unjudged_weight=unjudged_weight,
    )


def _prior_name(prior: LinearRanker | None) -> str | None:
    return None if prior is None else str(prior.card.get("name", "unnamed"))


def folds_of(qids: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """Split whole queries into ``folds`` folds, the same for a seed."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    shuffled = sorted(qids)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[i::folds] for i in range(folds)]


def cross_validated_final(
    collected: Mapping[str, QueryCandidates],
    qrels: Qrels,
    folds: Sequence[Sequence[str]],
    *,
    gains: Gains | None,
    with_cross_encoder: bool,
    prior: LinearRanker | None = None,
    train_queries: int | None = None,
    seed: int = 0,
    unjudged_weight: float = UNJUDGED_WEIGHT,
) -> dict[str, list[str]]:
    """Each query ranked by a final stage fitted on the other folds only.

    ``train_queries`` fits on that many queries drawn from the other folds (a few-shot
    curve); ``prior`` starts from another shop's ranker (see `fit_linear_ranker`).
    """
    run: dict[str, list[str]] = {}
    rng = random.Random(seed)
    for train, test in splits(folds):
        if train_queries is not None:
            train = rng.sample(sorted(train), min(train_queries, len(train)))
        ranker = fit_final_stage(
            collected, qrels, train, gains=gains, with_cross_encoder=with_cross_encoder,
            prior=prior, unjudged_weight=unjudged_weight,
        )
        for qid in test:
            run[qid] = collected[qid].ranked_by(ranker)
    return run


@dataclass(frozen=True)
class FusionParameters:
    """RRF's constant, how deep each list is read, and the BM25 list's weight (vector: 1)."""

    k: int = 60
    window: int = 100
    bm25_weight: float = 1.0


#: The grid tuned fusion searches on the training folds.
FUSION_GRID = [
    FusionParameters(k, window, weight)
    for k, window, weight in itertools.product(
        (10, 30, 60, 100), (20, 50, 100), (0.5, 0.75, 1.0, 1.5, 2.0)
    )
]

RetrievedLists = Mapping[str, tuple[Sequence[str], Sequence[str]]]


def retrieved_lists(
    pipeline: SearchPipeline, queries: Mapping[str, str], depth: int = MAX_K
) -> dict[str, tuple[list[str], list[str]]]:
    """The BM25 and the vector list of each query, ``depth`` deep."""
    lists = {}
    for qid, text in queries.items():
        vector = pipeline.encoder.encode_query(text)
        lists[qid] = (
            [h.product_id for h in pipeline.store.search_bm25(text, depth)],
            [h.product_id for h in pipeline.store.search_vector(vector, depth)],
        )
    return lists


def fused(lists: tuple[Sequence[str], Sequence[str]], parameters: FusionParameters) -> list[str]:
    lexical, semantic = (list(ranking[: parameters.window]) for ranking in lists)
    fused_list = reciprocal_rank_fusion(
        [lexical, semantic], k=parameters.k, weights=[parameters.bm25_weight, 1.0]
    )
    return [pid for pid, _ in fused_list]


def tune_fusion(
    lists: RetrievedLists, qrels: Qrels, qids: Sequence[str], *, gains: Gains | None, k: int = 10
) -> FusionParameters:
    """The grid point with the best mean nDCG@k on ``qids``; ties go to the earlier point."""
    judged = [qid for qid in qids if qid in qrels]

    def quality(parameters: FusionParameters) -> float:
        return float(np.mean([
            ndcg_at_k(fused(lists[qid], parameters), qrels[qid], k, gains) for qid in judged
        ]))

    return max(FUSION_GRID, key=quality)


def cross_validated_fusion(
    lists: RetrievedLists, qrels: Qrels, folds: Sequence[Sequence[str]], *, gains: Gains | None
) -> tuple[dict[str, list[str]], list[FusionParameters]]:
    """Each query fused with parameters tuned on the other folds; and the chosen parameters."""
    run: dict[str, list[str]] = {}
    chosen = []
    for train, test in splits(folds):
        parameters = tune_fusion(lists, qrels, train, gains=gains)
        chosen.append(parameters)
        for qid in test:
            run[qid] = fused(lists[qid], parameters)
    return run, chosen
