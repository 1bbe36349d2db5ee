"""Training data for tuning: query splits, mined candidates and hard negatives.

Everything here is pure except `mine_candidates`, which runs our own first-stage retrieval so
that a tuned model learns from the candidates it will rerank in production.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from indexer.encoder import BiEncoder
from indexer.retrieval import retrieve
from indexer.store import RetrievalMode, VectorStore, check_encoder
from reranker.metrics import Gains, Qrels, gain_of


@dataclass(frozen=True)
class LabeledPair:
    """One training example: a query, a product and a target in [0, 1]."""

    query_id: str
    product_id: str
    label: float


def split_queries(
    query_ids: Sequence[str], validation_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split whole queries into (train, validation), the same way for the same seed.

    The order of ``query_ids`` does not matter and duplicates count once. With two or more
    queries the validation side gets at least one query and the training side keeps at least
    one; a single query goes to training.

    >>> train, validation = split_queries(["q1", "q2", "q3", "q4", "q5"], 0.2, seed=0)
    >>> len(train), len(validation), sorted(train + validation)
    (4, 1, ['q1', 'q2', 'q3', 'q4', 'q5'])
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1) (got {validation_fraction})")
    unique = sorted(set(query_ids))
    random.Random(seed).shuffle(unique)
    wanted = round(len(unique) * validation_fraction)
    held = min(max(wanted, 1), len(unique) - 1) if len(unique) >= 2 else 0
    return sorted(unique[held:]), sorted(unique[:held])


def mine_candidates(
    store: VectorStore,
    encoder: BiEncoder,
    queries: Mapping[str, str],
    depth: int,
    mode: RetrievalMode = "hybrid",
) -> dict[str, list[str]]:
    """Retrieve the top ``depth`` product ids for every query, best first."""
    if mode != "bm25":
        check_encoder(store, encoder)
    mined: dict[str, list[str]] = {}
    for qid, text in queries.items():
        vector = encoder.encode_query(text) if mode != "bm25" else None
        hits = retrieve(store, mode, depth, text=text, vector=vector)
        mined[qid] = [hit.product_id for hit in hits]
    return mined


def hard_negatives(
    candidates: Mapping[str, Sequence[str]], qrels: Qrels, per_query: int
) -> dict[str, list[str]]:
    """The ``per_query`` best-ranked candidates of each query that count as negatives.

    A candidate is a negative when it is judged grade 0 *or* not judged at all. Treating
    unjudged top candidates as negatives is standard practice for mined hard negatives (they
    are mostly irrelevant, and the judged pool is small); a product judged with a non-zero
    grade is never used as a negative. Order follows the candidate ranking.

    >>> hard_negatives({"q": ["a", "b", "c", "d"]}, {"q": {"a": 3, "b": 0}}, per_query=2)
    {'q': ['b', 'c']}
    """
    if per_query < 0:
        raise ValueError(f"per_query must be >= 0 (got {per_query})")
    negatives: dict[str, list[str]] = {}
    for qid, ranking in candidates.items():
        judged = qrels.get(qid, {})
        picked: list[str] = []
        seen: set[str] = set()
        for product_id in ranking:
            if len(picked) >= per_query:
                break
            if judged.get(product_id, 0) > 0 or product_id in seen:
                continue
            seen.add(product_id)
            picked.append(product_id)
        negatives[qid] = picked
    return negatives


def soft_targets(qrels: Qrels, gains: Gains | None = None) -> dict[int, float]:
    """Map every grade in ``qrels`` to its gain divided by the largest gain: a target in [0, 1].

    ``gains=None`` is the exponential gain ``2**g - 1``, so grades 3, 2, 1, 0 become
    1, 3/7, 1/7, 0; the ESCI gains give 1, 0.1, 0.01, 0. The order of grades is kept.

    >>> soft_targets({"q": {"a": 2, "b": 1, "c": 0}})
    {0: 0.0, 1: 0.3333333333333333, 2: 1.0}
    """
    grades = sorted({grade for judgments in qrels.values() for grade in judgments.values()})
    top = max((gain_of(grade, gains) for grade in grades), default=0.0)
    if top <= 0:
        raise ValueError("the qrels have no grade with a positive gain: nothing to learn from")
    return {grade: max(gain_of(grade, gains), 0.0) / top for grade in grades}


def labeled_pairs(
    query_ids: Iterable[str],
    qrels: Qrels,
    negatives: Mapping[str, Sequence[str]],
    targets: Mapping[int, float],
) -> list[LabeledPair]:
    """Every judged pair of the given queries with its soft target, then their negatives at 0.

    A negative that is already judged (grade 0) appears once, as a judged pair.

    >>> labeled_pairs(["q"], {"q": {"a": 1, "b": 0}}, {"q": ["b", "c"]}, {0: 0.0, 1: 1.0})
    ... # doctest: +NORMALIZE_WHITESPACE
    [LabeledPair(query_id='q', product_id='a', label=1.0),
     LabeledPair(query_id='q', product_id='b', label=0.0),
     LabeledPair(query_id='q', product_id='c', label=0.0)]
    """
    pairs: list[LabeledPair] = []
    for qid in query_ids:
        judged = qrels.get(qid, {})
        pairs.extend(LabeledPair(qid, pid, targets[grade]) for pid, grade in judged.items())
        pairs.extend(
            LabeledPair(qid, pid, 0.0) for pid in negatives.get(qid, ()) if pid not in judged
        )
    return pairs
