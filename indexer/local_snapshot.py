"""One immutable, searchable state of the local store: a version plus its live changes.

Searches read a snapshot without locks. A change makes a new snapshot that shares the version
(memory-mapped, `indexer.local_segment`) and carries a new overlay (`indexer.local_overlay`), and
the store swaps it in, so a reader sees a batch of changes entirely or not at all.

Every search returns the best ``n`` by (score, id), as OpenSearch sorts: the version's part and
the overlay's part are each cut that way and merged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.analysis import analyze
from indexer.ann import MAX_EXPANSION
from indexer.local_overlay import Overlay, Upsert
from indexer.local_segment import FILTERED_EXACT_BELOW, Segment
from indexer.schema import LEXICAL_FIELDS, Product
from indexer.store import Filters, ScoredId

__all__ = ["Snapshot", "Upsert"]


@dataclass(frozen=True)
class Snapshot:
    version: str
    manifest: dict[str, Any]
    base: Segment
    overlay: Overlay
    #: bytes of the version's update log already applied
    log_offset: int = 0
    #: search the version's vectors exactly, even where it has an ANN index
    exact: bool = False

    # -- records ------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        return int(self.base.vectors.shape[1])

    def count(self) -> int:
        return self.base.size - len(self.overlay.dead) + self.overlay.size

    def _base_row(self, product_id: str) -> int | None:
        row = self.base.row(product_id)
        if row is None:
            return None
        at = np.searchsorted(self.overlay.dead, row)
        dead = at < len(self.overlay.dead) and self.overlay.dead[at] == row
        return None if dead else row

    def contains(self, product_id: str) -> bool:
        return self.overlay.row(product_id) is not None or self._base_row(product_id) is not None

    def get(self, product_id: str) -> Product | None:
        row = self.overlay.row(product_id)
        if row is not None:
            return self.overlay.products[row]
        base = self._base_row(product_id)
        return None if base is None else self.base.product(base)

    def vector(self, product_id: str, *, title: bool = False) -> npt.NDArray[np.float32] | None:
        """The stored vector (or title vector, if it has one) of a product; None otherwise."""
        row = self.overlay.row(product_id)
        if row is not None:
            vectors = self.overlay.title_vectors if title else self.overlay.vectors
            if vectors is None or (title and not self.overlay.has_title(row)):
                return None
            return np.array(vectors[row])
        base = self._base_row(product_id)
        if base is None or (title and not self.base.has_title[base]):
            return None
        return np.array((self.base.title_vectors if title else self.base.vectors)[base])

    def brand_counts(self) -> dict[str, int]:
        counts = np.bincount(self.base.brand_ids, minlength=len(self.base.brands))
        np.subtract.at(counts, self.base.brand_ids[self.overlay.dead], 1)
        totals = {brand: int(n) for brand, n in zip(self.base.brands, counts, strict=True) if n}
        for product in self.overlay.products:
            key = (product.brand or "").lower()
            totals[key] = totals.get(key, 0) + 1
        return totals

    def applied(self, upserts: dict[str, Upsert], deletes: set[str], log_offset: int) -> Snapshot:
        """A new snapshot with products replaced, added and removed."""
        base_rows = {pid: self.base.row(pid) for pid in (*upserts, *deletes)}
        overlay = self.overlay.applied(upserts, deletes, base_rows, self.dimension)
        return Snapshot(self.version, self.manifest, self.base, overlay, log_offset, self.exact)

    # -- searching ----------------------------------------------------------------------

    def _allowed(self, filters: Filters | None) -> npt.NDArray[np.bool_] | None:
        """The version's rows a search may return; None for all of them."""
        if filters is not None and not filters.is_empty():
            allowed = self.base.mask(filters)
        elif len(self.overlay.dead):
            allowed = np.ones(self.base.size, dtype=bool)
        else:
            return None
        allowed[self.overlay.dead] = False
        return allowed

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None
    ) -> list[ScoredId]:
        query = vector.astype(np.float32, copy=False)
        allowed = self._allowed(filters)
        hits = self._base_vector_hits(query, n, allowed)
        if self.overlay.size and self.overlay.vectors is not None:
            scores = (self.overlay.vectors @ query).astype(np.float64)
            hits += self._overlay_hits(scores, n, filters)
        return _best(hits, n)

    def _base_vector_hits(
        self, query: npt.NDArray[np.float32], n: int, allowed: npt.NDArray[np.bool_] | None
    ) -> list[ScoredId]:
        base = self.base
        available = base.size if allowed is None else int(allowed.sum())
        share = available / max(base.size, 1)
        if (
            base.ann is not None
            and not self.exact
            and available > FILTERED_EXACT_BELOW
            and base.ann.expansion(2 * n, share) <= MAX_EXPANSION
        ):
            rows = np.sort(base.ann.search(query, 2 * n, allowed, share))  # in disk order
            if len(rows) >= min(n, available):  # else the graph walk ran dry: search exactly
                return self._hits(rows, base.vectors[rows] @ query, n)
        if allowed is None:
            return self._hits(None, base.vectors @ query, n)
        rows = np.flatnonzero(allowed)
        if not self.exact:  # shortlist from the 8-bit codes, then score exactly
            rows = base.scan(query, rows, 2 * n)
        return self._hits(rows, base.vectors[rows] @ query, n)

    def search_bm25(self, text: str, n: int, filters: Filters | None) -> list[ScoredId]:
        terms = analyze(text)
        if not terms:
            return []
        overlay = self.overlay
        base_total = np.zeros(self.base.size, dtype=np.float32)
        delta_total = np.zeros(overlay.size, dtype=np.float32)
        for name, weight in LEXICAL_FIELDS.items():
            postings, delta = self.base.postings[name], overlay.lexical.get(name)
            stats = postings.stats if delta is None else postings.stats + delta.stats
            extra = {} if delta is None else {
                t: len(found[0]) for t in set(terms) if (found := delta.lookup(t)) is not None}
            scores = np.zeros(self.base.size, dtype=np.float32)
            postings.add_scores(scores, terms, stats, extra)
            base_total += np.float32(weight) * scores
            if delta is not None and overlay.size:
                delta_scores = np.zeros(overlay.size, dtype=np.float32)
                for term in terms:
                    found = delta.lookup(term)
                    if found is None:
                        continue
                    rows, tf = found
                    delta_scores[rows] += stats.term_scores(postings.df(term) + len(rows), tf,
                                                            delta.norms[rows])
                delta_total += np.float32(weight) * delta_scores
        matched = np.flatnonzero(base_total > 0)
        allowed = self._allowed(filters)
        if allowed is not None:
            matched = matched[allowed[matched]]
        hits = self._hits(matched, base_total[matched], n)
        if overlay.size:
            extra_scores = delta_total.astype(np.float64)
            extra_scores[extra_scores <= 0] = -np.inf
            hits += self._overlay_hits(extra_scores, n, filters)
        return _best(hits, n)

    def _hits(
        self, rows: npt.NDArray[np.integer[Any]] | None, scores: npt.NDArray[Any], n: int
    ) -> list[ScoredId]:
        """The best ``n`` of the version's ``rows`` (all rows when None) by (score, id), with
        any rows tied with the n-th."""
        values = np.asarray(scores, dtype=np.float64)
        take = min(n, len(values))
        if take <= 0:
            return []
        # Everything tied with the n-th score competes, so the cut follows (score, id).
        cutoff = -np.partition(-values, take - 1)[take - 1]
        chosen = np.flatnonzero(values >= cutoff)
        at = chosen if rows is None else rows[chosen]
        return [ScoredId(self.base.id(int(row)), float(values[i]))
                for i, row in zip(chosen, at, strict=True)]

    def _overlay_hits(
        self, scores: npt.NDArray[np.float64], n: int, filters: Filters | None
    ) -> list[ScoredId]:
        products = self.overlay.products
        keep = [i for i, p in enumerate(products)
                if np.isfinite(scores[i]) and (filters is None or filters.matches(p))]
        best = sorted(keep, key=lambda i: (-scores[i], products[i].id))[:n]
        return [ScoredId(products[i].id, float(scores[i])) for i in best]


def _best(hits: Iterable[ScoredId], n: int) -> list[ScoredId]:
    return sorted(hits, key=lambda hit: (-hit.score, hit.product_id))[:n]
