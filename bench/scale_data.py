"""Synthetic catalogs for the scale benchmark (`bench/scale.py`), made from a real built index.

Synthetic product ``i`` copies source product ``i % S`` with the id ``syn-<i>``, a perturbed
title (a word dropped, two neighbouring words swapped, or a suffix token added), a different
price and a perturbed vector (Gaussian noise, then re-normalised). Everything is a function of
the seed, so the build process, the serving process and the exact ground truth agree without
passing products around. No model runs.

Products are made when a store asks for them (`SyntheticProducts` is a lazy `Sequence`) and
vectors are written to ``.npy`` files in chunks, so a million products never sit in memory as
pydantic objects at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.local_compaction import LazyProducts
from indexer.schema import Product

#: Noise per dimension of a product copy's vector (384-d: cosine to its source about 0.96).
PRODUCT_NOISE = 0.01
#: Noise per dimension of a query vector, so no query vector is any product's.
QUERY_NOISE = 0.02
SUFFIXES = ("v2", "pro", "plus", "mini", "kit", "set", "2-pack", "bundle", "xl", "refurbished")
CHUNK = 50_000

Vectors = npt.NDArray[np.float32]


def default_source(home: Path) -> Path | None:
    """The largest built index under ``home/indexes`` (by product count), or None."""
    best: tuple[int, Path] | None = None
    for root in sorted((home / "indexes").glob("*")):
        folder = current_version(root)
        if folder is None:
            continue
        try:
            count = int(json.loads((folder / "manifest.json").read_text())["count"])
        except (OSError, ValueError, KeyError):
            continue
        if best is None or count > best[0]:
            best = (count, root)
    return None if best is None else best[1]


def current_version(root: Path) -> Path | None:
    """The serving version folder of a local index, or None."""
    try:
        folder = root / (root / "CURRENT").read_text().strip()
    except OSError:
        return None
    return folder if (folder / "vectors.npy").is_file() else None


@dataclass(frozen=True)
class Source:
    """The real products and vectors the synthetic ones copy."""

    name: str
    records: list[dict[str, Any]]
    vectors: Vectors
    title_vectors: Vectors

    @classmethod
    def load(cls, root: Path) -> Source:
        folder = current_version(root)
        if folder is None:
            raise SystemExit(f"--source {root}: no built local index there (no CURRENT version)")
        with (folder / "products.jsonl").open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        vectors = np.load(folder / "vectors.npy").astype(np.float32)
        titles = folder / "title_vectors.npy"
        title_vectors = np.load(titles).astype(np.float32) if titles.is_file() else vectors
        if len(records) != len(vectors):
            raise SystemExit(f"--source {root}: {len(records)} products, {len(vectors)} vectors")
        return cls(root.name, records, vectors, title_vectors)

    def __len__(self) -> int:
        return len(self.records)

    def brand_keys(self) -> npt.NDArray[np.str_]:
        return np.array([(r.get("brand") or "").lower() for r in self.records])

    def prices(self) -> npt.NDArray[np.float64]:
        return np.array([np.nan if r.get("price") is None else float(r["price"])
                         for r in self.records])


@dataclass(frozen=True)
class Plan:
    """Per synthetic product: its source row, title operation, word, suffix and price."""

    source_rows: npt.NDArray[np.int64]
    ops: npt.NDArray[np.int8]
    words: npt.NDArray[np.int32]
    suffixes: npt.NDArray[np.int8]
    prices: npt.NDArray[np.float64]
    brand_keys: npt.NDArray[np.str_]

    @classmethod
    def make(cls, source: Source, size: int, seed: int) -> Plan:
        rng = np.random.default_rng([seed, size, 1])
        rows = np.arange(size, dtype=np.int64) % len(source)
        factors = rng.uniform(0.8, 1.25, size)
        return cls(
            source_rows=rows,
            ops=rng.integers(0, 3, size, dtype=np.int8),
            words=rng.integers(0, 1 << 20, size, dtype=np.int32),
            suffixes=rng.integers(0, len(SUFFIXES), size, dtype=np.int8),
            prices=np.round(source.prices()[rows] * factors, 2),
            brand_keys=source.brand_keys()[rows],
        )

    def save(self, path: Path) -> None:
        np.savez(path, source_rows=self.source_rows, ops=self.ops, words=self.words,
                 suffixes=self.suffixes, prices=self.prices, brand_keys=self.brand_keys)

    @classmethod
    def load(cls, path: Path) -> Plan:
        with np.load(path) as data:
            return cls(**{key: data[key] for key in data.files})

    def __len__(self) -> int:
        return len(self.source_rows)


def product_id(i: int) -> str:
    return f"syn-{i:07d}"


def row_of(product_id_: str) -> int:
    """The synthetic row of an id `product_id` made (-1 for any other id)."""
    return int(product_id_[4:]) if product_id_.startswith("syn-") else -1


def perturbed_title(title: str, op: int, word: int, suffix: int) -> str:
    words = title.split()
    if op == 0 and len(words) > 2:
        del words[word % len(words)]
    elif op == 1 and len(words) > 1:
        at = word % (len(words) - 1)
        words[at], words[at + 1] = words[at + 1], words[at]
    else:
        words.append(SUFFIXES[suffix])
    return " ".join(words) or title


def synthetic_product(source: Source, plan: Plan, i: int, *, id_: str | None = None) -> Product:
    record = dict(source.records[int(plan.source_rows[i])])
    record["id"] = id_ or product_id(i)
    record["title"] = perturbed_title(
        str(record["title"]), int(plan.ops[i]), int(plan.words[i]), int(plan.suffixes[i])
    )
    price = float(plan.prices[i])
    record["price"] = None if np.isnan(price) else price
    return Product.model_validate(record)


class SyntheticProducts(LazyProducts):
    """The synthetic catalog as a lazy sequence: each product is made when it is read."""

    def __init__(self, source: Source, plan: Plan) -> None:
        self.source = source
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def make(self, index: int) -> Product:
        return synthetic_product(self.source, self.plan, index)

    def __iter__(self) -> Iterator[Product]:
        for i in range(len(self)):
            yield synthetic_product(self.source, self.plan, i)


def perturb(base: Vectors, noise: float, rng: np.random.Generator) -> Vectors:
    """``base`` plus Gaussian noise, each row re-normalised to unit length."""
    out = base + rng.normal(0.0, noise, base.shape).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def write_vectors(source: Source, plan: Plan, folder: Path, seed: int,
                  log: Any = print) -> tuple[Path, Path]:
    """Write the synthetic vectors and title vectors as ``.npy`` files, a chunk at a time."""
    size, dim = len(plan), source.vectors.shape[1]
    paths = (folder / "vectors.npy", folder / "title_vectors.npy")
    outs = [np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(size, dim))
            for p in paths]
    started = time.perf_counter()
    for chunk, start in enumerate(range(0, size, CHUNK)):
        rows = plan.source_rows[start : start + CHUNK]
        rng = np.random.default_rng([seed, size, 2, chunk])
        outs[0][start : start + len(rows)] = perturb(source.vectors[rows], PRODUCT_NOISE, rng)
        outs[1][start : start + len(rows)] = perturb(source.title_vectors[rows], PRODUCT_NOISE,
                                                     rng)
        if size > CHUNK:
            log(f"  vectors {start + len(rows):,}/{size:,} ({time.perf_counter() - started:.0f} s)")
    for out in outs:
        out.flush()
    return paths


@dataclass(frozen=True)
class QuerySet:
    """Query texts (titles cut to 2-4 words) with vectors near their source products, and
    filters drawn from those products (the brand, and a price range around the price)."""

    texts: list[str]
    vectors: Vectors
    brands: list[str | None]
    price_ranges: list[tuple[float, float] | None]

    @classmethod
    def make(cls, source: Source, count: int, seed: int) -> QuerySet:
        rng = np.random.default_rng([seed, 3])
        rows = rng.choice(len(source), size=min(count, len(source)), replace=False)
        texts, brands, ranges = [], [], []
        for row in rows:
            record = source.records[int(row)]
            words = str(record["title"]).split()
            texts.append(" ".join(words[: int(rng.integers(2, 5))]))
            brands.append(record.get("brand") or None)
            price = record.get("price")
            ranges.append(None if price is None else (round(price * 0.5, 2), round(price * 2, 2)))
        return cls(texts, perturb(source.vectors[rows], QUERY_NOISE, rng), brands, ranges)

    def save(self, path: Path) -> None:
        np.save(path.with_suffix(".npy"), self.vectors)
        path.with_suffix(".json").write_text(json.dumps(
            {"texts": self.texts, "brands": self.brands, "price_ranges": self.price_ranges}
        ))

    @classmethod
    def load(cls, path: Path) -> QuerySet:
        meta = json.loads(path.with_suffix(".json").read_text())
        ranges = [None if r is None else (float(r[0]), float(r[1])) for r in meta["price_ranges"]]
        return cls(meta["texts"], np.load(path.with_suffix(".npy")), meta["brands"], ranges)

    def mask(self, plan: Plan, q: int) -> npt.NDArray[np.bool_] | None:
        """Which synthetic rows pass query ``q``'s filter (None: the query has no filter)."""
        brand, prices = self.brands[q], self.price_ranges[q]
        if brand is None and prices is None:
            return None
        keep = np.ones(len(plan), dtype=bool)
        if brand is not None:
            keep &= plan.brand_keys == brand.lower()
        if prices is not None:
            with np.errstate(invalid="ignore"):
                keep &= (plan.prices >= prices[0]) & (plan.prices <= prices[1])
        return keep


