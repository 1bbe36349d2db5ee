"""Fairness measures on hand-computed cases: FA*IR tables, exposure, AWRF, nDCG change."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom

from plugin.fairness.metrics import (
    ExposureTotals,
    amortized_unfairness,
    awrf,
    fair_pass_rate,
    fair_table,
    fair_violation,
    gain_ndcg,
    group_exposure,
    group_exposure_ratio,
    minimum_protected,
    ndcg_change,
    protected_exposure_ratio,
    sum_totals,
    table_failure_probability,
)

L2 = math.log2


def brute_force_failure(minimum: Sequence[int], p: float) -> float:
    """Probability that a Bernoulli(p) ranking fails some prefix, by enumerating all 2^k."""
    failure = 0.0
    for flags in itertools.product((0, 1), repeat=len(minimum)):
        counts = itertools.accumulate(flags)
        if any(count < need for count, need in zip(counts, minimum, strict=True)):
            failure += p ** sum(flags) * (1 - p) ** (len(flags) - sum(flags))
    return failure


def test_unadjusted_table_by_hand_p_half() -> None:
    # F(m; i, 0.5) = sum_{c<=m} C(i, c) / 2^i; m(i) is the smallest m with F > 0.1.
    # i=1..3: F(0) = 1/2, 1/4, 1/8 > 0.1                  -> 0
    # i=4: F(0) = 1/16 = 0.0625 <= 0.1, F(1) = 5/16       -> 1
    # i=5: F(1) = 6/32 = 0.19;  i=6: F(1) = 7/64 = 0.109  -> 1
    # i=7: F(1) = 8/128 = 0.0625, F(2) = 29/128 = 0.23    -> 2
    # i=8: F(1) = 9/256, F(2) = 37/256 = 0.145            -> 2
    # i=9: F(2) = 46/512 = 0.0898, F(3) = 130/512         -> 3
    # i=10: F(2) = 56/1024 = 0.0547, F(3) = 176/1024      -> 3
    assert minimum_protected(10, 0.5, 0.1) == (0, 0, 0, 1, 1, 1, 2, 2, 3, 3)


def test_unadjusted_table_by_hand_p_0_7() -> None:
    # i=1: F(0) = 0.3                                     -> 0
    # i=2: F(0) = 0.09, F(1) = 0.09 + 2(.7)(.3) = 0.51    -> 1
    # i=3: F(1) = 0.027 + 3(.7)(.09) = 0.216              -> 1
    # i=4: F(1) = 0.0081 + 4(.7)(.027) = 0.0837 <= 0.1, F(2) = 0.0837 + 6(.49)(.09) = 0.348 -> 2
    # i=5: F(2) = 0.00243 + 5(.7)(.0081) + 10(.49)(.027) = 0.163                            -> 2
    # i=6: F(2) = 0.000729 + 6(.7)(.00243) + 15(.49)(.0081) = 0.0705, F(3) = 0.256          -> 3
    assert minimum_protected(6, 0.7, 0.1) == (0, 1, 1, 2, 2, 3)


def test_the_paper_inverse_is_strict_where_scipy_ppf_is_not() -> None:
    # F(0; 1, 0.5) = 0.5 exactly: the paper's test F(c) > alpha fails with 0 protected items,
    # while binom.ppf returns the smallest m with F(m) >= alpha, which is 0.
    assert minimum_protected(1, 0.5, 0.5) == (1,)
    assert binom.ppf(0.5, 1, 0.5) == 0


def test_failure_probability_is_exact() -> None:
    for minimum, p in [((0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5), 0.3), ((1, 1, 2, 3, 3), 0.6)]:
        assert table_failure_probability(minimum, p) == pytest.approx(
            brute_force_failure(minimum, p), abs=1e-12
        )


def test_adjusted_table_fails_a_fair_ranking_at_most_alpha_and_is_the_strictest_such() -> None:
    table = fair_table(10, 0.5, 0.1)
    # The unadjusted table rejects 132 of the 1024 equally likely fair rankings: 0.129 > 0.1.
    assert brute_force_failure(minimum_protected(10, 0.5, 0.1), 0.5) == pytest.approx(132 / 1024)
    # Adjusted: alpha_adj = F(2; 10, 0.5) = 56/1024, whose table rejects 77/1024 = 0.075.
    assert table.adjusted_alpha == pytest.approx(56 / 1024)
    assert table.minimum == (0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
    assert table.minimum == minimum_protected(10, 0.5, table.adjusted_alpha)
    assert brute_force_failure(table.minimum, 0.5) == pytest.approx(77 / 1024)
    assert table.failure_probability == pytest.approx(77 / 1024)
    # The next breakpoint, F(0; 4) = F(1; 7) = 1/16, gives a stricter table that rejects
    # 114/1024 = 0.111 > 0.1: no stricter table keeps the overall failure within alpha.
    cdf_values = sorted(
        {sum(math.comb(i, c) for c in range(m + 1)) / 2**i for i in range(1, 11) for m in range(i)}
    )
    next_level = min(v for v in cdf_values if v > table.adjusted_alpha)
    assert next_level == 1 / 16
    stricter = minimum_protected(10, 0.5, next_level)
    assert stricter == (0, 0, 0, 1, 1, 1, 2, 2, 2, 3)
    assert brute_force_failure(stricter, 0.5) == pytest.approx(114 / 1024)


def test_adjusted_table_for_k_20_stays_within_alpha() -> None:
    table = fair_table(20, 0.3, 0.1)
    assert table.failure_probability <= 0.1
    assert table.adjusted_alpha < 0.1
    assert table.failure_probability == pytest.approx(table_failure_probability(table.minimum, 0.3))


def test_no_adjustment_when_the_table_already_fails_rarely() -> None:
    table = fair_table(3, 0.5, 0.1)  # every m(i) is 0: nothing can fail
    assert table.minimum == (0, 0, 0)
    assert table.adjusted_alpha == 0.1
    assert table.failure_probability == 0.0


def test_tables_are_cached_and_adjustment_can_be_turned_off() -> None:
    assert fair_table(50, 0.3, 0.1) is fair_table(50, 0.3, 0.1)
    assert fair_table(10, 0.5, 0.1, adjust=False).minimum == minimum_protected(10, 0.5, 0.1)


@pytest.mark.parametrize(
    ("k", "p", "alpha", "message"),
    [(0, 0.5, 0.1, "k must be"), (5, 0.0, 0.1, "proportion p"), (5, 0.5, 1.0, "alpha")],
)
def test_bad_table_parameters_are_named(k: int, p: float, alpha: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fair_table(k, p, alpha)


def test_fair_violation_and_pass_rate() -> None:
    table = fair_table(10, 0.5, 0.1)  # (0, 0, 0, 0, 1, 1, 1, 2, 2, 3)
    passing = [False] * 4 + [True] + [False] * 2 + [True] + [False] + [True]
    late = [False] * 5 + [True] * 5  # no protected item in the top 5
    assert fair_violation(passing, table) is None
    assert fair_violation(late, table) == 5
    assert fair_pass_rate([passing, late, [], [True]], 10, 0.5, 0.1) == 3 / 4
    with pytest.raises(ValueError, match="at least one ranking"):
        fair_pass_rate([], 10, 0.5, 0.1)


def test_group_exposure_and_its_ratio_by_hand() -> None:
    groups = ["a", "b", "a", "b"]
    exposure = group_exposure(groups)
    assert exposure["a"] == pytest.approx(1 + 1 / L2(4))
    assert exposure["b"] == pytest.approx(1 / L2(3) + 1 / L2(5))
    # Mean per item: a (1 + 0.5) / 2 = 0.75, b (0.631 + 0.431) / 2 = 0.531.
    expected = ((1 / L2(3) + 1 / L2(5)) / 2) / ((1 + 1 / L2(4)) / 2)
    assert group_exposure_ratio(groups) == pytest.approx(expected)
    assert group_exposure_ratio(groups, k=1) == 0.0  # b has nothing in the top 1
    assert group_exposure_ratio(["a", "a"]) == 1.0


def test_protected_exposure_ratio_by_hand() -> None:
    # Protected at ranks 2 and 3, others at 1 and 4.
    ratio = protected_exposure_ratio([False, True, True, False])
    expected = ((1 / L2(3) + 1 / L2(4)) / 2) / ((1 + 1 / L2(5)) / 2)
    assert ratio == pytest.approx(expected)
    assert protected_exposure_ratio([True, True]) is None
    assert protected_exposure_ratio([False, False]) is None


def test_awrf_weighs_ranks_one_and_two_alike_as_trec_2022_did() -> None:
    # 1 / log2(max(r, 2)): ranks 1 and 2 both weigh 1, so a, b is exactly 50/50.
    assert awrf(["a", "b"], {"a": 0.5, "b": 0.5}) == pytest.approx(1.0)


def test_awrf_of_disjoint_distributions_is_one_minus_ln_2() -> None:
    # P = (1, 0), Q = (0, 1), M = (1/2, 1/2): each KL to M is ln 2, so JSD = ln 2.
    assert awrf(["a"], {"a": 0.0, "b": 1.0}) == pytest.approx(1 - math.log(2))
    assert awrf(["a"], {"a": 0.0, "b": 1.0}, base=2) == pytest.approx(0.0)


def test_awrf_by_hand_against_scipy() -> None:
    # Attention 1, 1, 1/log2(3) = 0.631: P(a) = 2 / 2.631 = 0.760, P(b) = 0.240; Q = (1/2, 1/2).
    attention_b = 1 / L2(3)
    p = [2 / (2 + attention_b), attention_b / (2 + attention_b)]
    m = [(p[0] + 0.5) / 2, (p[1] + 0.5) / 2]
    kl_p = sum(x * math.log(x / y) for x, y in zip(p, m, strict=True))
    kl_q = sum(0.5 * math.log(0.5 / y) for y in m)
    expected = 1 - (kl_p + kl_q) / 2
    assert expected == pytest.approx(0.9631, abs=1e-4)
    assert awrf(["a", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(expected)
    assert awrf(["a", "a", "b"], {"a": 1, "b": 1}) == pytest.approx(
        1 - jensenshannon(p, [0.5, 0.5]) ** 2
    )


def test_awrf_refuses_empty_inputs() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        awrf([], {"a": 1})
    with pytest.raises(ValueError, match="target shares"):
        awrf(["a"], {"a": 0})


def test_ndcg_change_by_hand() -> None:
    gains = {"a": 3.0, "b": 2.0, "c": 0.0}
    # Ideal@2 = 3 + 2/log2(3); the fair ranking c, a, b has 0 + 3/log2(3).
    ideal = 3 + 2 / L2(3)
    assert ndcg_change(["a", "b", "c"], ["c", "a", "b"], gains, k=2) == pytest.approx(
        (3 / L2(3) - ideal) / ideal
    )
    assert ndcg_change(["a", "b"], ["a", "b"], gains) == 0.0
    assert ndcg_change(["a"], ["b"], {"a": 0.0}) == 0.0


def test_gain_ndcg_by_hand() -> None:
    assert gain_ndcg([1.0, 3.0], k=2) == pytest.approx((1 + 3 / L2(3)) / (3 + 1 / L2(3)))
    assert gain_ndcg([0.0, 0.0]) == 0.0
    assert gain_ndcg([]) == 0.0


def test_amortized_unfairness_adds_up_windows() -> None:
    one = ExposureTotals({"a": 1.0, "b": 0.5}, {"a": 0.75, "b": 0.75}, 1)
    two = ExposureTotals({"a": 1.0}, {"a": 0.5, "c": 0.5}, 1)
    total = sum_totals([one, two])
    assert total == ExposureTotals({"a": 2.0, "b": 0.5}, {"a": 1.25, "b": 0.75, "c": 0.5}, 2)
    assert amortized_unfairness(total) == pytest.approx(0.75 + 0.25 + 0.5)
