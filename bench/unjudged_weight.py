"""How much should a pair with an unjudged candidate count when fitting the final stage?

For each weight, the final stage is fitted by 5-fold cross-validation over the judged dev
queries (as `shoprank eval --cv 5` does) and scored with plain and judged-only nDCG@10.
Weight 0 fits among judged products only; 1 treats unjudged as irrelevant. The packaged
default is `reranker.linear_ranker.UNJUDGED_WEIGHT`. Needs the eval indexes that
bench/relevance.sh builds.

    python -m bench.unjudged_weight --catalog esci-us --esci
    python -m bench.unjudged_weight --catalog icecat
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench.transfer import _catalog
from plugin.final_stage_fitting import cross_validated_final, folds_of
from reranker.metrics import ESCI_GAINS, evaluate_run, paired_bootstrap

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--esci", action="store_true", help="ESCI gains")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--weights", default="0,0.02,0.05,0.2,1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    collected, qrels = _catalog(args.data, args.catalog)
    gains = ESCI_GAINS if args.esci else None
    qids = sorted(collected)
    baseline = {q: [c.product_id for c in collected[q].candidates] for q in qids}
    base = evaluate_run(baseline, qrels, gains=gains)
    print(f"### {args.catalog}: final stage by unjudged-pair weight ({len(qids)} queries, "
          "5-fold CV)\n")
    print("| unjudged weight | nDCG@10 | judged-only nDCG@10 | vs RRF [95% CI] | "
          "judged-only vs RRF [95% CI] |")
    print("| ---: | ---: | ---: | --- | --- |")
    print(f"| RRF (no final stage) | {base.ndcg:.4f} | {base.ndcg_condensed:.4f} | | |")
    plain = {q: v["ndcg"] for q, v in base.per_query.items()}
    condensed = {q: v["ndcg_condensed"] for q, v in base.per_query.items()}
    for weight in (float(w) for w in args.weights.split(",")):
        run = cross_validated_final(
            collected, qrels, folds_of(qids, 5, args.seed), gains=gains,
            with_cross_encoder=False, unjudged_weight=weight,
        )
        report = evaluate_run(run, qrels, gains=gains)
        diff = paired_bootstrap(plain, {q: v["ndcg"] for q, v in report.per_query.items()})
        diff_c = paired_bootstrap(
            condensed, {q: v["ndcg_condensed"] for q, v in report.per_query.items()}
        )
        print(f"| {weight:g} | {report.ndcg:.4f} | {report.ndcg_condensed:.4f} | {diff} | "
              f"{diff_c} |", flush=True)


if __name__ == "__main__":
    main()
