"""The local store's update log after a writer died or the disk filled: torn tails and batches."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import pytest

from indexer.errors import StoreError
from indexer.local_store import LocalStore
from indexer.local_update_log import UPDATES, encode_batch, upsert_entries
from indexer.schema import Product
from tests.conftest import axis_vectors, make_product


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


def _log(store: LocalStore) -> Path:
    return store.root / store.version / UPDATES


def test_a_torn_last_line_is_dropped_at_open_with_a_warning_naming_file_and_offset(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.upsert([make_product("p7", "espresso machine")], axis_vectors(7)[6:])
    log = _log(store)
    whole = log.stat().st_size
    with log.open("ab") as handle:  # what a writer killed mid-line leaves
        handle.write(b'{"op": "upsert", "product": {"id": "p8", "title": "torn')
    with caplog.at_level(logging.WARNING, logger="indexer.local_update_log"):
        reopened = LocalStore(store.root)
        assert reopened.count() == 7
    assert f"{log}: dropping a torn tail of 55 bytes at byte {whole}" in caplog.text
    assert log.stat().st_size == whole, "the torn line is cut off the file"
    assert reopened.get("p7") is not None and reopened.get("p8") is None
    reopened.upsert([make_product("p9", "milk frother")], axis_vectors(9)[8:])
    assert LocalStore(store.root).get("p9") is not None


def test_a_batch_whose_last_line_never_came_is_not_applied(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    products = [make_product(f"n{i}", f"new thing {i}") for i in range(3)]
    batch = encode_batch(upsert_entries(products, axis_vectors(3)))
    lines = batch.splitlines(keepends=True)
    assert lines[0].startswith(b'{"more": true') and not lines[2].startswith(b'{"more"')
    log = _log(store)
    log.write_bytes(b"".join(lines[:2]))  # two whole lines: the writer died before the third
    with caplog.at_level(logging.WARNING):
        reopened = LocalStore(store.root)
        assert reopened.count() == 6
    assert "dropping a torn tail" in caplog.text and log.stat().st_size == 0
    assert reopened.get("n0") is None, "one call's changes land together or not at all"


def test_a_tail_being_written_by_a_live_writer_is_left_alone(store: LocalStore) -> None:
    log = _log(store)
    log.write_bytes(b'{"op": "delete", "id": "p1"}\n{"op": "delete", "id": ')
    with (store.root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is appending
        reader = LocalStore(store.root)
        assert reader.get("p1") is None and reader.count() == 5  # what is complete is applied
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert log.read_bytes().endswith(b'"id": '), "the writer's tail is not cut under it"


def test_an_upsert_on_a_full_disk_fails_naming_the_log_and_leaves_it_whole(
    store: LocalStore,
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full (a device whose writes fail with ENOSPC) is not available here")
    log = _log(store)
    log.symlink_to("/dev/full")
    with pytest.raises(StoreError, match=rf"{UPDATES}: the disk is full \(no space left"):
        store.upsert([make_product("p7", "espresso machine")], axis_vectors(7)[6:])
    log.unlink()
    assert LocalStore(store.root).get("p7") is None and store.count() == 6
