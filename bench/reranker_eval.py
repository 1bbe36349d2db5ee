"""The cross-encoder, scored both ways on one catalog's dev queries, with 5-fold CV.

    python3 -m bench.reranker_eval --set esci-us --esci --checkpoint plugin/artifacts/reranker
    python3 -m bench.reranker_eval --set icecat --checkpoint plugin/artifacts/reranker

Candidates come from hybrid retrieval (default RRF, 100 deep) on ``--index`` (built from the
catalog if missing). The cross-encoder scores the top 100 of every query once; a window ``w``
uses the scores of the top ``w`` only. Rows:

- ``hybrid``: retrieval order;
- ``final``: today's learned final stage, fitted per fold (no cross-encoder feature);
- ``rerank@w``: the cross-encoder alone reorders the top ``w``;
- ``final+ce@w``: the final stage with the cross-encoder's score as a feature, fitted per fold;
- ``final+ce@nested`` (``--nested``): for each outer fold, the window (or no cross-encoder at
  all) chosen by an inner CV (``--folds`` - 1 folds) over the other folds' queries alone,
  then the final stage fitted there at that window: what the window is worth when the data
  picks it, free of the choice made by reading the rows above.

The cross-encoder never saw a judgment (it learns from pseudo-queries and the final stage's
scores on them), so it may score every query; the final stages are fitted on the other folds.
Each row has nDCG@10 plain and judged-only, and paired-bootstrap 95% CIs against hybrid and
against ``final``. Latency: a whole search (hybrid, the cross-encoder over the top ``w``, the
final stage with its feature), p50/p95 over ``--latency-queries`` dev queries, one at a time,
in process on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from bench.machine import cpu_model, percentile
from plugin.components import build_pipeline
from plugin.final_stage_fitting import (
    QueryCandidates,
    collect_candidates,
    cross_validated_final,
    fit_final_stage,
    folds_of,
)
from plugin.folds import splits
from plugin.models import NO_FAIRNESS, SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from reranker.features import score_logits
from reranker.linear_ranker import LinearRanker
from reranker.metrics import (
    ESCI_GAINS,
    EvalReport,
    Gains,
    Qrels,
    evaluate_run,
    load_qrels,
    load_queries,
    paired_bootstrap,
)

REPO = Path(__file__).resolve().parents[1]


def windowed(item: QueryCandidates, window: int) -> QueryCandidates:
    """The same candidates with cross-encoder scores for the top ``window`` only."""
    scores = [score if i < window else None for i, score in enumerate(item.rerank)]
    return QueryCandidates(item.query, item.candidates, item.products, scores, item.embeddings)


def standardized(item: QueryCandidates) -> QueryCandidates:
    """The same candidates with each query's cross-encoder logits standardised over the scored
    ones (mean 0, standard deviation 1), handed on as sigmoid scores so that the final stage's
    logit feature reads the z-scores: the feature then says how a product compares with the
    query's other candidates, not how sure the model is overall."""
    scored = [i for i, score in enumerate(item.rerank) if score is not None]
    logits = score_logits([item.rerank[i] or 0.0 for i in scored])
    spread = float(logits.std())
    if spread < 1e-9:  # equal scores (up to rounding): every z is 0
        spread = 1.0
    z = (logits - logits.mean()) / spread
    scores: list[float | None] = [None] * len(item.rerank)
    for i, value in zip(scored, z, strict=True):
        scores[i] = float(1.0 / (1.0 + np.exp(-value)))
    return QueryCandidates(item.query, item.candidates, item.products, scores, item.embeddings)


def reranked(item: QueryCandidates, window: int) -> list[str]:
    """The top ``window`` by cross-encoder score, then the rest in retrieval order."""
    head = sorted(range(min(window, len(item.candidates))),
                  key=lambda i: (-(item.rerank[i] or 0.0), i))
    ids = [c.product_id for c in item.candidates]
    return [ids[i] for i in head] + ids[len(head):]


