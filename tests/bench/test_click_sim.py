"""The simulated shoppers of the personalisation bench (`bench/click_sim.py`): tiny data only."""

from __future__ import annotations

import math
import random

import pytest

from bench.click_sim import (
    BETA,
    NO_INTENT,
    ClickModel,
    Intent,
    ProductFacts,
    SessionPlanner,
    brand_key,
    price_thirds,
    session_rng,
    user_gains,
    user_ndcg,
)
from reranker.metrics import ESCI_GAINS, ndcg_at_k


class Draws(random.Random):
    """A generator whose `random()` returns the given numbers in turn."""

    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_pbm_probability_is_examination_times_attractiveness_times_preference() -> None:
    model = ClickModel()
    assert model.click_probability(1, 3, 1.0) == pytest.approx(0.9)
    assert model.click_probability(2, 3, 1.0) == pytest.approx(0.45)  # 1/2 x 0.9
    assert model.click_probability(4, 2, BETA) == pytest.approx(0.25 * 0.4 * 0.3)
    assert model.click_probability(1, None, 1.0) == pytest.approx(0.05)  # unjudged
    assert model.click_probability(1, 0, 1.0) == pytest.approx(0.05)


def test_a_click_happens_when_the_draw_falls_under_its_probability() -> None:
    model = ClickModel(cart_after_click=0.0)
    # rank 1 (p 0.9): 0.5 clicks; rank 2 (p 0.45): 0.5 does not; rank 3 (p 0.3): 0.29 clicks
    draws = Draws([0.5, 0.0, 0.5, 0.29, 0.0])
    events = model.simulate(["a", "b", "c"], {"a": 3, "b": 3, "c": 3}, lambda pid: 1.0, draws)
    assert [(e.kind, e.product_id, e.position) for e in events] == [
        ("click", "a", 1), ("click", "c", 3)
    ]


def test_cart_and_purchase_follow_a_click() -> None:
    events = ClickModel().simulate(["a"], {"a": 3}, lambda pid: 1.0, Draws([0.0, 0.05, 0.1]))
    assert [e.kind for e in events] == ["click", "add_to_cart", "purchase"]


def test_click_rates_match_the_model_over_many_draws() -> None:
    model = ClickModel(cart_after_click=0.0)
    rng = random.Random(7)
    ranking = ["a", "b", "c"]
    judgments = {"a": 1, "b": 3, "c": 3}
    preference = {"a": 1.0, "b": 1.0, "c": BETA}
    clicks = dict.fromkeys(ranking, 0)
    runs = 20_000
    for _ in range(runs):
        for event in model.simulate(ranking, judgments, preference.__getitem__, rng):
            clicks[event.product_id] += 1
    expected = {"a": 0.15, "b": 0.45, "c": 0.9 / 3 * BETA}
    for pid, rate in expected.items():
        assert clicks[pid] / runs == pytest.approx(rate, abs=0.012)


def test_intent_factors() -> None:
    brand = Intent("brand", brand="acme")
    assert brand.factor(ProductFacts(brand=" ACME ")) == 1.0
    assert brand.factor(ProductFacts(brand="Other")) == BETA
    assert brand.factor(ProductFacts(brand=None)) == BETA
    cheap = Intent("price", band=(0.0, 20.0))
    assert cheap.factor(ProductFacts(price=20.0)) == 1.0
    assert cheap.factor(ProductFacts(price=20.5)) == BETA
    assert cheap.factor(ProductFacts(price=None)) == pytest.approx((1 + 2 * BETA) / 3)
    assert NO_INTENT.factor(ProductFacts(brand="x", price=5.0)) == 1.0


def test_user_ndcg_without_intent_is_the_plain_ndcg() -> None:
    judgments = {"a": 3, "b": 2, "c": 0, "d": 3}
    products = {pid: ProductFacts() for pid in judgments}
    gains = user_gains(judgments, products, NO_INTENT, ESCI_GAINS)
    ranking = ["b", "x", "a", "c"]
    assert user_ndcg(ranking, gains) == pytest.approx(
        ndcg_at_k(ranking, judgments, 10, ESCI_GAINS)
    )


