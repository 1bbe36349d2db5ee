"""Live updates to be killed: ``python -m tests.indexer.upsert_child ROOT FIRST_BATCH [STOP]``
upserts batches of `BATCH` products into the local index at ROOT, forever, and prints ``acked B``
on stdout each time an upsert call for batch B has returned (the moment an HTTP PUT answers 200).

With STOP, the STOP-th append to the update log writes half its bytes, says ``stopped mid-write
of batch B`` and waits for its SIGKILL: a kill that tears a line, which a kill at a random moment
rarely does (the write is a sliver of an upsert's time).
"""

from __future__ import annotations

import os
import sys
import time
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


def stop_mid_write(stop: int, first_batch: int) -> None:
    """Make the ``stop``-th write to a file (the log's appends are this process's only ones)
    write half its bytes and hang there."""
    real_write = os.write
    calls = 0

    def write(descriptor: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == stop:
            real_write(descriptor, data[: len(data) // 2])
            print(f"stopped mid-write of batch {first_batch + stop - 1}", flush=True)
            time.sleep(600)  # the test kills this process here
        return real_write(descriptor, data)

    os.write = write


def main(root: str, first_batch: str, stop: str = "") -> None:
    store = LocalStore(Path(root))
    batch = int(first_batch)
    if stop:
        stop_mid_write(int(stop), batch)
    while True:
        vectors = batch_vectors(batch)
        store.upsert(batch_products(batch), vectors, vectors[:, ::-1].copy())
        print(f"acked {batch}", flush=True)
        batch += 1


if __name__ == "__main__":
    main(*sys.argv[1:])
