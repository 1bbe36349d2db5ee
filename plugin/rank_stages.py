"""The two ranking stages after retrieval: the cross-encoder reranks the head of the
candidates (`RerankStage`), then the learned final stage orders them all (`FinalStage`)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.schema import product_to_text
from indexer.store import VectorStore
from plugin.ranked import RankedItem, by_rerank
from plugin.rerank_budget import CHARS_PER_TOKEN, RerankCostModel
from plugin.search_plan import FinalRankers, SearchPlan
from reranker.base import NoReranker, Reranker
from reranker.errors import RerankerError, RerankerUnavailableError, UnavailableCause
from reranker.features import Embeddings, needs_embeddings, stage_features
from reranker.linear_ranker import LinearRanker

logger = logging.getLogger(__name__)


def reranker_max_length(reranker: Reranker) -> int:
    """Tokens of each pair ``reranker`` reads, for the budget's cost model; 256 when it does
    not say, or cannot yet (a broken checkpoint fails on the first rerank, not here)."""
    try:
        return int(getattr(reranker, "max_length", None) or 256)
    except RerankerError:
        return 256


@dataclass(frozen=True)
class Reranked:
    """The items after reranking: the window in the cross-encoder's order, then the rest."""

    items: list[RankedItem]
    #: How many items the cross-encoder rescored.
    count: int
    #: The reranker could not be reached: the items kept their retrieval order.
    degraded: bool = False
    #: Why, when degraded: what the reranker's failure said.
    reason: str | None = None
    #: Which kind of failure, when degraded (the bounded set metrics count by).
    cause: UnavailableCause | None = None


class RerankStage:
    """Rescores the first candidates with the cross-encoder.

    A fixed window, or with a latency budget, as many of them as the cost model predicts will
    fit (`plugin.rerank_budget`). Reranks run at most ``max_concurrent`` at a time; the others
    queue (and with a budget, the wait counts against it, so a loaded server reranks fewer
    candidates, not slower).
    """

    def __init__(self, reranker: Reranker | None = None, *, max_concurrent: int = 2) -> None:
        self.reranker: Reranker = reranker or NoReranker()
        self.cost = RerankCostModel(
            max_chars=int(reranker_max_length(self.reranker) * CHARS_PER_TOKEN)
        )
        self._slots = threading.BoundedSemaphore(max(1, max_concurrent))

    @property
    def available(self) -> bool:
        """Whether a reranker is configured."""
        return not isinstance(self.reranker, NoReranker)

    def rerank(
        self, query: str, items: list[RankedItem], plan: SearchPlan, elapsed_ms: float
    ) -> Reranked:
        """Rerank the head of ``items`` as ``plan`` says, ``elapsed_ms`` of its budget spent.

        A reranker that cannot be reached fails open: retrieval order is a worse answer than
        reranked, but an answer.
        """
        budget = None if plan.budget_ms is None else plan.budget_ms - elapsed_ms
        try:
            count = self._score(query, items, plan.window, plan.min_window, budget)
        except RerankerUnavailableError as e:
            logger.warning("search degraded to retrieval order: %s", e)
            return Reranked(
                items, 0, degraded=True, reason=f"reranker skipped: {e}", cause=e.cause
            )
        return Reranked(sorted(items[:count], key=by_rerank) + items[count:], count)

    def _score(
        self, query: str, items: list[RankedItem], window: int, floor: int,
        budget_ms: float | None,
    ) -> int:
        """Score the first ``window`` items (with a budget: as many as fit, at least
        ``floor``); returns how many."""
        texts = [product_to_text(item.product) for item in items[:window]]
        chars = self.cost.chars(query, texts)
        waited = time.perf_counter()
        with self._slots:
            if budget_ms is not None:
                budget_ms -= (time.perf_counter() - waited) * 1000
                size = self.cost.window(chars, budget_ms=budget_ms, floor=floor, ceiling=window)
                texts, chars = texts[:size], chars[:size]
            started = time.perf_counter()
            scores = self.reranker.score(query, texts)
            self.cost.observe(chars=sum(chars), elapsed_ms=(time.perf_counter() - started) * 1000)
        head = items[: len(texts)]
        for item, score in zip(head, scores, strict=True):
            item.rerank = score
        for rank, item in enumerate(sorted(head, key=by_rerank), start=1):
            item.rerank_rank = rank
        return len(head)

    def close(self) -> None:
        self.reranker.close()


class FinalStage:
    """Orders every candidate by a learned linear ranker over the earlier stages' features."""

    def __init__(self, store: VectorStore, rankers: FinalRankers | None = None) -> None:
        self.store = store
        self.rankers = rankers or FinalRankers()
        self._warned_no_titles = False

    def rank(
        self,
        query: str,
        query_vector: npt.NDArray[np.float32] | None,
        items: list[RankedItem],
        ranker: LinearRanker,
    ) -> list[RankedItem]:
        """``items`` ordered by ``ranker``'s score, ties in retrieval order."""
        if not items:
            return items
        # Features read the candidates in retrieval order (feedback compares with its head).
        items = sorted(items, key=lambda item: item.retrieval_rank)
        ids = [item.product.id for item in items]
        features = stage_features(
            query,
            [item.candidate for item in items],
            {item.product.id: item.product for item in items},
            [item.rerank for item in items],
            ranker.feature_names,
            self._embeddings(ranker, query_vector, ids),
        )
        for item, row, score in zip(items, features, ranker.score(features), strict=True):
            item.final = float(score)
            item.features = tuple(float(value) for value in row)
        return sorted(items, key=lambda item: (-(item.final or 0.0), item.retrieval_rank))

    def _embeddings(
        self, ranker: LinearRanker, query_vector: npt.NDArray[np.float32] | None, ids: list[str]
    ) -> Embeddings | None:
        """What the ranker's embedding features read, fetched only if it has such features."""
        texts, titles = needs_embeddings(ranker.feature_names)
        if not (texts or titles):
            return None
        stored_titles = self.store.title_vectors(ids) if titles else {}
        if titles and ids and not stored_titles and not self._warned_no_titles:
            self._warned_no_titles = True
            logger.warning(
                "index %s holds no title embeddings (written before shoprank stored them): "
                "the final stage's title_cosine falls back to the product-text cosine; "
                "`shoprank reindex` restores it", self.store.location,
            )
        return Embeddings(
            query_vector, self.store.vectors(ids) if texts else {}, stored_titles
        )


def final_stage_name(ranker: LinearRanker | None) -> str:
    """How a response names the final stage that ranked it."""
    if ranker is None:
        return "none"
    return f"linear:{ranker.card.get('name', 'unnamed')}"
