"""Products encoded on ONNX Runtime INT8 instead of torch: how much faster, and what it costs.

    python -m bench.document_backend --catalog icecat
    python -m bench.document_backend --catalog esci-us --esci

Encodes one shared catalog twice, texts and titles (what `shoprank reindex` embeds), with the
same packaged encoder: torch fp32 (the default, `SHOPRANK_DOCUMENT_BACKEND=torch`) and ONNX
Runtime INT8 (`SHOPRANK_DOCUMENT_BACKEND=onnx-int8`), timed one after the other on the same
machine; the one-off ONNX export is timed on its own. Three local indexes are written in a
scratch SHOPRANK_HOME: torch vectors, INT8 vectors, and INT8 texts with torch titles (which
half the final stage is sensitive to). The catalog's dev queries (encoded by torch in all) are
scored on each: vector, hybrid, and the learned final stage by 5-fold cross-validation (seed
0), with paired-bootstrap 95% CIs of each index's nDCG@10 change against torch's, plain and
judged-only. Prints Markdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default="icecat", help="a folder of the shared data")
    parser.add_argument("--esci", action="store_true", help="ESCI gains")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="shoprank-docbackend-"))
    os.environ["SHOPRANK_HOME"] = str(scratch)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from indexer.catalog import load_catalog
    from indexer.encoder import BiEncoder
    from indexer.local_store import LocalStore
    from indexer.schema import product_to_text
    from plugin.components import build_pipeline
    from plugin.offline_eval import CrossValidation, Stage, evaluate_stages
    from plugin.settings import Settings
    from reranker.metrics import ESCI_GAINS, load_qrels, load_queries, paired_bootstrap

    folder = args.data / args.catalog
    products = load_catalog(folder / "products.jsonl.gz").products
    queries = load_queries(folder / "queries.tsv")
    qrels = load_qrels(folder / "qrels.txt")
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    gains = ESCI_GAINS if args.esci else None
    stages: list[Stage] = ["vector", "hybrid", "final"]

    encoders = {
        "torch": BiEncoder(),
        "onnx-int8": BiEncoder(document_backend="onnx-int8", onnx_cache_dir=scratch / "onnx"),
    }
    encoders["torch"].encode_texts(["warm up"])
    started = time.perf_counter()
    encoders["onnx-int8"].encode_texts(["warm up"])  # exports once per encoder
    export_s = time.perf_counter() - started

    encoded = {}
    seconds: dict[str, tuple[float, float]] = {}
    for name, encoder in encoders.items():
        started = time.perf_counter()
        texts = encoder.encode_texts([product_to_text(p) for p in products])
        middle = time.perf_counter()
        titles = encoder.encode_texts([p.title for p in products])
        seconds[name] = (middle - started, time.perf_counter() - middle)
        encoded[name] = (texts, titles)
    # Which half costs the final stage: INT8 texts with torch titles, as a third index.
    variants = {
        "torch": ("torch", "torch"), "onnx-int8": ("onnx-int8", "onnx-int8"),
        "int8 texts, torch titles": ("onnx-int8", "torch"),
    }
    results = {}
    for number, (name, (texts_by, titles_by)) in enumerate(variants.items()):
        index = f"variant-{number}"
        LocalStore(scratch / "indexes" / index).replace_all(
            products, encoded[texts_by][0], title_vectors=encoded[titles_by][1],
            encoder=encoders[texts_by].stamp,
        )
        pipeline = build_pipeline(Settings(index=index, reranker="none"))
        results[name] = evaluate_stages(
            pipeline, judged, qrels, stages, gains=gains, cross_validation=CrossValidation()
        )
        pipeline.close()

    print(f"### Product encoding backends, {args.catalog} ({len(products):,} products, "
          f"{len(judged)} queries)\n")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only.\n")
    print("| backend | seconds: texts + titles | products/s | vs torch |")
    print("| --- | ---: | ---: | ---: |")
    for name, (texts_by, titles_by) in variants.items():
        total = seconds[texts_by][0] + seconds[titles_by][1]
        print(f"| {name} | {seconds[texts_by][0]:.0f} + {seconds[titles_by][1]:.0f} | "
              f"{len(products) / total:.1f} | {sum(seconds['torch']) / total:.2f}x |")
    print(f"\nThe ONNX export (once per encoder, cached): {export_s:.0f} s.\n")
    print("| index | stage | nDCG@10 torch / it | change [95% CI] | judged-only torch / it "
          "| change [95% CI] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in list(variants)[1:]:
        for torch_stage, stage in zip(results["torch"], results[name], strict=True):
            cells = []
            for metric in ("ndcg", "ndcg_condensed"):
                before = {q: v[metric] for q, v in torch_stage.report.per_query.items()}
                after = {q: v[metric] for q, v in stage.report.per_query.items()}
                diff = paired_bootstrap(before, after, seed=0)
                cells.append(
                    f"{np.mean(list(before.values())):.4f} / {np.mean(list(after.values())):.4f}"
                    f" | {diff}"
                )
            print(f"| {name} | {stage.stage} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
