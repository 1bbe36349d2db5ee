"""The personal term of a session's search: bounded, zero without history, explainable.

For each candidate the term mixes four signals of the session's decayed engagement
(`plugin.session_store.SessionState`), each in [-1, 1]:

- ``profile``: how much closer the product's embedding is to the session's profile vector
  than the average candidate is (cosine difference, `PROFILE_SCALE` of it counts fully);
- ``brand``: the share of the session's engagement that went to the product's brand;
- ``category``: the share that went to the product's own (deepest) category;
- ``price``: how close the product's price is to the band the session engaged with
  (a Gaussian on log price).

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
SIGNAL_WEIGHTS: dict[str, float] = {"profile": 1.0, "brand": 1.0, "category": 0.5, "price": 0.5}
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
) -> list[PersonalTerm]:
    """The term of each product for this session; all `ZERO` for a session without history."""
    if state is None or not state.has_history or not products:
        return [ZERO] * len(products)
    strength = confidence(state, now)
    total = state.weight or 1.0
    profile = _profile_signal(state, products, vectors)
    band = state.price_band()
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
        mixed = sum(SIGNAL_WEIGHTS[name] * value for name, value in signals.items())
        value = strength * mixed / sum(SIGNAL_WEIGHTS.values())
        terms.append(PersonalTerm(value, {name: round(v, 4) for name, v in signals.items()}))
    return terms


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
