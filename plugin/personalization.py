"""The personal term of a session's search: bounded, zero without history, explainable.

For each candidate the term mixes four signals of the session's decayed engagement
(`plugin.session_store.SessionState`), each in [-1, 1]:

- ``profile``: how much closer the product's embedding is to the session's profile vector
  than the average candidate is (cosine difference, `PROFILE_SCALE` of it counts fully);
- ``brand``: the share of the session's engagement that went to the product's brand;
- ``category``: the share that went to the product's own (deepest) category;
- ``price``: how close the product's price is to the band the session engaged with
  (a Gaussian on log price).

A history about something else should not steer this query: the profile and price signals are
multiplied by ``history_match``, 0 when the session's profile is no closer to the query's
embedding than `UNRELATED_COSINE` and 1 from `RELATED_COSINE` up (linear between), so clicks
on phone cases do not push laptops around. The brand and category signals need no gate: they
only touch candidates of the brands and categories the session engaged with.

The mix is scaled by the session's confidence, ``1 - exp(-weight / CONFIDENCE_WEIGHT)``,
which grows with how much (and how recently) the session engaged, so one stray click moves
little. The pipeline adds ``weight x term`` to the ordering score rescaled to [0, 1] over the
candidates; a term is never larger than ``weight`` either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.schema import Product
from plugin.session_store import SessionState

#: How much each signal counts in the mix (they are averaged with these weights).
SIGNAL_WEIGHTS: dict[str, float] = {"profile": 1.0, "brand": 1.5, "category": 0.5, "price": 0.5}
#: Query-to-profile cosines at which a history stops and starts counting as related.
UNRELATED_COSINE = 0.2
RELATED_COSINE = 0.5
#: A cosine this much above the candidates' mean gives the full profile signal.
PROFILE_SCALE = 0.2
#: Decayed engagement weight at which a session's term reaches 1 - 1/e of its full strength
#: (a click weighs 1, an add-to-cart 3, a purchase 5).
CONFIDENCE_WEIGHT = 2.0
#: The narrowest price band, in log(1 + price), so one click does not pin a single price.
MIN_PRICE_SPREAD = 0.25


@dataclass(frozen=True)
class PersonalTerm:
    """One candidate's term (in [-1, 1], before the request's weight) and its signals."""

    value: float
    signals: dict[str, float]


ZERO = PersonalTerm(0.0, {})


def confidence(state: SessionState, now: float) -> float:
    return 1.0 - math.exp(-state.weight_at(now) / CONFIDENCE_WEIGHT)


def personal_terms(
    state: SessionState | None,
    products: Sequence[Product],
    vectors: Mapping[str, npt.NDArray[np.float32]],
    now: float,
    query_vector: npt.NDArray[np.float32] | None = None,
) -> list[PersonalTerm]:
    """The term of each product for this session; all `ZERO` for a session without history.

    Without ``query_vector`` (BM25 searches) the profile and price signals are off."""
    if state is None or not state.has_history or not products:
        return [ZERO] * len(products)
    strength = confidence(state, now)
    total = state.weight or 1.0
    match = history_match(state, query_vector)
    profile = _profile_signal(state, products, vectors) if match > 0 else [0.0] * len(products)
    band = state.price_band() if match > 0 else None
    terms = []
    for product, near in zip(products, profile, strict=True):
        signals = {
            "profile": near,
            "brand": state.brands.get((product.brand or "").casefold(), 0.0) / total,
            "category": (
                state.categories.get(product.category[-1].casefold(), 0.0) / total
                if product.category
                else 0.0
            ),
            "price": _price_signal(product.price, band),
        }
        signals = {name: float(min(max(value, -1.0), 1.0)) for name, value in signals.items()}
        signals["profile"] *= match
        signals["price"] *= match
        mixed = sum(SIGNAL_WEIGHTS[name] * value for name, value in signals.items())
        signals["history_match"] = match
        value = strength * mixed / sum(SIGNAL_WEIGHTS.values())
        terms.append(PersonalTerm(value, {name: round(v, 4) for name, v in signals.items()}))
    return terms


def history_match(state: SessionState, query_vector: npt.NDArray[np.float32] | None) -> float:
    """How related the session's history is to this query, 0 to 1 (see the module notes)."""
    direction = state.profile_direction()
    if direction is None or query_vector is None or len(query_vector) != len(direction):
        return 0.0
    cosine = float(query_vector @ direction) / (float(np.linalg.norm(query_vector)) or 1.0)
    return min(max((cosine - UNRELATED_COSINE) / (RELATED_COSINE - UNRELATED_COSINE), 0.0), 1.0)


def _profile_signal(
    state: SessionState,
    products: Sequence[Product],
    vectors: Mapping[str, npt.NDArray[np.float32]],
) -> list[float]:
    direction = state.profile_direction()
    if direction is None:
        return [0.0] * len(products)
    cosines = [
        float(vectors[p.id] @ direction) if p.id in vectors and len(vectors[p.id]) == len(direction)
        else None
        for p in products
    ]
    known = [c for c in cosines if c is not None]
    if not known:
        return [0.0] * len(products)
    mean = sum(known) / len(known)
    return [0.0 if c is None else (c - mean) / PROFILE_SCALE for c in cosines]


def _price_signal(price: float | None, band: tuple[float, float] | None) -> float:
    if price is None or band is None:
        return 0.0
    mean, spread = band
    z = (math.log1p(price) - mean) / max(spread, MIN_PRICE_SPREAD)
    return math.exp(-0.5 * z * z)


def rescaled(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] (best 1, worst 0); all equal scores map to 1."""
    low, high = min(scores), max(scores)
    if high - low <= 0:
        return [1.0] * len(scores)
    return [(score - low) / (high - low) for score in scores]
