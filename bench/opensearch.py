"""OpenSearch against the local store on the Icecat catalog (19k products).

    python -m bench.opensearch [--catalog PATH] [--queries FILE] [--out DIR]

Measures, each beside its baseline from the same run:
- bulk indexing throughput (products/s, vectors given) into OpenSearch vs. the local store;
- k-NN recall@10 against exact search (the local store) and p50/p95 latency for several
  ``ef_search`` values, vs. exact search in process;
- BM25 latency vs. the local store, and how often the two top-10 lists agree.
Needs a running node (``scripts/opensearch start``) and ``SHOPRANK_OPENSEARCH_URL``.
Embeds the catalog once and caches the vectors under ``$SHOPRANK_HOME/bench``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.spine import machine, percentile
from indexer.catalog import load_catalog
from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product, product_to_text
from indexer.settings import IndexerSettings
from reranker.metrics import load_queries

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EF_VALUES = (10, 40, 100, 400)


def cached_vectors(
    products: list[Product], encoder: BiEncoder, cache: Path
) -> npt.NDArray[np.float32]:
    if cache.is_file():
        vectors: npt.NDArray[np.float32] = np.load(cache)
        if vectors.shape[0] == len(products):
            return vectors
    vectors = encoder.encode_texts([product_to_text(p) for p in products], progress=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1000


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=SHARED / "icecat/products.jsonl.gz")
    parser.add_argument("--queries", type=Path, default=SHARED / "icecat/queries.tsv")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    settings = IndexerSettings()
    products = load_catalog(args.catalog).products
    encoder = BiEncoder()
    label = f"{args.catalog.parent.name}/{args.catalog.name}"
    cache = settings.home / "bench" / f"{label.replace('/', '-')}.vectors.npy"
    vectors = cached_vectors(products, encoder, cache)
    queries = list(load_queries(args.queries).values())
    query_vectors = [encoder.encode_query(q) for q in queries]

    with tempfile.TemporaryDirectory() as folder:
        local = LocalStore(Path(folder) / "idx")
        _, local_ms = timed(local.replace_all, products, vectors)
        local.count()
        remote = OpenSearchStore(settings.model_copy(update={"opensearch_ef_search": 100}), "bench")
        remote.drop()
        _, remote_ms = timed(remote.replace_all, products, vectors)
        indexing = {
            "products": len(products),
            "local_per_s": len(products) / local_ms * 1000,
            "opensearch_per_s": len(products) / remote_ms * 1000,
        }
        exact, exact_ms = [], []
        for vector in query_vectors:
            hits, ms = timed(local.search_vector, vector, 10)
            exact.append({h.product_id for h in hits})
            exact_ms.append(ms)
        knn: dict[str, Any] = {"exact (local)": {"recall@10": 1.0, **summary(exact_ms)}}
        for ef in EF_VALUES:
            store = OpenSearchStore(
                settings.model_copy(update={"opensearch_ef_search": ef}), "bench"
            )
            recalls, latencies = [], []
            for vector, truth in zip(query_vectors, exact, strict=True):
                store.search_vector(vector, 10)  # warm the path
                hits, ms = timed(store.search_vector, vector, 10)
                recalls.append(len(truth & {h.product_id for h in hits}) / max(1, len(truth)))
                latencies.append(ms)
            knn[f"opensearch ef_search={ef}"] = {
                "recall@10": statistics.fmean(recalls), **summary(latencies)
            }
            store.close()
        lexical: dict[str, Any] = {}
        agree = []
        local_bm25, remote_bm25 = [], []
        for query in queries:
            mine, ms_local = timed(local.search_bm25, query, 10)
            theirs, ms_remote = timed(remote.search_bm25, query, 10)
            local_bm25.append(ms_local)
            remote_bm25.append(ms_remote)
            if mine or theirs:
                overlap = {h.product_id for h in mine} & {h.product_id for h in theirs}
                agree.append(len(overlap) / max(len(mine), len(theirs)))
        lexical = {"local": summary(local_bm25), "opensearch": summary(remote_bm25),
                   "top10_agreement": statistics.fmean(agree)}
        remote.drop()
        remote.close()

    data = {"machine": machine(), "catalog": label, "queries": len(queries),
            "indexing": indexing, "knn": knn, "bm25": lexical}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "opensearch.json").write_text(json.dumps(data, indent=2))
    text = report(data)
    (args.out / "opensearch.md").write_text(text)
    print(text)


def report(data: dict[str, Any]) -> str:
    m, idx = data["machine"], data["indexing"]
    lines = [
        "# OpenSearch vs. the local store",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; one OpenSearch 2.19.1 node on the same "
        f"machine (1 GB heap, Lucene HNSW m=16, ef_construction=128). Catalog "
        f"{data['catalog']} ({idx['products']} products), {data['queries']} queries, k=10.",
        "",
        "| bulk indexing (vectors given) | products/s | vs local |",
        "| --- | ---: | ---: |",
        f"| local store | {idx['local_per_s']:.0f} | 1.00x |",
        f"| OpenSearch (streaming_bulk, HNSW build, refresh) | {idx['opensearch_per_s']:.0f} "
        f"| {idx['opensearch_per_s'] / idx['local_per_s']:.2f}x |",
        "",
        "| k-NN | recall@10 vs exact | p50 ms | p95 ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in data["knn"].items():
        lines.append(f"| {name} | {row['recall@10']:.3f} | {row['p50_ms']:.2f} "
                     f"| {row['p95_ms']:.2f} |")
    bm25 = data["bm25"]
    lines += [
        "",
        "| BM25 | p50 ms | p95 ms |",
        "| --- | ---: | ---: |",
        f"| local store | {bm25['local']['p50_ms']:.2f} | {bm25['local']['p95_ms']:.2f} |",
        f"| OpenSearch | {bm25['opensearch']['p50_ms']:.2f} "
        f"| {bm25['opensearch']['p95_ms']:.2f} |",
        "",
        f"BM25 top-10 agreement between the two stores: {bm25['top10_agreement']:.3f}.",
        "Latencies are client-side wall time (OpenSearch includes the HTTP round trip).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
