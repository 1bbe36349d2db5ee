"""The embedded store's approximate vector index: faiss HNSW over 8-bit scalar-quantised vectors.

Why these choices (`bench/ann-libraries-2026-12-07.md` measured the candidates):
- faiss filters inside the graph walk (`IDSelectorBitmap`), so a filtered search still returns
  ``k`` results when ``k`` products match, without over-fetching and hoping;
- its 8-bit codes take a quarter of the float32 vectors' memory and are memory-mapped on open
  (``IO_FLAG_MMAP_IFC``), so only the graph is read into memory;
- the store rescores the candidates with the exact float32 vectors, so the scores a caller sees
  are cosines, not quantised approximations, and quantisation only costs recall.

The index holds the rows of one version, numbered as the version numbers them. Live changes
never touch it: deleted and replaced rows are left out by the same bitmap as the filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

#: Neighbours per node (faiss' ``M``); the bottom layer keeps twice as many.
CONNECTIVITY = 32
#: Candidates kept while inserting (``efConstruction``). At 64, clusters of near-duplicate
#: products (a catalog's variants) were left poorly linked: on the scale benchmark's million
#: products, 14 of 256 queries found under half their true neighbours (recall@100 0.93); at 160
#: none did (0.998), for 1.8x the build time (`bench/ann-construction-2026-12-07.md`).
EXPANSION_ADD = 160
#: The least candidates kept while searching (``efSearch``); a search keeps at least 2 x k,
#: divided by the share of rows a filter allows: the walk stops as if nothing were filtered, so
#: it needs that many more to return k (`bench/ann-libraries-2026-12-07.md`: with 10% allowed,
#: efSearch 128 returned 64 of 100 on average; 1,280 returned 100, recall 0.98).
EXPANSION_SEARCH = 128
#: Above this efSearch a filtered search costs more than scoring the allowed rows exactly.
MAX_EXPANSION = 4096
#: Vectors sampled to fit the quantiser's per-dimension range.
TRAINING_SAMPLE = 100_000
#: Rows added per call while building, so a build never copies the whole matrix at once.
ADD_CHUNK = 50_000


@dataclass(frozen=True)
class AnnIndex:
    """An HNSW index over one version's vectors (rows 0..n-1)."""

    index: Any  # faiss.IndexHNSWSQ, as `faiss.read_index` returns it

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @staticmethod
    def build(vectors: npt.NDArray[np.float32], path: Path) -> None:
        """Index ``vectors`` (unit rows; inner product is the cosine) and write it to ``path``."""
        dimension = int(vectors.shape[1])
        index = faiss.IndexHNSWSQ(
            dimension,
            faiss.ScalarQuantizer.QT_8bit,  # type: ignore[arg-type]  # an enum value
            CONNECTIVITY,
            faiss.METRIC_INNER_PRODUCT,
        )
        index.hnsw.efConstruction = EXPANSION_ADD
        step = max(1, len(vectors) // TRAINING_SAMPLE)
        index.train(np.ascontiguousarray(vectors[::step], dtype=np.float32))
        for start in range(0, len(vectors), ADD_CHUNK):
            index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32))
        faiss.write_index(index, str(path))

    @classmethod
    def open(cls, path: Path) -> AnnIndex:
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY))

    @staticmethod
    def expansion(k: int, allowed_share: float) -> int:
        """The efSearch a search for ``k`` needs when a filter allows that share of the rows."""
        return math.ceil(max(EXPANSION_SEARCH, 2 * k) / max(allowed_share, 1e-9))

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.bool_] | None = None,
        allowed_share: float = 1.0,
    ) -> npt.NDArray[np.int64]:
        """Up to ``k`` rows nearest to ``vector``, among the ``allowed`` rows when given (that
        share of all rows)."""
        k = min(k, self.size)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in the stubs
        params.efSearch = self.expansion(k, allowed_share)
        bits = None
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        _, labels = self.index.search(query, k, params=params)
        del bits  # the selector reads it until the search returns
        rows: npt.NDArray[np.int64] = labels[0]
        return rows[rows >= 0]
