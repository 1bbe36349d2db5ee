"""The embedded vector store: vectors (HNSW from `EXACT_BELOW` products) and BM25 on disk.

Layout under ``<home>/indexes/<name>/``::

    CURRENT               name of the serving version (replaced atomically)
    .lock                 serialises writers of the update log and of CURRENT across processes
    .rebuild.lock         one rebuild or compaction at a time
    v20261128T070000-ab12/
        manifest.json     written last: a version without it is incomplete; it records
                          the encoder that wrote the vectors and the files' `FORMAT`
        products.jsonl, vectors.npy, bm25/, ann.faiss, ...
                          the version itself, memory-mapped (`indexer.local_segment`)
        updates.jsonl     live upserts and deletes since the version was built

A rebuild writes a new version beside the serving one and only then moves ``CURRENT``, so a
failed or killed rebuild leaves the serving index as it was; the next rebuild removes the
leftovers; a rebuild that fails to write (a full disk) removes its partial version itself.
Live changes go on while it writes and are carried into the new version
(`indexer.local_versions`); a compaction (`indexer.local_compaction`) works the same way.
Live changes are appended to ``updates.jsonl`` (a write-ahead log, fsynced before the call
returns and replayed on load; `indexer.local_update_log`) and applied in memory at once; other
processes pick up a new version or new log lines on their next search, at most
`RECHECK_SECONDS` later. Opening a version cuts off a torn tail of its log (a writer killed
mid-append) with a warning.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer import local_compaction
from indexer.analysis import ANALYZER_VERSION
from indexer.encoder_stamp import EncoderStamp
from indexer.errors import DimensionMismatchError, IndexNotFoundError, StoreError
from indexer.local_disk import disk_error, fsync_tree, remove_path
from indexer.local_overlay import Overlay
from indexer.local_segment import EXACT_BELOW, Segment, write_segment
from indexer.local_snapshot import Snapshot
from indexer.local_update_log import (
    UPDATES,
    Entry,
    append_entries,
    delete_entries,
    drop_torn_tail,
    read_updates,
    upsert_entries,
)
from indexer.local_versions import (
    BUILDING_PREFIX,
    MANIFEST,
    current_version,
    log_end,
    new_version_name,
    prune,
    publish,
    remove_leftovers,
)
from indexer.progress import IndexProgress
from indexer.schema import Product
from indexer.store import Filters, ScoredId, check_rebuild, check_vectors

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 0.25
_WRITER_LOCK = ".lock"
_REBUILD_LOCK = ".rebuild.lock"
_ENCODER = "encoder"
#: The layout of a version's files (`indexer.local_segment`); an older one needs a reindex.
FORMAT = 3


class LocalStore:
    """A `VectorStore` that lives in this process and persists under ``<home>/indexes/<name>``.

    >>> store = LocalStore(Path("~/.local/share/shoprank/indexes/default").expanduser())
    >>> store.count()  # loads the serving version on first use
    6764
    """

    circuit_open = False  # nothing remote to stop calling

    def __init__(
        self, root: Path, *, keep_versions: int = 2, exact_below: int = EXACT_BELOW
    ) -> None:
        self.root = root
        self._exact_below = exact_below
        self._keep_versions = max(1, keep_versions)
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._compacting = threading.Lock()
        self._checked_at = 0.0

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a complete serving version, built with today's analyzer, is on disk."""
        version = self._current_version()
        if version is None:
            return False
        try:
            manifest = json.loads((self.root / version / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool(
            manifest.get("analyzer") == ANALYZER_VERSION and manifest.get("format") == FORMAT
        )

    def _current_version(self) -> str | None:
        return current_version(self.root)

    def _state(self, *, force: bool = False) -> Snapshot:
        snapshot = self._snapshot
        now = time.monotonic()
        if snapshot is not None and not force and now - self._checked_at < RECHECK_SECONDS:
            return snapshot
        with self._lock:
            self._checked_at = now
            version = self._current_version()
            if version is None:
                if self._snapshot is not None:
                    return self._snapshot
                raise IndexNotFoundError(
                    f"no index at {self.root}: run `shoprank reindex --catalog PATH` first"
                )
            if self._snapshot is None or self._snapshot.version != version:
                self._snapshot = self._load(version)
                self._drop_torn_tail(version)
            self._snapshot = self._replay(self._snapshot)
            return self._snapshot

    def _load(self, version: str) -> Snapshot:
        folder = self.root / version
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"index version {folder} is unreadable: {e}") from e
        if manifest.get("analyzer") != ANALYZER_VERSION or manifest.get("format") != FORMAT:
            raise StoreError(
                f"index version {folder} was written by an older shoprank (analyzer "
                f"{manifest.get('analyzer')!r}, format {manifest.get('format')!r}; this one "
                f"writes {ANALYZER_VERSION!r}, format {FORMAT}): run `shoprank reindex`"
            )
        try:
            segment = Segment.open(folder)
        except (OSError, ValueError, KeyError) as e:
            raise StoreError(f"index version {folder} is unreadable: {e}") from e
        shapes = {segment.vectors.shape[0], segment.title_vectors.shape[0], len(segment.products)}
        if shapes != {segment.size}:
            raise StoreError(
                f"index version {folder} is inconsistent: {segment.size} products but "
                f"{segment.vectors.shape[0]} vectors and {segment.title_vectors.shape[0]} "
                "title vectors"
            )
        logger.info("opened index %s (%d products)", folder, segment.size)
        exact = segment.ann is None or segment.size < self._exact_below
        return Snapshot(version, manifest, segment, Overlay(), exact=exact)

    def _drop_torn_tail(self, version: str) -> None:
        """Cut off what a writer killed mid-append left at the end of the version's log, unless
        a writer holds the lock now (its tail may be a write in progress; it cuts one itself)."""
        try:
            with self._writer(wait=False) as held:
                if held:
                    drop_torn_tail(self.root / version / UPDATES)
        except OSError as e:  # a read-only copy of an index: readers skip the tail anyway
            logger.debug("cannot check the update log of %s for a torn tail: %s", version, e)

    def _replay(self, snapshot: Snapshot) -> Snapshot:
        """Apply the log lines written since this snapshot was taken."""
        updates = read_updates(self.root / snapshot.version / UPDATES, snapshot.log_offset)
        return snapshot if updates is None else snapshot.applied(*updates)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def dimension(self) -> int:
        return self._state().dimension

    @property
    def version(self) -> str:
        return self._state().version

    def count(self) -> int:
        return self._state().count()

    def brand_counts(self) -> dict[str, int]:
        return self._state().brand_counts()

    def encoder_stamp(self) -> EncoderStamp | None:
        return EncoderStamp.from_meta(self._state().manifest.get(_ENCODER))

    def get(self, product_id: str) -> Product | None:
        return self._state().get(product_id)

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        state = self._state()
        found = {pid: state.get(pid) for pid in dict.fromkeys(product_ids)}
        return {pid: product for pid, product in found.items() if product is not None}

    def vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        return self._vectors(product_ids, title=False)

    def title_vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        return self._vectors(product_ids, title=True)

    def _vectors(self, product_ids: Sequence[str], *, title: bool) -> dict[str, Any]:
        state = self._state()
        found = {pid: state.vector(pid, title=title) for pid in dict.fromkeys(product_ids)}
        return {pid: vector for pid, vector in found.items() if vector is not None}

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]:
        return self._state().search_bm25(text, n, filters)

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]:
        state = self._state()
        self._check_dimension(vector.shape[-1], state)
        return state.search_vector(vector, n, filters)

    def _check_dimension(self, dim: int, state: Snapshot) -> None:
        if dim != state.dimension:
            raise DimensionMismatchError(
                f"vectors have {dim} dimensions, "
                f"index {self.root.name} holds {state.dimension}-d vectors"
            )

    def close(self) -> None:
        self._snapshot = None

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def _writer(self, *, wait: bool = True) -> Iterator[bool]:
        """Hold the cross-process writer lock; yields whether it is held (``wait=False``
        yields False at once when another writer has it)."""
        with self._exclusive(_WRITER_LOCK, wait=wait) as held:
            yield held

    @contextmanager
    def _exclusive(self, name: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the cross-process lock file ``name`` (the writer's, or the one that keeps
        rebuilds and compactions one at a time)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / name).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def upsert(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        title_vectors: npt.NDArray[np.float32] | None = None,
    ) -> int:
        """Add or replace products; searchable in this process at once. Returns the count."""
        check_vectors(products, vectors, title_vectors)
        self._check_dimension(vectors.shape[1], self._state(force=True))
        entries = upsert_entries(products, vectors, title_vectors)
        self._append_log(entries)
        return len(entries)

    def delete(self, product_ids: Sequence[str]) -> int:
        """Remove products; returns how many existed."""
        state = self._state(force=True)
        existing = [pid for pid in dict.fromkeys(product_ids) if state.contains(pid)]
        self._append_log(delete_entries(existing))
        return len(existing)

    def _append_log(self, entries: list[Entry]) -> None:
        """Log one call's changes as one batch; durable on disk when this returns."""
        if not entries:
            return
        with self._writer():
            version = self._current_version()
            if version is None:
                raise IndexNotFoundError(f"no index at {self.root} to update")
            append_entries(self.root / version / UPDATES, entries)
        if local_compaction.changed(self._state(force=True)) >= local_compaction.COMPACT_AT:
            worker = threading.Thread(target=local_compaction.in_background, args=(self,))
            worker.daemon = True
            worker.start()

    def compact(self) -> str | None:
        """Fold the live changes into a new serving version now (`indexer.local_compaction`);
        returns its name, or None if a rebuild or another compaction is running."""
        if not self._compacting.acquire(blocking=False):
            return None
        try:
            with self._exclusive(_REBUILD_LOCK, wait=False) as held:
                return local_compaction.compact(self) if held else None
        finally:
            self._compacting.release()

    def replace_all(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        *,
        title_vectors: npt.NDArray[np.float32] | None = None,
        metadata: dict[str, Any] | None = None,
        encoder: EncoderStamp | None = None,
        progress: IndexProgress | None = None,
    ) -> str:
        """Write a complete new version, then make it the serving one. Returns its name.

        Live changes go on while it writes, to the serving version, and the ones made after the
        write began are carried into the new version (`indexer.local_versions.publish`).
        ``progress`` hears each `indexer.local_segment.WRITE_CHUNK` of products written. A write
        that fails (a full disk: `StoreError` naming the index and the reason) removes the
        partial version.
        """
        check_rebuild(products, vectors, title_vectors)
        manifest = dict(metadata or {})
        if encoder is not None:
            manifest[_ENCODER] = encoder.to_meta()
        with self._exclusive(_REBUILD_LOCK):
            with self._writer():
                remove_leftovers(self.root)
                old = self._current_version()
                carry = (old, log_end(self.root, old))
            version = new_version_name()
            staging = self.root / f"{BUILDING_PREFIX}{version}"
            try:
                staging.mkdir()
                self._write_version(
                    staging, version, products, vectors, title_vectors, manifest, progress
                )
                fsync_tree(staging)  # on disk before anything points at it
                with self._writer():
                    publish(self.root, staging, version, carry)
            except BaseException as e:
                failure = (
                    disk_error("write a new version of index", self.root, e)
                    if isinstance(e, OSError) else None
                )  # before the cleanup frees the space it names
                remove_path(staging)
                if failure is not None:
                    raise failure from e
                raise
            self._checked_at = 0.0
            prune(self.root, self._keep_versions)
        return version

    def _write_version(
        self,
        folder: Path,
        version: str,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        title_vectors: npt.NDArray[np.float32] | None,
        metadata: dict[str, Any],
        progress: IndexProgress | None,
    ) -> None:
        write_segment(folder, products, vectors, title_vectors, progress,
                      exact_below=self._exact_below)
        manifest = {
            **metadata,
            "version": version,
            "count": len(products),
            "dimension": int(vectors.shape[1]),
            "analyzer": ANALYZER_VERSION,
            "format": FORMAT,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
