"""Indexing throughput and query latency per retrieval mode, on a real catalog.

    python -m bench.spine [--catalog PATH] [--products 2000] [--queries FILE] [--out DIR]

Every figure sits next to a baseline measured in the same run:
- indexing: our batched encoder vs. encoding one product per call (the naive loop);
- query latency: each mode vs. BM25 alone, cold (first time a query is seen) and warm
  (the query-embedding cache hit).
Writes ``spine.md`` and ``spine.json`` (with the machine description) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import cpu_model, percentile
from indexer.catalog import load_catalog
from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.schema import product_to_text
from plugin.demo import DEMO_CATALOG
from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from reranker.metrics import load_queries

DEFAULT_QUERIES = Path(__file__).resolve().parents[1].parent / "shared/data/esci-us/queries.tsv"


def machine() -> dict[str, Any]:
    import torch

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def bench_indexing(
    store: LocalStore, products: list[Any], encoder: BiEncoder, naive_count: int
) -> dict[str, Any]:
    encoder.encode_query("warm up")
    start = time.perf_counter()
    index_products(store, products, encoder)
    batched = len(products) / (time.perf_counter() - start)
    step = max(1, len(products) // naive_count)  # same length mix as the batched run
    texts = [product_to_text(p) for p in products[::step][:naive_count]]
    start = time.perf_counter()
    for text in texts:
        encoder.model.encode([text], convert_to_numpy=True, normalize_embeddings=True)
    naive = len(texts) / (time.perf_counter() - start)
    return {"products": len(products), "batched_per_s": batched, "naive_per_s": naive,
            "naive_products": len(texts), "ratio": batched / naive}


def bench_queries(pipeline: SearchPipeline, queries: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in ("bm25", "vector", "hybrid"):
        for phase in ("cold",) if mode == "bm25" else ("cold", "warm"):
            if phase == "cold":
                pipeline.encoder.clear_cache()  # a fresh process sees every query cold
            latencies = []
            for query in queries:
                start = time.perf_counter()
                pipeline.search(SearchRequest(query=query, k=10, mode=mode))  # type: ignore[arg-type]
                latencies.append((time.perf_counter() - start) * 1000)
            results[f"{mode}/{phase}"] = {
                "p50_ms": statistics.median(latencies),
                "p95_ms": percentile(latencies, 95),
                "mean_ms": statistics.fmean(latencies),
            }
    base = results["bm25/cold"]["p50_ms"]  # BM25 needs no query embedding
    for values in results.values():
        values["p50_vs_bm25"] = values["p50_ms"] / base
    return results


def report(data: dict[str, Any]) -> str:
    m, idx = data["machine"], data["indexing"]
    lines = [
        "# shoprank spine benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}.",
        f"Catalog: {data['catalog']} ({idx['products']} products), "
        f"{data['query_count']} queries.",
        "",
        "## Indexing (embed + write + BM25)",
        "",
        "| method | products/s | vs naive |",
        "| --- | ---: | ---: |",
        f"| batched (shoprank) | {idx['batched_per_s']:.1f} | {idx['ratio']:.2f}x |",
        f"| one product per encode call ({idx['naive_products']} products) "
        f"| {idx['naive_per_s']:.1f} | 1.00x |",
        "",
        "## Query latency, k=10, in-process pipeline",
        "",
        "| mode / cache | p50 ms | p95 ms | p50 vs bm25 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, values in data["queries"].items():
        lines.append(
            f"| {key} | {values['p50_ms']:.2f} | {values['p95_ms']:.2f} "
            f"| {values['p50_vs_bm25']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=DEMO_CATALOG)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--naive-products", type=int, default=200)
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    products = load_catalog(args.catalog).products[: args.products]
    if args.queries.is_file():
        queries = list(load_queries(args.queries).values())
    else:
        queries = [p.title[:60] for p in products[::20]]
    encoder = BiEncoder()
    with tempfile.TemporaryDirectory() as folder:
        store = LocalStore(Path(folder))
        indexing = bench_indexing(store, products, encoder, args.naive_products)
        timings = bench_queries(SearchPipeline(store, encoder), queries)
    data = {
        "machine": machine(),
        "catalog": str(args.catalog.name),
        "query_count": len(queries),
        "indexing": indexing,
        "queries": timings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spine.json").write_text(json.dumps(data, indent=2))
    text = report(data)
    (args.out / "spine.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
