"""Transfer of the learned final stage from one shop to another: zero-shot, few-shot, scratch.

A final stage is fitted on every judged query of the source catalog. On the target catalog,
5-fold cross-validation then scores:

- zero-shot: the source ranker as it is;
- few-shot with N target queries (drawn from the training folds), starting from the source
  ranker's weights (`fit_linear_ranker(prior=...)`);
- from scratch with the same N target queries and no prior;
- pooled: the source's queries and the target's training folds fitted together.

    python bench/transfer.py --source esci-us --source-esci --target icecat

Prints Markdown; nDCG@10 with paired-bootstrap 95% CIs against default RRF on the target.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from plugin.components import build_pipeline
from plugin.final_stage_fitting import (
    QueryCandidates,
    collect_candidates,
    cross_validated_final,
    fit_final_stage,
    folds_of,
)
from plugin.settings import Settings
from reranker.metrics import (
    ESCI_GAINS,
    Gains,
    Qrels,
    evaluate_run,
    load_qrels,
    load_queries,
    paired_bootstrap,
)

REPO = Path(__file__).resolve().parents[1]


def _catalog(data: Path, name: str) -> tuple[dict[str, QueryCandidates], Qrels]:
    queries = load_queries(data / name / "queries.tsv")
    qrels = load_qrels(data / name / "qrels.txt")
    pipeline = build_pipeline(Settings(index=f"eval-{name}", final_ranker="none", reranker="none"))
    if not pipeline.store.exists():
        raise SystemExit(f"index eval-{name} is missing: run bench/relevance.sh first")
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    return collect_candidates(pipeline, judged, rerank=False), qrels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--source-esci", action="store_true", help="ESCI gains on the source")
    parser.add_argument("--target-esci", action="store_true", help="ESCI gains on the target")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--shots", default="10,25", help="few-shot sizes (all is always run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    source, source_qrels = _catalog(args.data, args.source)
    target, target_qrels = _catalog(args.data, args.target)
    source_gains: Gains | None = ESCI_GAINS if args.source_esci else None
    gains: Gains | None = ESCI_GAINS if args.target_esci else None
    prior = fit_final_stage(source, source_qrels, sorted(source), gains=source_gains,
                            with_cross_encoder=False, card={"name": args.source})
    qids = sorted(target)
    folds = folds_of(qids, 5, args.seed)
    runs: dict[str, dict[str, list[str]]] = {
        "hybrid (default RRF)": {q: [c.product_id for c in target[q].candidates] for q in qids},
        "zero-shot": {q: target[q].ranked_by(prior) for q in qids},
    }
    for shots in [int(s) for s in args.shots.split(",")] + [None]:
        label = "all" if shots is None else str(shots)
        for name, start in (("few-shot", prior), ("scratch", None)):
            runs[f"{name}, {label} queries"] = cross_validated_final(
                target, target_qrels, folds, gains=gains, with_cross_encoder=False,
                prior=start, train_queries=shots, seed=args.seed,
            )
    pooled = {}
    for test in folds:
        train = [q for fold in folds if fold is not test for q in fold]
        both = {**{f"s:{q}": v for q, v in source.items()}, **target}
        judgments = {**{f"s:{q}": v for q, v in source_qrels.items()}, **target_qrels}
        # One gain scale for both: the target's.
        ranker = fit_final_stage(both, judgments, [f"s:{q}" for q in source] + train,
                                 gains=gains, with_cross_encoder=False)
        pooled.update({q: target[q].ranked_by(ranker) for q in test})
    runs["pooled, source + all target queries"] = pooled

    reports = {name: evaluate_run(run, {q: target_qrels[q] for q in qids}, gains=gains)
               for name, run in runs.items()}
    base = {q: v["ndcg"] for q, v in reports["hybrid (default RRF)"].per_query.items()}
    print(f"### final stage tuned on {args.source}, evaluated on {args.target} "
          f"({len(qids)} queries, 5-fold CV)\n")
    print("| final stage | nDCG@10 | judged-only nDCG@10 | vs default RRF [95% CI] |")
    print("| --- | ---: | ---: | --- |")
    for name, report in reports.items():
        versus = paired_bootstrap(base, {q: v["ndcg"] for q, v in report.per_query.items()})
        print(f"| {name} | {report.ndcg:.4f} | {report.ndcg_condensed:.4f} "
              f"| {'' if name.startswith('hybrid') else versus} |")


if __name__ == "__main__":
    main()
