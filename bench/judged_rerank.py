"""The judgments last: the packaged cross-encoder trained further on graded dev judgments,
one model per outer fold, scored only on the queries it never saw.

    python3 -m bench.judged_rerank --set esci-us --esci --work /tmp/judged/esci-us
    python3 -m bench.judged_rerank --set icecat --work /tmp/judged/icecat
    python3 -m bench.judged_rerank --set icecat --train-set esci-us --work /tmp/judged/zero

Candidates are hybrid's top ``--window`` (default RRF) on ``eval-<set>``, as in
`bench.reranker_eval`, with the same 5 folds. For each fold, a model starts from the packaged
LoRA artifact and trains (`reranker.listwise`, one fixed setting chosen before any run: 2
epochs, learning rate 1e-4, target softmax(grade)) on the judged candidates of the other
folds' queries; unjudged candidates are left out (they are not known to be irrelevant). It
then scores the held-out fold's candidates. With ``--train-set`` one model trains on every
dev query of that catalog and scores this one: a transfer with no label of this catalog.

Rows (nDCG@10 plain / judged-only, paired-bootstrap 95% CIs):

- ``rerank@w``, ``judged rerank@w``: the cross-encoder alone over hybrid's top ``w``, packaged
  and judged-trained;
- ``final+ce@w``: the final stage with the packaged model's score as its feature (fitted per
  fold, as shipped);
- ``final+judged-ce@w``: the same fitted stages (their weights never see the judged model),
  with the judged model's score in the feature.

Every fold's training folder holds a checkpoint, and a fold's scores are written when it
ends, so a stopped run resumes where it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.machine import cpu_model
from bench.reranker_eval import REPO, reranked, row, windowed
from indexer.schema import product_to_text
from plugin.components import PACKAGED_RERANKER, build_pipeline
from plugin.final_stage_fitting import (
    QueryCandidates,
    collect_candidates,
    fit_final_stage,
    folds_of,
)
from plugin.settings import Settings
from reranker.distillation import DistillGroup
from reranker.listwise import ListwiseConfig, train_listwise
from reranker.metrics import ESCI_GAINS, Gains, Qrels, evaluate_run, load_qrels, load_queries

logger = logging.getLogger(__name__)

#: Fixed before any run and never changed on these rows.
CONFIG = ListwiseConfig(epochs=2, learning_rate=1e-4, label_weight=0.0, temperature=1.0,
                        init=str(PACKAGED_RERANKER), checkpoint_steps=50)


def judged_groups(
    collected: Mapping[str, QueryCandidates], qrels: Qrels, qids: Sequence[str], catalog: str
) -> list[DistillGroup]:
    """One group a query: its judged candidates, the grades as targets (softmax(grade));
    queries whose judged candidates all share one grade teach nothing and are left out."""
    groups = []
    for qid in qids:
        item = collected[qid]
        judged = [c.product_id for c in item.candidates if c.product_id in qrels[qid]]
        grades = [float(qrels[qid][pid]) for pid in judged]
        if len(set(grades)) > 1:
            groups.append(DistillGroup(item.query, "judged", catalog, tuple(judged),
                                       tuple(grades)))
    return groups


def train_and_score(
    train: Sequence[DistillGroup], texts: Mapping[str, str],
    score: Mapping[str, QueryCandidates], work: Path,
) -> dict[str, Any]:
    """Train one model on ``train`` in ``work`` (resuming), then score every candidate of
    ``score``; the scores are cached in ``work/scores.json``."""
    cached = work / "scores.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text()))
    model, result = train_listwise(train, texts.__getitem__, CONFIG, work,
                                   data_key=f"{len(train)} groups")
    logger.warning("trained on %d groups, %d pairs in %.0f s (%.1f pairs/s)", len(train),
                   result.pairs, result.seconds, result.pairs_per_second)
    scores = {}
    for qid, item in score.items():
        pairs = [(item.query, product_to_text(item.products[c.product_id]))
                 for c in item.candidates]
        scores[qid] = [float(s) for s in model.predict(pairs, batch_size=32,
                                                       show_progress_bar=False)]
    cached.write_text(json.dumps({"scores": scores, "seconds": result.seconds,
                                  "pairs": result.pairs}))
    return {"scores": scores, "seconds": result.seconds, "pairs": result.pairs}


def with_scores(item: QueryCandidates, scores: Sequence[float | None]) -> QueryCandidates:
    return QueryCandidates(item.query, item.candidates, item.products, list(scores),
                           item.embeddings)


def collect(set_name: str, data: Path, window: int) -> tuple[dict[str, QueryCandidates], Qrels]:
    folder = data / set_name
    queries = load_queries(folder / "queries.tsv")
    qrels = load_qrels(folder / "qrels.txt")
    judged = {q: text for q, text in queries.items() if q in qrels}
    settings = Settings.model_validate({
        "index": f"eval-{set_name}", "reranker": "cross-encoder", "final_ranker": "none",
        "rerank_window": window,
    })
    pipeline = build_pipeline(settings)
    if not pipeline.store.exists():
        raise SystemExit(f"no index {settings.index}: shoprank reindex --catalog "
                         f"{folder / 'products.jsonl.gz'} --index {settings.index}")
    collected = collect_candidates(pipeline, judged, rerank=True)
    return {q: windowed(item, window) for q, item in collected.items()}, qrels


def texts_of(collected: Mapping[str, QueryCandidates]) -> dict[str, str]:
    return {pid: product_to_text(p) for item in collected.values()
            for pid, p in item.products.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True, help="catalog scored: esci-us or icecat")
    parser.add_argument("--train-set", default=None,
                        help="train one model on this catalog's dev judgments instead of per fold")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--esci", action="store_true", help="ESCI gains E=1, S=0.1, C=0.01")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--windows", default="20,50", help="rows reported (at most --window)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    started = time.perf_counter()
    collected, qrels = collect(args.set, args.data, args.window)
    gains: Gains | None = ESCI_GAINS if args.esci else None
    split = folds_of(list(collected), args.folds, args.seed)
    judged: dict[str, list[float]] = {}
    seconds = pairs = 0.0
    if args.train_set:
        source, source_qrels = collect(args.train_set, args.data, args.window)
        groups = judged_groups(source, source_qrels, list(source), args.train_set)
        done = train_and_score(groups, texts_of(source), collected, args.work / "all")
        judged, seconds, pairs = done["scores"], done["seconds"], done["pairs"]
    else:
        texts = texts_of(collected)
        for k, test in enumerate(split):
            train = [q for fold in split for q in fold if q not in set(test)]
            groups = judged_groups(collected, qrels, train, args.set)
            done = train_and_score(groups, texts, {q: collected[q] for q in test},
                                   args.work / f"fold{k}")
            judged.update(done["scores"])
            seconds += done["seconds"]
            pairs += done["pairs"]

    hybrid = {q: [c.product_id for c in item.candidates] for q, item in collected.items()}
    base = evaluate_run(hybrid, qrels, gains=gains)
    final_run: dict[str, list[str]] = {}
    runs: dict[str, dict[str, list[str]]] = {}
    windows = [int(w) for w in args.windows.split(",")]
    for test in split:
        train = [q for fold in split for q in fold if q not in set(test)]
        ranker = fit_final_stage(collected, qrels, train, gains=gains, with_cross_encoder=False)
        for q in test:
            final_run[q] = collected[q].ranked_by(ranker)
        for w in windows:
            packaged = {q: windowed(item, w) for q, item in collected.items()}
            ranker = fit_final_stage(packaged, qrels, train, gains=gains,
                                     with_cross_encoder=True)
            for q in test:
                own = windowed(with_scores(collected[q], judged[q]), w)
                runs.setdefault(f"final+ce@{w}", {})[q] = packaged[q].ranked_by(ranker)
                runs.setdefault(f"final+judged-ce@{w}", {})[q] = own.ranked_by(ranker)
                runs.setdefault(f"rerank@{w}", {})[q] = reranked(packaged[q], w)
                runs.setdefault(f"judged rerank@{w}", {})[q] = reranked(own, w)
    final = evaluate_run(final_run, qrels, gains=gains)
    rows = [row("hybrid", base, base, None), row("final", final, base, None)]
    for w in windows:
        for name in (f"rerank@{w}", f"judged rerank@{w}", f"final+ce@{w}",
                     f"final+judged-ce@{w}"):
            rows.append(row(name, evaluate_run(runs[name], qrels, gains=gains), base, final))
    how = (f"one model trained on every {args.train_set} dev query" if args.train_set
           else f"one model per fold, trained on the other {args.folds - 1} folds")
    print(f"## {args.set}: {len(collected)} dev queries, {args.folds}-fold CV; judged "
          f"cross-encoder: {how}\n")
    print("| stage | nDCG@10 | judged-only | MRR@10 | vs hybrid (plain / judged-only) "
          "| vs final (plain / judged-only) |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    for r in rows:
        print(f"| {r['stage']} | {r['ndcg']:.4f} | {r['ndcg_judged']:.4f} | {r['mrr']:.4f} | "
              f"{r['vs_hybrid']} / {r['vs_hybrid_judged']} | "
              f"{r['vs_final']} / {r['vs_final_judged']} |")
    print(f"\nTraining: {pairs:.0f} pairs in {seconds:.0f} s ({pairs / max(seconds, 1):.1f} "
          f"pairs/s); whole run {time.perf_counter() - started:.0f} s. Machine: {cpu_model()}.")


if __name__ == "__main__":
    main()