def exact_top(vectors: Vectors, queries: QuerySet, plan: Plan, n: int = 100,
              ) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64] | None]]:
    """The exact top ``n`` rows of every query by dot product, unfiltered and filtered
    (brute force over the vectors file, a chunk at a time)."""
    count = len(queries.texts)
    best = [np.empty((count, 0), np.float32), np.empty((count, 0), np.float32)]
    rows = [np.empty((count, 0), np.int64), np.empty((count, 0), np.int64)]
    masks = [queries.mask(plan, q) for q in range(count)]
    for start in range(0, len(vectors), CHUNK):
        scores = queries.vectors @ np.asarray(vectors[start : start + CHUNK]).T
        ids = np.arange(start, start + scores.shape[1], dtype=np.int64)
        filtered = scores.copy()
        for q, mask in enumerate(masks):
            if mask is not None:
                filtered[q, ~mask[start : start + scores.shape[1]]] = -np.inf
        for k, block in enumerate((scores, filtered)):
            merged = np.concatenate([best[k], block], axis=1)
            merged_rows = np.concatenate([rows[k], np.broadcast_to(ids, block.shape)], axis=1)
            if merged.shape[1] > n:
                keep = np.argpartition(-merged, n - 1, axis=1)[:, :n]
            else:
                keep = np.argsort(-merged, axis=1)
            best[k] = np.take_along_axis(merged, keep, axis=1)
            rows[k] = np.take_along_axis(merged_rows, keep, axis=1)
    plain = [rows[0][q] for q in range(count)]
    filtered_top = [None if masks[q] is None else rows[1][q][np.isfinite(best[1][q])]
                    for q in range(count)]
    return plain, filtered_top
