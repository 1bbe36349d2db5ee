"""Simulated shoppers and their clicks, built from human relevance judgments (no click log).

No public click log with a usable licence exists for the shared catalogs, so the personalisation
bench (`bench/personalization.py`) simulates sessions. Everything here is pure: the caller
passes the judgments, the products' brand and price, the rankings it got and a seeded
``random.Random``; the same inputs give the same sessions and clicks.

Click model: a position-based model (PBM; Joachims et al. 2005, Chuklin, Markov and de Rijke,
"Click Models for Web Search", 2015)::

    P(click at rank r) = P(examined r) * P(attractive)
    P(examined r)      = 1 / r ** eta,                       eta = 1
    P(attractive)      = attractiveness(grade) * preference(product)

- ``attractiveness``: by judged grade. ESCI: Exact 0.9, Substitute 0.4, Complement 0.15,
  Irrelevant 0.05; Icecat's 0-3 scale maps the same way (3: 0.9, 2: 0.4, 1: 0.15, 0: 0.05).
  An unjudged product is unknown, not irrelevant; it gets the irrelevant value, 0.05.
- ``preference``: the simulated user's factor, 1 for a product that matches their intent and
  ``beta`` (0.3) for one that does not (`Intent.factor`).
- After a click: add to cart with probability 0.1 x preference, then purchase with 0.3.

Users: a user has a latent `Intent`, one of

- ``brand``: a preferred brand B (brands compare case-insensitively; a product without a brand
  does not match);
- ``price``: a price band, the lower or the upper third of the prices of the relevant judged
  products of the whole catalog (all dev queries). A product without a price (most of ESCI's)
  gets the factor expected when its unknown price falls in any third alike, ``(1 + 2 beta) / 3``;
- ``none``: no preference (factor 1 everywhere).

The user's gain for a product, the ground truth of *their* nDCG@10, is ``judged gain x factor``
(ESCI gains E 1.0, S 0.1, C 0.01; Icecat 2^g - 1); the ideal DCG is taken over the judged
products' user gains (`user_ndcg`).

Sessions (`plan_session`), per condition:

- ``brand``: B is drawn uniformly from the brands that have a relevant product (ESCI Exact or
  Substitute, Icecat grade >= 1) in at least two queries, one of which also has a relevant
  product of another brand (so the intent changes what is ideal). History: 1-3 of B's queries;
  evaluation: another of B's queries that has a relevant product of another brand.
- ``price``: the lower or upper band with equal probability. History: 1-3 queries with a
  relevant product in the band; evaluation: another query with relevant priced products both
  in and out of the band.
- ``no-history``: an evaluation query drawn uniformly, no history (a brand-new session).
- ``random-history``: 1-3 history queries drawn uniformly, clicked by a user without intent;
  evaluation on another uniformly drawn query, scored with the plain judged gains.
- ``other-intent``: the history of a ``brand`` user (as above), then the shopper moves on:
  evaluation on another uniformly drawn query, scored with the plain judged gains.

Evaluation queries are chosen from the judgments only, never from what a ranking returned, so
the choice cannot favour the system under test. Every query with a positive judged gain may be
drawn; nothing is tied to a particular query.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reranker.metrics import Gains, Qrels, dcg, gain_of

IntentKind = Literal["none", "brand", "price"]
Condition = Literal["brand", "price", "no-history", "random-history", "other-intent"]
CONDITIONS: tuple[Condition, ...] = (
    "brand", "price", "no-history", "random-history", "other-intent"
)
EngagementKind = Literal["click", "add_to_cart", "purchase"]

#: P(attractive) by judged grade, before the user's preference (ESCI E/S/C/I = 3/2/1/0;
#: Icecat 0-3 maps the same way).
ATTRACTIVENESS: dict[int, float] = {3: 0.9, 2: 0.4, 1: 0.15, 0: 0.05}
#: P(attractive) of an unjudged product: unknown, treated like an irrelevant one.
UNJUDGED_ATTRACTIVENESS = 0.05
#: Examination 1 / rank ** ETA.
ETA = 1.0
#: The preference factor of a product that does not match the user's intent.
BETA = 0.3
#: P(add to cart | click) is this times the preference factor; P(purchase | cart) below.
CART_AFTER_CLICK = 0.1
PURCHASE_AFTER_CART = 0.3
#: History searches per session (uniform).
HISTORY_SEARCHES = (1, 3)
#: Brand names that say nothing about a brand.
PLACEHOLDER_BRANDS = frozenset({"", "unknown", "generic", "n/a", "na", "none"})


@dataclass(frozen=True)
class ProductFacts:
    """What a simulated user sees of a product besides its relevance."""

    brand: str | None = None
    price: float | None = None


def brand_key(brand: str | None) -> str | None:
    """A brand as intents compare it; None for no brand or a placeholder name."""
    key = (brand or "").strip().casefold()
    return None if key in PLACEHOLDER_BRANDS else key


@dataclass(frozen=True)
class Intent:
    """A user's latent preference. ``band`` is an inclusive (low, high) price range."""

    kind: IntentKind = "none"
    brand: str | None = None
    band: tuple[float, float] | None = None
    label: str = "none"

    def matches(self, product: ProductFacts) -> bool | None:
        """Whether ``product`` matches; None where it cannot be told (price unknown)."""
        if self.kind == "brand":
            return brand_key(product.brand) == self.brand
        if self.kind == "price" and self.band is not None:
            if product.price is None:
                return None
            return self.band[0] <= product.price <= self.band[1]
        return True

    def factor(self, product: ProductFacts, beta: float = BETA) -> float:
        """The preference factor: 1 on a match, ``beta`` off it, the expected factor of a
        uniformly placed price where the price is unknown."""
        match = self.matches(product)
        if match is None:
            return (1 + 2 * beta) / 3
        return 1.0 if match else beta


