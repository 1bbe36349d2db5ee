"""FA*IR on the shared catalogs: small brands protected at their share of the relevant products.

For each catalog the ranking is the one a shopper gets by default in hybrid mode: the packaged
final stage (`plugin/artifacts/final-ranker.json`, no cross-encoder), exactly as
``shoprank eval --mode final`` without ``--cv`` scores it (full protocol, 100 candidates per
query); hybrid (RRF) is measured beside it at p*. Note that the packaged ranker was fitted on
every ESCI dev query, so its ESCI relevance is in-sample; for Icecat it is a transfer.

- Protected: brands each holding less than ``--share`` (default 0.5%) of the catalog's products,
  counted over the whole catalog (`plugin.fairness.evaluation.fairness_setup`); products without a
  brand form the group "(none)", which is never protected.
- p*: the protected share of the relevant judged (query, product) pairs of the dev queries:
  grade >= 1 (Icecat), Exact or Substitute (ESCI, grade >= 2).
- FairTopK at alpha 0.1, k 10 and p = p*, then the trade-off over p = 0.1 ... 0.9; the fairness
  step alone (building the items and reordering them) is timed per query at k = 10 and
  k = 100, as the median of ``--repeats`` runs, and set against the search's own p50 latency
  measured in the same run. The nDCG@10 change at p* is also split between queries that name
  a big (unprotected) brand among their top 10 and the others.

Targets: FA*IR pass rate >= 0.95 (over the queries whose candidates hold enough protected
items to pass) and nDCG@10 loss <= 0.02 at p = p*; fairness step < 1 ms per query up to k = 100.

    SHOPRANK_HOME=... python -m bench.fairness [--catalogs esci-us,icecat] [--share 0.005]

Needs the eval indexes that bench/relevance.sh builds (eval-esci-us, eval-icecat). Prints
Markdown; writes JSON to bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from indexer.analysis import analyze
from indexer.catalog import load_catalog
from plugin.components import build_pipeline
from plugin.fairness.evaluation import (
    FairnessSetup,
    StageFairness,
    evaluate_fairness,
    fairness_setup,
)
from plugin.fairness.items import NO_GROUP
from plugin.fairness.metrics import fair_table
from plugin.models import FairnessPolicy
from plugin.offline_eval import StageResult, evaluate_stages
from plugin.settings import Settings
from reranker.metrics import (
    ESCI_GAINS,
    PairedDifference,
    Qrels,
    load_qrels,
    load_queries,
    paired_bootstrap,
)

REPO = Path(__file__).resolve().parents[1]
#: ESCI grades: Exact 3, Substitute 2, Complement 1, Irrelevant 0.
ESCI_CATALOGS = frozenset({"esci-us"})


def relevant_protected_share(
    setup: FairnessSetup, qrels: Qrels, min_grade: int
) -> tuple[float, int]:
    """Share of the relevant judged (query, product) pairs whose product is protected, and how
    many relevant pairs (of catalog products) there are."""
    relevant = [
        pid for judgments in qrels.values() for pid, grade in judgments.items()
        if grade >= min_grade and pid in setup.groups
    ]
    protected = sum(setup.is_protected(setup.groups[pid]) for pid in relevant)
    return protected / max(1, len(relevant)), len(relevant)


def _with(setup: FairnessSetup, **policy: Any) -> FairnessSetup:
    return dataclasses.replace(setup, policy=setup.policy.model_copy(update=policy))


def _measure(
    setup: FairnessSetup, result: StageResult, qrels: Qrels, esci: bool, repeats: int,
    queries: Mapping[str, str],
) -> StageFairness:
    """The policy on ``result``'s ranking; latency: per query the median of ``repeats``
    timed runs, then p50/p95 over queries."""
    return evaluate_fairness(
        setup, result.run, result.scores, qrels, result.report, k=10,
        gains=ESCI_GAINS if esci else None, repeats=repeats, queries=queries,
    )


def _row(label: str, row: StageFairness) -> str:
    def pair(before: float | None, after: float | None) -> str:
        return "-" if before is None or after is None else f"{before:.3f} -> {after:.3f}"

    return (
        f"| {label} | {pair(row.before.pass_rate, row.after.pass_rate)} | {row.tested} "
        f"| {row.report.ndcg:.4f} | {row.versus_unconstrained} "
        f"| {row.versus_unconstrained_judged} "
        f"| {pair(row.before.exposure_ratio, row.after.exposure_ratio)} "
        f"| {pair(row.before.awrf, row.after.awrf)} | {row.changed} "
        f"| {row.latency_p50_us:.0f} / {row.latency_p95_us:.0f} |"
    )


HEADER = (
    "| p | FA*IR pass rate | tested | fair nDCG@10 | nDCG@10 change [95% CI] "
    "| judged-only change [95% CI] | exposure ratio | AWRF | top k changed | p50 / p95 us |\n"
    "| --- | --- | ---: | ---: | --- | --- | --- | --- | ---: | ---: |"
)


def names_a_big_brand(setup: FairnessSetup, query: str, top: Sequence[str]) -> bool:
    """Whether the query names (all analysed terms of) the brand of an unprotected product in
    ``top``, as the final stage's ``brand_in_query`` feature reads a brand: the shopper asked
    for a big brand, which FA*IR then pushes down."""
    terms = set(analyze(query))
    brands = {
        group for group in (setup.groups.get(pid, NO_GROUP) for pid in top)
        if not setup.is_protected(group) and group != NO_GROUP
    }
    return any(set(analyze(brand)) <= terms for brand in brands if analyze(brand))


def _subset_change(
    row: StageFairness, unconstrained: StageResult, qids: Sequence[str], metric: str
) -> PairedDifference:
    return paired_bootstrap(
        {q: unconstrained.report.per_query[q][metric] for q in qids},
        {q: row.report.per_query[q][metric] for q in qids},
    )


def _table_build_ms(k: int, p: float, alpha: float) -> float:
    """One FA*IR table build (then cached per process for its k, p and alpha)."""
    fair_table.cache_clear()
    start = time.perf_counter()
    fair_table(k, p, alpha)
    return (time.perf_counter() - start) * 1000


def bench_catalog(name: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    esci = name in ESCI_CATALOGS
    folder = data / name
    started = time.perf_counter()
    products = load_catalog(folder / "products.jsonl.gz").products
    queries = load_queries(folder / "queries.tsv")
    qrels = load_qrels(folder / "qrels.txt")
    judged_queries = {qid: text for qid, text in queries.items() if qid in qrels}
    pipeline = build_pipeline(Settings(index=f"eval-{name}", reranker="none"))
    if not pipeline.store.exists():
        raise SystemExit(f"index eval-{name} is missing: run bench/relevance.sh first")
    if pipeline.final_ranker is None:
        raise SystemExit("the packaged final stage is missing (plugin/artifacts)")
    hybrid, final = evaluate_stages(
        pipeline, judged_queries, qrels, ["hybrid", "final"],
        gains=ESCI_GAINS if esci else None,
    )
    base = fairness_setup(
        FairnessPolicy(policy="fair_topk", protected_share_below=args.share, alpha=args.alpha,
                       k=10),
        products,
    )
    p_star, relevant = relevant_protected_share(base, qrels, 2 if esci else 1)
    p_star = round(p_star, 4)
    at_star = _with(base, p=p_star)
    rows = {f"p* = {p_star}": _measure(at_star, final, qrels, esci, args.repeats, judged_queries)}
    for p in args.ps:
        rows[f"{p:g}"] = _measure(
            _with(base, p=p), final, qrels, esci, args.repeats, judged_queries
        )
    k100 = _measure(_with(at_star, k=100), final, qrels, esci, args.repeats, judged_queries)
    reference = _measure(at_star, hybrid, qrels, esci, args.repeats, judged_queries)
    unexempt = _measure(
        _with(at_star, exempt_named_groups=False), final, qrels, esci, args.repeats,
        judged_queries,
    )
    star = rows[f"p* = {p_star}"]
    navigational = [
        qid for qid in final.report.per_query
        if names_a_big_brand(at_star, judged_queries[qid], final.run[qid][:10])
    ]
    others = [qid for qid in final.report.per_query if qid not in navigational]
    split = {
        label: (len(qids), _subset_change(star, final, qids, "ndcg"),
                _subset_change(star, final, qids, "ndcg_condensed"))
        for label, qids in (("name a big brand", navigational), ("others", others)) if qids
    }
    table_ms = {k: _table_build_ms(k, p_star, args.alpha) for k in (10, 100)}
    seconds = time.perf_counter() - started

    pass_ok = star.after.pass_rate is not None and star.after.pass_rate >= 0.95
    loss = -star.versus_unconstrained.mean
    latency_ok = max(star.latency_p95_us, k100.latency_p95_us) < 1000
    lines = [
        f"### {name}: FA*IR (alpha {args.alpha}, k 10) on the packaged final stage "
        f"({final.report.queries} queries, full protocol)",
        "",
        f"- protected: {base.rule}",
        f"- p* = {p_star}: protected share of the {relevant} relevant judged (query, product) "
        f"pairs ({'Exact/Substitute' if esci else 'grade >= 1'})",
        f"- unconstrained final stage: nDCG@10 {final.report.ndcg:.4f} (judged-only "
        f"{final.report.ndcg_condensed:.4f}), search p50 {final.p50_ms:.1f} ms; hybrid "
        f"(RRF) nDCG@10 {hybrid.report.ndcg:.4f}",
        "",
        HEADER,
        *(_row(label, row) for label, row in rows.items()),
        "",
        "At p*, other settings:",
        "",
        HEADER.replace("| p |", "| setting |"),
        _row(f"final, k=100 (p* = {p_star})", k100),
        _row(f"hybrid (RRF), k=10 (p* = {p_star})", reference),
        _row(f"final, no query exempt for naming a brand (p* = {p_star})", unexempt),
        "",
        "nDCG@10 change at p* by query kind (a query names a big brand when all terms of an "
        "unprotected brand in its unconstrained top 10 are in the query):",
        "",
        "| queries | count | nDCG@10 change [95% CI] | judged-only change [95% CI] |",
        "| --- | ---: | --- | --- |",
        *(f"| {label} | {count} | {plain} | {judged} |"
          for label, (count, plain, judged) in split.items()),
        "",
        f"Targets at p*: pass rate >= 0.95: {'met' if pass_ok else 'NOT met'} "
        f"({_fmt(star.after.pass_rate)} over {star.tested} of {star.queries} queries, "
        f"{star.exempt} exempt for naming a brand); "
        f"nDCG@10 loss <= 0.02: {'met' if loss <= 0.02 else 'NOT met'} ({loss:+.4f}, "
        f"judged-only {-star.versus_unconstrained_judged.mean:+.4f}); fairness step < 1 ms: "
        f"{'met' if latency_ok else 'NOT met'} (p95 {star.latency_p95_us:.0f} us at k=10, "
        f"{k100.latency_p95_us:.0f} us at k=100; p50 {star.latency_p50_us:.0f} us = "
        f"{star.latency_p50_us / 10 / final.p50_ms:.1f}% of the search's p50). One-off FA*IR "
        f"table build per (k, p, alpha), cached afterwards: {table_ms[10]:.2f} ms at k=10, "
        f"{table_ms[100]:.2f} ms at k=100. Run took {seconds:.0f} s.",
    ]
    print("\n".join(lines) + "\n", flush=True)
    return {
        "catalog": name, "stage": "final (packaged)", "share": args.share, "alpha": args.alpha,
        "protected": base.rule, "protected_groups": len(base.protected), "p_star": p_star,
        "relevant_pairs": relevant,
        "unconstrained": {"final": final.report.summary(), "hybrid": hybrid.report.summary(),
                          "search_p50_ms": round(final.p50_ms, 2)},
        "curve": {label: row.summary() for label, row in rows.items()},
        "final_k100": k100.summary(), "hybrid_k10": reference.summary(),
        "final_no_exemption": unexempt.summary(),
        "by_query_kind": {
            label: {"queries": count, "nDCG_change": round(plain.mean, 4),
                    "ci95": [round(plain.low, 4), round(plain.high, 4)],
                    "judged_only_change": round(judged.mean, 4)}
            for label, (count, plain, judged) in split.items()
        },
        "table_build_ms": table_ms, "targets": {
            "pass_rate": pass_ok, "ndcg_loss": loss <= 0.02, "latency": latency_ok,
        },
        "seconds": round(seconds, 1),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--catalogs", default="esci-us,icecat")
    parser.add_argument("--share", type=float, default=0.005,
                        help="protect brands below this share of the catalog's products")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--ps", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                        type=lambda text: [float(p) for p in text.split(",")])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per query")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fairness.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = [bench_catalog(name, args.data, args) for name in args.catalogs.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
