"""The query path, as its stages: plan the request -> retrieve N candidates (BM25 and vector at
once) -> rerank a window -> learned final stage -> post-processors in turn -> top k."""

from __future__ import annotations

import time
import uuid

from indexer.encoder import BiEncoder
from indexer.retrieval import HybridRetriever, Retrieval
from indexer.schema import product_to_text
from indexer.store import VectorStore
from plugin.errors import PluginError
from plugin.fairness.exposure_store import ExposureStore, InMemoryExposureStore
from plugin.metrics import SearchMetrics
from plugin.models import Explanation, SearchHit, SearchRequest, SearchResponse, StageScores
from plugin.post_processors import (
    DemoteOutOfStock,
    Fairness,
    Personalize,
    PostProcessor,
    Ranking,
    SearchContext,
)
from plugin.rank_stages import FinalStage, Reranked, RerankStage, final_stage_name
from plugin.ranked import RankedItem
from plugin.search_plan import FinalRankers, SearchPlan, SearchSettings, plan_search
from plugin.session_store import InMemorySessionStore, SessionStore
from reranker.base import Reranker
from reranker.linear_ranker import LinearRanker


class StageClock:
    """Milliseconds per stage of one search; a stage timed twice adds up."""

    def __init__(self) -> None:
        self._laps: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to ``stage``."""
        now = time.perf_counter()
        self._laps[stage] = self._laps.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1000

    def timings(self) -> dict[str, float]:
        """Every stage's milliseconds and the ``total``, rounded to microseconds."""
        timings = {stage: round(ms, 3) for stage, ms in self._laps.items()}
        timings["total"] = round(self.elapsed_ms(), 3)
        return timings


