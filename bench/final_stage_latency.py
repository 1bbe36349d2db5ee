"""Latency of the learned final stage inside the pipeline, on the ESCI dev queries.

    SHOPRANK_HOME=... python bench/final_stage_latency.py [--index eval-esci-us]

Needs the index `shoprank eval` (or bench/relevance.sh) builds for ../shared/data/esci-us.
Prints the final stage's p50/p95 over the 110 queries on a first pass (products mostly not
seen before) and a second pass (their analysed fields cached), and the end-to-end p50 of a
hybrid search with and without the final stage (query embeddings cached, so retrieval and the
final stage are what is measured).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from plugin.components import build_pipeline
from plugin.models import SearchRequest
from plugin.settings import Settings
from reranker.metrics import load_queries

REPO = Path(__file__).resolve().parents[1]


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="eval-esci-us")
    parser.add_argument("--queries", type=Path,
                        default=REPO.parent / "shared" / "data" / "esci-us" / "queries.tsv")
    args = parser.parse_args()
    pipeline = build_pipeline(Settings(index=args.index, reranker="none"))
    queries = list(load_queries(args.queries).values())
    for query in queries:  # embeddings cached; the final stage's product cache stays cold
        pipeline.search(SearchRequest(query=query, final=False))
    passes = []
    for _ in range(2):
        responses = [pipeline.search(SearchRequest(query=query)) for query in queries]
        passes.append([r.timings_ms["final"] for r in responses])
    with_final = [r.timings_ms["total"] for r in responses]
    without = [pipeline.search(SearchRequest(query=q, final=False)).timings_ms["total"]
               for q in queries]
    for label, values in zip(("first pass", "second pass"), passes, strict=True):
        print(f"final stage, {label}: p50 {statistics.median(values):.1f} ms, "
              f"p95 {_p(values, 0.95):.1f} ms")
    print(f"hybrid search p50: {statistics.median(with_final):.1f} ms with the final stage, "
          f"{statistics.median(without):.1f} ms without")


if __name__ == "__main__":
    main()