NO_INTENT = Intent()


@dataclass(frozen=True)
class SimulatedEngagement:
    """One click (or add-to-cart, purchase) on the product at ``position`` (1-based)."""

    kind: EngagementKind
    product_id: str
    position: int


@dataclass(frozen=True)
class ClickModel:
    """The position-based model; see the module docstring for the parameters' sources."""

    attractiveness: Mapping[int, float] = field(default_factory=lambda: dict(ATTRACTIVENESS))
    unjudged: float = UNJUDGED_ATTRACTIVENESS
    eta: float = ETA
    cart_after_click: float = CART_AFTER_CLICK
    purchase_after_cart: float = PURCHASE_AFTER_CART

    def examination(self, position: int) -> float:
        return 1.0 / math.pow(position, self.eta)

    def click_probability(self, position: int, grade: int | None, preference: float) -> float:
        attractive = self.unjudged if grade is None else self.attractiveness.get(grade, 0.0)
        return min(1.0, self.examination(position) * attractive * preference)

    def simulate(
        self,
        ranking: Sequence[str],
        judgments: Mapping[str, int],
        preference: Callable[[str], float],
        rng: random.Random,
    ) -> list[SimulatedEngagement]:
        """Clicks (each maybe followed by a cart and a purchase) on ``ranking``, top first."""
        events = []
        for position, pid in enumerate(ranking, start=1):
            factor = preference(pid)
            if rng.random() >= self.click_probability(position, judgments.get(pid), factor):
                continue
            events.append(SimulatedEngagement("click", pid, position))
            if rng.random() < self.cart_after_click * factor:
                events.append(SimulatedEngagement("add_to_cart", pid, position))
                if rng.random() < self.purchase_after_cart:
                    events.append(SimulatedEngagement("purchase", pid, position))
        return events


def user_gains(
    judgments: Mapping[str, int],
    products: Mapping[str, ProductFacts],
    intent: Intent,
    gains: Gains | None,
    beta: float = BETA,
) -> dict[str, float]:
    """Each judged product's gain for this user: judged gain x preference factor."""
    return {
        pid: gain_of(grade, gains) * intent.factor(products.get(pid, ProductFacts()), beta)
        for pid, grade in judgments.items()
    }


