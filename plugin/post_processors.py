"""What a search does to its ranking after the ranking stages, in turn: personalise it to the
session, make it fair to the groups a policy protects, move out-of-stock products down.

Each post-processor has the same small interface (`PostProcessor`): a `Ranking` and the
search's `SearchContext` in, a `Ranking` out. The pipeline runs them in order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from indexer.store import VectorStore
from plugin.fairness.exposure_store import ExposureStore
from plugin.fairness.stage import apply_fairness
from plugin.metrics import SearchMetrics
from plugin.models import FairnessSummary, SearchRequest
from plugin.personalization import personal_terms, rescaled
from plugin.ranked import RankedItem, comparable_scores
from plugin.search_plan import SearchPlan
from plugin.session_store import SessionStore, SessionStoreError

logger = logging.getLogger(__name__)

#: How long the catalog's brand counts (for rule-based fairness) are reused.
BRAND_COUNTS_SECONDS = 60.0


@dataclass(frozen=True)
class SearchContext:
    """What a post-processor may read of the search it post-processes."""

    request: SearchRequest
    plan: SearchPlan
    query_vector: npt.NDArray[np.float32] | None


@dataclass(frozen=True)
class Ranking:
    """The ranked items and what the post-processors did to them."""

    items: list[RankedItem]
    #: Whether the session's history changed the ranking's scores.
    personalized: bool = False
    fairness: FairnessSummary | None = None


class PostProcessor(Protocol):
    """One step after ranking."""

    #: The `timings_ms` field its time counts in.
    timing: str

    def process(self, ranking: Ranking, context: SearchContext) -> Ranking: ...


class Personalize:
    """Adds the session's weighted term to each candidate's rescaled score and re-sorts.

    A session store that cannot be reached leaves the ranking as it was (counted at /metrics),
    never failing the search.
    """

    timing = "personalize"

    def __init__(self, sessions: SessionStore, store: VectorStore, metrics: SearchMetrics) -> None:
        self.sessions = sessions
        self.store = store
        self.metrics = metrics

    def process(self, ranking: Ranking, context: SearchContext) -> Ranking:
        weight, items = context.plan.personal_weight, ranking.items
        session_id = context.request.session_id
        if weight <= 0 or session_id is None or not items:
            return ranking
        try:
            state = self.sessions.get(session_id)
        except SessionStoreError as e:
            logger.warning("search not personalised: %s", e)
            self.metrics.personalization_unavailable.inc()
            return ranking
        if state is None or not state.has_history:
            return ranking
        products = [item.product for item in items]
        vectors = self.store.vectors([p.id for p in products]) if state.profile is not None else {}
        terms = personal_terms(state, products, vectors, time.time(), context.query_vector)
        if all(term.value == 0 for term in terms):
            return ranking
        base = rescaled(comparable_scores(items))
        for item, term, score in zip(items, terms, base, strict=True):
            item.personal = weight * term.value
            item.personalized = score + item.personal
            item.signals = term.signals
        order = sorted(range(len(items)), key=lambda i: (-(items[i].personalized or 0.0), i))
        self.metrics.personalized.inc()
        return replace(ranking, items=[items[i] for i in order], personalized=True)


class Fairness:
    """Reorders the ranking under the plan's fairness policy (`plugin.fairness.stage`), noting
    each move on the item it moved. The only caller of the fairness code in the query path."""

    timing = "postprocess"

    def __init__(self, exposure: ExposureStore, store: VectorStore) -> None:
        #: What `amortized` fairness remembers of recent queries' exposure.
        self.exposure = exposure
        self.store = store
        self._brands: tuple[float, dict[str, int]] | None = None

    def process(self, ranking: Ranking, context: SearchContext) -> Ranking:
        policy, items = context.plan.fairness, ranking.items
        if policy is None or not items:
            return ranking
        request = context.request
        outcome = apply_fairness(
            policy, [item.product for item in items], comparable_scores(items),
            request.k, self.exposure, request.query,
            self._brand_counts() if policy.protected_share_below is not None else None,
        )
        for index, move in outcome.moves.items():
            items[index].fairness_move = (
                f"moved from rank {move.from_rank} to {move.to_rank}: {move.reason}"
            )
        return replace(
            ranking, items=[items[index] for index in outcome.order], fairness=outcome.summary
        )

    def _brand_counts(self) -> dict[str, int]:
        """The catalog's products per brand, read again at most every `BRAND_COUNTS_SECONDS`."""
        cached = self._brands
        if cached is None or time.monotonic() - cached[0] > BRAND_COUNTS_SECONDS:
            cached = (time.monotonic(), self.store.brand_counts())
            self._brands = cached
        return cached[1]


class DemoteOutOfStock:
    """Where the plan says ``demote``, products marked out of stock move below every other
    product, keeping their order."""

    timing = "postprocess"

    def process(self, ranking: Ranking, context: SearchContext) -> Ranking:
        items = ranking.items
        if context.plan.out_of_stock != "demote":
            return ranking
        kept = [item for item in items if item.product.in_stock is not False]
        if len(kept) == len(items):
            return ranking
        moved = []
        for rank, item in enumerate(items, 1):
            if item.product.in_stock is False:
                item.stock_note = f"out of stock: moved down from rank {rank}"
                moved.append(item)
        return replace(ranking, items=kept + moved)
