"""Session states decay as documented, and the personal term is bounded and zero without
history; every number here is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plugin.personalization import SIGNAL_WEIGHTS, ZERO, personal_terms, rescaled
from plugin.session_store import (
    HALF_LIFE_SECONDS,
    MAX_AFFINITIES,
    MAX_PURCHASED,
    Engagement,
    EngagementKind,
    SessionState,
)
from tests.conftest import make_product

T0 = 1_800_000_000.0
E1 = np.array([1, 0, 0, 0], dtype=np.float32)
E2 = np.array([0, 1, 0, 0], dtype=np.float32)


def engagement(kind: EngagementKind = "click", at: float = T0, vector: np.ndarray = E1,
               brand: str | None = "Acme", price: float | None = 50.0) -> Engagement:
    return Engagement(kind, "p1", at, vector, brand, ("Shoes", "Running"), price)


def test_one_click_sets_weight_profile_affinities_and_price_band() -> None:
    state = SessionState.empty("s").applied(engagement())
    assert state.has_history and state.engagements == 1
    assert state.weight == 1.0 and state.brands == {"acme": 1.0}
    assert state.categories == {"shoes": 1.0, "running": 1.0}
    np.testing.assert_allclose(state.profile_direction(), E1)
    assert state.price_band() == pytest.approx((math.log1p(50.0), 0.0))


def test_weights_halve_every_half_life_and_purchases_count_five_clicks() -> None:
    state = SessionState.empty("s").applied(engagement(at=T0))
    state = state.applied(engagement("purchase", at=T0 + HALF_LIFE_SECONDS, vector=E2,
                                     brand="Bolt"))
    assert state.weight == pytest.approx(0.5 + 5.0)
    assert state.brands == pytest.approx({"acme": 0.5, "bolt": 5.0})
    assert state.purchased == ("p1",)
    assert state.weight_at(T0 + 2 * HALF_LIFE_SECONDS) == pytest.approx(5.5 / 2)
    np.testing.assert_allclose(state.profile, 0.5 * E1 + 5.0 * E2, rtol=1e-6)


def test_a_late_arriving_older_event_adds_its_own_decayed_weight() -> None:
    state = SessionState.empty("s").applied(engagement(at=T0 + HALF_LIFE_SECONDS))
    state = state.applied(engagement(at=T0, brand="Bolt"))
    assert state.updated_at == T0 + HALF_LIFE_SECONDS  # the clock never goes back
    assert state.brands == pytest.approx({"acme": 1.0, "bolt": 0.5})


def test_state_survives_json() -> None:
    state = SessionState.empty("s").applied(engagement()).applied(
        engagement("add_to_cart", at=T0 + 60, vector=E2, brand=None, price=None))
    again = SessionState.from_json(state.to_json())
    assert again.brands == state.brands and again.weight == state.weight
    np.testing.assert_array_equal(again.profile, state.profile)


def test_no_history_means_a_zero_term_for_every_product() -> None:
    products = [make_product("a", "shoe", brand="Acme"), make_product("b", "mug")]
    assert personal_terms(None, products, {}, T0) == [ZERO, ZERO]
    assert personal_terms(SessionState.empty("s"), products, {}, T0) == [ZERO, ZERO]


def test_terms_favour_the_engaged_brand_and_stay_within_one() -> None:
    state = SessionState.empty("s")
    for i in range(20):  # a long, consistent history: full confidence
        state = state.applied(engagement("purchase", at=T0 + i))
    products = [
        make_product("acme", "shoe", brand="Acme", category=["Shoes", "Running"], price=50.0),
        make_product("bolt", "shoe", brand="Bolt", category=["Kitchen"], price=5000.0),
    ]
    vectors = {"acme": E1, "bolt": -E1}
    acme, bolt = personal_terms(state, products, vectors, T0 + 20, query_vector=E1)
    assert acme.signals == {"profile": 1.0, "brand": 1.0, "category": 1.0, "price": 1.0,
                            "history_match": 1.0}
    assert acme.value == pytest.approx(1.0, abs=1e-6)  # every signal at its maximum
    assert bolt.signals["brand"] == 0.0 and bolt.signals["profile"] == -1.0
    assert bolt.value == pytest.approx(-SIGNAL_WEIGHTS["profile"] / sum(SIGNAL_WEIGHTS.values()),
                                       abs=1e-3)


def test_one_click_moves_less_than_a_long_history() -> None:
    products = [make_product("acme", "shoe", brand="Acme")]
    one = SessionState.empty("s").applied(engagement())
    many = one
    for i in range(10):
        many = many.applied(engagement(at=T0 + i))
    (weak,) = personal_terms(one, products, {"acme": E1}, T0)
    (strong,) = personal_terms(many, products, {"acme": E1}, T0 + 10)
    assert 0 < weak.value < strong.value <= 1


def test_rescaled_maps_best_to_one_and_worst_to_zero() -> None:
    assert rescaled([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert rescaled([0.7, 0.7]) == [1.0, 1.0]


def test_a_history_about_something_else_does_not_steer_by_profile_or_price() -> None:
    state = SessionState.empty("s")
    for i in range(20):
        state = state.applied(engagement("purchase", at=T0 + i))
    products = [make_product("a", "x", brand="Other", price=50.0),
                make_product("b", "y", brand="Other", price=50.0)]
    vectors = {"a": E1, "b": -E1}
    unrelated = personal_terms(state, products, vectors, T0 + 20, query_vector=E2)
    assert [term.signals["history_match"] for term in unrelated] == [0.0, 0.0]
    assert [term.value for term in unrelated] == [0.0, 0.0]
    halfway = E1 * 0.35 + E2 * np.sqrt(1 - 0.35**2)  # cosine 0.35: half related
    related = personal_terms(state, products, vectors, T0 + 20, query_vector=halfway)
    assert related[0].signals["history_match"] == pytest.approx(0.5)
    assert related[0].value > 0 > related[1].value


def test_a_long_session_keeps_bounded_affinities_and_its_latest_purchases() -> None:
    state = SessionState.empty("s1")
    for i in range(3 * MAX_PURCHASED):
        state = state.applied(Engagement("purchase", f"p{i}", T0 + i, E1, f"brand {i}",
                                         (f"top {i}", f"leaf {i}"), 10.0))
    assert len(state.brands) == MAX_AFFINITIES
    assert len(state.categories) == MAX_AFFINITIES
    newest = f"brand {3 * MAX_PURCHASED - 1}"
    assert newest in state.brands and "brand 0" not in state.brands  # the weakest go
    assert state.purchased == tuple(f"p{i}" for i in range(2 * MAX_PURCHASED, 3 * MAX_PURCHASED))