def latency(
    pipeline: SearchPipeline, ranker: LinearRanker, queries: Sequence[str], window: int
) -> list[float]:
    """Milliseconds of each whole search (hybrid, the cross-encoder over the top ``window``,
    the final stage ``ranker``), one at a time, as `SearchPipeline.search` runs it."""
    pipeline.settings.rerank_window = window
    pipeline.final.rankers = dataclasses.replace(pipeline.final.rankers, ranker=ranker)
    pipeline.search(SearchRequest(query=queries[0], k=10))  # warm
    times = []
    for query in queries:
        pipeline.encoder.clear_cache()  # every timed search encodes its query
        started = time.perf_counter()
        pipeline.search(SearchRequest(query=query, k=10, fairness=NO_FAIRNESS))
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(
    name: str, report: EvalReport, base: EvalReport, final: EvalReport | None
) -> dict[str, object]:
    def diff(a: EvalReport, metric: str) -> str:
        return str(paired_bootstrap(
            {q: v[metric] for q, v in a.per_query.items()},
            {q: v[metric] for q, v in report.per_query.items()},
        ))

    return {
        "stage": name,
        "ndcg": round(report.ndcg, 4),
        "ndcg_judged": round(report.ndcg_condensed, 4),
        "mrr": round(report.mrr, 4),
        "judged": round(report.judged, 4),
        "vs_hybrid": diff(base, "ndcg"),
        "vs_hybrid_judged": diff(base, "ndcg_condensed"),
        "vs_final": diff(final, "ndcg") if final else "",
        "vs_final_judged": diff(final, "ndcg_condensed") if final else "",
    }


def inner_score(
    at_window: Mapping[str, QueryCandidates], qrels: Qrels, gains: Gains | None,
    qids: Sequence[str], with_cross_encoder: bool, folds: int, seed: int,
) -> float:
    """Plain plus judged-only nDCG@10 of an inner CV over ``qids`` alone, the final stage
    reading ``at_window``'s cross-encoder scores (or none)."""
    inner = {q: at_window[q] for q in qids}
    run = cross_validated_final(inner, qrels, folds_of(list(qids), folds, seed), gains=gains,
                                with_cross_encoder=with_cross_encoder)
    report = evaluate_run(run, {q: qrels[q] for q in qids}, gains=gains)
    return report.ndcg + report.ndcg_condensed


def nested_window(
    collected: Mapping[str, QueryCandidates], qrels: Qrels, gains: Gains | None,
    windows: Sequence[int], split: Sequence[Sequence[str]], seed: int,
) -> tuple[dict[str, list[str]], list[int]]:
    """Each outer fold ranked at the window (0: no cross-encoder) its training folds chose by an
    inner CV; the run, and the window chosen for each fold."""
    # one windowed copy per window, so each query's features are computed once, not per fold
    by_window = {w: {q: windowed(item, w) for q, item in collected.items()}
                 for w in (0, *windows)}
    run: dict[str, list[str]] = {}
    chosen = []
    for train, test in splits(split):
        window = max(by_window, key=lambda w: inner_score(
            by_window[w], qrels, gains, train, w > 0, len(split) - 1, seed))
        chosen.append(window)
        ranker = fit_final_stage(by_window[window], qrels, train, gains=gains,
                                 with_cross_encoder=window > 0)
        run.update({q: by_window[window][q].ranked_by(ranker) for q in test})
    return run, chosen


def evaluate(
    collected: Mapping[str, QueryCandidates], qrels: Qrels, gains: Gains | None,
    windows: Sequence[int], folds: int, seed: int, nested: bool = False,
    standardize: bool = False,
) -> tuple[list[dict[str, object]], dict[int, LinearRanker]]:
    """The rows, and for each window a final stage fitted on every query (for timing only).

    With ``nested``, a last row ``final+ce@nested`` whose ``windows`` entry lists each outer
    fold's chosen window (0: no cross-encoder)."""
    split = folds_of(list(collected), folds, seed)
    hybrid = {q: [c.product_id for c in item.candidates] for q, item in collected.items()}
    base = evaluate_run(hybrid, qrels, gains=gains)
    final = evaluate_run(
        cross_validated_final(collected, qrels, split, gains=gains, with_cross_encoder=False),
        qrels, gains=gains,
    )
    rows = [row("hybrid", base, base, None), row("final", final, base, None)]
    rankers = {}
    for window in windows:
        rerank = {q: reranked(item, window) for q, item in collected.items()}
        rows.append(row(f"rerank@{window}", evaluate_run(rerank, qrels, gains=gains), base, final))
        with_ce = {q: windowed(item, window) for q, item in collected.items()}
        run = cross_validated_final(with_ce, qrels, split, gains=gains, with_cross_encoder=True)
        rows.append(row(f"final+ce@{window}", evaluate_run(run, qrels, gains=gains), base, final))
        rankers[window] = fit_final_stage(with_ce, qrels, list(with_ce), gains=gains,
                                          with_cross_encoder=True)
        if standardize:
            with_z = {q: standardized(item) for q, item in with_ce.items()}
            run = cross_validated_final(with_z, qrels, split, gains=gains,
                                        with_cross_encoder=True)
            rows.append(row(f"final+ce-z@{window}", evaluate_run(run, qrels, gains=gains),
                            base, final))
    if nested:
        run, chosen = nested_window(collected, qrels, gains, windows, split, seed)
        nested_row = row("final+ce@nested", evaluate_run(run, qrels, gains=gains), base, final)
        rows.append({**nested_row, "windows": chosen})
    return rows, rankers


