"""Score every stage of the pipeline on judged queries, under two protocols.

- ``full``: each stage ranks the whole catalog (what a shopper sees).
- ``pool``: each stage only reorders the query's judged products (KDD Cup 2022 task 1 for
  ESCI), which isolates ranking quality from retrieval and unjudged products.

Every stage is compared with the first one by a paired bootstrap over queries. With a fairness
policy (`plugin.fairness.evaluation`) each stage's ranking is also reordered by the policy and
the fair ranking is scored against the unconstrained one, on relevance and on fairness.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from indexer.fusion import reciprocal_rank_fusion
from indexer.retrieval import Candidate
from indexer.schema import Product, product_to_text
from indexer.store import RetrievalMode, check_encoder
from plugin.fairness.evaluation import (
    FairnessSetup,
    StageFairness,
    evaluate_fairness,
    fairness_markdown,
)
from plugin.final_stage_fitting import (
    FusionParameters,
    QueryCandidates,
    RetrievedLists,
    collect_candidates,
    fit_final_stage,
    folds_of,
    fused,
    retrieved_lists,
    stored_embeddings,
    tune_fusion,
)
from plugin.folds import FoldCallback, per_fold
from plugin.models import MAX_K, MAX_QUERY_CHARS, NO_FAIRNESS, SearchRequest
from plugin.pipeline import SearchPipeline
from reranker.metrics import (
    EvalReport,
    Gains,
    PairedDifference,
    Qrels,
    evaluate_run,
    paired_bootstrap,
)

EvalProtocol = Literal["full", "pool"]
Stage = Literal["bm25", "vector", "tuned-vector", "hybrid", "tuned-hybrid", "rerank", "final"]
STAGES: tuple[Stage, ...] = (
    "bm25", "vector", "tuned-vector", "hybrid", "tuned-hybrid", "rerank", "final"
)
#: Stages fitted on judged queries: they are only scored by cross-validation.
CV_STAGES: frozenset[Stage] = frozenset({"tuned-hybrid"})


@dataclass
class StageResult:
    stage: Stage
    run: dict[str, list[str]]
    report: EvalReport
    p50_ms: float
    versus_first: PairedDifference | None = None
    #: The same for judged-only nDCG: where judgments are incomplete, the number a win must show.
    condensed_versus_first: PairedDifference | None = None
    note: str = ""
    #: The score that ordered each ranking (full protocol, stages that were not cross-validated).
    scores: dict[str, list[float]] = field(default_factory=dict)
    #: The ranking under the evaluated fairness policy, if one was given.
    fairness: StageFairness | None = None
    #: Each query's search time (empty for cross-validated stages, which are not timed).
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class CrossValidation:
    """Fit the learned stages on k-1 folds of the queries and score them on the k-th."""

    folds: int = 5
    seed: int = 0


#: Stages are scored unconstrained, also where the server has a default fairness policy.


def _full_run(
    pipeline: SearchPipeline, queries: Mapping[str, str], stage: Stage
) -> tuple[dict[str, list[str]], list[float], dict[str, list[float]]]:
    mode: RetrievalMode = "hybrid" if stage in ("rerank", "final") else stage  # type: ignore[assignment]
    run: dict[str, list[str]] = {}
    scores: dict[str, list[float]] = {}
    latencies = []
    for qid, text in queries.items():
        request = SearchRequest(
            query=text[:MAX_QUERY_CHARS], k=MAX_K, mode=mode,
            rerank=stage == "rerank" or (stage == "final" and pipeline.final_needs_rerank),
            final=stage == "final", fairness=NO_FAIRNESS,
        )
        response = pipeline.search(request)
        run[qid] = [hit.id for hit in response.results]
        scores[qid] = [hit.score for hit in response.results]
        latencies.append(response.timings_ms["total"])
    return run, latencies, scores


def _pool_order(pool: Sequence[str], scores: Mapping[str, float]) -> list[str]:
    """Pool products by score, best first; unscored products last; ties by id."""
    return sorted(pool, key=lambda pid: (-scores.get(pid, float("-inf")), pid))


@dataclass
class _Pool:
    """One query's judged pool, ordered by each retriever, with their scores."""

    query: str
    products: dict[str, Product]
    lexical: list[str]
    semantic: list[str]
    bm25: dict[str, float]
    cosine: dict[str, float]
    seconds: float

    def candidates(self, order: Sequence[str]) -> list[Candidate]:
        lexical_rank = {pid: rank for rank, pid in enumerate(self.lexical, 1)}
        semantic_rank = {pid: rank for rank, pid in enumerate(self.semantic, 1)}
        return [
            Candidate(pid, bm25=self.bm25.get(pid), vector=self.cosine.get(pid),
                      bm25_rank=lexical_rank[pid], vector_rank=semantic_rank[pid])
            for pid in order
        ]


