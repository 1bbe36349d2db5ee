"""Fairness next to relevance in ``shoprank eval``: a policy applied to a stage's ranking.

The fairness step of the search API (`plugin.fairness.stage.post_processor`) reorders each
query's ranking of an evaluated stage; the report compares the fair ranking with the
unconstrained one on relevance and on fairness:

- nDCG@k (plain and judged-only) of the fair ranking and its change against the unconstrained
  ranking, with paired-bootstrap 95% CIs;
- the FA*IR pass rate at the policy's p and alpha: the share of queries whose top k passes
  the adjusted table (`plugin.fairness.metrics.fair_table`), over the queries whose
  candidates hold enough protected items to pass at all (m(k) of the table), counted apart;
- the group exposure ratio: mean exposure ``1 / log2(1 + rank)`` per protected candidate over
  mean exposure per other candidate, ranks beyond k weighing 0, pooled over queries (1: equal
  attention per item; below 1: protected items are seen less);
- AWRF as TREC Fair Ranking 2022 task 1 computed it (`plugin.fairness.metrics.awrf`, natural
  logarithm) over the top k with two groups, protected and other, and the target ``(p, 1 - p)``,
  averaged over queries;
- the added latency: p50 and p95 microseconds per query of the fairness step (building the
  items and reordering them), the median of a few runs per query with the garbage collector
  paused, as `timeit` does.

Protected groups are the policy's ``protected`` list or, with ``protected_share_below``, the
groups holding less than that share of the whole catalog's products, matched case-folded as
the search API matches them. Products without a value in the group field
(`plugin.fairness.items.NO_GROUP`) are never protected by the rule; list "(none)" to protect
them.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.schema import Product
from plugin.fairness.amortized import AmortizedExposure
from plugin.fairness.exposure_store import InMemoryExposureStore
from plugin.fairness.items import NO_GROUP, FairnessItem, FairnessResult, group_of, rare_groups
from plugin.fairness.metrics import awrf, fair_pass_rate, fair_table, group_exposure
from plugin.fairness.stage import group_key, named_group, post_processor, relevance_of
from plugin.models import FairnessPolicy
from reranker.metrics import (
    EvalReport,
    Gains,
    PairedDifference,
    Qrels,
    evaluate_run,
    paired_bootstrap,
)

PROTECTED, OTHER = "protected", "other"


@dataclass(frozen=True)
class FairnessSetup:
    """A policy to evaluate, each product's group and the protected groups.

    Build it with `fairness_setup`; ``rule`` says in words who is protected and why.
    """

    policy: FairnessPolicy
    groups: Mapping[str, str]
    #: Case-folded, as the search API matches them (`is_protected`).
    protected: frozenset[str]
    rule: str
    #: Share of the catalog's products in a protected group.
    protected_share: float

    def is_protected(self, group: str | None) -> bool:
        return group is not None and group.casefold() in self.protected

    def describe(self) -> str:
        """The policy and the protected groups in one line, for reports."""
        policy = self.policy
        knobs = {
            "fair_topk": f"p={policy.p}, alpha={policy.alpha}",
            "group_cap": f"cap={policy.cap}",
            "exposure_parity": f"tolerance={policy.tolerance}",
            "amortized": f"max nDCG loss={policy.max_ndcg_loss}",
        }.get(policy.policy, "")
        top = "" if policy.k is None else f", k={policy.k}"
        return f"{policy.policy} on {policy.field} ({knobs}{top}); protected: {self.rule}"


def fairness_setup(policy: FairnessPolicy, catalog: Iterable[Product]) -> FairnessSetup:
    """Groups and protected groups of ``policy`` over the whole ``catalog``.

    >>> from indexer.schema import Product
    >>> catalog = [Product(id=str(i), title="t", brand="big" if i < 9 else "small")
    ...            for i in range(10)]
    >>> setup = fairness_setup(
    ...     FairnessPolicy(policy="fair_topk", protected_share_below=0.2), catalog)
    >>> sorted(setup.protected), setup.protected_share
    (['small'], 0.1)
    """
    if policy.policy == "none":
        raise ValueError("policy 'none' applies no fairness step: there is nothing to evaluate")
    key = group_key(policy)
    groups = {product.id: group_of(product, key) for product in catalog}
    # Counted and matched case-folded, as the search API does (brands "ACME" and "Acme" are
    # one brand there: its store counts lower-cased brand keys).
    counts = Counter(group.casefold() for group in groups.values())
    if policy.protected is not None:
        protected = frozenset(name.casefold() for name in policy.protected)
        rule = f"{len(protected)} listed {policy.field} group(s)"
    elif policy.protected_share_below is not None:
        protected = rare_groups(counts, policy.protected_share_below) - {NO_GROUP}
        rule = (
            f"{len(protected)} {policy.field} group(s) each below "
            f"{policy.protected_share_below:.2%} of the catalog's {len(groups)} products"
        )
    else:
        protected = frozenset()
        rule = "none (FA*IR pass rate, exposure ratio and AWRF need protected groups)"
    share = sum(counts.get(group, 0) for group in protected) / max(1, len(groups))
    if protected:
        rule += f", {share:.1%} of products"
    return FairnessSetup(policy, groups, protected, rule, share)


@dataclass(frozen=True)
class FairnessMeasures:
    """FA*IR pass rate, exposure ratio and AWRF of one run (None where undefined)."""

    pass_rate: float | None
    exposure_ratio: float | None
    awrf: float | None


@dataclass(frozen=True)
class StageFairness:
    """A stage's ranking under the policy, against the same ranking unconstrained."""

    run: dict[str, list[str]]
    report: EvalReport
    versus_unconstrained: PairedDifference
    versus_unconstrained_judged: PairedDifference
    before: FairnessMeasures
    after: FairnessMeasures
    #: Queries the pass rate counts: their candidates hold enough protected items to pass.
    tested: int
    #: Queries left as ranked because they name a brand of their top k.
    exempt: int
    queries: int
    #: Queries whose top k the policy changed.
    changed: int
    latency_p50_us: float
    latency_p95_us: float

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        k = self.report.k

        def diff(value: PairedDifference) -> dict[str, Any]:
            return {"mean": round(value.mean, 4), "ci95": [round(value.low, 4),
                                                           round(value.high, 4)]}

        def measures(value: FairnessMeasures) -> dict[str, float | None]:
            return {
                "fair_pass_rate": _round(value.pass_rate),
                "exposure_ratio": _round(value.exposure_ratio),
                "awrf": _round(value.awrf),
            }

        return {
            f"nDCG@{k}": round(self.report.ndcg, 4),
            f"nDCG@{k} judged-only": round(self.report.ndcg_condensed, 4),
            "nDCG_vs_unconstrained": diff(self.versus_unconstrained),
            "judged_only_nDCG_vs_unconstrained": diff(self.versus_unconstrained_judged),
            "unconstrained": measures(self.before),
            "fair": measures(self.after),
            "pass_rate_queries": self.tested,
            "exempt_queries": self.exempt,
            "queries": self.queries,
            "queries_changed": self.changed,
            "latency_us": {"p50": round(self.latency_p50_us, 1),
                           "p95": round(self.latency_p95_us, 1)},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values`` (0 <= q <= 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _items(
    setup: FairnessSetup, ids: Sequence[str], scores: Sequence[float] | None
) -> list[FairnessItem]:
    # Gains as the search API makes them (`relevance_of`). Stages without scores (cross-validated
    # ones, the pool protocol) rank by position instead.
    if scores is None or len(scores) != len(ids):
        scores = [float(-rank) for rank in range(len(ids))]
    items = []
    for pid, score, relevance in zip(ids, scores, relevance_of(scores), strict=True):
        group = setup.groups.get(pid, NO_GROUP)
        items.append(FairnessItem(pid, group, score, setup.is_protected(group), relevance))
    return items


def fair_run(
    setup: FairnessSetup,
    run: Mapping[str, Sequence[str]],
    scores: Mapping[str, Sequence[float]],
    k: int,
    queries: Mapping[str, str] | None = None,
) -> tuple[dict[str, list[str]], list[float], set[str]]:
    """Each query's ranking reordered by the policy (queries in sorted order, which matters
    for ``amortized``), and the seconds each fairness step took.

    As `timeit` does, the garbage collector is paused while timing: a full collection walks
    every object of the process (here the whole catalog and index), which would time the
    evaluation's heap rather than the fairness step.
    """
    processor = post_processor(setup.policy, k, InMemoryExposureStore())
    reordered: dict[str, list[str]] = {}
    seconds = []
    exempt = set()
    collecting = gc.isenabled()
    gc.disable()
    try:
        for qid in sorted(run):
            start = time.perf_counter()
            items = _items(setup, run[qid], scores.get(qid))
            named = (
                named_group(queries[qid], dict.fromkeys(item.group for item in items[:k]))
                if setup.policy.exempt_named_groups and queries and qid in queries
                else None
            )
            # As the search API does: a query that names a brand of its top k is left as ranked.
            result = FairnessResult(tuple(items)) if named else processor.rerank(items)
            if named:
                exempt.add(qid)
            if isinstance(processor, AmortizedExposure):
                processor.record(result.items)
            seconds.append(time.perf_counter() - start)
            reordered[qid] = result.ids
    finally:
        if collecting:
            gc.enable()
    return reordered, seconds, exempt


def fairness_measures(
    setup: FairnessSetup, run: Mapping[str, Sequence[str]], k: int,
    exempt: Iterable[str] = (),
) -> tuple[FairnessMeasures, int]:
    """FA*IR pass rate, group exposure ratio and AWRF of ``run``'s top k (see the module
    docstring), and how many queries the pass rate counts. Queries the policy exempts (they
    name a brand of their top k) are left out of the pass rate, not of exposure and AWRF."""
    skip = set(exempt)
    if not setup.protected or not run:
        return FairnessMeasures(None, None, None), 0
    policy = setup.policy
    target = {PROTECTED: policy.p, OTHER: 1 - policy.p}
    tested: list[list[bool]] = []
    exposure = dict.fromkeys((PROTECTED, OTHER), 0.0)
    sizes = dict.fromkeys((PROTECTED, OTHER), 0)
    fairness = []
    for qid, ranking in run.items():
        labels = [PROTECTED if setup.is_protected(setup.groups.get(pid)) else OTHER
                  for pid in ranking]
        top = min(k, len(labels))
        if top == 0:
            continue
        flags = [label == PROTECTED for label in labels]
        if qid not in skip and sum(flags) >= fair_table(top, policy.p, policy.alpha).minimum[-1]:
            tested.append(flags)
        for label, value in group_exposure(labels, k).items():
            exposure[label] += value
        for label in labels:
            sizes[label] += 1
        fairness.append(awrf(labels[:top], target))
    rate = fair_pass_rate(tested, k, policy.p, policy.alpha) if tested else None
    ratio = None
    if sizes[PROTECTED] and sizes[OTHER] and exposure[OTHER] > 0:
        ratio = (exposure[PROTECTED] / sizes[PROTECTED]) / (exposure[OTHER] / sizes[OTHER])
    mean_awrf = statistics.fmean(fairness) if fairness else None
    return FairnessMeasures(rate, ratio, mean_awrf), len(tested)


def evaluate_fairness(
    setup: FairnessSetup,
    run: Mapping[str, Sequence[str]],
    scores: Mapping[str, Sequence[float]],
    qrels: Qrels,
    unconstrained: EvalReport,
    *,
    k: int = 10,
    gains: Gains | None = None,
    bootstrap_seed: int = 0,
    repeats: int = 3,
    queries: Mapping[str, str] | None = None,
) -> StageFairness:
    """Apply ``setup``'s policy to the scored queries of ``run`` (a stage's ranking, scored
    as ``unconstrained``) and compare the two rankings; the policy's k defaults to ``k``.

    The latency of a query is the median of ``repeats`` timed runs of its fairness step: a
    single run right after the searches is often preempted (by the model's worker threads or
    other processes), which times the machine rather than the step.
    """
    top = setup.policy.k or k
    scored = {qid: run.get(qid, []) for qid in unconstrained.per_query}
    fair, seconds, exempt = fair_run(setup, scored, scores, top, queries)
    timings = [
        seconds, *(fair_run(setup, scored, scores, top, queries)[1] for _ in range(repeats - 1))
    ]
    report = evaluate_run(fair, qrels, k=k, candidates_depth=unconstrained.candidates_depth,
                          gains=gains)

    def paired(metric: str) -> PairedDifference:
        return paired_bootstrap(
            {q: v[metric] for q, v in unconstrained.per_query.items()},
            {q: v[metric] for q, v in report.per_query.items()},
            seed=bootstrap_seed,
        )

    before, tested = fairness_measures(setup, scored, top, exempt)
    after, _ = fairness_measures(setup, fair, top, exempt)
    micros = [statistics.median(query) * 1e6 for query in zip(*timings, strict=True)] or [0.0]
    return StageFairness(
        run=fair,
        report=report,
        versus_unconstrained=paired("ndcg"),
        versus_unconstrained_judged=paired("ndcg_condensed"),
        before=before,
        after=after,
        tested=tested,
        exempt=len(exempt),
        queries=len(scored),
        changed=sum(list(scored[q][:top]) != fair[q][:top] for q in scored),
        latency_p50_us=statistics.median(micros),
        latency_p95_us=percentile(micros, 0.95),
    )


def _pair(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{before:.3f} -> {after:.3f}"


def fairness_markdown(setup: FairnessSetup, rows: Sequence[tuple[str, StageFairness]]) -> str:
    """A table with one row per stage: the fair ranking's relevance and fairness, and each
    fairness measure as unconstrained -> fair."""
    if not rows:
        return ""
    k = rows[0][1].report.k
    lines = [
        f"#### fairness: {setup.describe()}",
        "",
        f"| stage | fair nDCG@{k} | fair judged-only nDCG@{k} | nDCG vs unconstrained [95% CI] "
        "| judged-only vs unconstrained [95% CI] | FA*IR pass rate | tested queries "
        "| exposure ratio | AWRF | top k changed | fairness p50 / p95 us |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for stage, row in rows:
        lines.append(
            f"| {stage} | {row.report.ndcg:.4f} | {row.report.ndcg_condensed:.4f} "
            f"| {row.versus_unconstrained} | {row.versus_unconstrained_judged} "
            f"| {_pair(row.before.pass_rate, row.after.pass_rate)} | {row.tested}/{row.queries} "
            f"| {_pair(row.before.exposure_ratio, row.after.exposure_ratio)} "
            f"| {_pair(row.before.awrf, row.after.awrf)} | {row.changed} "
            f"| {row.latency_p50_us:.0f} / {row.latency_p95_us:.0f} |"
        )
    lines += [
        "",
        "Fairness measures read unconstrained -> fair. FA*IR pass rate: queries whose top k "
        "passes the adjusted table, among the tested queries (candidates holding enough "
        "protected items; a query that names a brand of its top k is exempt and not tested). "
        "Exposure ratio: mean exposure per protected candidate over per "
        "other candidate, pooled over queries. AWRF: TREC Fair Ranking 2022, protected/other "
        "against the target (p, 1 - p), over the top k.",
    ]
    return "\n".join(lines) + "\n"
