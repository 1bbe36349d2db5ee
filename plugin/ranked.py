"""`RankedItem`: one candidate as it travels through the stages after retrieval, with the
score and explanation each stage gave it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from indexer.retrieval import Candidate
from indexer.schema import Product


@dataclass
class RankedItem:
    """A candidate travelling through the later stages."""

    candidate: Candidate
    product: Product
    retrieval_rank: int
    rerank: float | None = None
    rerank_rank: int | None = None
    final: float | None = None
    features: tuple[float, ...] = ()
    fairness_move: str | None = None
    #: The session's term (already weighted) and the score it was added to, rescaled.
    personal: float | None = None
    personalized: float | None = None
    signals: dict[str, float] | None = None
    stock_note: str | None = None

    @property
    def ordered_by(self) -> str:
        """The stage whose score set this item's place."""
        if self.personalized is not None:
            return "personalized"
        if self.final is not None:
            return "final"
        if self.rerank is not None:
            return "rerank"
        if self.candidate.fused is not None:
            return "fused"
        return "vector" if self.candidate.vector is not None else "bm25"

    @property
    def score(self) -> float:
        """The score of the stage that ordered this item."""
        for score in (self.personalized, self.final, self.rerank):
            if score is not None:
                return score
        return self.candidate.retrieval_score


def by_rerank(item: RankedItem) -> tuple[float, int]:
    """Sort key: the cross-encoder's score, best first; ties in retrieval order."""
    return (-(item.rerank or 0.0), item.retrieval_rank)


def comparable_scores(items: Sequence[RankedItem]) -> list[float]:
    """The items' scores on one scale, for the post-processors' relevance: past the rerank
    window, where items keep their retrieval score, each counts as the window's lowest
    cross-encoder score."""
    if items and items[0].personalized is not None:
        return [item.score for item in items]
    scores = [item.score for item in items]
    reranked = [item.rerank for item in items if item.final is None and item.rerank is not None]
    if reranked:
        floor = min(reranked)
        scores = [
            item.score if item.final is not None or item.rerank is not None else floor
            for item in items
        ]
    return scores
