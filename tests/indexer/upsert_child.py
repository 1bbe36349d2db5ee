"""Live updates to be killed: ``python -m tests.indexer.upsert_child ROOT FIRST_BATCH`` upserts
batches of `BATCH` products into the local index at ROOT, forever, and prints ``acked B`` on
stdout each time an upsert call for batch B has returned (the moment an HTTP PUT answers 200).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.local_store import LocalStore
from indexer.schema import Product

BATCH = 100
DIMENSION = 384


def batch_products(batch: int) -> list[Product]:
    return [
        Product(id=f"live-{batch}-{i}", title=f"live product {i} of batch {batch}", price=batch + i)
        for i in range(BATCH)
    ]


def batch_vectors(batch: int) -> npt.NDArray[np.float32]:
    rows = np.random.default_rng(batch).normal(size=(BATCH, DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main(root: str, first_batch: str) -> None:
    store = LocalStore(Path(root))
    batch = int(first_batch)
    while True:
        vectors = batch_vectors(batch)
        store.upsert(batch_products(batch), vectors, vectors[:, ::-1].copy())
        print(f"acked {batch}", flush=True)
        batch += 1


if __name__ == "__main__":
    main(*sys.argv[1:])
