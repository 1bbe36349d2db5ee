"""Reindex phases as an `IndexProgress` hears them (no model: a fake encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import indexing
from indexer.encoder import EncoderStamp
from indexer.local_store import LocalStore
from indexer.progress import IndexPhase
from indexer.schema import Product
from tests.conftest import axis_vectors


class FakeEncoder:
    """Each text's vector depends on the text alone, whatever the chunk it arrives in."""

    document_backend = "torch"
    stamp = EncoderStamp(identity="fake", fingerprint="fake", max_seq_length=8)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        table = axis_vectors(64)
        return table[[sum(map(ord, text)) % 64 for text in texts]]


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []

    def start(self, phase: IndexPhase, total: int | None) -> None:
        self.events.append((phase, total))

    def advance(self, items: int) -> None:
        self.events.append(("advance", items))

    def finish(self) -> None:
        self.events.append(("finish", None))


def test_reindex_reports_phases_in_order_and_chunks_leave_vectors_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_text("".join(f'{{"id": "p{i}", "title": "item {i}"}}\n' for i in range(5)))
    monkeypatch.setattr(indexing, "PROGRESS_CHUNK", 2)
    monkeypatch.setattr("indexer.local_segment.WRITE_CHUNK", 2)
    encoder, progress = FakeEncoder(), Recorded()
    store = LocalStore(tmp_path / "idx")
    indexing.reindex_catalog(store, catalog, encoder, progress=progress)  # type: ignore[arg-type]
    assert progress.events == [
        ("validate", None), ("finish", None),
        ("embed texts", 5), ("advance", 2), ("advance", 2), ("advance", 1), ("finish", None),
        ("embed titles", 5), ("advance", 2), ("advance", 2), ("advance", 1), ("finish", None),
        ("write", 5), ("advance", 2), ("advance", 2), ("advance", 1), ("finish", None),
    ]
    assert encoder.calls == [2, 2, 1, 2, 2, 1]
    chunked = store.vectors(["p0", "p4"])
    quiet = LocalStore(tmp_path / "quiet")
    indexing.reindex_catalog(quiet, catalog, FakeEncoder())  # type: ignore[arg-type]
    assert all(np.array_equal(chunked[pid], quiet.vectors([pid])[pid]) for pid in chunked)


def test_onnx_int8_encodes_in_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INT8 vectors depend on which texts share a batch: chunking would change them."""
    monkeypatch.setattr(indexing, "PROGRESS_CHUNK", 2)
    encoder = FakeEncoder()
    encoder.document_backend = "onnx-int8"
    products = [Product(id=f"p{i}", title=f"item {i}") for i in range(5)]
    indexing.encode_products(encoder, products, progress=Recorded())  # type: ignore[arg-type]
    assert encoder.calls == [5, 5]
