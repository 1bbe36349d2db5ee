"""Fairness measures for rankings: the FA*IR test, group exposure, AWRF and the nDCG cost.

The functions take plain sequences (group names, protected flags, gains), so they measure any
ranking, also one this project did not produce. The post-processors (`plugin.fairness.policies`,
`plugin.fairness.amortized`) build on them, which keeps one definition of each measure.

Two position weights appear, on purpose:

* exposure, the nDCG cost and the post-processors use the nDCG discount ``1 / log2(1 + rank)``,
  so "exposure" and "nDCG" weigh a rank the same way;
* `awrf` uses the TREC Fair Ranking 2022 evaluation's ``1 / log2(max(rank, 2))`` (ranks 1 and 2
  both weigh 1), so its numbers compare with the track's.

The FA*IR minimum-count table
-----------------------------
FA*IR (Zehlike et al., CIKM 2017) tests every prefix of the top k against the hypothesis that
each position holds a protected item with probability ``p``, independently. A prefix of length
``i`` holding ``c`` protected items passes when ``F(c; i, p) > alpha``, ``F`` the binomial CDF, so
the table holds ``m(i) = min{m : F(m; i, p) > alpha}``. Note the strict ``>``:
``scipy.stats.binom.ppf(alpha, i, p)`` is ``min{m : F(m; i, p) >= alpha}`` (what the fairsearch
libraries use); the two differ exactly when some ``F(m; i, p)`` equals alpha, e.g. ``i = 1``,
``p = 0.5``, ``alpha = 0.5``: ``F(0) = 0.5``, so the paper asks for 1 protected item, ppf for 0.

k tests at level alpha reject a truly fair ranking more often than alpha, so the level is
adjusted. The failure probability of a table (some prefix fails, under the hypothesis) is
computed exactly by dynamic programming over (position, protected count), keeping the paths that
passed every prefix so far. As a function of the level it is a step function that jumps only
where the level equals some ``F(m; i, p)``; binary search over those breakpoints finds, exactly
(no tolerance on the level), the strictest table whose failure probability is at most alpha.
That is the conservative reading of "fails with probability alpha overall": the fairsearch
libraries pick whichever neighbouring table is closest to alpha, which may exceed it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from reranker.metrics import dcg

#: The largest k a FA*IR table is built for (the table costs O(k^2) memory and time).
MAX_TABLE_K = 1000
#: Slack for comparing float probabilities with alpha.
_EPSILON = 1e-12


@lru_cache(maxsize=64)
def discounts(n: int) -> tuple[float, ...]:
    """The exposure of ranks 1..n: ``1 / log2(1 + rank)``, the nDCG discount."""
    return tuple(1.0 / math.log2(rank + 1) for rank in range(1, n + 1))


# --- FA*IR -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FairTable:
    """FA*IR's minimum number of protected items per prefix of the top k.

    ``minimum[i - 1]`` is m(i), for prefixes i = 1..k. ``failure_probability`` is the exact
    probability that a fair random ranking (protected with probability ``p`` per position)
    fails some prefix. ``adjusted_alpha`` is the smallest level that yields this table (every
    level up to the next breakpoint yields the same one); it is ``alpha`` when no adjustment
    was needed.
    """

    k: int
    p: float
    alpha: float
    adjusted_alpha: float
    minimum: tuple[int, ...]
    failure_probability: float


def _binomial_cdf(k: int, p: float) -> npt.NDArray[np.float64]:
    """``cdf[i - 1, c] = F(c; i, p)`` for i = 1..k, c = 0..k; ``inf`` where c >= i.

    Entries with c >= i (where F is 1) are ``inf`` so no level below 1 ever counts them.
    The pmf rows come from the recursion P_i(c) = (1 - p) P_(i-1)(c) + p P_(i-1)(c - 1), which
    neither overflows nor underflows the way binomial coefficients would for large k.
    """
    pmf = np.zeros(k + 1)
    pmf[0] = 1.0
    cdf = np.full((k, k + 1), np.inf)
    for i in range(1, k + 1):
        grown = pmf * (1 - p)
        grown[1:] += pmf[:-1] * p
        pmf = grown
        cdf[i - 1, :i] = np.cumsum(pmf[:i])
    return cdf


def _table_at(cdf: npt.NDArray[np.float64], level: float) -> tuple[int, ...]:
    # m(i) = min{m : F(m) > level} = how many m have F(m) <= level (F rises with m).
    return tuple(int(count) for count in (cdf <= level).sum(axis=1))


def minimum_protected(k: int, p: float, alpha: float) -> tuple[int, ...]:
    """The unadjusted table: m(i) = min{m : F(m; i, p) > alpha} for i = 1..k.

    >>> minimum_protected(10, 0.5, 0.1)
    (0, 0, 0, 1, 1, 1, 2, 2, 3, 3)
    """
    _check_table_parameters(k, p, alpha)
    return _table_at(_binomial_cdf(k, p), alpha)


def table_failure_probability(minimum: Sequence[int], p: float) -> float:
    """Exact probability that a ranking with each position protected with probability ``p``
    (independently) has fewer than ``minimum[i - 1]`` protected items in some prefix i."""
    alive = np.array([1.0])  # alive[c]: passed every prefix so far and holds c protected items
    for i, need in enumerate(minimum, start=1):
        grown = np.zeros(i + 1)
        grown[:-1] += alive * (1 - p)
        grown[1:] += alive * p
        grown[:need] = 0.0
        alive = grown
    return max(0.0, 1.0 - float(alive.sum()))


@lru_cache(maxsize=128)
def fair_table(k: int, p: float, alpha: float, adjust: bool = True) -> FairTable:
    """The FA*IR table for the top k, with the level adjusted for testing k prefixes.

    Cached per (k, p, alpha, adjust): building it takes milliseconds, reading it nothing.
    """
    _check_table_parameters(k, p, alpha)
    cdf = _binomial_cdf(k, p)
    table = _table_at(cdf, alpha)
    failure = table_failure_probability(table, p)
    if not adjust or failure <= alpha + _EPSILON:
        return FairTable(k, p, alpha, alpha, table, failure)
    # Candidate levels: 0 and every breakpoint up to alpha. The table at levels[-1] is the
    # table at alpha, which fails too often; the table at 0 demands nothing.
    levels = [0.0, *np.unique(cdf[(cdf > 0) & (cdf <= alpha)]).tolist()]
    low, high = 0, len(levels) - 1
    while high - low > 1:
        middle = (low + high) // 2
        if table_failure_probability(_table_at(cdf, levels[middle]), p) <= alpha + _EPSILON:
            low = middle
        else:
            high = middle
    table = _table_at(cdf, levels[low])
    return FairTable(k, p, alpha, levels[low], table, table_failure_probability(table, p))


def _check_table_parameters(k: int, p: float, alpha: float) -> None:
    if not 1 <= k <= MAX_TABLE_K:
        raise ValueError(f"FA*IR: k must be between 1 and {MAX_TABLE_K}, got {k}")
    if not 0 < p < 1:
        raise ValueError(f"FA*IR: the target proportion p must be in (0, 1), got {p}")
    if not 0 < alpha < 1:
        raise ValueError(f"FA*IR: the significance alpha must be in (0, 1), got {alpha}")


def fair_violation(protected: Sequence[bool], table: FairTable) -> int | None:
    """The first prefix length of ``protected`` (flags in rank order) below the table's
    minimum, or None when every prefix up to the table's k passes."""
    count = 0
    for i, (flag, need) in enumerate(zip(protected, table.minimum, strict=False), start=1):
        count += flag
        if count < need:
            return i
    return None


