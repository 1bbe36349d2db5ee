"""Ranking metrics over TREC-style inputs: nDCG@k, MRR@k, Recall@k and judged@k.

Inputs are the formats of the shared data sets: ``queries.tsv`` (``qid<TAB>text``) and TREC
qrels (``qid 0 docid grade``). Unjudged documents count as gain 0 but are reported separately
through judged@k, since "unjudged" is not "irrelevant".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from reranker.errors import EvaluationInputError

Qrels = dict[str, dict[str, int]]
Gains = Mapping[int, float]

#: Gains of the ESCI paper: Exact 1.0, Substitute 0.1, Complement 0.01, Irrelevant 0.
ESCI_GAINS: dict[int, float] = {3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}


def exponential_gain(grade: int) -> float:
    """The standard graded gain ``2**grade - 1``."""
    return float(2**grade - 1) if grade > 0 else 0.0


def parse_gains(text: str) -> dict[int, float]:
    """Parse ``"3=1,2=0.1,1=0.01,0=0"`` into ``{3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0}``."""
    gains: dict[int, float] = {}
    for part in text.split(","):
        grade, sep, value = part.strip().partition("=")
        try:
            if not sep:
                raise ValueError
            gains[int(grade)] = float(value)
        except ValueError as e:
            raise EvaluationInputError(
                f"--gains: {part.strip()!r} is not GRADE=GAIN (example: 3=1,2=0.1,1=0.01,0=0)"
            ) from e
    return gains


def gain_of(grade: int, gains: Gains | None) -> float:
    if gains is None:
        return exponential_gain(grade)
    return gains.get(grade, 0.0)


def load_queries(path: Path) -> dict[str, str]:
    """Read ``qid<TAB>query text`` lines."""
    queries: dict[str, str] = {}
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            qid, sep, text = line.rstrip("\n").partition("\t")
            if not sep or not qid.strip() or not text.strip():
                raise EvaluationInputError(f"{path} line {number}: expected 'qid<TAB>query text'")
            queries[qid.strip()] = text.strip()
    return queries


def load_qrels(path: Path) -> Qrels:
    """Read TREC qrels ``qid 0 docid grade``."""
    qrels: Qrels = {}
    with _open(path) as handle:
        for number, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise EvaluationInputError(
                    f"{path} line {number}: expected 'qid 0 docid grade', got {len(parts)} fields"
                )
            qid, _, docid, grade = parts
            try:
                qrels.setdefault(qid, {})[docid] = int(grade)
            except ValueError as e:
                raise EvaluationInputError(
                    f"{path} line {number}: grade {grade!r} is not an integer"
                ) from e
    return qrels


def _open(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8")
    except OSError as e:
        raise EvaluationInputError(f"cannot read {path}: {e}") from e


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain with the log2(rank + 1) discount."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at_k(
    ranking: Sequence[str], judgments: Mapping[str, int], k: int, gains: Gains | None = None
) -> float:
    """nDCG@k: the ideal ranking is all judged documents sorted by gain."""
    ideal = sorted((gain_of(g, gains) for g in judgments.values()), reverse=True)[:k]
    best = dcg(ideal)
    if best <= 0:
        return 0.0
    got = [gain_of(judgments[d], gains) if d in judgments else 0.0 for d in ranking[:k]]
    return dcg(got) / best


def mrr_at_k(
    ranking: Sequence[str], judgments: Mapping[str, int], k: int, min_grade: int = 1
) -> float:
    """Reciprocal rank of the first document with grade >= ``min_grade`` in the top k."""
    for rank, docid in enumerate(ranking[:k], start=1):
        if judgments.get(docid, 0) >= min_grade:
            return 1.0 / rank
    return 0.0


def recall_at_k(
    ranking: Sequence[str], judgments: Mapping[str, int], k: int, min_grade: int = 1
) -> float:
    """Share of the documents with grade >= ``min_grade`` that appear in the top k."""
    relevant = {d for d, g in judgments.items() if g >= min_grade}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def judged_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Share of the top k that has any judgment (also 0-graded)."""
    top = ranking[:k]
    if not top:
        return 0.0
    return sum(1 for d in top if d in judgments) / len(top)


@dataclass
class EvalReport:
    """Mean metrics over the evaluated queries, plus the per-query values."""

    k: int
    queries: int
    ndcg: float
    ndcg_condensed: float
    mrr: float
    recall_candidates: float
    judged: float
    candidates_depth: int
    skipped_queries: list[str] = field(default_factory=list)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int]:
        return {
            f"nDCG@{self.k}": round(self.ndcg, 4),
            f"nDCG@{self.k} judged-only": round(self.ndcg_condensed, 4),
            f"MRR@{self.k}": round(self.mrr, 4),
            f"Recall@{self.candidates_depth}": round(self.recall_candidates, 4),
            f"judged@{self.k}": round(self.judged, 4),
            "queries": self.queries,
        }


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Qrels,
    *,
    k: int = 10,
    candidates_depth: int = 100,
    gains: Gains | None = None,
    min_relevant_grade: int = 1,
) -> EvalReport:
    """Score a run (qid -> ranked doc ids, at least ``candidates_depth`` deep if it can be).

    Queries with no judgments are skipped and listed; a query in the qrels that the run lacks
    scores 0 on every metric.
    """
    per_query: dict[str, dict[str, float]] = {}
    skipped = []
    for qid, judgments in sorted(qrels.items()):
        if not any(gain_of(g, gains) > 0 for g in judgments.values()):
            skipped.append(qid)
            continue
        ranking = list(run.get(qid, []))
        per_query[qid] = {
            "ndcg": ndcg_at_k(ranking, judgments, k, gains),
            "ndcg_condensed": ndcg_at_k(
                [d for d in ranking if d in judgments], judgments, k, gains
            ),
            "mrr": mrr_at_k(ranking, judgments, k, min_relevant_grade),
            "recall": recall_at_k(ranking, judgments, candidates_depth, min_relevant_grade),
            "judged": judged_at_k(ranking, judgments, k),
        }
    count = len(per_query)

    def mean(metric: str) -> float:
        return sum(values[metric] for values in per_query.values()) / count if count else 0.0

    return EvalReport(
        k=k,
        queries=count,
        ndcg=mean("ndcg"),
        ndcg_condensed=mean("ndcg_condensed"),
        mrr=mean("mrr"),
        recall_candidates=mean("recall"),
        judged=mean("judged"),
        candidates_depth=candidates_depth,
        skipped_queries=skipped,
        per_query=per_query,
    )


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-query difference (b - a) with a paired-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    queries: int

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def paired_bootstrap(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    samples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Resample queries with replacement to put a confidence interval on ``mean(b - a)``.

    Only queries scored in both runs count. With a fixed seed the interval is reproducible.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        raise EvaluationInputError("the two runs share no scored query")
    diffs = np.array([b[q] - a[q] for q in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diffs), size=(samples, len(diffs)))
    means = diffs[picks].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(diffs.mean()), float(low), float(high), len(shared))


def write_trec_run(run: Mapping[str, Sequence[str]], path: Path, *, tag: str = "shoprank") -> None:
    """Write ``qid Q0 docid rank score tag`` lines.

    The score column is ``depth - rank + 1`` so it strictly follows our order: tools that
    re-sort by score (trec_eval) then see exactly the ranking we evaluated.
    """
    with path.open("w", encoding="utf-8") as handle:
        for qid, ranking in run.items():
            depth = len(ranking)
            for rank, docid in enumerate(ranking, start=1):
                handle.write(f"{qid} Q0 {docid} {rank} {depth - rank + 1} {tag}\n")
