"""The query path: encode -> retrieve N candidates -> rerank a window -> learned final stage ->
post-process -> top k."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.encoder import BiEncoder
from indexer.retrieval import Candidate, fuse
from indexer.schema import Product, product_to_text
from indexer.store import Filters, ScoredId, VectorStore, check_encoder
from plugin.errors import RerankNotConfiguredError
from plugin.fairness.exposure_store import ExposureStore, InMemoryExposureStore
from plugin.fairness.stage import apply_fairness
from plugin.models import (
    Explanation,
    FairnessPolicy,
    OutOfStock,
    SearchHit,
    SearchRequest,
    SearchResponse,
    StageScores,
)
from plugin.personalization import personal_terms, rescaled
from plugin.rerank_budget import CHARS_PER_TOKEN, RerankCostModel
from plugin.session_store import InMemorySessionStore, SessionStore, SessionStoreError
from reranker.base import NoReranker, Reranker
from reranker.errors import RerankerError, RerankerUnavailableError
from reranker.features import (
    CROSS_ENCODER_FEATURE,
    Embeddings,
    needs_embeddings,
    stage_features,
)
from reranker.ltr import LinearRanker

logger = logging.getLogger(__name__)

#: How long the catalog's brand counts (for rule-based fairness) are reused.
BRAND_COUNTS_SECONDS = 60.0


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
        for score in (self.personalized, self.final, self.rerank):
            if score is not None:
                return score
        return self.candidate.retrieval_score


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

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1000

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
        final_ranker: LinearRanker | None = None,
        fallback_final_ranker: LinearRanker | None = None,
        candidates: int = 100,
        rerank_window: int = 20,
        fairness: FairnessPolicy | None = None,
        exposure_store: ExposureStore | None = None,
        session_store: SessionStore | None = None,
        personalization_weight: float = 0.3,
        out_of_stock: OutOfStock = "demote",
        rerank_budget_ms: float | None = None,
        min_rerank_window: int = 10,
        concurrent_retrieval: bool = True,
        max_concurrent_reranks: int = 2,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.reranker: Reranker = reranker or NoReranker()
        self.post_processors = list(post_processors)
        self.final_ranker = final_ranker
        #: The final stage for searches without the cross-encoder's score (reranking off, or
        #: the reranker down) when `final_ranker` reads it; None: such searches skip the stage.
        self.fallback_final_ranker = fallback_final_ranker
        self.candidates = candidates
        self.rerank_window = rerank_window
        #: The fairness policy of requests that do not name one (None: no fairness step).
        self.fairness = fairness
        #: What `amortized` fairness remembers of recent queries' exposure.
        self.exposure_store: ExposureStore = exposure_store or InMemoryExposureStore()
        #: Session states, read by searches that carry a session_id.
        self.session_store: SessionStore = session_store or InMemorySessionStore()
        #: The most a session's term may add to or take from a rescaled score; 0: off.
        self.personalization_weight = personalization_weight
        #: What searches do with out-of-stock products unless they say otherwise.
        self.out_of_stock: OutOfStock = out_of_stock
        #: A search's latency budget up to the end of reranking (None: a fixed window); the
        #: window shrinks to what fits, never below `min_rerank_window`.
        self.rerank_budget_ms = rerank_budget_ms
        self.min_rerank_window = min_rerank_window
        self.rerank_cost = RerankCostModel(
            max_chars=int(reranker_max_length(self.reranker) * CHARS_PER_TOKEN)
        )
        #: Run BM25 beside query encoding and the vector search (hybrid mode).
        self.concurrent_retrieval = concurrent_retrieval
        self._pool: ThreadPoolExecutor | None = None
        #: Reranks run at most this many at a time; the others queue (and with a budget, the
        #: wait counts against it, so a loaded server reranks fewer candidates, not slower).
        self._rerank_slots = threading.BoundedSemaphore(max(1, max_concurrent_reranks))
        self._pool_lock = threading.Lock()
        self._brands: tuple[float, dict[str, int]] | None = None
        self._warned_no_titles = False
        #: Event counters, served at GET /metrics.
        self.counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()

    @property
    def has_reranker(self) -> bool:
        return not isinstance(self.reranker, NoReranker)

    @property
    def final_needs_rerank(self) -> bool:
        ranker = self.final_ranker
        return ranker is not None and CROSS_ENCODER_FEATURE in ranker.feature_names

    def _brand_counts(self) -> dict[str, int]:
        """The catalog's products per brand, read again at most every `BRAND_COUNTS_SECONDS`."""
        cached = self._brands
        if cached is None or time.monotonic() - cached[0] > BRAND_COUNTS_SECONDS:
            cached = (time.monotonic(), self.store.brand_counts())
            self._brands = cached
        return cached[1]

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=8,
                                                    thread_name_prefix="shoprank-bm25")
        return self._pool

    def close(self) -> None:
        """Close every collaborator (the API's lifespan calls this on shutdown)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.store.close()
        self.reranker.close()
        self.session_store.close()

    def count(self, name: str) -> None:
        with self._counters_lock:
            self.counters[name] += 1

    def search(self, request: SearchRequest) -> SearchResponse:
        self.count("search_total")
        clock = _Clock()
        # The final stage learned from hybrid candidates, so by default only hybrid uses it.
        if request.final is None:
            final = self.final_ranker is not None and request.mode == "hybrid"
        else:
            final = request.final
        if final and request.mode != "hybrid":
            raise RerankNotConfiguredError(
                f"final=true needs mode 'hybrid': the final stage reads BM25 and vector scores "
                f"(got mode {request.mode!r})"
            )
        if final and self.final_ranker is None:
            raise RerankNotConfiguredError(
                "final=true but the server runs without a learned final stage "
                "(tune one with `shoprank tune ranker` and start it with --final-ranker FILE)"
            )
        if request.rerank is not None:
            rerank = request.rerank
        else:
            # A final stage that reads the cross-encoder is what its score was measured in:
            # then it reranks by default only where that stage runs.
            rerank = self.has_reranker and (final or not self.final_needs_rerank)
        ranker = self.final_ranker
        if final and self.final_needs_rerank and not rerank and self.fallback_final_ranker:
            ranker = self.fallback_final_ranker
        elif final and self.final_needs_rerank and not rerank:
            raise RerankNotConfiguredError(
                "the learned final stage uses cross-encoder scores, so it needs rerank=true"
            )
        if rerank and not self.has_reranker:
            raise RerankNotConfiguredError(
                "rerank=true but the server runs without a reranker "
                "(start it with --reranker onnx, cross-encoder or triton)"
            )
        depth = max(self.candidates, request.k)
        stock = request.out_of_stock or self.out_of_stock
        filters = request.filters
        if stock == "hide":
            filters = (filters or Filters()).model_copy(update={"in_stock": True})
        # In hybrid mode BM25 runs in a worker while this thread encodes the query and runs the
        # vector search: the two round trips to OpenSearch, or BM25 and the encoder, overlap.
        lexical: Future[list[ScoredId]] | None = None
        if request.mode == "hybrid" and self.concurrent_retrieval:
            lexical = self._executor().submit(
                self.store.search_bm25, request.query, depth, filters
            )
        try:
            vector = None
            if request.mode != "bm25":
                check_encoder(self.store, self.encoder)  # cheap: the stores cache the stamp
                vector = self.encoder.encode_query(request.query)
            clock.lap("encode")
            semantic = (
                self.store.search_vector(vector, depth, filters) if vector is not None else []
            )
        except BaseException:
            if lexical is not None:
                lexical.cancel()
            raise
        if lexical is not None:
            bm25 = lexical.result()
        elif request.mode != "vector":
            bm25 = self.store.search_bm25(request.query, depth, filters)
        else:
            bm25 = []
        candidates = fuse(request.mode, bm25, semantic, depth)
        products = self.store.get_many([c.product_id for c in candidates])
        items = [
            RankedItem(candidate, products[candidate.product_id], rank)
            for rank, candidate in enumerate(candidates, start=1)
            if candidate.product_id in products
        ]
        clock.lap("retrieve")
        reranked, degraded = 0, False
        if rerank:
            budget = request.rerank_budget_ms or self.rerank_budget_ms
            try:
                reranked = self._rerank(
                    request.query, items,
                    None if budget is None else budget - clock.elapsed_ms(),
                )
            except RerankerUnavailableError as e:
                # Fail open: retrieval order is a worse answer than reranked, but an answer.
                logger.warning("search degraded to retrieval order: %s", e)
                self.count("search_degraded_total")
                degraded = True
            items = sorted(items[:reranked], key=_by_rerank) + items[reranked:]
        clock.lap("rerank")
        if degraded and self.final_needs_rerank:
            # Its cross-encoder feature is missing: the fallback stage, if any, ranks instead.
            ranker = self.fallback_final_ranker
            final = final and ranker is not None
        if final and ranker is not None:
            items = self._final(request.query, vector, items, ranker)
        clock.lap("final")
        for post_process in self.post_processors:
            items = post_process(items)
        personalized = False
        if request.session_id is not None and request.personalize is not False:
            items, personalized = self._personalize(request.session_id, items, vector)
        clock.lap("personalize")
        fairness = None
        policy = request.fairness or self.fairness
        if policy is not None and policy.policy != "none" and items:
            outcome = apply_fairness(
                policy, [item.product for item in items], _fairness_scores(items),
                request.k, self.exposure_store, request.query,
                self._brand_counts() if policy.protected_share_below is not None else None,
            )
            for index, move in outcome.moves.items():
                items[index].fairness_move = (
                    f"moved from rank {move.from_rank} to {move.to_rank}: {move.reason}"
                )
            items = [items[index] for index in outcome.order]
            fairness = outcome.summary
        if stock == "demote":
            items = _demote_out_of_stock(items)
        clock.lap("postprocess")
        hits = [
            _to_hit(rank, item, request.explain, ranker)
            for rank, item in enumerate(items, 1)
        ]
        return SearchResponse(
            request_id=uuid.uuid4().hex,
            query=request.query,
            mode=request.mode,
            k=request.k,
            candidates=len(candidates),
            reranked=reranked,
            reranker=self.reranker.name if rerank else "none",
            final_stage=_final_name(ranker) if final else "none",
            degraded=degraded,
            personalized=personalized,
            fairness=fairness,
            results=hits[: request.k],
            timings_ms=clock.total(),
            filters=None if filters is None else filters.model_dump(exclude_none=True),
        )

    def _personalize(
        self,
        session_id: str,
        items: list[RankedItem],
        query_vector: npt.NDArray[np.float32] | None,
    ) -> tuple[list[RankedItem], bool]:
        """Add the session's weighted term to each candidate's rescaled score and re-sort.

        Returns the items and whether any score changed. A session store that cannot be
        reached leaves the ranking as it was (counted at /metrics), never failing the search.
        """
        if self.personalization_weight <= 0 or not items:
            return items, False
        try:
            state = self.session_store.get(session_id)
        except SessionStoreError as e:
            logger.warning("search not personalised: %s", e)
            self.count("personalization_unavailable_total")
            return items, False
        if state is None or not state.has_history:
            return items, False
        products = [item.product for item in items]
        vectors = self.store.vectors([p.id for p in products]) if state.profile is not None else {}
        terms = personal_terms(state, products, vectors, time.time(), query_vector)
        if all(term.value == 0 for term in terms):
            return items, False
        base = rescaled(_fairness_scores(items))
        for item, term, score in zip(items, terms, base, strict=True):
            item.personal = self.personalization_weight * term.value
            item.personalized = score + item.personal
            item.signals = term.signals
        order = sorted(range(len(items)), key=lambda i: (-(items[i].personalized or 0.0), i))
        self.count("search_personalized_total")
        return [items[i] for i in order], True

    def _rerank(self, query: str, items: list[RankedItem], budget_ms: float | None) -> int:
        """Rerank the first `rerank_window` items, or with a budget, as many of them as the
        cost model predicts will fit (at least `min_rerank_window`)."""
        texts = [product_to_text(item.product) for item in items[: self.rerank_window]]
        chars = self.rerank_cost.chars(query, texts)
        waited = time.perf_counter()
        with self._rerank_slots:
            if budget_ms is not None:
                budget_ms -= (time.perf_counter() - waited) * 1000
                size = self.rerank_cost.window(
                    chars, budget_ms=budget_ms, floor=self.min_rerank_window,
                    ceiling=self.rerank_window,
                )
                texts, chars = texts[:size], chars[:size]
            started = time.perf_counter()
            scores = self.reranker.score(query, texts)
            self.rerank_cost.observe(
                chars=sum(chars), elapsed_ms=(time.perf_counter() - started) * 1000
            )
        window = items[: len(texts)]
        for item, score in zip(window, scores, strict=True):
            item.rerank = score
        for rank, item in enumerate(sorted(window, key=_by_rerank), start=1):
            item.rerank_rank = rank
        return len(window)


    def _final(
        self,
        query: str,
        query_vector: npt.NDArray[np.float32] | None,
        items: list[RankedItem],
        ranker: LinearRanker,
    ) -> list[RankedItem]:
        """Order every candidate by the learned final stage's score."""
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


