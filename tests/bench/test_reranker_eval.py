"""The nested window row of `bench.reranker_eval`: each outer fold picks the window that ranks
best on its training queries (here always the one that covers every relevant product)."""

from __future__ import annotations

import random

import numpy as np

from bench.reranker_eval import evaluate
from indexer.retrieval import Candidate
from indexer.schema import Product
from plugin.final_stage_fitting import QueryCandidates
from reranker.features import Embeddings


def collection(queries: int, depth: int, seed: int = 0) -> tuple[dict, dict]:
    """Queries whose one relevant product sits anywhere in the top ``depth``; retrieval knows
    nothing of it, the cross-encoder scores it highest."""
    rng = random.Random(seed)
    collected, qrels = {}, {}
    for q in range(queries):
        ids = [f"q{q}-p{i}" for i in range(depth)]
        relevant = rng.randrange(depth)
        candidates = [Candidate(pid, bm25=1.0, vector=0.5, fused=1.0 / (60 + i), bm25_rank=i + 1,
                                vector_rank=i + 1) for i, pid in enumerate(ids)]
        products = {pid: Product(id=pid, title=f"thing {pid}") for pid in ids}
        rerank: list[float | None] = [
            5.0 if i == relevant else rng.uniform(-1.0, 1.0) for i in range(depth)]
        vectors = {pid: np.array([1.0, rng.random()]) for pid in ids}
        embeddings = Embeddings(np.array([1.0, 0.0]), texts=vectors, titles=vectors)
        collected[f"q{q}"] = QueryCandidates("thing", candidates, products, rerank, embeddings)
        qrels[f"q{q}"] = {ids[relevant]: 2, ids[(relevant + 1) % depth]: 0}
    return collected, qrels


def test_nested_window_picks_the_window_that_covers_the_relevant_products() -> None:
    collected, qrels = collection(queries=30, depth=30)
    rows, _ = evaluate(collected, qrels, None, [10, 30], folds=3, seed=0, nested=True)
    by_stage = {row["stage"]: row for row in rows}
    nested = by_stage["final+ce@nested"]
    assert nested["windows"] == [30, 30, 30]
    assert nested["ndcg"] == by_stage["final+ce@30"]["ndcg"]
    assert float(nested["ndcg"]) > float(by_stage["final"]["ndcg"]) + 0.3  # type: ignore[arg-type]


def test_standardized_scores_keep_each_querys_order_and_read_as_z_scores() -> None:
    from bench.reranker_eval import standardized
    from reranker.features import score_logits

    collected, _ = collection(queries=1, depth=6)
    item = collected["q0"]
    item.rerank[:] = [0.2, 0.9, 0.5, 0.7, None, None]  # sigmoid scores; the last two outside
    z = standardized(item)

    assert z.rerank[4:] == [None, None]
    logits = score_logits([s for s in z.rerank if s is not None])
    assert abs(logits.mean()) < 1e-9 and abs(logits.std() - 1.0) < 1e-9
    order = sorted(range(4), key=lambda i: item.rerank[i] or 0.0)
    assert order == sorted(range(4), key=lambda i: z.rerank[i] or 0.0)
