"""The local store's write-ahead log of live changes: ``updates.jsonl`` in each version folder.

One JSON line per change: ``{"op": "upsert", "product": ..., "vector": [...],
"title_vector": [...]}`` (the title vector only when given) or ``{"op": "delete", "id": ...}``.
Writers append whole lines under the store's lock and fsync them; readers replay the lines
written since their snapshot (`read_updates`), so other processes see changes on their next
search. A line still being written is left for the next read, and a line left half-written
by a writer that died is cut off before the next append.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from indexer.errors import StoreError
from indexer.local_snapshot import Upsert
from indexer.schema import Product

#: The log's file name inside a version folder.
UPDATES = "updates.jsonl"


def upsert_lines(
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> list[str]:
    """One log line per product (vectors already checked against the products)."""
    titles = [None] * len(products) if title_vectors is None else list(title_vectors)
    return [
        json.dumps(
            {"op": "upsert", "product": p.model_dump(mode="json"), "vector": v.tolist()}
            | ({} if t is None else {"title_vector": t.tolist()})
        )
        for p, v, t in zip(products, vectors, titles, strict=True)
    ]


def delete_lines(product_ids: Sequence[str]) -> list[str]:
    return [json.dumps({"op": "delete", "id": pid}) for pid in product_ids]


def append_lines(log: Path, lines: Sequence[str]) -> None:
    """Append whole lines to ``log`` and flush them to disk (the caller holds the lock)."""
    with log.open("ab") as handle:
        _drop_partial_line(handle)  # left by a writer that died mid-line
        handle.write(("\n".join(lines) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_updates(log: Path, offset: int) -> tuple[dict[str, Upsert], set[str], int] | None:
    """The upserts and deletes of the complete lines after byte ``offset``, and the offset
    after them; None when there is nothing new (or no log yet). Later lines win."""
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return None
    if size <= offset:
        return None
    upserts: dict[str, Upsert] = {}
    deletes: set[str] = set()
    with log.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size - offset)
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
    for line in complete.splitlines(keepends=True):
        try:
            entry = json.loads(line)
            if entry["op"] == "upsert":
                product = Product.model_validate(entry["product"])
                vector = np.asarray(entry["vector"], dtype=np.float32)
                title = entry.get("title_vector")
                upserts[product.id] = (
                    product, vector, None if title is None else np.asarray(title, np.float32)
                )
                deletes.discard(product.id)
            else:
                upserts.pop(entry["id"], None)
                deletes.add(entry["id"])
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{log} is corrupt at byte {offset}: {e}") from e
        offset += len(line)
    return upserts, deletes, offset


def _drop_partial_line(handle: BinaryIO) -> None:
    """Cut an append-mode log back to its last complete line."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    with open(handle.name, "rb") as reader:
        reader.seek(max(0, size - 1))
        if reader.read(1) == b"\n":
            return
        reader.seek(0)
        data = reader.read()
    handle.truncate(data.rfind(b"\n") + 1)
