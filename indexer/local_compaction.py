"""Compaction: fold a version's live changes into a fresh version, in the background.

Live changes sit in memory beside a version (`indexer.local_overlay`) and in its update log,
which every process replays when it opens the version. Both grow with every change, so once
`COMPACT_AT` products are changed the store that wrote the change starts a thread that writes
the version's current state as a new version (a new HNSW index included), without holding the
writer lock: upserts go on meanwhile. Then, under the lock, it copies the log lines written
since it started into the new version's log and moves ``CURRENT``, as a rebuild does. So no
acknowledged change is lost, and a process that opens the new version replays only those.

A rebuild that swapped in meanwhile wins: the compaction sees another ``CURRENT`` and drops its
work. A process killed while compacting leaves a ``.building-`` folder that the next rebuild
removes, like any interrupted rebuild.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from indexer.local_disk import fsync_tree, remove_path
from indexer.local_snapshot import Snapshot
from indexer.local_update_log import UPDATES, drop_torn_tail
from indexer.schema import Product

if TYPE_CHECKING:
    from indexer.local_store import LocalStore

logger = logging.getLogger(__name__)

#: Products changed since a version was built (added, replaced or deleted) that start one.
COMPACT_AT = 5_000
#: What a version's manifest says about itself rather than about the catalog it holds.
_OWN_KEYS = ("version", "count", "dimension", "analyzer", "format", "created")


def changed(snapshot: Snapshot) -> int:
    """Products changed since the snapshot's version was built."""
    return snapshot.overlay.size + len(snapshot.overlay.dead)


class LiveProducts(Sequence[Product]):
    """A snapshot's products, version rows first, each read from disk when asked for."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        base = snapshot.base
        self.rows = np.setdiff1d(np.arange(base.size), snapshot.overlay.dead)

    def __len__(self) -> int:
        return len(self.rows) + self._snapshot.overlay.size

    @overload
    def __getitem__(self, index: int) -> Product: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Product]: ...
    def __getitem__(self, index: int | slice) -> Product | Sequence[Product]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < len(self.rows):
            return self._snapshot.base.product(int(self.rows[index]))
        return self._snapshot.overlay.products[index - len(self.rows)]


def compact(store: LocalStore) -> str | None:
    """Write the serving version with its live changes folded in and serve it; returns the new
    version's name, or None when another version was swapped in meanwhile."""
    snapshot = store._state(force=True)
    products = LiveProducts(snapshot)
    base, overlay = snapshot.base, snapshot.overlay
    extra = overlay.vectors if overlay.vectors is not None else np.zeros((0, snapshot.dimension))
    titles = overlay.title_vectors if overlay.title_vectors is not None else extra
    vectors = np.concatenate([base.vectors[products.rows], extra]).astype(np.float32)
    title_vectors = np.concatenate([base.title_vectors[products.rows], titles]).astype(np.float32)
    version = f"v{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(3)}"
    staging = store.root / f".building-{version}"
    metadata = {k: v for k, v in snapshot.manifest.items() if k not in _OWN_KEYS}
    try:
        try:
            staging.mkdir()
            store._write_version(staging, version, products, vectors, title_vectors, metadata,
                                 None)
            fsync_tree(staging)
        except FileNotFoundError:
            if store._current_version() == snapshot.version:
                raise
            # a rebuild removed the folder as a leftover, and swapped in: it wins
        with store._writer():
            if store._current_version() != snapshot.version:
                logger.info("compaction of %s dropped: a rebuild swapped in", snapshot.version)
                remove_path(staging)
                return None
            _carry_log(store.root / snapshot.version / UPDATES, snapshot.log_offset,
                       staging / UPDATES)
            staging.rename(store.root / version)
            pointer = store.root / f"CURRENT.{version}.tmp"
            pointer.write_text(version + "\n", encoding="utf-8")
            fsync_tree(pointer)
            os.replace(pointer, store.root / "CURRENT")
            fsync_tree(store.root, recursive=False)
            store._checked_at = 0.0
            store._prune()
    except BaseException:
        remove_path(staging)
        raise
    logger.info("index %s compacted %d changes into version %s", store.root,
                changed(snapshot), version)
    return version


def in_background(store: LocalStore) -> None:
    """`LocalStore.compact` in a thread of its own: a failure is logged, and the next change
    tries again (the changes themselves are safe in the log)."""
    try:
        store.compact()
    except Exception:
        logger.exception("compacting %s failed", store.root)


def _carry_log(log: Path, offset: int, into: Path) -> None:
    """Copy the complete batches after byte ``offset`` of ``log`` (the caller holds the lock)."""
    if not log.exists():
        return
    drop_torn_tail(log)
    with log.open("rb") as handle:
        handle.seek(offset)
        tail = handle.read()
    if tail:
        into.write_bytes(tail)
        fsync_tree(into)
