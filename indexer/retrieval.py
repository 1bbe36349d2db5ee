"""First-stage retrieval over any `VectorStore`: BM25, vector, or both fused with RRF.

The fusion lives here, not in a store, so every store fuses the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.fusion import DEFAULT_RRF_K, reciprocal_rank_fusion
from indexer.store import Filters, RetrievalMode, ScoredId, VectorStore


@dataclass
class Candidate:
    """A retrieved product with the score each stage gave it (None: stage did not see it)."""

    product_id: str
    bm25: float | None = None
    vector: float | None = None
    fused: float | None = None
    bm25_rank: int | None = None
    vector_rank: int | None = None

    @property
    def retrieval_score(self) -> float:
        """The score that ordered this candidate in its retrieval mode."""
        for score in (self.fused, self.vector, self.bm25):
            if score is not None:
                return score
        return 0.0


def retrieve(
    store: VectorStore,
    mode: RetrievalMode,
    n: int,
    *,
    text: str,
    vector: npt.NDArray[np.float32] | None = None,
    filters: Filters | None = None,
    rrf_k: int = DEFAULT_RRF_K,
) -> list[Candidate]:
    """Return up to ``n`` candidates, best first.

    Hybrid takes the top ``n`` of each retriever and fuses them; the fused list is cut to ``n``.
    """
    if mode != "bm25" and vector is None:
        raise ValueError(f"mode {mode!r} needs a query vector")
    lexical = store.search_bm25(text, n, filters) if mode != "vector" else []
    semantic = store.search_vector(vector, n, filters) if vector is not None else []
    return fuse(mode, lexical, semantic, n, rrf_k=rrf_k)


def fuse(
    mode: RetrievalMode,
    lexical: Sequence[ScoredId],
    semantic: Sequence[ScoredId],
    n: int,
    *,
    rrf_k: int = DEFAULT_RRF_K,
) -> list[Candidate]:
    """The candidates of one mode from the two retrievers' lists (either may be empty);
    callers that run the two searches themselves, concurrently say, fuse with this."""
    by_id: dict[str, Candidate] = {}
    for rank, hit in enumerate(lexical, start=1):
        by_id[hit.product_id] = Candidate(hit.product_id, bm25=hit.score, bm25_rank=rank)
    for rank, hit in enumerate(semantic, start=1):
        candidate = by_id.setdefault(hit.product_id, Candidate(hit.product_id))
        candidate.vector, candidate.vector_rank = hit.score, rank
    if mode == "bm25":
        return [by_id[hit.product_id] for hit in lexical]
    if mode == "vector":
        return [by_id[hit.product_id] for hit in semantic]
    fused = reciprocal_rank_fusion(
        [[hit.product_id for hit in lexical], [hit.product_id for hit in semantic]], k=rrf_k
    )
    candidates = []
    for product_id, score in fused[:n]:
        candidate = by_id[product_id]
        candidate.fused = score
        candidates.append(candidate)
    return candidates