class SearchPipeline:
    """Runs one search through every stage, recording per-stage scores and timings.

    The collaborators are injected: the store and the query encoder (the retriever's), the
    reranker, the learned final stages, the session and exposure stores; ``settings`` holds
    the knobs. The post-processors run in the order of `post_processors`.

    >>> pipeline = SearchPipeline(store, encoder)
    >>> pipeline.search(SearchRequest(query="usb c charger", k=5)).results[0].title
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: BiEncoder,
        reranker: Reranker | None = None,
        *,
        rankers: FinalRankers | None = None,
        sessions: SessionStore | None = None,
        exposure: ExposureStore | None = None,
        settings: SearchSettings | None = None,
    ) -> None:
        self.settings = settings or SearchSettings()
        self.retriever = HybridRetriever(
            store, encoder, concurrent=self.settings.concurrent_retrieval
        )
        self.reranking = RerankStage(
            reranker, max_concurrent=self.settings.max_concurrent_reranks
        )
        self.final = FinalStage(store, rankers)
        #: What the searches did, served at GET /metrics.
        self.metrics = SearchMetrics(lambda: self.reranker.circuit_open,
                                     lambda: self.store.circuit_open)
        self._sessions = sessions or InMemorySessionStore()
        self.post_processors: list[PostProcessor] = [
            Personalize(self._sessions, store, self.metrics),
            Fairness(exposure or InMemoryExposureStore(), store),
            DemoteOutOfStock(),
        ]

    @property
    def store(self) -> VectorStore:
        return self.retriever.store

    @property
    def encoder(self) -> BiEncoder:
        encoder = self.retriever.encoder
        if encoder is None:  # the pipeline builds its retriever with one
            raise PluginError("the pipeline's retriever has no query encoder")
        return encoder

    @property
    def reranker(self) -> Reranker:
        return self.reranking.reranker

    @property
    def session_store(self) -> SessionStore:
        """Session states, read by searches that carry a session_id."""
        return self._sessions

    @property
    def has_reranker(self) -> bool:
        return self.reranking.available

    @property
    def final_ranker(self) -> LinearRanker | None:
        return self.final.rankers.ranker

    @property
    def final_needs_rerank(self) -> bool:
        return self.final.rankers.needs_rerank

    def close(self) -> None:
        """Close every collaborator (the API's lifespan calls this on shutdown)."""
        self.retriever.close()
        self.store.close()
        self.reranking.close()
        self._sessions.close()

    def plan(self, request: SearchRequest) -> SearchPlan:
        """What ``request`` runs on this server (`plugin.search_plan.plan_search`)."""
        return plan_search(
            request, self.settings, self.final.rankers, has_reranker=self.has_reranker
        )

    def search(self, request: SearchRequest) -> SearchResponse:
        self.metrics.searches.inc()
        clock = StageClock()
        plan = self.plan(request)
        retrieval = self.retriever.retrieve(
            plan.mode, request.query, plan.depth, plan.filters, lap=clock.lap
        )
        items = self._ranked_items(retrieval)
        clock.lap("retrieve")
        reranked = self._rerank(request.query, items, plan, clock)
        if reranked.degraded:
            plan = plan.degraded()
        clock.lap("rerank")
        items = reranked.items
        if plan.final is not None:
            items = self.final.rank(request.query, retrieval.vector, items, plan.final)
        clock.lap("final")
        ranking = self._post_process(
            Ranking(items), SearchContext(request, plan, retrieval.vector), clock
        )
        response = self._response(request, plan, retrieval, reranked, ranking, clock)
        self.metrics.timed(response.timings_ms)
        return response

    def _ranked_items(self, retrieval: Retrieval) -> list[RankedItem]:
        """The candidates with their products, in retrieval order (deleted ones left out)."""
        candidates = retrieval.candidates
        products = self.store.get_many([c.product_id for c in candidates])
        return [
            RankedItem(candidate, products[candidate.product_id], rank)
            for rank, candidate in enumerate(candidates, start=1)
            if candidate.product_id in products
        ]

    def _rerank(
        self, query: str, items: list[RankedItem], plan: SearchPlan, clock: StageClock
    ) -> Reranked:
        if not plan.rerank:
            return Reranked(items, 0)
        reranked = self.reranking.rerank(query, items, plan, clock.elapsed_ms())
        if reranked.cause is not None:
            self.metrics.degraded_by(reranked.cause)
        self.metrics.refresh()
        return reranked

    def _post_process(
        self, ranking: Ranking, context: SearchContext, clock: StageClock
    ) -> Ranking:
        for post_processor in self.post_processors:
            ranking = post_processor.process(ranking, context)
            clock.lap(post_processor.timing)
        return ranking

    def _response(
        self,
        request: SearchRequest,
        plan: SearchPlan,
        retrieval: Retrieval,
        reranked: Reranked,
        ranking: Ranking,
        clock: StageClock,
    ) -> SearchResponse:
        hits = [
            _to_hit(rank, item, request.explain, plan.final)
            for rank, item in enumerate(ranking.items[: request.k], 1)
        ]
        return SearchResponse(
            request_id=uuid.uuid4().hex,
            query=request.query,
            mode=request.mode,
            k=request.k,
            candidates=len(retrieval.candidates),
            reranked=reranked.count,
            reranker=self.reranker.name if plan.rerank else "none",
            final_stage=final_stage_name(plan.final),
            degraded=reranked.degraded,
            degraded_reason=reranked.reason,
            personalized=ranking.personalized,
            fairness=ranking.fairness,
            results=hits,
            timings_ms=clock.timings(),
            filters=None if plan.filters is None else plan.filters.model_dump(exclude_none=True),
        )


def _to_hit(
    rank: int, item: RankedItem, explain: bool, ranker: LinearRanker | None
) -> SearchHit:
    candidate, product = item.candidate, item.product
    return SearchHit(
        **SearchHit.summary_of(product, rank),
        score=item.score,
        scores=StageScores(
            bm25=candidate.bm25,
            vector=candidate.vector,
            fused=candidate.fused,
            rerank=item.rerank,
            final=item.final,
            personal=item.personal,
        ),
        explanation=_explanation(item, ranker) if explain else None,
    )


def _explanation(item: RankedItem, ranker: LinearRanker | None) -> Explanation:
    candidate = item.candidate
    return Explanation(
        bm25_rank=candidate.bm25_rank,
        vector_rank=candidate.vector_rank,
        retrieval_rank=item.retrieval_rank,
        rerank_rank=item.rerank_rank,
        ordered_by=item.ordered_by,
        final_contributions=(
            {name: round(v, 4) for name, v in ranker.contributions(item.features).items()}
            if ranker is not None and item.final is not None
            else None
        ),
        fairness_move=item.fairness_move,
        personalization=item.signals,
        stock=item.stock_note,
        text=product_to_text(item.product),
    )

