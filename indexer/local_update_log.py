"""The local store's write-ahead log of live changes: ``updates.jsonl`` in each version folder.

One JSON line per change: ``{"op": "upsert", "product": ..., "vector": [...],
"title_vector": [...]}`` (the title vector only when given) or ``{"op": "delete", "id": ...}``.
The changes of one call are one batch: every line but its last starts ``{"more": true, ...``,
and readers apply a batch only once its last line is there, so a call's changes land together
or not at all. Writers append a batch under the store's lock and fsync it before the call
returns (`append_entries`); readers replay the batches written since their snapshot
(`read_updates`), so other processes see changes on their next search.

A write that never completed (its writer was killed, or the disk filled up) leaves a torn
tail: a line without its newline, or lines of a batch that never closed. Nothing in it was
acknowledged. Readers leave a tail alone (a writer may still be at work); a holder of the lock
cuts it off (`drop_torn_tail`, with a warning naming the file and the byte offset): the store
does when it opens a version and before every append.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from indexer.errors import StoreError
from indexer.local_disk import disk_error, fsync_tree
from indexer.local_snapshot import Upsert
from indexer.schema import Product

logger = logging.getLogger(__name__)

#: The log's file name inside a version folder.
UPDATES = "updates.jsonl"
#: Marks every line of a batch but its last; always the line's first key.
_MORE = "more"
_CONTINUES = b'{"more": true'

#: One change, as it is logged.
Entry = dict[str, Any]


def upsert_entries(
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> list[Entry]:
    """One log entry per product (vectors already checked against the products)."""
    titles = [None] * len(products) if title_vectors is None else list(title_vectors)
    return [
        {"op": "upsert", "product": p.model_dump(mode="json"), "vector": v.tolist()}
        | ({} if t is None else {"title_vector": t.tolist()})
        for p, v, t in zip(products, vectors, titles, strict=True)
    ]


def delete_entries(product_ids: Sequence[str]) -> list[Entry]:
    return [{"op": "delete", "id": pid} for pid in product_ids]


def encode_batch(entries: Sequence[Entry]) -> bytes:
    """The log lines of one batch: every line but the last marked as continued."""
    last = len(entries) - 1
    lines = [json.dumps({_MORE: True, **e} if i < last else e) for i, e in enumerate(entries)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def append_entries(log: Path, entries: Sequence[Entry]) -> None:
    """Append one batch to ``log`` and flush it to disk (the caller holds the lock).

    On return the batch is durable. A failed write (a full disk) is cut off again and raised
    as a `StoreError` naming the file: the log is left as it was before the call.
    """
    if not entries:
        return
    data = memoryview(encode_batch(entries))
    created = not log.exists()
    drop_torn_tail(log)
    try:
        descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise disk_error("open the update log", log, e) from e
    try:
        start = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(descriptor, data) :]
            os.fsync(descriptor)
        except OSError as e:
            _cut(descriptor, start)
            raise disk_error("append to the update log", log, e) from e
    finally:
        os.close(descriptor)
    if created:
        fsync_tree(log.parent, recursive=False)  # the new file's name is durable too


def _cut(descriptor: int, size: int) -> None:
    """Best effort: take a failed append back off the log (the next append would anyway)."""
    try:
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    except OSError:
        logger.warning("could not cut a failed append back to byte %d; the next append will",
                       size)


def drop_torn_tail(log: Path) -> int | None:
    """Cut ``log`` back to the end of its last complete batch. Returns the byte offset it was
    cut at, None when it was whole (or absent). Only for a holder of the writer lock."""
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return None
    with log.open("rb") as handle:
        end = _committed_end(handle, size)
    if end == size:
        return None
    logger.warning(
        "%s: dropping a torn tail of %d bytes at byte %d (a write that never completed; "
        "it was never acknowledged)", log, size - end, end,
    )
    with log.open("r+b") as handle:
        handle.truncate(end)
        handle.flush()
        os.fsync(handle.fileno())
    return end


def _committed_end(handle: BinaryIO, size: int) -> int:
    """The offset after the last line that closes a batch."""
    if size == 0:
        return 0
    if _last_byte(handle, size) == b"\n" and not _last_line(handle, size).startswith(_CONTINUES):
        return size  # the usual case, without reading the whole log
    handle.seek(0)
    end = offset = 0
    for line in handle:
        offset += len(line)
        if line.endswith(b"\n") and not line.startswith(_CONTINUES):
            end = offset
    return end


def _last_byte(handle: BinaryIO, size: int) -> bytes:
    handle.seek(size - 1)
    return handle.read(1)


def _last_line(handle: BinaryIO, size: int) -> bytes:
    """The last newline-terminated line, read from the end in growing windows."""
    window = 1 << 16
    while True:
        start = max(0, size - window)
        handle.seek(start)
        data = handle.read(size - start)
        cut = data.rfind(b"\n", 0, len(data) - 1)
        if cut >= 0 or start == 0:
            return data[cut + 1 :]
        window *= 4


def read_updates(log: Path, offset: int) -> tuple[dict[str, Upsert], set[str], int] | None:
    """The upserts and deletes of the complete batches after byte ``offset``, and the offset
    after them; None when there is nothing new (or no log yet). Later lines win."""
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return None
    if size <= offset:
        return None
    with log.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size - offset)
    upserts: dict[str, Upsert] = {}
    deletes: set[str] = set()
    batch: list[tuple[int, Entry]] = []
    committed = position = offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # being written, or torn: not acknowledged either way
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise StoreError(f"{log} is corrupt at byte {position}: {e}") from e
        batch.append((position, entry))
        position += len(line)
        if isinstance(entry, dict) and entry.get(_MORE):
            continue
        for start, change in batch:
            _apply(log, start, change, upserts, deletes)
        batch.clear()
        committed = position
    return None if committed == offset else (upserts, deletes, committed)


def _apply(
    log: Path, position: int, entry: Any, upserts: dict[str, Upsert], deletes: set[str]
) -> None:
    try:
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
        raise StoreError(f"{log} is corrupt at byte {position}: {e}") from e