def fair_pass_rate(
    rankings: Iterable[Sequence[bool]], k: int, p: float, alpha: float, *, adjust: bool = True
) -> float:
    """Share of rankings (protected flags in rank order) whose top k passes FA*IR.

    A ranking shorter than k is tested with the table for its own length, as `FairTopK` does:
    its top k has fewer positions, so fewer prefixes to test. An empty ranking passes.
    """
    tested = passed = 0
    for ranking in rankings:
        tested += 1
        top = list(ranking[:k])
        passed += not top or fair_violation(top, fair_table(len(top), p, alpha, adjust)) is None
    if not tested:
        raise ValueError("fair_pass_rate needs at least one ranking")
    return passed / tested


# --- exposure --------------------------------------------------------------------------------


def group_exposure(groups: Sequence[str], k: int | None = None) -> dict[str, float]:
    """Each group's summed exposure ``1 / log2(1 + rank)`` over ranks 1..k (all without k)."""
    exposure = dict.fromkeys(groups, 0.0)
    depth = len(groups) if k is None else min(k, len(groups))
    for group, weight in zip(groups, discounts(depth), strict=False):
        exposure[group] += weight
    return exposure


def group_exposure_ratio(groups: Sequence[str], k: int | None = None) -> float:
    """Smallest over largest mean exposure per item among the groups in the ranking.

    Each item's exposure is ``1 / log2(1 + rank)`` within the top k and 0 below it; a group's
    mean is over all its items in the ranking, so a group left below k scores 0. 1 means every
    group's items are seen equally on average; one group alone is trivially at 1.

    >>> round(group_exposure_ratio(["a", "b", "a", "b"]), 4)  # (0.631 + 0.431)/2 / (1 + 0.5)/2
    0.7077
    """
    if not groups:
        raise ValueError("group_exposure_ratio needs a non-empty ranking")
    exposure = group_exposure(groups, k)
    sizes: dict[str, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    means = [exposure[group] / size for group, size in sizes.items()]
    return min(means) / max(means) if max(means) > 0 else 1.0


def protected_exposure_ratio(protected: Sequence[bool], k: int | None = None) -> float | None:
    """Mean exposure per protected item over mean exposure per other item (ranks beyond k: 0).

    Below 1 the protected items are seen less than the others, above 1 more. None when the
    ranking lacks either kind, since there is nothing to compare.
    """
    exposure = group_exposure(["p" if flag else "o" for flag in protected], k)
    shown = sum(protected)
    if shown == 0 or shown == len(protected) or exposure["o"] == 0:
        return None
    return (exposure["p"] / shown) / (exposure["o"] / (len(protected) - shown))


# --- amortized exposure ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureTotals:
    """Exposure received and relevance earned per group, summed over a window of queries."""

    exposure: dict[str, float]
    relevance: dict[str, float]
    queries: int


def sum_totals(parts: Iterable[ExposureTotals]) -> ExposureTotals:
    """Add up per-group totals, e.g. the queries of a window."""
    exposure: dict[str, float] = {}
    relevance: dict[str, float] = {}
    queries = 0
    for part in parts:
        for group, value in part.exposure.items():
            exposure[group] = exposure.get(group, 0.0) + value
        for group, value in part.relevance.items():
            relevance[group] = relevance.get(group, 0.0) + value
        queries += part.queries
    return ExposureTotals(exposure, relevance, queries)


def amortized_unfairness(totals: ExposureTotals) -> float:
    """Biega et al.'s inequity of amortized attention, per group: the sum over groups of
    ``|exposure - relevance|``, relevance normalised per query to the exposure handed out."""
    groups = {*totals.exposure, *totals.relevance}
    return sum(abs(totals.exposure.get(g, 0.0) - totals.relevance.get(g, 0.0)) for g in groups)


# --- AWRF ------------------------------------------------------------------------------------


def awrf(groups: Sequence[str], target: Mapping[str, float], *, base: float = math.e) -> float:
    """Attention-weighted rank fairness, as TREC Fair Ranking 2022 task 1 computed it.

    ``1 - JSD(P, Q)``: P is each group's share of the ranking's attention, rank r weighing
    ``1 / log2(max(r, 2))`` over the whole ranking (the track's evaluation code; no geometric
    patience model), Q the ``target`` distribution (normalised here); JSD is the Jensen-Shannon
    divergence with logarithms in ``base``. The track's code used scipy's ``jensenshannon`` with
    its default natural logarithm, so by default AWRF lies in [1 - ln 2, 1] = [0.307, 1];
    ``base=2`` maps it onto [0, 1]. Each item belongs to one group (the track allowed fractional
    alignment); a group absent from ``target`` has target share 0.
    """
    if not groups:
        raise ValueError("awrf needs a non-empty ranking")
    if any(share < 0 for share in target.values()) or sum(target.values()) <= 0:
        raise ValueError("awrf: target shares must be non-negative and not all zero")
    attention: dict[str, float] = dict.fromkeys(target, 0.0)
    for rank, group in enumerate(groups, start=1):
        attention[group] = attention.get(group, 0.0) + 1.0 / math.log2(max(rank, 2))
    names = list(attention)
    total_attention, total_target = sum(attention.values()), sum(target.values())
    got = [attention[name] / total_attention for name in names]
    wanted = [target.get(name, 0.0) / total_target for name in names]
    return 1.0 - js_divergence(got, wanted, base=base)


def js_divergence(p: Sequence[float], q: Sequence[float], *, base: float = math.e) -> float:
    """Jensen-Shannon divergence of two distributions over the same outcomes."""
    middle = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    return (_kl_divergence(p, middle) + _kl_divergence(q, middle)) / 2 / math.log(base)


def _kl_divergence(x: Sequence[float], y: Sequence[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(x, y, strict=True) if a > 0)


# --- nDCG cost -------------------------------------------------------------------------------


def gain_ndcg(gains: Sequence[float], k: int | None = None) -> float:
    """nDCG@k of gains listed in rank order, the ideal being the same gains sorted.

    0 when no gain is positive (nothing to lose).
    """
    weights = discounts(len(gains) if k is None else min(k, len(gains)))
    best = sum(g * w for g, w in zip(sorted(gains, reverse=True), weights, strict=False))
    got = sum(g * w for g, w in zip(gains, weights, strict=False))
    return got / best if best > 0 else 0.0


def ndcg_change(
    unconstrained: Sequence[str],
    constrained: Sequence[str],
    gains: Mapping[str, float],
    k: int = 10,
) -> float:
    """nDCG@k of the fair ranking minus that of the unconstrained one, on the same gains.

    Negative: the fairness constraint cost relevance. The ideal ranking sorts ``gains`` (every
    judged id), so both rankings share one denominator; an id without a gain counts 0.
    """
    best = dcg(sorted(gains.values(), reverse=True)[:k])
    if best <= 0:
        return 0.0
    after = dcg([gains.get(doc, 0.0) for doc in constrained[:k]])
    before = dcg([gains.get(doc, 0.0) for doc in unconstrained[:k]])
    return (after - before) / best
