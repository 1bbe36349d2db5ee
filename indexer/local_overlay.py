"""Live changes held in memory beside a version: products added or replaced since it was built,
and tombstones for the version's rows that were deleted or replaced.

An `Overlay` is immutable. Applying a batch of changes (`Overlay.applied`) costs time in the
number of changed products, never in the size of the version, so an upsert into a million
products costs what it costs into a thousand; searches read the version (`indexer.local_segment`)
with its tombstones left out, plus the overlay's rows scored exactly. The store writes a fresh
version when the overlay grows past `indexer.local_store.COMPACT_AT` rows (its compaction).

BM25 scores both with the statistics of the two together: documents and their lengths add up,
as do the document frequencies of a query's terms. Tombstoned rows still count, as deleted
documents count in Lucene until a merge, so scores move a little until the next compaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt
from scipy import sparse

from indexer.lexical import TermRow, Vocabulary, term_row
from indexer.postings import BM25, norm_lengths
from indexer.schema import LEXICAL_FIELDS, Product, lexical_texts

#: A live upsert: the product, its text embedding and its title embedding (None if not given).
Upsert = tuple[Product, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]


@dataclass(frozen=True)
class DeltaField:
    """One lexical field over the overlay's rows: columns of term counts, norms, statistics."""

    vocabulary: Vocabulary
    rows: tuple[TermRow, ...]
    columns: sparse.csc_matrix
    norms: npt.NDArray[np.float32]
    stats: BM25

    @classmethod
    def of(cls, vocabulary: Vocabulary, rows: Sequence[TermRow]) -> DeltaField:
        lengths = np.array([row.length for row in rows], dtype=np.int64)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row.ids) for row in rows], out=indptr[1:])
        ids = np.concatenate([r.ids for r in rows]) if rows else np.zeros(0, np.int32)
        counts = np.concatenate([r.counts for r in rows]) if rows else np.zeros(0, np.int32)
        columns = sparse.csr_matrix(
            (counts.astype(np.float32), ids, indptr), shape=(len(rows), len(vocabulary))
        ).tocsc()
        stats = BM25(int((lengths > 0).sum()), int(lengths.sum()))
        return cls(vocabulary, tuple(rows), columns, norm_lengths(lengths), stats)

    def lookup(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
        term_id = self.vocabulary.get(term)
        if term_id is None or term_id >= self.columns.shape[1]:
            return None
        start, end = self.columns.indptr[term_id], self.columns.indptr[term_id + 1]
        return (self.columns.indices[start:end], self.columns.data[start:end]) if end > start \
            else None


@dataclass(frozen=True)
class Overlay:
    """Changes since a version was built; the empty overlay changes nothing."""

    #: the version's rows deleted or replaced since, ascending
    dead: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    products: tuple[Product, ...] = ()
    vectors: npt.NDArray[np.float32] | None = None
    title_vectors: npt.NDArray[np.float32] | None = None
    lexical: dict[str, DeltaField] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.products)

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {p.id: row for row, p in enumerate(self.products)}

    def row(self, product_id: str) -> int | None:
        return self._rows.get(product_id)

    def has_title(self, row: int) -> bool:
        return self.title_vectors is not None and bool(np.any(self.title_vectors[row]))

    def applied(
        self,
        upserts: dict[str, Upsert],
        deletes: set[str],
        base_row: dict[str, int | None],
        dimension: int,
    ) -> Overlay:
        """This overlay with a batch applied: ``base_row`` maps each changed id to its row in
        the version (None if it has none); vectors have ``dimension`` entries."""
        dead = set(self.dead.tolist())
        dead.update(row for pid in (*upserts, *deletes)
                    if (row := base_row.get(pid)) is not None)
        gone = deletes | set(upserts)
        keep = [row for row, p in enumerate(self.products) if p.id not in gone]
        products = [self.products[row] for row in keep] + [u[0] for u in upserts.values()]
        old = self.vectors if self.vectors is not None else np.zeros((0, dimension), np.float32)
        old_titles = self.title_vectors if self.title_vectors is not None else old
        new = [u[1] for u in upserts.values()]
        titles = [np.zeros_like(u[1]) if u[2] is None else u[2] for u in upserts.values()]
        vectors = np.vstack([old[keep], *[v[None] for v in new]]).astype(np.float32)
        title_vectors = np.vstack([old_titles[keep], *[t[None] for t in titles]]).astype(
            np.float32)
        lexical = {}
        for name in LEXICAL_FIELDS:
            current = self.lexical.get(name)
            vocabulary = current.vocabulary if current is not None else Vocabulary()
            rows = [current.rows[row] for row in keep] if current is not None else []
            rows += [term_row(vocabulary, lexical_texts(u[0])[name]) for u in upserts.values()]
            lexical[name] = DeltaField.of(vocabulary, rows)
        return Overlay(
            dead=np.array(sorted(dead), dtype=np.int64),
            products=tuple(products),
            vectors=vectors,
            title_vectors=title_vectors,
            lexical=lexical,
        )