def user_ndcg(ranking: Sequence[str], gains: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k under per-product gains; unjudged products gain 0, the ideal is the best order
    of the judged products."""
    best = dcg(sorted(gains.values(), reverse=True)[:k])
    if best <= 0:
        return 0.0
    return dcg([gains.get(pid, 0.0) for pid in ranking[:k]]) / best


@dataclass(frozen=True)
class SessionPlan:
    """What one simulated session does: history searches clicked under ``click_intent``, then
    an evaluation search scored under ``eval_intent``."""

    condition: Condition
    click_intent: Intent
    eval_intent: Intent
    history: tuple[str, ...]
    evaluation: str


class SessionPlanner:
    """Draws sessions from one catalog's judgments.

    ``min_grade`` is the lowest relevant grade (ESCI 2: Exact or Substitute; Icecat 1).
    """

    def __init__(
        self,
        qrels: Qrels,
        products: Mapping[str, ProductFacts],
        *,
        min_grade: int,
        gains: Gains | None,
    ) -> None:
        self.products = products
        self.queries = sorted(
            qid for qid, judged in qrels.items()
            if any(gain_of(grade, gains) > 0 for grade in judged.values())
        )
        self.relevant = {
            qid: [pid for pid, grade in sorted(qrels[qid].items()) if grade >= min_grade]
            for qid in self.queries
        }
        self.band_edges = price_thirds(
            [products[pid].price for pids in self.relevant.values() for pid in pids
             if pid in products]
        )
        brand_queries: dict[str, list[str]] = {}
        for qid, pids in self.relevant.items():
            for key in dict.fromkeys(brand_key(self._facts(pid).brand) for pid in pids):
                if key is not None:
                    brand_queries.setdefault(key, []).append(qid)
        self.brand_queries = {
            brand: qids for brand, qids in sorted(brand_queries.items())
            if len(qids) >= 2 and self._brand_evaluations(brand, qids)
        }

    def _facts(self, pid: str) -> ProductFacts:
        return self.products.get(pid, ProductFacts())

    def _brand_evaluations(self, brand: str, qids: Sequence[str]) -> list[str]:
        """B's queries where another brand also has a relevant product."""
        return [
            qid for qid in qids
            if any(brand_key(self._facts(pid).brand) != brand for pid in self.relevant[qid])
        ]

    def price_intents(self) -> tuple[Intent, Intent]:
        low, high = self.band_edges
        return (
            Intent("price", band=(0.0, low), label=f"price <= {low:g}"),
            Intent("price", band=(high, math.inf), label=f"price >= {high:g}"),
        )

    def _history(self, pool: Sequence[str], exclude: str, rng: random.Random) -> tuple[str, ...]:
        others = [qid for qid in pool if qid != exclude]
        count = min(rng.randint(*HISTORY_SEARCHES), len(others))
        return tuple(rng.sample(others, count))

    def _brand_session(self, rng: random.Random) -> tuple[Intent, tuple[str, ...], str]:
        brand = rng.choice(sorted(self.brand_queries))
        qids = self.brand_queries[brand]
        evaluation = rng.choice(self._brand_evaluations(brand, qids))
        intent = Intent("brand", brand=brand, label=f"brand {brand}")
        return intent, self._history(qids, evaluation, rng), evaluation

    def plan_session(self, condition: Condition, rng: random.Random) -> SessionPlan:
        """One session of ``condition``, drawn with ``rng``."""
        if condition == "brand":
            intent, history, evaluation = self._brand_session(rng)
            return SessionPlan(condition, intent, intent, history, evaluation)
        if condition == "price":
            intent = rng.choice(self.price_intents())
            with_band = [qid for qid in self.queries if self._in_band(qid, intent)]
            evaluations = [qid for qid in with_band if self._out_of_band(qid, intent)]
            evaluation = rng.choice(evaluations)
            return SessionPlan(
                condition, intent, intent, self._history(with_band, evaluation, rng), evaluation
            )
        if condition == "other-intent":
            intent, history, _ = self._brand_session(rng)
            evaluation = rng.choice([qid for qid in self.queries if qid not in history])
            return SessionPlan(condition, intent, NO_INTENT, history, evaluation)
        evaluation = rng.choice(self.queries)
        history = () if condition == "no-history" else self._history(self.queries, evaluation, rng)
        return SessionPlan(condition, NO_INTENT, NO_INTENT, history, evaluation)

    def _in_band(self, qid: str, intent: Intent) -> bool:
        return any(intent.matches(self._facts(pid)) is True for pid in self.relevant[qid])

    def _out_of_band(self, qid: str, intent: Intent) -> bool:
        return any(intent.matches(self._facts(pid)) is False for pid in self.relevant[qid])


def price_thirds(prices: Sequence[float | None]) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles (nearest rank) of the known prices."""
    known = sorted(price for price in prices if price is not None)
    if not known:
        raise ValueError("no relevant product has a price: a price intent cannot be simulated")
    return known[len(known) // 3], known[(2 * len(known)) // 3]


def session_rng(seed: int, catalog: str, condition: str, index: int) -> random.Random:
    """A session's own generator: a session does not depend on how many others ran."""
    return random.Random(f"{seed}:{catalog}:{condition}:{index}")
