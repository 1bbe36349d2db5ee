"""Cross-validation over folds of queries, each fold reported as it finishes.

`per_fold` fits on the other folds and ranks the held-out one, fold after fold; ``shoprank eval
--cv`` prints each `FoldDone` while the next fold is fitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from reranker.metrics import Gains, Qrels, evaluate_run


@dataclass(frozen=True)
class FoldDone:
    """One fold fitted and its held-out queries ranked (``fold`` counts from 1); ``ndcg`` is
    their mean nDCG@k over those with a positive judgment (NaN: none has one)."""

    stage: str
    fold: int
    folds: int
    queries: int
    ndcg: float
    seconds: float


#: Told of each fold as it finishes.
FoldCallback = Callable[[FoldDone], None]
#: Fits on the training queries and ranks the held-out ones: ``(train, test) -> run``.
FitAndRank = Callable[[list[str], Sequence[str]], dict[str, list[str]]]


def per_fold(
    folds: Sequence[Sequence[str]],
    fit_and_rank: FitAndRank,
    stage: str,
    qrels: Qrels,
    *,
    k: int,
    gains: Gains | None,
    on_fold: FoldCallback | None = None,
) -> dict[str, list[str]]:
    """Every query ranked by a model fitted on the other folds only (what
    `plugin.final_stage_fitting.cross_validated_final` does), each fold told to ``on_fold``."""
    run: dict[str, list[str]] = {}
    for number, (train, test) in enumerate(splits(folds), 1):
        started = time.perf_counter()
        ranked = fit_and_rank(train, test)
        run.update(ranked)
        if on_fold is not None:
            judged = {qid: qrels[qid] for qid in test if qid in qrels}
            ndcg = evaluate_run(ranked, judged, k=k, gains=gains).ndcg if judged else float("nan")
            on_fold(FoldDone(stage, number, len(folds), len(test), ndcg,
                             time.perf_counter() - started))
    return run


def splits(folds: Sequence[Sequence[str]]) -> Iterator[tuple[list[str], Sequence[str]]]:
    """(training queries, held-out queries) for each fold in turn."""
    for test in folds:
        held_out = set(test)
        yield [qid for fold in folds for qid in fold if qid not in held_out], test
