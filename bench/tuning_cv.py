"""Cross-validated comparison of every stage, with the cross-encoder tuned per fold.

For each of K folds of the judged queries, a cross-encoder is tuned (`tune_cross_encoder`) on
the other folds only; it reranks the held-out queries, and a linear final stage that uses its
score is fitted on the other folds (with that fold's cross-encoder scoring their candidates) and
ranks the held-out queries. No query is ever scored by a model that saw its judgments.

    python bench/tuning_cv.py --set esci-us --esci          # ESCI gains, full-catalog protocol
    python bench/tuning_cv.py --set icecat

Prints a Markdown table (nDCG@10 plain and judged-only, MRR, judged@10, and paired-bootstrap
95% CIs against default RRF and against fold-tuned RRF) and writes JSON with --json-out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

from indexer.catalog import load_catalog
from indexer.indexing import reindex_catalog
from indexer.schema import product_to_text
from plugin.components import build_pipeline
from plugin.final_stage_fitting import (
    QueryCandidates,
    collect_candidates,
    cross_validated_final,
    cross_validated_fusion,
    fit_final_stage,
    folds_of,
    retrieved_lists,
)
from plugin.settings import Settings
from reranker.cross_encoder import InProcessCrossEncoder
from reranker.metrics import (
    ESCI_GAINS,
    EvalReport,
    evaluate_run,
    load_qrels,
    load_queries,
    paired_bootstrap,
)
from reranker.tuning import CrossEncoderTuneConfig, tune_cross_encoder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True, help="folder name under --data (esci-us, icecat)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--esci", action="store_true", help="ESCI gains E=1, S=0.1, C=0.01")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=30, help="candidates the CE rescores")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    folder = args.data / args.set
    gains = ESCI_GAINS if args.esci else None
    queries = load_queries(folder / "queries.tsv")
    qrels = load_qrels(folder / "qrels.txt")
    settings = Settings(index=f"eval-{args.set}", final_ranker="none", reranker="none")
    pipeline = build_pipeline(settings)
    if not pipeline.store.exists():
        reindex_catalog(pipeline.store, folder / "products.jsonl.gz", pipeline.encoder)
    judged = {q: t for q, t in queries.items() if q in qrels}
    qids = sorted(judged)
    folds = folds_of(qids, args.folds, args.seed)

    collected = collect_candidates(pipeline, judged, rerank=False)
    lists = retrieved_lists(pipeline, judged)
    runs: dict[str, dict[str, list[str]]] = {
        "bm25": {q: lists[q][0] for q in qids},
        "vector": {q: lists[q][1] for q in qids},
        "hybrid": {q: [c.product_id for c in collected[q].candidates] for q in qids},
    }
    runs["tuned-hybrid"], _ = cross_validated_fusion(lists, qrels, folds, gains=gains)
    runs["final"] = cross_validated_final(
        collected, qrels, folds, gains=gains, with_cross_encoder=False
    )

    products = load_catalog(folder / "products.jsonl.gz").products
    by_id = {p.id: p for p in products}
    mined = {q: [c.product_id for c in collected[q].candidates] for q in qids}
    config = CrossEncoderTuneConfig(
        lora=not args.full, epochs=args.epochs, max_length=args.max_length,
        negatives_per_query=args.negatives, gains=gains, seed=args.seed,
    )
    runs["rerank"], runs["final+ce"] = {}, {}
    fold_seconds = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, test in enumerate(folds):
            held_out = set(test)
            train = [q for q in qids if q not in held_out]
            out = Path(scratch) / f"fold-{number}"
            started = time.perf_counter()
            result = tune_cross_encoder(
                by_id, {q: judged[q] for q in train}, {q: qrels[q] for q in train},
                {q: mined[q] for q in train}, out, config, catalog=args.set,
            )
            fold_seconds.append(time.perf_counter() - started)
            logging.info("fold %d: tuned in %.0f s, validation nDCG %.3f -> %.3f",
                         number, fold_seconds[-1], result.validation_before,
                         result.validation_best)
            model = InProcessCrossEncoder(out)
            scored: dict[str, QueryCandidates] = {}
            for qid in qids:
                item = collected[qid]
                window = item.candidates[: args.window]
                scores = model.score(
                    item.query, [product_to_text(by_id[c.product_id]) for c in window]
                )
                rerank: list[float | None] = [*scores, *[None] * (len(item.candidates)
                                                               - len(window))]
                scored[qid] = dataclasses.replace(item, rerank=rerank)
            for qid in test:
                window = scored[qid].candidates[: args.window]
                order = sorted(range(len(window)), key=lambda i: -(scored[qid].rerank[i] or 0.0))
                runs["rerank"][qid] = [window[i].product_id for i in order] + [
                    c.product_id for c in scored[qid].candidates[args.window:]
                ]
            ranker = fit_final_stage(scored, qrels, train, gains=gains, with_cross_encoder=True)
            for qid in test:
                runs["final+ce"][qid] = scored[qid].ranked_by(ranker)
            model.close()

    reports = {name: evaluate_run(run, {q: qrels[q] for q in qids}, gains=gains)
               for name, run in runs.items()}
    print(_markdown(args.set, reports, fold_seconds, result.artifact_bytes))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "set": args.set, "folds": args.folds, "seed": args.seed,
            "machine": platform.uname()._asdict(),
            "config": config.model_dump(mode="json"), "fold_training_seconds": fold_seconds,
            "stages": {name: report.summary() for name, report in reports.items()},
        }, indent=2))


def _ndcg(report: EvalReport) -> dict[str, float]:
    return {q: v["ndcg"] for q, v in report.per_query.items()}


def _markdown(name: str, reports: dict[str, EvalReport], seconds: list[float], size: int) -> str:
    lines = [
        f"### {name}: {len(seconds)}-fold cross-validation, full-catalog protocol",
        "",
        "| stage | nDCG@10 | judged-only nDCG@10 | MRR@10 | judged@10 | vs hybrid [95% CI] "
        "| vs tuned-hybrid [95% CI] |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for stage, report in reports.items():
        versus = [
            "" if stage == base else str(paired_bootstrap(_ndcg(reports[base]), _ndcg(report)))
            for base in ("hybrid", "tuned-hybrid")
        ]
        lines.append(
            f"| {stage} | {report.ndcg:.4f} | {report.ndcg_condensed:.4f} | {report.mrr:.4f} "
            f"| {report.judged:.4f} | {versus[0]} | {versus[1]} |"
        )
    lines += ["", f"cross-encoder tuning per fold: {', '.join(f'{s:.0f} s' for s in seconds)}; "
              f"artifact {size / 1e6:.1f} MB"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