def markdown(
    rows: Sequence[Mapping[str, object]], latencies: Mapping[int, tuple[float, float]]
) -> str:
    lines = [
        "| stage | nDCG@10 | judged-only | MRR@10 | judged@10 | vs hybrid (plain / judged-only) "
        "| vs final (plain / judged-only) | search p50 / p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        stage = str(r["stage"])
        window = int(stage.split("@")[1]) if stage.split("@")[-1].isdigit() else 0
        timing = (f"{latencies[window][0]:.0f} / {latencies[window][1]:.0f}"
                  if stage.startswith("final+ce@") and window in latencies else "")
        if "windows" in r:
            chosen = cast(Sequence[int], r["windows"])
            stage += " (windows " + ", ".join(str(w) for w in chosen) + ")"
        lines.append(
            f"| {stage} | {r['ndcg']:.4f} | {r['ndcg_judged']:.4f} | {r['mrr']:.4f} | "
            f"{r['judged']:.3f} | {r['vs_hybrid']} / {r['vs_hybrid_judged']} | "
            f"{r['vs_final']} / {r['vs_final_judged']} | {timing} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True, help="folder under --data: esci-us or icecat")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="cross-encoder folder (default: the packaged one)")
    parser.add_argument("--reranker", default="cross-encoder", choices=("cross-encoder", "onnx"))
    parser.add_argument("--index", default=None, help="default: eval-<set>")
    parser.add_argument("--esci", action="store_true", help="ESCI gains E=1, S=0.1, C=0.01")
    parser.add_argument("--windows", default="10,20,30,50,100")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-queries", type=int, default=40)
    parser.add_argument("--nested", action="store_true",
                        help="add final+ce@nested: the window chosen inside the training folds")
    parser.add_argument("--standardize", action="store_true",
                        help="add final+ce-z@w: the cross-encoder logit standardised per query")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = args.data / args.set
    queries = load_queries(folder / "queries.tsv")
    qrels = load_qrels(folder / "qrels.txt")
    judged = {q: text for q, text in queries.items() if q in qrels}
    windows = [int(w) for w in args.windows.split(",")]
    overrides: dict[str, object] = {
        "index": args.index or f"eval-{args.set}", "reranker": args.reranker,
        "final_ranker": "none", "rerank_window": max(windows),
    }
    if args.checkpoint is not None:
        overrides["reranker_checkpoint"] = args.checkpoint
    settings = Settings.model_validate(overrides)
    pipeline = build_pipeline(settings)
    if not pipeline.store.exists():
        raise SystemExit(f"no index {settings.index}: shoprank reindex --catalog "
                         f"{folder / 'products.jsonl.gz'} --index {settings.index}")
    gains = ESCI_GAINS if args.esci else None
    started = time.perf_counter()
    collected = collect_candidates(pipeline, judged, rerank=True)
    scoring = time.perf_counter() - started
    rows, rankers = evaluate(collected, qrels, gains, windows, args.folds, args.seed,
                             nested=args.nested, standardize=args.standardize)
    sample = [item.query for item in collected.values()][: args.latency_queries]
    latencies = {}
    for window in windows:
        times = latency(pipeline, rankers[window], sample, window)
        latencies[window] = (percentile(times, 50), percentile(times, 95))
    print(f"## {args.set}: {len(collected)} dev queries, {args.folds}-fold CV "
          f"(reranker {pipeline.reranker.name})\n")
    print(markdown(rows, latencies))
    print(f"\nRetrieval and scoring the top {max(windows)} of every query took {scoring:.0f} s. "
          f"Machine: {cpu_model()}.")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "set": args.set, "reranker": pipeline.reranker.name, "rows": rows,
            "latency_ms": {str(w): dataclasses.asdict(_Timing(*t)) for w, t in latencies.items()},
            "machine": cpu_model(),
        }, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class _Timing:
    p50: float
    p95: float


if __name__ == "__main__":
    main()