def _pools(
    pipeline: SearchPipeline, queries: Mapping[str, str], qrels: Qrels
) -> dict[str, _Pool]:
    store = pipeline.store
    # Scores for every pool product: ask each retriever for (nearly) the whole catalog.
    # OpenSearch caps a page at 10,000 hits; pool products beyond that rank last.
    everything = min(store.count(), 10_000)
    pools = {}
    for qid, text in queries.items():
        products = store.get_many(sorted(qrels.get(qid, {})))
        pool = sorted(products)
        start = time.perf_counter()
        bm25 = {h.product_id: h.score for h in store.search_bm25(text, everything)}
        vector = pipeline.encoder.encode_query(text)
        cosine = {h.product_id: h.score for h in store.search_vector(vector, everything)}
        pools[qid] = _Pool(
            text, products, _pool_order(pool, bm25), _pool_order(pool, cosine),
            {p: bm25[p] for p in pool if p in bm25}, {p: cosine[p] for p in pool if p in cosine},
            time.perf_counter() - start,
        )
    return pools


def _pool_run(
    pipeline: SearchPipeline, pools: Mapping[str, _Pool], stage: Stage
) -> tuple[dict[str, list[str]], list[float]]:
    run: dict[str, list[str]] = {}
    latencies = []
    for qid, pool in pools.items():
        start = time.perf_counter()
        if stage == "bm25":
            order = pool.lexical
        elif stage == "vector":
            order = pool.semantic
        else:
            order = [pid for pid, _ in reciprocal_rank_fusion([pool.lexical, pool.semantic])]
            if stage == "rerank":
                texts = [product_to_text(pool.products[pid]) for pid in order]
                scores = dict(zip(order, pipeline.reranker.score(pool.query, texts), strict=True))
                order = _pool_order(order, scores)
            elif stage == "final" and pipeline.final_ranker is not None:
                order = _pool_query(pipeline, pool, order).ranked_by(pipeline.final_ranker)
        latencies.append((pool.seconds + time.perf_counter() - start) * 1000)
        run[qid] = order
    return run, latencies


def _pool_query(pipeline: SearchPipeline, pool: _Pool, order: Sequence[str]) -> QueryCandidates:
    """A pool as final-stage input: every pool product is a candidate, in fused order."""
    rerank: list[float | None] = [None] * len(order)
    if pipeline.has_reranker:  # a final stage that needs its score implies a reranker
        texts = [product_to_text(pool.products[pid]) for pid in order]
        rerank = list(pipeline.reranker.score(pool.query, texts))
    return QueryCandidates(
        pool.query, pool.candidates(order), pool.products, rerank,
        stored_embeddings(pipeline, pool.query, order),
    )


