"""A process doing live upserts into the local store, killed with SIGKILL at random moments:
the next start opens the index, every acknowledged upsert is there with its vectors, and each
upsert call's products are there all together or not at all."""

from __future__ import annotations

import os
import random
import selectors
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.local_store import LocalStore
from indexer.schema import Product
from tests.conftest import REPO
from tests.indexer.upsert_child import BATCH, DIMENSION, batch_products, batch_vectors

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_upserts_killed_mid_write_lose_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    base = [Product(id=f"base-{i}", title=f"base product {i}") for i in range(20)]
    vectors = np.eye(20, DIMENSION, dtype=np.float32)
    LocalStore(root).replace_all(base, vectors)
    chance = random.Random(19)
    acked: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.indexer.upsert_child", str(root), str(first)],
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            acked.update(_acks(child, count=chance.randint(1, 3), timeout_s=120))
            time.sleep(chance.uniform(0.0, 0.2))  # somewhere inside a later upsert call
            child.kill()
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.stdout is not None
        acked.update(int(line.split()[1]) for line in child.stdout if line.startswith("acked"))
        attempted = range(first, max(acked) + 2)  # the last one may have been in flight

        restarted = LocalStore(root)  # the next start: it recovers whatever the kill left
        assert restarted.count() >= len(base) + BATCH * len(acked)
        for batch in attempted:
            ids = [p.id for p in batch_products(batch)]
            found = restarted.get_many(ids)
            if batch in acked:
                assert len(found) == BATCH, f"acknowledged batch {batch} lost products"
                stored = restarted.vectors(ids)
                assert np.allclose(np.stack([stored[i] for i in ids]), batch_vectors(batch))
                assert found[ids[7]].price == batch + 7
            else:
                assert len(found) in (0, BATCH), f"batch {batch} half applied: {len(found)}"
        restarted.close()
        first = attempted.stop


def _acks(child: subprocess.Popen[str], *, count: int, timeout_s: float) -> set[int]:
    """The first ``count`` batches the child acknowledged."""
    assert child.stdout is not None and child.stderr is not None
    acked: set[int] = set()
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while len(acked) < count:
            assert time.monotonic() < deadline, f"fewer than {count} upserts in {timeout_s} s"
            if selector.select(timeout=1.0):
                line = child.stdout.readline()
                assert line, "the child died: " + child.stderr.read()[-2000:]
                acked.add(int(line.split()[1]))
    return acked
