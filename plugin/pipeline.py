"""The query path: encode -> retrieve N candidates -> rerank a window -> post-process -> top k."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from indexer.encoder import BiEncoder
from indexer.retrieval import Candidate, retrieve
from indexer.schema import Product, product_to_text
from indexer.store import VectorStore
from plugin.errors import RerankNotConfiguredError
from plugin.models import Explanation, SearchHit, SearchRequest, SearchResponse, StageScores
from reranker.base import NoReranker, Reranker


@dataclass
class RankedItem:
    """A candidate travelling through the later stages."""

    candidate: Candidate
    product: Product
    retrieval_rank: int
    rerank: float | None = None
    rerank_rank: int | None = None

    @property
    def ordered_by(self) -> str:
        if self.rerank is not None:
            return "rerank"
        if self.candidate.fused is not None:
            return "fused"
        return "vector" if self.candidate.vector is not None else "bm25"

    @property
    def score(self) -> float:
        return self.rerank if self.rerank is not None else self.candidate.retrieval_score


#: A post-processor is a pure function from a ranked list to a ranked list.
PostProcessor = Callable[[Sequence[RankedItem]], list[RankedItem]]


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round((now - self._last) * 1000, 3)
        self._last = now

    def total(self) -> dict[str, float]:
        self.timings["total"] = round((time.perf_counter() - self._start) * 1000, 3)
        return self.timings


class SearchPipeline:
    """Runs one search through every stage, recording per-stage scores and timings.

    >>> pipeline = SearchPipeline(store, encoder)
    >>> pipeline.search(SearchRequest(query="usb c charger", k=5)).results[0].title
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: BiEncoder,
        reranker: Reranker | None = None,
        post_processors: Sequence[PostProcessor] = (),
        *,
        candidates: int = 100,
        rerank_window: int = 50,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.reranker: Reranker = reranker or NoReranker()
        self.post_processors = list(post_processors)
        self.candidates = candidates
        self.rerank_window = rerank_window

    @property
    def has_reranker(self) -> bool:
        return not isinstance(self.reranker, NoReranker)

    def search(self, request: SearchRequest) -> SearchResponse:
        clock = _Clock()
        rerank = self.has_reranker if request.rerank is None else request.rerank
        if rerank and not self.has_reranker:
            raise RerankNotConfiguredError(
                "rerank=true but the server runs without a reranker "
                "(start it with --reranker cross-encoder --checkpoint DIR)"
            )
        vector = self.encoder.encode_query(request.query) if request.mode != "bm25" else None
        clock.lap("encode")
        depth = max(self.candidates, request.k)
        candidates = retrieve(
            self.store, request.mode, depth, text=request.query, vector=vector,
            filters=request.filters,
        )
        products = self.store.get_many([c.product_id for c in candidates])
        items = [
            RankedItem(candidate, products[candidate.product_id], rank)
            for rank, candidate in enumerate(candidates, start=1)
            if candidate.product_id in products
        ]
        clock.lap("retrieve")
        reranked = self._rerank(request.query, items) if rerank else 0
        if rerank:
            items = sorted(items[:reranked], key=_by_rerank) + items[reranked:]
        clock.lap("rerank")
        for post_process in self.post_processors:
            items = post_process(items)
        clock.lap("postprocess")
        hits = [_to_hit(rank, item, request.explain) for rank, item in enumerate(items, 1)]
        return SearchResponse(
            query=request.query,
            mode=request.mode,
            k=request.k,
            candidates=len(candidates),
            reranked=reranked,
            reranker=self.reranker.name if rerank else "none",
            results=hits[: request.k],
            timings_ms=clock.total(),
            filters=None if request.filters is None else request.filters.model_dump(
                exclude_none=True
            ),
        )

    def _rerank(self, query: str, items: list[RankedItem]) -> int:
        window = items[: self.rerank_window]
        scores = self.reranker.score(query, [product_to_text(item.product) for item in window])
        for item, score in zip(window, scores, strict=True):
            item.rerank = score
        for rank, item in enumerate(sorted(window, key=_by_rerank), start=1):
            item.rerank_rank = rank
        return len(window)


def _by_rerank(item: RankedItem) -> tuple[float, int]:
    return (-(item.rerank or 0.0), item.retrieval_rank)


def _to_hit(rank: int, item: RankedItem, explain: bool) -> SearchHit:
    candidate, product = item.candidate, item.product
    return SearchHit(
        rank=rank,
        id=product.id,
        title=product.title,
        brand=product.brand,
        category=product.category,
        price=product.price,
        score=item.score,
        scores=StageScores(
            bm25=candidate.bm25, vector=candidate.vector, fused=candidate.fused, rerank=item.rerank
        ),
        explanation=Explanation(
            bm25_rank=candidate.bm25_rank,
            vector_rank=candidate.vector_rank,
            retrieval_rank=item.retrieval_rank,
            rerank_rank=item.rerank_rank,
            ordered_by=item.ordered_by,
            text=product_to_text(product),
        )
        if explain
        else None,
    )