def _cross_validated(
    pipeline: SearchPipeline,
    queries: Mapping[str, str],
    qrels: Qrels,
    stage: Stage,
    cv: CrossValidation,
    *,
    k: int,
    gains: Gains | None,
    pools: Mapping[str, _Pool] | None,
    on_fold: FoldCallback | None,
) -> tuple[dict[str, list[str]], str]:
    folds = folds_of(list(queries), cv.folds, cv.seed)
    if stage == "tuned-hybrid":
        if pools is None:
            lists: RetrievedLists = retrieved_lists(pipeline, queries)
        else:
            lists = {qid: (pool.lexical, pool.semantic) for qid, pool in pools.items()}
        chosen: list[FusionParameters] = []

        def fuse(train: list[str], test: Sequence[str]) -> dict[str, list[str]]:
            chosen.append(tune_fusion(lists, qrels, train, gains=gains))
            return {qid: fused(lists[qid], chosen[-1]) for qid in test}

        run = per_fold(folds, fuse, stage, qrels, k=k, gains=gains, on_fold=on_fold)
        return run, "fold parameters (k, window, bm25 weight): " + "; ".join(
            f"{p.k}/{p.window}/{p.bm25_weight}" for p in chosen
        )
    with_ce = pipeline.has_reranker
    if pools is None:
        collected = collect_candidates(pipeline, queries, rerank=with_ce)
    else:
        collected = {
            qid: _pool_query(
                pipeline, pool,
                [pid for pid, _ in reciprocal_rank_fusion([pool.lexical, pool.semantic])],
            )
            for qid, pool in pools.items()
        }

    def rank(train: list[str], test: Sequence[str]) -> dict[str, list[str]]:
        ranker = fit_final_stage(collected, qrels, train, gains=gains, with_cross_encoder=with_ce)
        return {qid: collected[qid].ranked_by(ranker) for qid in test}

    run = per_fold(folds, rank, stage, qrels, k=k, gains=gains, on_fold=on_fold)
    return run, "linear final stage fitted per fold" + (" with the cross-encoder score" * with_ce)


def evaluate_stages(
    pipeline: SearchPipeline,
    queries: Mapping[str, str],
    qrels: Qrels,
    stages: Sequence[Stage],
    *,
    protocol: EvalProtocol = "full",
    k: int = 10,
    gains: Gains | None = None,
    bootstrap_seed: int = 0,
    cross_validation: CrossValidation | None = None,
    tuned_encoder: SearchPipeline | None = None,
    fairness: FairnessSetup | None = None,
    on_fold: FoldCallback | None = None,
) -> list[StageResult]:
    """Run and score each stage; stages after the first get a paired CI against it.

    With ``cross_validation`` the learned stages (tuned fusion, the final stage) are fitted
    per fold and each query is ranked by a model that never saw it; without it, ``final``
    uses the pipeline's own final stage and ``tuned-hybrid`` is refused. ``tuned-vector`` is
    vector retrieval through ``tuned_encoder``, a pipeline over an index that a tuned
    bi-encoder wrote. With ``fairness`` every stage's ranking is also reordered by its policy
    and compared with the unconstrained one (`plugin.fairness.evaluation.evaluate_fairness`).
    ``on_fold`` hears of each cross-validation fold as it finishes.
    """
    judged = {qid: qrels[qid] for qid in queries if qid in qrels}
    if any(stage != "bm25" for stage in stages):
        check_encoder(pipeline.store, pipeline.encoder)
        pipeline.encoder.encode_query("warm up")  # load the model outside the timings
    pools = _pools(pipeline, queries, judged) if protocol == "pool" else None
    results: list[StageResult] = []
    for stage in stages:
        pipeline.encoder.clear_cache()  # every stage pays for its own query encoding
        note = ""
        latencies = [float("nan")]
        scores: dict[str, list[float]] = {}
        if stage == "tuned-vector":
            if tuned_encoder is None:
                raise ValueError("stage 'tuned-vector' needs a tuned encoder (--tuned-encoder)")
            check_encoder(tuned_encoder.store, tuned_encoder.encoder)
            if protocol == "pool":
                tuned_pools = _pools(tuned_encoder, queries, judged)
                run, latencies = _pool_run(tuned_encoder, tuned_pools, "vector")
            else:
                run, latencies, scores = _full_run(tuned_encoder, queries, "vector")
        elif stage in CV_STAGES or (stage == "final" and cross_validation is not None):
            if cross_validation is None:
                raise ValueError(f"stage {stage!r} is fitted on judgments: it needs --cv")
            run, note = _cross_validated(
                pipeline, queries, judged, stage, cross_validation, k=k, gains=gains,
                pools=pools, on_fold=on_fold,
            )
        elif pools is not None:
            run, latencies = _pool_run(pipeline, pools, stage)
        else:
            run, latencies, scores = _full_run(pipeline, queries, stage)
        report = evaluate_run(run, judged, k=k, candidates_depth=MAX_K, gains=gains)
        result = StageResult(stage, run, report, statistics.median(latencies), note=note,
                             scores=scores, latencies_ms=[t for t in latencies if t == t])
        if fairness is not None:
            result.fairness = evaluate_fairness(
                fairness, run, scores, judged, report, k=k, gains=gains,
                bootstrap_seed=bootstrap_seed, queries=queries,
            )
        results.append(result)
    first = results[0].report.per_query
    for result in results[1:]:
        result.versus_first, result.condensed_versus_first = (
            paired_bootstrap(
                {q: v[metric] for q, v in first.items()},
                {q: v[metric] for q, v in result.report.per_query.items()},
                seed=bootstrap_seed,
            )
            for metric in ("ndcg", "ndcg_condensed")
        )
    return results


