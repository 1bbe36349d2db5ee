"""The plan of one search: what a request asks for, resolved against the server's settings.

Every rule about which stages a search runs is written here once: the retrieval depth and
filters, whether to rerank and how wide, which learned final stage ranks (if any), and the
post-processing policies (personalisation, fairness, out-of-stock products).

>>> plan = plan_search(SearchRequest(query="usb c charger"), SearchSettings(), FinalRankers(),
...                    has_reranker=True)
>>> plan.rerank, plan.window, plan.final
(True, 20, None)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from indexer.store import Filters, RetrievalMode
from plugin.errors import RerankNotConfiguredError
from plugin.models import FairnessPolicy, OutOfStock, SearchRequest
from reranker.features import CROSS_ENCODER_FEATURE
from reranker.linear_ranker import LinearRanker


@dataclass
class SearchSettings:
    """The server's knobs, for every search that does not say otherwise.

    ``concurrent_retrieval`` and ``max_concurrent_reranks`` are read once, when the pipeline is
    built; the others on every search.
    """

    #: Candidates retrieval returns (at least the request's k).
    candidates: int = 100
    #: Candidates the cross-encoder rescores, from the top.
    rerank_window: int = 20
    #: With a latency budget the window shrinks to what fits, never below this.
    min_rerank_window: int = 10
    #: A search's latency budget up to the end of reranking (None: a fixed window).
    rerank_budget_ms: float | None = None
    #: The most a session's term may add to or take from a rescaled score; 0: off.
    personalization_weight: float = 0.3
    #: What searches do with out-of-stock products unless they say otherwise.
    out_of_stock: OutOfStock = "demote"
    #: The fairness policy of requests that do not name one (None: no fairness step).
    fairness: FairnessPolicy | None = None
    #: Run BM25 beside query encoding and the vector search (hybrid mode).
    concurrent_retrieval: bool = True
    #: Reranks run at most this many at a time; the others queue.
    max_concurrent_reranks: int = 2


def reads_cross_encoder(ranker: LinearRanker | None) -> bool:
    """Whether ``ranker`` has the cross-encoder's score among its features."""
    return ranker is not None and CROSS_ENCODER_FEATURE in ranker.feature_names


@dataclass(frozen=True)
class FinalRankers:
    """The learned final stage and its retrieval-only twin."""

    ranker: LinearRanker | None = None
    #: The final stage for searches without the cross-encoder's score (reranking off, or the
    #: reranker down) when `ranker` reads it; None: such searches skip the stage.
    fallback: LinearRanker | None = None

    @property
    def needs_rerank(self) -> bool:
        """Whether the final stage reads the cross-encoder's score."""
        return reads_cross_encoder(self.ranker)


@dataclass(frozen=True)
class SearchPlan:
    """What one search runs, every choice resolved."""

    mode: RetrievalMode
    #: Candidates to retrieve.
    depth: int
    filters: Filters | None
    rerank: bool
    #: The rerank window, the floor a budget may shrink it to, and the budget (ms, None: none).
    window: int
    min_window: int
    budget_ms: float | None
    #: The final stage to run; None: none runs.
    final: LinearRanker | None
    #: What runs instead of ``final`` when it reads the cross-encoder and reranking fails.
    fallback: LinearRanker | None
    #: The session's weight in this search's ranking; 0: not personalised.
    personal_weight: float
    #: The fairness step's policy; None: no fairness step.
    fairness: FairnessPolicy | None
    out_of_stock: OutOfStock

    def degraded(self) -> SearchPlan:
        """The plan once reranking failed: a final stage that reads the cross-encoder's score
        hands over to its fallback, or is skipped without one."""
        if not reads_cross_encoder(self.final):
            return self
        return replace(self, final=self.fallback)


def plan_search(
    request: SearchRequest,
    settings: SearchSettings,
    rankers: FinalRankers,
    *,
    has_reranker: bool,
) -> SearchPlan:
    """Resolve ``request`` against the server's ``settings``, ``rankers`` and reranker.

    Raises `RerankNotConfiguredError` for a stage the request asks for that cannot run.
    """
    final = _final_wanted(request, rankers)
    if request.rerank is not None:
        rerank = request.rerank
    else:
        # A final stage that reads the cross-encoder is what its score was measured in:
        # then it reranks by default only where that stage runs.
        rerank = has_reranker and (final or not rankers.needs_rerank)
    ranker = rankers.ranker
    if final and rankers.needs_rerank and not rerank:
        if rankers.fallback is None:
            raise RerankNotConfiguredError(
                "the learned final stage uses cross-encoder scores, so it needs rerank=true"
            )
        ranker = rankers.fallback
    if rerank and not has_reranker:
        raise RerankNotConfiguredError(
            "rerank=true but the server runs without a reranker "
            "(start it with --reranker onnx, cross-encoder or triton)"
        )
    stock = request.out_of_stock or settings.out_of_stock
    filters = request.filters
    if stock == "hide":
        filters = (filters or Filters()).model_copy(update={"in_stock": True})
    policy = request.fairness or settings.fairness
    personal = request.session_id is not None and request.personalize is not False
    return SearchPlan(
        mode=request.mode,
        depth=max(settings.candidates, request.k),
        filters=filters,
        rerank=rerank,
        window=settings.rerank_window,
        min_window=settings.min_rerank_window,
        budget_ms=request.rerank_budget_ms or settings.rerank_budget_ms,
        final=ranker if final else None,
        fallback=rankers.fallback,
        personal_weight=settings.personalization_weight if personal else 0.0,
        fairness=policy if policy is not None and policy.policy != "none" else None,
        out_of_stock=stock,
    )


def _final_wanted(request: SearchRequest, rankers: FinalRankers) -> bool:
    # The final stage learned from hybrid candidates, so by default only hybrid uses it.
    if request.final is None:
        return rankers.ranker is not None and request.mode == "hybrid"
    if request.final and request.mode != "hybrid":
        raise RerankNotConfiguredError(
            f"final=true needs mode 'hybrid': the final stage reads BM25 and vector scores "
            f"(got mode {request.mode!r})"
        )
    if request.final and rankers.ranker is None:
        raise RerankNotConfiguredError(
            "final=true but the server runs without a learned final stage "
            "(tune one with `shoprank tune ranker` and start it with --final-ranker FILE)"
        )
    return request.final
