"""A process doing live upserts into the local store, killed with SIGKILL: at random moments,
and once in the middle of writing a log line. The next start opens the index (cutting off a torn
line with a warning), every acknowledged upsert is there with its vectors, and each upsert
call's products are there all together or not at all."""

from __future__ import annotations

import logging
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
from indexer.local_update_log import UPDATES, encode_batch, upsert_entries
from indexer.schema import Product
from tests.conftest import REPO
from tests.indexer.upsert_child import BATCH, DIMENSION, batch_products, batch_vectors

pytestmark = pytest.mark.slow

ROUNDS = 4


def test_upserts_killed_mid_write_lose_nothing_acknowledged(tmp_path: Path) -> None:
    root = _serving(tmp_path)
    chance = random.Random(19)
    acked: set[int] = set()
    first = 0
    for _ in range(ROUNDS):
        child = _upserting(root, first)
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
        _check(restarted, attempted, acked)
        restarted.close()
        first = attempted.stop


def test_an_upsert_killed_mid_line_is_cut_off_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _serving(tmp_path)
    child = _upserting(root, 0, stop_at_write=3)
    try:
        acked = _acks(child, count=2, timeout_s=120)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stopped mid-write of batch 2"
        child.kill()
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    log = root / (root / "CURRENT").read_text().strip() / UPDATES
    written = log.read_bytes()
    vectors = batch_vectors(2)
    batch = encode_batch(upsert_entries(batch_products(2), vectors, vectors[:, ::-1]))
    torn = len(batch) // 2  # whole lines of batch 2, then half a line
    whole = len(written) - torn
    assert written[whole:] == batch[:torn] and not written.endswith(b"\n")

    with caplog.at_level(logging.WARNING, logger="indexer.local_update_log"):
        restarted = LocalStore(root)  # the next start
        _check(restarted, range(3), acked)
    assert f"{log}: dropping a torn tail of {torn} bytes at byte {whole}" in caplog.text
    assert log.stat().st_size == whole
    assert restarted.get_many([p.id for p in batch_products(2)]) == {}
    restarted.upsert(batch_products(3), batch_vectors(3))
    _check(LocalStore(root), range(4), {0, 1, 3})


def _serving(tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    base = [Product(id=f"base-{i}", title=f"base product {i}") for i in range(20)]
    LocalStore(root).replace_all(base, np.eye(20, DIMENSION, dtype=np.float32))
    return root


def _upserting(root: Path, first: int, stop_at_write: int | None = None) -> subprocess.Popen[str]:
    stop = [] if stop_at_write is None else [str(stop_at_write)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.indexer.upsert_child", str(root), str(first), *stop],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _check(store: LocalStore, attempted: range, acked: set[int]) -> None:
    """Every acknowledged batch whole, with its vectors; any other batch whole or absent."""
    assert store.count() >= 20 + BATCH * len(acked)
    for batch in attempted:
        ids = [p.id for p in batch_products(batch)]
        found = store.get_many(ids)
        if batch in acked:
            assert len(found) == BATCH, f"acknowledged batch {batch} lost products"
            stored = store.vectors(ids)
            assert np.allclose(np.stack([stored[i] for i in ids]), batch_vectors(batch))
            assert found[ids[7]].price == batch + 7
        else:
            assert len(found) in (0, BATCH), f"batch {batch} half applied: {len(found)}"


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