def test_user_ndcg_rewards_the_preferred_brand() -> None:
    judgments = {"a": 3, "b": 3}
    products = {"a": ProductFacts(brand="Acme"), "b": ProductFacts(brand="Other")}
    gains = user_gains(judgments, products, Intent("brand", brand="acme"), None)
    assert gains == {"a": 7.0, "b": 7.0 * BETA}
    ideal = 7.0 + 7.0 * BETA / math.log2(3)
    assert user_ndcg(["a", "b"], gains) == pytest.approx(1.0)
    assert user_ndcg(["b", "a"], gains) == pytest.approx((7.0 * BETA + 7.0 / math.log2(3)) / ideal)


def test_price_thirds_are_nearest_rank_quantiles_of_known_prices() -> None:
    assert price_thirds([1.0, None, 2.0, 3.0, 4.0, 5.0, 6.0]) == (3.0, 5.0)
    with pytest.raises(ValueError, match="price"):
        price_thirds([None])


def _planner() -> SessionPlanner:
    products = {
        "a1": ProductFacts("Acme", 5.0), "a2": ProductFacts("Acme", 50.0),
        "a3": ProductFacts("Acme", 9.0), "o1": ProductFacts("Other", 100.0),
        "o2": ProductFacts("Other", 7.0), "o3": ProductFacts("Unknown", None),
    }
    qrels = {
        "q1": {"a1": 3, "o1": 3, "o3": 0},
        "q2": {"a2": 3, "o2": 2},
        "q3": {"a3": 3},
        "q4": {"o1": 3, "o3": 3},
        "q5": {"o2": 1},  # nothing relevant (ESCI), still a positive gain
    }
    return SessionPlanner(qrels, products, min_grade=2, gains=ESCI_GAINS)


def test_brand_sessions_search_the_brand_before_an_evaluation_where_it_matters() -> None:
    planner = _planner()
    assert set(planner.brand_queries) == {"acme", "other"}  # "unknown" is a placeholder
    for index in range(50):
        plan = planner.plan_session("brand", session_rng(1, "t", "brand", index))
        brand = plan.click_intent.brand
        assert plan.eval_intent == plan.click_intent and brand is not None
        assert plan.evaluation not in plan.history and 1 <= len(plan.history) <= 3
        for qid in (*plan.history, plan.evaluation):
            assert qid in planner.brand_queries[brand]
        relevant = planner.relevant[plan.evaluation]
        assert any(brand_key(planner.products[pid].brand) != brand for pid in relevant)


def test_price_sessions_evaluate_where_the_band_separates_relevant_products() -> None:
    planner = _planner()
    low, high = planner.price_intents()
    assert low.band == (0.0, planner.band_edges[0]) and high.band is not None
    for index in range(30):
        plan = planner.plan_session("price", session_rng(1, "t", "price", index))
        facts = [planner.products[pid] for pid in planner.relevant[plan.evaluation]]
        assert {plan.eval_intent.matches(f) for f in facts} >= {True, False}


def test_sessions_without_consistent_intent_are_scored_with_plain_gains() -> None:
    planner = _planner()
    fresh = planner.plan_session("no-history", random.Random(3))
    assert fresh.history == () and fresh.eval_intent == NO_INTENT
    moved_on = planner.plan_session("other-intent", random.Random(3))
    assert moved_on.click_intent.kind == "brand" and moved_on.eval_intent == NO_INTENT
    assert moved_on.evaluation not in moved_on.history
    noise = planner.plan_session("random-history", random.Random(3))
    assert noise.click_intent == NO_INTENT and noise.history


def test_sessions_are_reproducible_from_the_seed() -> None:
    planner = _planner()
    draw = [planner.plan_session("brand", session_rng(5, "t", "brand", i)) for i in range(10)]
    again = [planner.plan_session("brand", session_rng(5, "t", "brand", i)) for i in range(10)]
    other = [planner.plan_session("brand", session_rng(6, "t", "brand", i)) for i in range(10)]
    assert draw == again != other