def reranker_max_length(reranker: Reranker) -> int:
    """Tokens of each pair ``reranker`` reads, for the budget's cost model; 256 when it does
    not say, or cannot yet (a broken checkpoint fails on the first rerank, not here)."""
    try:
        return int(getattr(reranker, "max_length", None) or 256)
    except RerankerError:
        return 256


def _fairness_scores(items: Sequence[RankedItem]) -> list[float]:
    """One scale for the fairness step's relevance: past the rerank window, where items keep
    their retrieval score, each counts as the window's lowest cross-encoder score."""
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


def _demote_out_of_stock(items: list[RankedItem]) -> list[RankedItem]:
    """Products marked out of stock move below every other product, keeping their order."""
    kept = [item for item in items if item.product.in_stock is not False]
    if len(kept) == len(items):
        return items
    moved = []
    for rank, item in enumerate(items, 1):
        if item.product.in_stock is False:
            item.stock_note = f"out of stock: moved down from rank {rank}"
            moved.append(item)
    return kept + moved


def _final_name(ranker: LinearRanker | None) -> str:
    if ranker is None:
        return "none"
    return f"linear:{ranker.card.get('name', 'unnamed')}"


def _by_rerank(item: RankedItem) -> tuple[float, int]:
    return (-(item.rerank or 0.0), item.retrieval_rank)


def _to_hit(
    rank: int, item: RankedItem, explain: bool, ranker: LinearRanker | None
) -> SearchHit:
    candidate, product = item.candidate, item.product
    return SearchHit(
        rank=rank,
        id=product.id,
        title=product.title,
        brand=product.brand,
        category=product.category,
        price=product.price,
        in_stock=product.in_stock,
        score=item.score,
        scores=StageScores(
            bm25=candidate.bm25,
            vector=candidate.vector,
            fused=candidate.fused,
            rerank=item.rerank,
            final=item.final,
            personal=item.personal,
        ),
        explanation=Explanation(
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
            text=product_to_text(product),
        )
        if explain
        else None,
    )