def summary(results: Sequence[StageResult], protocol: EvalProtocol) -> dict[str, Any]:
    """A JSON-ready summary: metrics per stage and each stage's nDCG change vs the first."""
    first = results[0].stage
    stages: dict[str, Any] = {}
    for result in results:
        row: dict[str, Any] = {**result.report.summary()}
        if result.p50_ms == result.p50_ms:  # not NaN: cross-validated stages are not timed
            row["p50_latency_ms"] = round(result.p50_ms, 2)
        if result.note:
            row["note"] = result.note
        for name, diff in (
            (f"nDCG_vs_{first}", result.versus_first),
            (f"judged_only_nDCG_vs_{first}", result.condensed_versus_first),
        ):
            if diff is not None:
                row[name] = {
                    "mean": round(diff.mean, 4), "ci95": [round(diff.low, 4), round(diff.high, 4)]
                }
        if result.fairness is not None:
            row["fairness"] = result.fairness.summary()
        stages[result.stage] = row
    return {"protocol": protocol, "stages": stages}


def markdown(
    results: Sequence[StageResult],
    protocol: EvalProtocol,
    title: str,
    fairness: FairnessSetup | None = None,
) -> str:
    """The stages' relevance table, and with ``fairness`` the fair rankings' table."""
    k = results[0].report.k
    first = results[0].stage
    lines = [
        f"### {title} ({protocol} protocol, {results[0].report.queries} queries)",
        "",
        f"| stage | nDCG@{k} | judged-only nDCG@{k} | MRR@{k} | Recall@100 | judged@{k} "
        f"| nDCG vs {first} [95% CI] | judged-only vs {first} [95% CI] | p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for r in results:
        rep = r.report
        versus = "" if r.versus_first is None else str(r.versus_first)
        condensed = "" if r.condensed_versus_first is None else str(r.condensed_versus_first)
        lines.append(
            f"| {r.stage} | {rep.ndcg:.4f} | {rep.ndcg_condensed:.4f} | {rep.mrr:.4f} "
            f"| {rep.recall_candidates:.4f} | {rep.judged:.4f} | {versus} | {condensed} "
            f"| {'-' if r.p50_ms != r.p50_ms else f'{r.p50_ms:.1f}'} |"
        )
    notes = [f"- {r.stage}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    if fairness is not None:
        rows = [(r.stage, r.fairness) for r in results if r.fairness is not None]
        text += "\n" + fairness_markdown(fairness, rows)
    return text
