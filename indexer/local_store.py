"""The embedded vector store: exact search over in-memory vectors plus BM25, persisted on disk.

Layout under ``<home>/indexes/<name>/``::

    CURRENT               name of the serving version (replaced atomically)
    v20261128T070000-ab12/
        manifest.json     written last: a version without it is incomplete
        products.jsonl    the validated records
        vectors.npy       float32, one L2-normalised row per product
        bm25/             the lexical index

A rebuild writes a new version beside the serving one and only then moves ``CURRENT``, so a
failed or killed rebuild leaves the serving index as it was; the next rebuild removes the
leftovers. Readers in other processes pick up a new version on their next search.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.errors import DimensionMismatchError, IndexNotFoundError, StoreError
from indexer.lexical import LexicalIndex
from indexer.schema import Product, product_to_text
from indexer.store import Filters, ScoredId

logger = logging.getLogger(__name__)

_CURRENT = "CURRENT"
_MANIFEST = "manifest.json"
_BUILDING_PREFIX = ".building-"
_RECHECK_SECONDS = 1.0


@dataclass
class _Snapshot:
    """One loaded version; never mutated after loading, so searches need no lock."""

    version: str
    manifest: dict[str, Any]
    products: list[Product]
    rows: dict[str, int]
    ids: npt.NDArray[np.str_]
    vectors: npt.NDArray[np.float32]
    lexical: LexicalIndex
    brand_keys: npt.NDArray[np.str_]
    prices: npt.NDArray[np.float64]
    category_rows: dict[str, npt.NDArray[np.int64]]

    @classmethod
    def build(
        cls,
        version: str,
        manifest: dict[str, Any],
        products: list[Product],
        vectors: npt.NDArray[np.float32],
        lexical: LexicalIndex,
    ) -> _Snapshot:
        category_lists: dict[str, list[int]] = {}
        for row, product in enumerate(products):
            for level in {level.casefold() for level in product.category}:
                category_lists.setdefault(level, []).append(row)
        return cls(
            version=version,
            manifest=manifest,
            products=products,
            rows={product.id: row for row, product in enumerate(products)},
            ids=np.array([product.id for product in products], dtype=np.str_),
            vectors=vectors,
            lexical=lexical,
            brand_keys=np.array(
                [(product.brand or "").casefold() for product in products], dtype=np.str_
            ),
            prices=np.array(
                [np.nan if product.price is None else product.price for product in products],
                dtype=np.float64,
            ),
            category_rows={key: np.array(rows) for key, rows in category_lists.items()},
        )

    def mask(self, filters: Filters | None) -> npt.NDArray[np.bool_] | None:
        if filters is None or filters.is_empty():
            return None
        mask = np.ones(len(self.products), dtype=bool)
        if filters.brand is not None:
            mask &= np.isin(self.brand_keys, [brand.casefold() for brand in filters.brand])
        if filters.category is not None:
            in_category = np.zeros(len(self.products), dtype=bool)
            rows = self.category_rows.get(filters.category.casefold())
            if rows is not None:
                in_category[rows] = True
            mask &= in_category
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                mask &= self.prices >= filters.price_min
            if filters.price_max is not None:
                mask &= self.prices <= filters.price_max
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
        rows = np.argpartition(-scores, take - 1)[:take]
        # Best score first; equal scores ordered by product id so every store agrees.
        order = np.lexsort((self.ids[rows], -scores[rows]))
        return [ScoredId(str(self.ids[row]), float(scores[row])) for row in rows[order]]


class LocalStore:
    """A `VectorStore` that lives in this process and persists under ``<home>/indexes/<name>``.

    >>> store = LocalStore(Path("~/.local/share/shoprank/indexes/default").expanduser())
    >>> store.count()  # loads the serving version on first use
    6764
    """

    def __init__(self, root: Path, *, keep_versions: int = 2) -> None:
        self.root = root
        self._keep_versions = max(1, keep_versions)
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self._checked_at = 0.0

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a complete serving version is on disk."""
        version = self._current_version()
        return version is not None and (self.root / version / _MANIFEST).is_file()

    def _current_version(self) -> str | None:
        try:
            return (self.root / _CURRENT).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def _state(self) -> _Snapshot:
        snapshot = self._snapshot
        now = time.monotonic()
        if snapshot is not None and now - self._checked_at < _RECHECK_SECONDS:
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
            return self._snapshot

    def _load(self, version: str) -> _Snapshot:
        folder = self.root / version
        try:
            manifest = json.loads((folder / _MANIFEST).read_text(encoding="utf-8"))
            with (folder / "products.jsonl").open(encoding="utf-8") as handle:
                products = [Product.model_validate_json(line) for line in handle]
            vectors = np.load(folder / "vectors.npy")
            lexical = LexicalIndex.load(folder / "bm25", size=len(products))
        except (OSError, ValueError) as e:
            raise StoreError(f"index version {folder} is unreadable: {e}") from e
        if len(products) != vectors.shape[0]:
            raise StoreError(
                f"index version {folder} is inconsistent: "
                f"{len(products)} products but {vectors.shape[0]} vectors"
            )
        logger.info("opened index %s (%d products)", folder, len(products))
        return _Snapshot.build(version, manifest, products, vectors, lexical)

    @property
    def dimension(self) -> int:
        return int(self._state().vectors.shape[1])

    @property
    def version(self) -> str:
        return self._state().version

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._state().manifest)

    def count(self) -> int:
        return len(self._state().products)

    def get(self, product_id: str) -> Product | None:
        state = self._state()
        row = state.rows.get(product_id)
        return None if row is None else state.products[row]

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]:
        state = self._state()
        return {pid: state.products[state.rows[pid]] for pid in product_ids if pid in state.rows}

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]:
        state = self._state()
        return state.top(state.lexical.scores(text), n, state.mask(filters), positive_only=True)

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]:
        state = self._state()
        if vector.shape != (state.vectors.shape[1],):
            raise DimensionMismatchError(
                f"query vector has shape {vector.shape}, "
                f"index {self.root.name} holds {state.vectors.shape[1]}-d vectors"
            )
        scores = state.vectors @ vector.astype(np.float32, copy=False)
        return state.top(scores, n, state.mask(filters), positive_only=False)

    def close(self) -> None:
        self._snapshot = None

    # -- writing -------------------------------------------------------------------------

    def replace_all(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Write a complete new version, then make it the serving one. Returns its name."""
        if vectors.ndim != 2 or vectors.shape[0] != len(products):
            raise DimensionMismatchError(
                f"{len(products)} products need {len(products)} vectors, got shape {vectors.shape}"
            )
        if not products:
            raise StoreError("refusing to build an empty index")
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        version = f"v{stamp}-{secrets.token_hex(3)}"
        staging = self.root / f"{_BUILDING_PREFIX}{version}"
        staging.mkdir()
        manifest = {
            "version": version,
            "count": len(products),
            "dimension": int(vectors.shape[1]),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **(metadata or {}),
        }
        with (staging / "products.jsonl").open("w", encoding="utf-8") as handle:
            for product in products:
                handle.write(product.model_dump_json() + "\n")
        np.save(staging / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        LexicalIndex.build([product_to_text(p) for p in products]).save(staging / "bm25")
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        staging.rename(self.root / version)
        pointer = self.root / f"{_CURRENT}.{version}.tmp"
        pointer.write_text(version + "\n", encoding="utf-8")
        os.replace(pointer, self.root / _CURRENT)
        logger.info("index %s now serves version %s", self.root, version)
        self._checked_at = 0.0
        self._prune()
        return version

    def _remove_leftovers(self) -> None:
        current = self._current_version()
        for path in self.root.iterdir():
            incomplete = path.name.startswith(_BUILDING_PREFIX) or (
                path.is_dir() and path.name != current and not (path / _MANIFEST).is_file()
            )
            if incomplete or path.name.endswith(".tmp"):
                logger.warning("removing leftover of an interrupted rebuild: %s", path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _prune(self) -> None:
        current = self._current_version()
        versions = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and (p / _MANIFEST).is_file()
        )
        old = [name for name in versions if name != current]
        for name in old[: max(0, len(old) - (self._keep_versions - 1))]:
            shutil.rmtree(self.root / name, ignore_errors=True)
