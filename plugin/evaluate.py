"""Score every stage of the pipeline on judged queries, under two protocols.

- ``full``: each stage ranks the whole catalog (what a shopper sees).
- ``pool``: each stage only reorders the query's judged products (KDD Cup 2022 task 1 for
  ESCI), which isolates ranking quality from retrieval and unjudged products.

Every stage is compared with the first one by a paired bootstrap over queries.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from indexer.fusion import reciprocal_rank_fusion
from indexer.schema import product_to_text
from indexer.store import RetrievalMode
from plugin.models import MAX_K, MAX_QUERY_CHARS, SearchRequest
from plugin.pipeline import SearchPipeline
from reranker.evaluation import (
    EvalReport,
    Gains,
    PairedDifference,
    Qrels,
    evaluate_run,
    paired_bootstrap,
)

EvalProtocol = Literal["full", "pool"]
Stage = Literal["bm25", "vector", "hybrid", "rerank"]
STAGES: tuple[Stage, ...] = ("bm25", "vector", "hybrid", "rerank")


@dataclass
class StageResult:
    stage: Stage
    run: dict[str, list[str]]
    report: EvalReport
    p50_ms: float
    versus_first: PairedDifference | None = None


def _full_run(
    pipeline: SearchPipeline, queries: Mapping[str, str], stage: Stage
) -> tuple[dict[str, list[str]], list[float]]:
    mode: RetrievalMode = "hybrid" if stage == "rerank" else stage
    run: dict[str, list[str]] = {}
    latencies = []
    for qid, text in queries.items():
        request = SearchRequest(
            query=text[:MAX_QUERY_CHARS], k=MAX_K, mode=mode, rerank=stage == "rerank"
        )
        response = pipeline.search(request)
        run[qid] = [hit.id for hit in response.results]
        latencies.append(response.timings_ms["total"])
    return run, latencies


def _pool_order(pool: Sequence[str], scores: Mapping[str, float]) -> list[str]:
    """Pool products by score, best first; unscored products last; ties by id."""
    return sorted(pool, key=lambda pid: (-scores.get(pid, float("-inf")), pid))


def _pool_run(
    pipeline: SearchPipeline, queries: Mapping[str, str], qrels: Qrels, stage: Stage
) -> tuple[dict[str, list[str]], list[float]]:
    store = pipeline.store
    # Scores for every pool product: ask each retriever for (nearly) the whole catalog.
    # OpenSearch caps a page at 10,000 hits; pool products beyond that rank last.
    everything = min(store.count(), 10_000)
    run: dict[str, list[str]] = {}
    latencies = []
    for qid, text in queries.items():
        products = store.get_many(sorted(qrels.get(qid, {})))
        pool = sorted(products)
        start = time.perf_counter()
        lexical = _pool_order(pool, {h.product_id: h.score
                                     for h in store.search_bm25(text, everything)})
        if stage == "bm25":
            order = lexical
        else:
            vector = pipeline.encoder.encode_query(text)
            semantic = _pool_order(pool, {h.product_id: h.score
                                          for h in store.search_vector(vector, everything)})
            if stage == "vector":
                order = semantic
            else:
                order = [pid for pid, _ in reciprocal_rank_fusion([lexical, semantic])]
                if stage == "rerank":
                    texts = [product_to_text(products[pid]) for pid in order]
                    scores = dict(zip(order, pipeline.reranker.score(text, texts), strict=True))
                    order = _pool_order(order, scores)
        latencies.append((time.perf_counter() - start) * 1000)
        run[qid] = order
    return run, latencies


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
) -> list[StageResult]:
    """Run and score each stage; stages after the first get a paired CI against it."""
    judged = {qid: qrels[qid] for qid in queries if qid in qrels}
    if any(stage != "bm25" for stage in stages):
        pipeline.encoder.encode_query("warm up")  # load the model outside the timings
    results: list[StageResult] = []
    for stage in stages:
        pipeline.encoder.clear_cache()  # every stage pays for its own query encoding
        if protocol == "pool":
            run, latencies = _pool_run(pipeline, queries, judged, stage)
        else:
            run, latencies = _full_run(pipeline, queries, stage)
        report = evaluate_run(run, judged, k=k, candidates_depth=MAX_K, gains=gains)
        results.append(StageResult(stage, run, report, statistics.median(latencies)))
    first = results[0].report.per_query
    for result in results[1:]:
        ndcg = {q: v["ndcg"] for q, v in result.report.per_query.items()}
        result.versus_first = paired_bootstrap(
            {q: v["ndcg"] for q, v in first.items()}, ndcg, seed=bootstrap_seed
        )
    return results


def summary(results: Sequence[StageResult], protocol: EvalProtocol) -> dict[str, Any]:
    """A JSON-ready summary: metrics per stage and each stage's nDCG change vs the first."""
    first = results[0].stage
    stages: dict[str, Any] = {}
    for result in results:
        row: dict[str, Any] = {**result.report.summary(), "p50_latency_ms": round(result.p50_ms, 2)}
        if result.versus_first is not None:
            diff = result.versus_first
            row[f"nDCG_vs_{first}"] = {
                "mean": round(diff.mean, 4), "ci95": [round(diff.low, 4), round(diff.high, 4)]
            }
        stages[result.stage] = row
    return {"protocol": protocol, "stages": stages}


def markdown(results: Sequence[StageResult], protocol: EvalProtocol, title: str) -> str:
    k = results[0].report.k
    first = results[0].stage
    lines = [
        f"### {title} ({protocol} protocol, {results[0].report.queries} queries)",
        "",
        f"| stage | nDCG@{k} | judged-only nDCG@{k} | MRR@{k} | Recall@100 | judged@{k} "
        f"| nDCG vs {first} [95% CI] | p50 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        rep = r.report
        versus = str(r.versus_first) if r.versus_first is not None else ""
        lines.append(
            f"| {r.stage} | {rep.ndcg:.4f} | {rep.ndcg_condensed:.4f} | {rep.mrr:.4f} "
            f"| {rep.recall_candidates:.4f} | {rep.judged:.4f} | {versus} | {r.p50_ms:.1f} |"
        )
    return "\n".join(lines) + "\n"
