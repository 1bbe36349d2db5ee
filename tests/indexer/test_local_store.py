"""What only the local store does: files on disk, versions, the update log."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import StoreError
from indexer.local_store import LocalStore
from indexer.schema import Product
from tests.conftest import axis_vectors, make_product


@pytest.fixture
def store(tmp_path: Path, tiny_products: list[Product]) -> LocalStore:
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, axis_vectors(len(tiny_products)))
    return store


def test_store_reopens_from_disk_without_rebuilding(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    reopened = LocalStore(store.root)
    assert reopened.count() == len(tiny_products)
    assert reopened.get("p3") == tiny_products[2]
    assert [h.product_id for h in reopened.search_bm25("coffee", 3)] == ["p6"]
    assert reopened.dimension == 8


def test_live_changes_survive_a_restart_and_reach_other_processes(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.local_store.RECHECK_SECONDS", 0.0)
    other = LocalStore(store.root)
    assert other.count() == 6
    store.upsert([make_product("p9", "espresso machine")], axis_vectors(9)[8:])
    store.delete(["p1"])
    assert other.get("p9") is not None and other.get("p1") is None
    restarted = LocalStore(store.root)
    assert restarted.count() == 6
    assert [h.product_id for h in restarted.search_bm25("espresso", 3)] == ["p9"]


def test_title_vectors_survive_a_restart_from_the_version_and_the_log(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    vectors = axis_vectors(len(tiny_products))
    store.replace_all(tiny_products, vectors, title_vectors=vectors[::-1].copy())
    store.upsert([make_product("p9", "espresso machine")], vectors[:1], vectors[1:2])
    restarted = LocalStore(store.root)
    titles = restarted.title_vectors(["p1", "p9"])
    assert titles["p1"] == pytest.approx(vectors[-1], abs=1e-6)  # from title_vectors.npy
    assert titles["p9"] == pytest.approx(vectors[1], abs=1e-6)  # from updates.jsonl


def test_failed_rebuild_leaves_serving_index_untouched(
    store: LocalStore, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.version

    def broken_write(self: object, folder: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("indexer.local_segment.PostingsWriter.write", broken_write)
    with pytest.raises(StoreError, match=f"index {store.root}: disk full"):
        store.replace_all(tiny_products[:2], axis_vectors(2))
    reader = LocalStore(store.root)
    assert reader.version == before and reader.count() == len(tiny_products)
    leftovers = [
        p.name for p in store.root.iterdir() if p.name.startswith((".building", "CURRENT."))
    ]
    assert leftovers == [], "a failed rebuild removes its partial version"
    monkeypatch.undo()
    store.replace_all(tiny_products[:2], axis_vectors(2))
    assert LocalStore(store.root).count() == 2


def test_old_versions_are_pruned(store: LocalStore, tiny_products: list[Product]) -> None:
    for _ in range(3):
        store.replace_all(tiny_products, axis_vectors(6))
    versions = [p for p in store.root.iterdir() if p.is_dir()]
    assert len(versions) == 2


def test_a_reader_picks_up_a_rebuild_from_another_process(
    store: LocalStore, tiny_products: list[Product], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("indexer.local_store.RECHECK_SECONDS", 0.0)
    reader = LocalStore(store.root)
    assert reader.count() == 6
    LocalStore(store.root).replace_all(tiny_products[:3], axis_vectors(3))
    assert reader.count() == 3
    assert reader.get("p6") is None


def test_an_index_from_another_analyzer_asks_for_a_reindex(store: LocalStore) -> None:
    manifest = store.root / store.version / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"analyzer"', '"old_analyzer"'))
    with pytest.raises(StoreError, match="shoprank reindex"):
        LocalStore(store.root).count()


def test_a_half_written_log_line_is_dropped_not_fatal(store: LocalStore) -> None:
    log = store.root / store.version / "updates.jsonl"
    log.write_text('{"op": "delete", "id": "p1"}\n{"op": "ups')  # a writer died mid-line
    assert LocalStore(store.root).get("p1") is None
    store.upsert([make_product("p8", "espresso machine")], axis_vectors(8)[7:])
    reopened = LocalStore(store.root)
    assert reopened.get("p8") is not None and reopened.count() == 6


def test_a_corrupt_log_is_a_store_error_naming_the_file(store: LocalStore) -> None:
    log = store.root / store.version / "updates.jsonl"
    log.write_text('{"op": "upsert", "product": {"id": "x"}}\n')
    with pytest.raises(StoreError, match=r"updates\.jsonl is corrupt at byte 0"):
        LocalStore(store.root).count()


def test_a_version_that_never_served_is_not_kept(
    store: LocalStore, tiny_products: list[Product]
) -> None:
    serving = store.version
    store.replace_all(tiny_products, axis_vectors(6))
    newest = store.version
    # A rebuild killed between finishing its folder and moving CURRENT leaves this behind:
    orphan = store.root / "v99991231T000000000000-dead00"
    orphan.mkdir()
    (orphan / "manifest.json").write_text("{}")
    store.replace_all(tiny_products, axis_vectors(6))
    names = {p.name for p in store.root.iterdir() if p.is_dir()}
    assert orphan.name not in names and newest in names and serving not in names
