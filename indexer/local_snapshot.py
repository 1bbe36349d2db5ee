"""One immutable, searchable state of the local store.

Searches read a snapshot without locks; a change builds a new snapshot (copy-on-write) and the
store swaps it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.lexical import LexicalIndex
from indexer.schema import LEXICAL_FIELDS, Product, lexical_texts
from indexer.store import Filters, ScoredId

#: A live upsert: the product, its text embedding and its title embedding (None if not given).
Upsert = tuple[Product, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]


@dataclass(frozen=True)
class Snapshot:
    version: str
    manifest: dict[str, Any]
    products: list[Product]
    rows: dict[str, int]
    ids: npt.NDArray[np.str_]
    vectors: npt.NDArray[np.float32]
    #: one title embedding per row; a zero row where none was stored
    title_vectors: npt.NDArray[np.float32]
    #: the rows that have a title embedding
    has_title: npt.NDArray[np.bool_]
    lexical: dict[str, LexicalIndex]
    brand_keys: npt.NDArray[np.str_]
    prices: npt.NDArray[np.float64]
    category_rows: dict[str, npt.NDArray[np.int64]]
    #: rows known to be out of stock (``in_stock is False``); unknown counts as available
    out_of_stock: npt.NDArray[np.bool_]
    #: bytes of the version's update log already applied
    log_offset: int = 0

    @classmethod
    def build(
        cls,
        version: str,
        manifest: dict[str, Any],
        products: list[Product],
        vectors: npt.NDArray[np.float32],
        title_vectors: npt.NDArray[np.float32] | None,
        lexical: dict[str, LexicalIndex],
        log_offset: int = 0,
    ) -> Snapshot:
        if title_vectors is None:
            title_vectors = np.zeros_like(vectors)
        category_lists: dict[str, list[int]] = {}
        for row, product in enumerate(products):
            for level in {level.lower() for level in product.category}:
                category_lists.setdefault(level, []).append(row)
        return cls(
            version=version,
            manifest=manifest,
            products=products,
            rows={product.id: row for row, product in enumerate(products)},
            ids=np.array([product.id for product in products], dtype=np.str_),
            vectors=vectors,
            title_vectors=title_vectors,
            has_title=np.any(title_vectors, axis=1, keepdims=False).astype(bool),
            lexical=lexical,
            brand_keys=np.array(
                [(product.brand or "").lower() for product in products], dtype=np.str_
            ),
            prices=np.array(
                [np.nan if product.price is None else product.price for product in products],
                dtype=np.float64,
            ),
            category_rows={key: np.array(rows) for key, rows in category_lists.items()},
            out_of_stock=np.array([product.in_stock is False for product in products], dtype=bool),
            log_offset=log_offset,
        )

    def applied(
        self,
        upserts: dict[str, Upsert],
        deletes: set[str],
        log_offset: int,
    ) -> Snapshot:
        """A new snapshot with products replaced, added and removed."""
        keep = [row for row, p in enumerate(self.products) if p.id not in deletes]
        products = [self.products[row] for row in keep]
        vectors = self.vectors[keep]
        title_vectors = self.title_vectors[keep]
        term_rows = {
            field: [index.rows[row] for row in keep] for field, index in self.lexical.items()
        }
        positions = {p.id: i for i, p in enumerate(products)}
        added_vectors, added_titles = [], []
        for product, vector, title_vector in upserts.values():
            title = np.zeros_like(vector) if title_vector is None else title_vector
            texts = lexical_texts(product)
            position = positions.get(product.id)
            if position is None:
                positions[product.id] = len(products)
                products.append(product)
                added_vectors.append(vector)
                added_titles.append(title)
                for field in LEXICAL_FIELDS:
                    term_rows[field].append(self.lexical[field].row_for(texts[field]))
            else:
                products[position] = product
                vectors[position] = vector
                title_vectors[position] = title
                for field in LEXICAL_FIELDS:
                    term_rows[field][position] = self.lexical[field].row_for(texts[field])
        if added_vectors:
            vectors = np.vstack([vectors, np.stack(added_vectors)]).astype(np.float32)
            title_vectors = np.vstack([title_vectors, np.stack(added_titles)]).astype(np.float32)
        lexical = {field: self.lexical[field].with_rows(term_rows[field]) for field in self.lexical}
        return Snapshot.build(
            self.version, self.manifest, products, vectors, title_vectors, lexical, log_offset
        )

    def bm25_scores(self, text: str) -> npt.NDArray[np.float32]:
        """Weighted sum of each lexical field's BM25 scores (OpenSearch's ``most_fields``)."""
        total = np.zeros(len(self.products), dtype=np.float32)
        for field, weight in LEXICAL_FIELDS.items():
            total += np.float32(weight) * self.lexical[field].scores(text)
        return total

    def mask(self, filters: Filters | None) -> npt.NDArray[np.bool_] | None:
        if filters is None or filters.is_empty():
            return None
        mask = np.ones(len(self.products), dtype=bool)
        if filters.brand is not None:
            mask &= np.isin(self.brand_keys, [brand.lower() for brand in filters.brand])
        if filters.category is not None:
            in_category = np.zeros(len(self.products), dtype=bool)
            rows = self.category_rows.get(filters.category.lower())
            if rows is not None:
                in_category[rows] = True
            mask &= in_category
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                mask &= self.prices >= filters.price_min
            if filters.price_max is not None:
                mask &= self.prices <= filters.price_max
        if filters.in_stock is not None:
            mask &= self.out_of_stock if filters.in_stock is False else ~self.out_of_stock
        return mask

    def top(
        self,
        scores: npt.NDArray[np.float32],
        n: int,
        mask: npt.NDArray[np.bool_] | None,
        *,
        positive_only: bool,
    ) -> list[ScoredId]:
        scores = scores.astype(np.float64, copy=True)
        if mask is not None:
            scores[~mask] = -np.inf
        if positive_only:
            scores[scores <= 0] = -np.inf
        available = int(np.isfinite(scores).sum())
        take = min(n, available)
        if take <= 0:
            return []
        # Everything tied with the n-th score competes, so the cut follows (score, id) exactly
        # as OpenSearch's sort does.
        cutoff = -np.partition(-scores, take - 1)[take - 1]
        rows = np.flatnonzero(scores >= cutoff)
        order = np.lexsort((self.ids[rows], -scores[rows]))[:take]
        return [ScoredId(str(self.ids[row]), float(scores[row])) for row in rows[order]]
