"""`shoprank serve` with numpy's BLAS on one thread (the default) against the library's own
thread count: cached vector and hybrid searches at concurrency 1, 4 and 16.

    python3 -m bench.blas_threads --home DIR --index NAME [--rounds 2] [--requests 200]

Each round starts the server once per setting (``SHOPRANK_BLAS_THREADS`` 0, then 1), warms its
query cache with the queries, then loads it with bench/http_load.py; the table gives each
figure's median over the rounds. The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.http_load import free_port, measure_point, running_server, search_bodies
from bench.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
QUERIES = REPO.parent / "shared" / "data" / "esci-us" / "queries.tsv"
SETTINGS = (0, 1)  # 0: the BLAS library's own thread count
MODES = ("vector", "hybrid")
LEVELS = (1, 4, 16)


def measure(args: argparse.Namespace, threads: int, scratch: Path) -> dict[tuple[str, int], Any]:
    from reranker.metrics import load_queries

    queries = list(load_queries(args.queries).values())
    port = free_port()
    argv = [sys.executable, "-m", "plugin", "serve", "--index", args.index, "--port", str(port)]
    env = {**os.environ, "SHOPRANK_HOME": str(args.home), "HF_HUB_OFFLINE": "1",
           "SHOPRANK_BLAS_THREADS": str(threads)}
    points = {}
    with running_server(f"blas-{threads}", argv, port=port, env=env, cwd=REPO,
                        log=scratch / f"server-{threads}.log") as server:
        warm = search_bodies(queries, mode="hybrid", rerank=False)
        asyncio.run(measure_point(server.url, warm, concurrency=1, requests=len(warm)))
        for mode in MODES:
            bodies = search_bodies(queries, mode=mode, rerank=False)
            for level in LEVELS:
                points[(mode, level)] = asyncio.run(measure_point(
                    server.url, bodies, concurrency=level, requests=args.requests))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="SHOPRANK_HOME with the index")
    parser.add_argument("--index", required=True)
    parser.add_argument("--queries", type=Path, default=QUERIES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="per point")
    args = parser.parse_args()
    runs: dict[int, list[dict[tuple[str, int], Any]]] = {t: [] for t in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-blas-") as folder:
        for number in range(args.rounds):
            for threads in SETTINGS:
                print(f"round {number + 1}: SHOPRANK_BLAS_THREADS={threads}", file=sys.stderr)
                runs[threads].append(measure(args, threads, Path(folder)))
    print(f"### BLAS threads in `shoprank serve`, index {args.index}\n")
    print(f"Machine: {cpu_model()}, {os.cpu_count()} cores. {args.rounds} rounds, "
          f"{args.requests} requests a point, medians over the rounds; errors summed. Each "
          "cell: the BLAS library's own thread count / one thread (the default).\n")
    print("| mode | conc. | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        for level in LEVELS:
            cells = []
            for field in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
                values = [statistics.median(getattr(run[(mode, level)], field) for run in runs[t])
                          for t in SETTINGS]
                cells.append(" / ".join(f"{v:,.1f}" for v in values))
            errors = sum(run[(mode, level)].errors for t in SETTINGS for run in runs[t])
            print(f"| {mode} | {level} | {' | '.join(cells)} | {errors} |")


if __name__ == "__main__":
    main()
