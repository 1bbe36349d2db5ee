"""How wide the embedded store's HNSW build must search (efConstruction) on near-duplicates.

The scale benchmark's catalog (`bench.scale_data`) repeats each real product about 50 times
with a little noise, as catalogs repeat variants. With efConstruction 64 some clusters of
copies ended up poorly linked to the rest of the graph, and a query that entered the wrong
part found none of its true neighbours. This builds `indexer.ann.AnnIndex` over those vectors
at each width and searches it as the store does (2 x 100 candidates, rescored exactly).

    python3 -m bench.ann_construction --size 1000000 --widths 64,160 --out FILE
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from bench.scale_data import Plan, QuerySet, Source, default_source, exact_top, write_vectors
from indexer import ann

K = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--widths", default="64,160")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    home = Path(os.environ.get("SHOPRANK_HOME", Path.home() / ".local/share/shoprank"))
    root = default_source(home)
    if root is None:
        raise SystemExit("no built local index to take real vectors from")
    source = Source.load(root)
    plan = Plan.make(source, args.size, seed=0)
    queries = QuerySet.make(source, args.queries, seed=0)
    lines = [
        "# HNSW build width on near-duplicate products", "",
        f"`python3 -m bench.ann_construction --size {args.size} --widths {args.widths}`; "
        f"{cpu_model()}, CPU only; load average {os.getloadavg()[0]:.1f} at the start. "
        f"{args.size:,} vectors from {source.name} as in `bench.scale`, {args.queries} queries, "
        f"M={ann.CONNECTIVITY}, 8-bit codes; top {K} from {2 * K} candidates rescored exactly.",
        "", "| efConstruction | build s | efSearch | recall@100 mean | min | queries below 0.5 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        vectors_path, _ = write_vectors(source, plan, Path(scratch), 0, log=lambda _: None)
        vectors = np.load(vectors_path, mmap_mode="r")
        truth, _ = exact_top(vectors, queries, plan, K)
        for width in (int(w) for w in args.widths.split(",")):
            ann.EXPANSION_ADD = width
            started = time.perf_counter()
            ann.AnnIndex.build(vectors, Path(scratch) / "index.faiss")
            built = time.perf_counter() - started
            index = ann.AnnIndex.open(Path(scratch) / "index.faiss")
            recalls = []
            for q, query in enumerate(queries.vectors):
                rows = np.sort(index.search(query, 2 * K))
                best = rows[np.argsort(-(vectors[rows] @ query))[:K]]
                recalls.append(len(set(best.tolist()) & set(truth[q].tolist())) / K)
            found = np.array(recalls)
            lines.append(f"| {width} | {built:.0f} | {ann.AnnIndex.expansion(2 * K, 1.0)} | "
                         f"{found.mean():.3f} | {found.min():.2f} | {(found < 0.5).sum()} |")
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
