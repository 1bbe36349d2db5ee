"""Compaction folds live changes into a new version and loses none written meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.local_store import LocalStore
from indexer.local_update_log import UPDATES
from indexer.schema import Product
from tests.conftest import REPO, axis_vectors, make_product


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)),
                      metadata={"catalog": "tiny.jsonl"})
    return store


def state(store: LocalStore) -> tuple[int, list[str], list[str], dict[str, int]]:
    return (
        store.count(),
        [h.product_id for h in store.search_bm25("espresso coffee", 10)],
        [h.product_id for h in store.search_vector(axis_vectors(8)[0], 10)],
        store.brand_counts(),
    )


def test_compaction_serves_the_same_answers_from_a_fresh_version(store: LocalStore) -> None:
    store.upsert([make_product("p9", "espresso machine", brand="Acme")], axis_vectors(9)[8:])
    store.delete(["p1"])
    store.upsert([make_product("p2", "coffee grinder")], axis_vectors(8)[:1])
    before, version = state(store), store.version
    new = store.compact()
    assert new is not None and new != version
    assert store.version == new and state(store) == before
    assert not (store.root / new / UPDATES).exists(), "nothing left to replay"
    reopened = LocalStore(store.root)
    assert state(reopened) == before and reopened.get("p1") is None
    manifest = reopened._state().manifest
    assert manifest["catalog"] == "tiny.jsonl" and manifest["count"] == before[0]


def test_changes_written_while_it_compacts_are_carried_into_the_new_version(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.upsert([make_product("p9", "espresso machine")], axis_vectors(9)[8:])
    other = LocalStore(store.root)  # another process, writing meanwhile
    write = LocalStore._write_version

    def slow_write(self: LocalStore, *args: Any, **kwargs: Any) -> None:
        write(self, *args, **kwargs)
        other.upsert([make_product("p10", "milk frother")], axis_vectors(8)[1:2])
        other.delete(["p3"])

    monkeypatch.setattr(LocalStore, "_write_version", slow_write)
    new = store.compact()
    monkeypatch.undo()
    reopened = LocalStore(store.root)
    assert reopened.version == new
    assert reopened.get("p10") is not None and reopened.get("p3") is None
    assert reopened.get("p9") is not None
    assert (store.root / new / UPDATES).stat().st_size > 0  # the carried lines
    assert store.get("p10") is not None


def test_a_rebuild_and_a_compaction_take_turns_and_the_rebuild_keeps_live_changes(
    store: LocalStore, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a rebuild writes, a compaction is skipped, and upserts go on without waiting:
    they reach the old version at once and are carried into the new one."""
    store.upsert([make_product("p9", "espresso machine")], axis_vectors(9)[8:])
    other = LocalStore(store.root)  # a running server, say
    write = LocalStore._write_version
    seen: list[object] = []

    def write_while_serving(self: LocalStore, *args: Any, **kwargs: Any) -> None:
        write(self, *args, **kwargs)
        seen.append(other.compact())
        other.upsert([make_product("p10", "milk frother")], axis_vectors(8)[1:2])
        seen.append(other.get("p10"))

    monkeypatch.setattr(LocalStore, "_write_version", write_while_serving)
    store.replace_all(tiny_products[:2], axis_vectors(2))
    monkeypatch.undo()
    assert seen[0] is None, "no compaction while a rebuild runs"
    assert seen[1] is not None, "the upsert did not wait for the rebuild"
    reopened = LocalStore(store.root)
    assert reopened.count() == 3 and reopened.get("p10") is not None
    assert reopened.get("p9") is None, "changes before the rebuild began belong to the old one"


def test_enough_changes_start_a_compaction_in_the_background(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.local_compaction.COMPACT_AT", 3)
    version = store.version
    vectors = np.eye(8, dtype=np.float32)
    store.upsert([make_product(f"n{i}", f"new thing {i}") for i in range(3)], vectors[:3])
    deadline = time.monotonic() + 60
    while store.version == version and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.version != version
    assert store.count() == 9 and store.get("n2") is not None


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from indexer.local_store import LocalStore

write = LocalStore._write_version

def write_then_hang(self, *args, **kwargs):
    write(self, *args, **kwargs)
    print("written", flush=True)
    time.sleep(600)

LocalStore._write_version = write_then_hang
LocalStore(Path(sys.argv[1])).compact()
"""


def test_a_compaction_killed_before_its_swap_loses_nothing(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    """SIGKILL after the new version is written, before it is swapped in: the old version
    and its log still serve every acknowledged change; the next rebuild removes the rest."""
    store.upsert([make_product("p9", "espresso machine")], axis_vectors(9)[8:])
    store.delete(["p1"])
    version, before = store.version, state(store)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(store.root)],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
    finally:
        child.kill()
        child.wait()
    reopened = LocalStore(store.root)
    assert reopened.version == version and state(reopened) == before
    assert [p for p in store.root.iterdir() if p.name.startswith(".building")]
    reopened.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    assert not [p for p in store.root.iterdir() if p.name.startswith(".building")]
