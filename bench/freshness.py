"""How soon a live change made by another process shows in a serving local store's searches.

A writer process upserts one new product at a time into the same index folder (as
`shoprank upsert` does) and reports when `upsert` returned; the serving store polls BM25 for
the product's unique title word until it appears. The serving store rechecks the update log at
most every `RECHECK_SECONDS`, so the lag should sit below that plus one search.

    python3 -m bench.freshness --trials 40

Reports p50 / p95 / max lag in milliseconds. tests/plugin/test_freshness.py checks the same
path works on both stores with a deadline that holds on a busy machine; this measures it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from bench.machine import cpu_model, percentile
from indexer.local_store import RECHECK_SECONDS, LocalStore
from indexer.schema import Product

DIM = 384
SEED_PRODUCTS = 500
POLL_SECONDS = 0.002


def _product(i: int, word: str) -> Product:
    return Product(id=f"p{i}", title=f"{word} steel water bottle {i}", brand="Bench")


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _writer(root: str, trials: int, pipe: Connection) -> None:
    """Upsert one product per request and send the wall-clock time `upsert` returned."""
    store = LocalStore(Path(root))
    for trial in range(trials):
        pipe.recv()
        store.upsert([_product(SEED_PRODUCTS + trial, f"freshword{trial}x")],
                     _vectors(1, trial))
        pipe.send(time.time())
    pipe.close()


def measure(trials: int) -> list[float]:
    """Lag in seconds, per trial, from the writer's `upsert` returning to a search finding it."""
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        root = Path(tmp) / "idx"
        serving = LocalStore(root)
        serving.replace_all([_product(i, "seed") for i in range(SEED_PRODUCTS)],
                            _vectors(SEED_PRODUCTS, 0))
        serving.count()
        ours, theirs = mp.Pipe()
        writer = mp.get_context("spawn").Process(target=_writer, args=(str(root), trials, theirs))
        writer.start()
        lags = []
        try:
            for trial in range(trials):
                word = f"freshword{trial}x"
                ours.send("go")
                returned = ours.recv()
                while not serving.search_bm25(word, 1):
                    time.sleep(POLL_SECONDS)
                lags.append(time.time() - returned)
                time.sleep(0.1)  # land the next change at another point of the recheck cycle
        finally:
            writer.join(timeout=30)
        return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    lags_ms = [lag * 1000 for lag in measure(args.trials)]
    print(f"machine: {cpu_model()}, {mp.cpu_count()} cores")
    print(f"local store, change by another process -> searchable here ({args.trials} trials, "
          f"recheck every {RECHECK_SECONDS * 1000:.0f} ms): p50 {percentile(lags_ms, 50):.0f} ms, "
          f"p95 {percentile(lags_ms, 95):.0f} ms, max {max(lags_ms):.0f} ms")


if __name__ == "__main__":
    main()
