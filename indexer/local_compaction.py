"""Compaction: fold a version's live changes into a fresh version, in the background.

Live changes sit in memory beside a version (`indexer.local_overlay`) and in its update log,
which every process replays when it opens the version. Both grow with every change, so once
`COMPACT_AT` products are changed the store that wrote the change starts a thread that writes
the version's current state as a new version (a new HNSW index included), without holding the
writer lock: upserts go on meanwhile. Then it swaps the new version in as a rebuild does
(`indexer.local_versions.publish`), carrying the log lines written since it started. So no
acknowledged change is lost, and a process that opens the new version replays only those.

Rebuilds and compactions take turns (a lock file): a compaction is skipped while a rebuild
runs. A process killed while compacting leaves a ``.building-`` folder that the next rebuild
removes, like any interrupted rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, overload

import numpy as np

from indexer.local_disk import fsync_tree, remove_path
from indexer.local_snapshot import Snapshot
from indexer.local_versions import BUILDING_PREFIX, new_version_name, prune, publish
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


class LazyProducts(Sequence[Product]):
    """Products made one at a time as a reader asks for them (`write_segment` reads each
    once), so a million need not be in memory together. Subclasses say how many and how."""

    def __len__(self) -> int:
        raise NotImplementedError

    def make(self, index: int) -> Product:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> Product: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Product]: ...
    def __getitem__(self, index: int | slice) -> Product | Sequence[Product]:
        if isinstance(index, slice):
            return [self.make(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.make(index)


class LiveProducts(LazyProducts):
    """A snapshot's products, version rows first, each read from disk when asked for."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self.rows = np.setdiff1d(np.arange(snapshot.base.size), snapshot.overlay.dead)

    def __len__(self) -> int:
        return len(self.rows) + self._snapshot.overlay.size

    def make(self, index: int) -> Product:
        if index < len(self.rows):
            return self._snapshot.base.product(int(self.rows[index]))
        return self._snapshot.overlay.products[index - len(self.rows)]


def compact(store: LocalStore) -> str:
    """Write the serving version with its live changes folded in and serve it; returns the new
    version's name (the caller holds the rebuild lock)."""
    snapshot = store._state(force=True)
    products = LiveProducts(snapshot)
    base, overlay = snapshot.base, snapshot.overlay
    extra = overlay.vectors if overlay.vectors is not None else np.zeros((0, snapshot.dimension))
    titles = overlay.title_vectors if overlay.title_vectors is not None else extra
    vectors = np.concatenate([base.vectors[products.rows], extra]).astype(np.float32)
    title_vectors = np.concatenate([base.title_vectors[products.rows], titles]).astype(np.float32)
    version = new_version_name()
    staging = store.root / f"{BUILDING_PREFIX}{version}"
    metadata = {k: v for k, v in snapshot.manifest.items() if k not in _OWN_KEYS}
    try:
        staging.mkdir()
        store._write_version(staging, version, products, vectors, title_vectors, metadata, None)
        fsync_tree(staging)
        with store._writer():
            publish(store.root, staging, version, (snapshot.version, snapshot.log_offset))
    except BaseException:
        remove_path(staging)
        raise
    store._checked_at = 0.0
    prune(store.root, store._keep_versions)
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
