"""What each training source adds to the distilled cross-encoder: small runs, one source
left out (or one signal alone) at a time, each scored like `bench.reranker_eval`.

    python3 -m bench.distill_ablation --work /tmp/ablation \\
        --groups runs/reranker.work/groups-esci-us-...jsonl.gz \\
        --groups runs/reranker.work/groups-icecat-...jsonl.gz

The groups are those `bash bench/train_reranker.sh` wrote. Every variant draws from the same
``--groups-used`` groups (seeded), trains with the shipped settings but on that smaller
budget, and is scored on both catalogs' dev queries (5-fold CV of the final stage with its
feature; the cross-encoder alone over hybrid's top ``--window``). Variants:

- ``all``: the shipped recipe (source label 0.5 + teacher 0.5, every query kind);
- ``label-only`` / ``teacher-only``: one signal of the target alone;
- ``no-<kind>``: that kind of pseudo-query left out (its short and misspelt forms too);
- ``no-variants``: no short or misspelt forms;
- ``max-length-128``: every group, each pair read to 128 tokens instead of 64 (the product's
  first attributes, bullets and description, which 64 tokens cut off).

Of the groups drawn, 400 are held out for the training's own validation (as in the shipped run).

A variant's model and its scores are kept under ``--work``, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

from bench.reranker_eval import REPO, evaluate
from indexer.catalog import load_catalog
from indexer.schema import product_to_text
from plugin.components import build_pipeline
from plugin.final_stage_fitting import collect_candidates
from plugin.settings import Settings
from reranker.distillation import DistillGroup, load_groups
from reranker.distilled_tuning import train_distilled
from reranker.listwise import ListwiseConfig
from reranker.metrics import ESCI_GAINS, load_qrels, load_queries

logger = logging.getLogger(__name__)

KINDS = ("title_span", "product_type", "brand_type", "type_attribute", "category")
VARIANTS = ("all", "label-only", "teacher-only", "no-variants", *(f"no-{k}" for k in KINDS),
            "max-length-128")


def variant_groups(name: str, groups: list[DistillGroup]) -> list[DistillGroup]:
    if name == "no-variants":
        return [g for g in groups if "+" not in g.kind]
    if name.startswith("no-"):
        return [g for g in groups if g.kind.split("+")[0] != name[3:]]
    return groups


def label_weight(name: str) -> float:
    return {"label-only": 1.0, "teacher-only": 0.0}.get(name, 0.5)


def score(model: Path, data: Path, window: int) -> dict[str, dict[str, dict[str, object]]]:
    """final+ce@window and rerank@window rows on both catalogs."""
    rows = {}
    for name in ("esci-us", "icecat"):
        folder = data / name
        queries = load_queries(folder / "queries.tsv")
        qrels = load_qrels(folder / "qrels.txt")
        judged = {q: t for q, t in queries.items() if q in qrels}
        settings = Settings.model_validate({
            "index": f"eval-{name}", "reranker": "cross-encoder", "final_ranker": "none",
            "rerank_window": window, "reranker_checkpoint": model,
        })
        collected = collect_candidates(build_pipeline(settings), judged, rerank=True)
        table, _ = evaluate(collected, qrels, ESCI_GAINS if name == "esci-us" else None,
                            [window], 5, 0)
        rows[name] = {str(r["stage"]): r for r in table}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--groups-used", type=int, default=1400)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    groups = [g for path in args.groups for g in load_groups(path)]
    random.Random(args.seed).shuffle(groups)
    groups = groups[: args.groups_used]
    wanted = {pid for g in groups for pid in g.product_ids}
    texts = {p.id: product_to_text(p) for name in ("esci-us", "icecat")
             for p in load_catalog(args.data / name / "products.jsonl.gz").products
             if p.id in wanted}
    results = {}
    for name in args.variants.split(","):
        done = args.work / name / "scores.json"
        if not done.is_file():
            config = ListwiseConfig(label_weight=label_weight(name), seed=args.seed,
                                    max_length=128 if name == "max-length-128" else 64)
            model = args.work / name / "model"
            if not (model / "model_card.json").is_file():
                train_distilled(variant_groups(name, groups), texts, config,
                                args.work / name / "train", model,
                                catalogs=["esci-us", "icecat"], teacher="final-ranker-retrieval")
            done.write_text(json.dumps(score(model, args.data, args.window)))
        results[name] = json.loads(done.read_text())
        logger.warning("variant %s scored", name)
    w = args.window
    print(f"## Ablation: {args.groups_used} groups drawn from the shipped run's, "
          f"window {w}, 5-fold CV\n")
    print("| variant | groups | ESCI final+ce vs final (plain / judged-only) | ESCI rerank "
          "judged-only | Icecat final+ce vs final (plain / judged-only) | Icecat rerank "
          "judged-only |")
    print("| --- | ---: | --- | ---: | --- | ---: |")
    for name, rows in results.items():
        cells = []
        for catalog in ("esci-us", "icecat"):
            final = rows[catalog][f"final+ce@{w}"]
            cells.append(f"{final['vs_final']} / {final['vs_final_judged']}")
            cells.append(f"{rows[catalog][f'rerank@{w}']['ndcg_judged']:.4f}")
        print(f"| {name} | {len(variant_groups(name, groups))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
