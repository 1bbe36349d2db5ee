"""One version of the embedded store on disk, opened by memory-mapping it.

A version is written once (`write_segment`) and never changed; live changes go to its update
log (`indexer.local_update_log`) and are held beside it in memory (`indexer.local_overlay`).
Opening one (`Segment.open`) maps its arrays and reads a few small files, so it takes about the
same time at a thousand products as at a million; the operating system pages in what searches
touch. Files, besides ``manifest.json`` and ``updates.jsonl`` (`indexer.local_store`)::

    products.jsonl, product_starts.npy   the records, one JSON line each, and where each starts
    ids.bin, id_starts.npy, id_order.npy product ids in row order, and the rows sorted by id
    vectors.npy, title_vectors.npy       float32 unit vectors (titles: a zero row where none)
    has_title.npy                        the rows that have a title vector
    brands.json, brand_ids.npy           lower-cased brands, and each row's brand number
    prices.npy, out_of_stock.npy         NaN where a product has no price
    categories.json, category_*.npy      the rows under each lower-cased category level
    bm25/<field>/                        `indexer.postings`, one per lexical field
    ann.faiss                            `indexer.ann`, for versions of `EXACT_BELOW` or more,
    codes.npy, code_scale.npy            with the vectors as 8-bit codes, for filtered scans
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.ann import AnnIndex
from indexer.postings import ByteStrings, Postings, PostingsWriter, read_scattered
from indexer.progress import IndexProgress
from indexer.schema import LEXICAL_FIELDS, Product, lexical_texts
from indexer.store import Filters

#: Versions with fewer products are searched exactly and written without an ANN index.
EXACT_BELOW = 20_000
#: A filter that leaves fewer rows than this is searched exactly over those rows.
FILTERED_EXACT_BELOW = 20_000
#: Products written between two progress reports.
WRITE_CHUNK = 500
ANN_FILE = "ann.faiss"


class _SortedIds(Sequence[bytes]):
    """The ids in byte order, for `bisect`."""

    def __init__(self, ids: ByteStrings, order: npt.NDArray[np.int64]) -> None:
        self._ids, self._order = ids, order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        return self._ids[int(self._order[index])]


@dataclass(frozen=True)
class Segment:
    """A version's products, vectors, filter columns and indexes, memory-mapped."""

    products: ByteStrings
    ids: ByteStrings
    id_order: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    title_vectors: npt.NDArray[np.float32]
    has_title: npt.NDArray[np.bool_]
    brands: list[str]
    brand_numbers: dict[str, int]
    brand_ids: npt.NDArray[np.int32]
    prices: npt.NDArray[np.float64]
    out_of_stock: npt.NDArray[np.bool_]
    categories: dict[str, int]
    category_starts: npt.NDArray[np.int64]
    category_rows: npt.NDArray[np.int32]
    postings: dict[str, Postings]
    ann: AnnIndex | None
    #: int8 codes of the vectors and each dimension's scale (with the ANN index only)
    codes: npt.NDArray[np.int8] | None
    code_scale: npt.NDArray[np.float32] | None

    @property
    def size(self) -> int:
        return len(self.ids)

    def row(self, product_id: str) -> int | None:
        key = product_id.encode("utf-8")
        view = _SortedIds(self.ids, self.id_order)
        at = bisect.bisect_left(view, key)
        return int(self.id_order[at]) if at < len(view) and view[at] == key else None

    def id(self, row: int) -> str:
        return self.ids[row].decode("utf-8")

    def product(self, row: int) -> Product:
        return Product.model_validate_json(self.products[row])

    def category(self, key: str) -> npt.NDArray[np.int32]:
        number = self.categories.get(key)
        if number is None:
            return np.zeros(0, dtype=np.int32)
        return self.category_rows[self.category_starts[number] : self.category_starts[number + 1]]

    def mask(self, filters: Filters) -> npt.NDArray[np.bool_]:
        """The rows that pass ``filters`` (see `Filters` for what each one means)."""
        mask = np.ones(self.size, dtype=bool)
        if filters.brand is not None:
            wanted = [self.brand_numbers[b.lower()] for b in filters.brand
                      if b.lower() in self.brand_numbers]
            mask &= np.isin(self.brand_ids, wanted)
        if filters.category is not None:
            in_category = np.zeros(self.size, dtype=bool)
            in_category[self.category(filters.category.lower())] = True
            mask &= in_category
        with np.errstate(invalid="ignore"):
            if filters.price_min is not None:
                mask &= self.prices >= filters.price_min
            if filters.price_max is not None:
                mask &= self.prices <= filters.price_max
        if filters.in_stock is not None:
            mask &= self.out_of_stock if filters.in_stock is False else ~self.out_of_stock
        return mask

    @classmethod
    def open(cls, folder: Path) -> Segment:
        def array(name: str, *, scattered: bool = False) -> Any:
            mapped = np.load(folder / name, mmap_mode="r")
            return read_scattered(mapped) if scattered else mapped

        brands = json.loads((folder / "brands.json").read_text(encoding="utf-8"))
        categories = json.loads((folder / "categories.json").read_text(encoding="utf-8"))
        ann = folder / ANN_FILE
        return cls(
            products=ByteStrings.open(folder / "products.jsonl", folder / "product_starts.npy",
                                      scattered=True),
            ids=ByteStrings.open(folder / "ids.bin", folder / "id_starts.npy"),
            id_order=array("id_order.npy"),
            vectors=array("vectors.npy", scattered=True),
            title_vectors=array("title_vectors.npy", scattered=True),
            has_title=array("has_title.npy"),
            brands=brands,
            brand_numbers={brand: number for number, brand in enumerate(brands)},
            brand_ids=array("brand_ids.npy"),
            prices=array("prices.npy"),
            out_of_stock=array("out_of_stock.npy"),
            categories={key: number for number, key in enumerate(categories)},
            category_starts=array("category_starts.npy"),
            category_rows=array("category_rows.npy"),
            postings={field: Postings.open(folder / "bm25" / field) for field in LEXICAL_FIELDS},
            ann=AnnIndex.open(ann) if ann.is_file() else None,
            codes=array("codes.npy", scattered=True) if ann.is_file() else None,
            code_scale=array("code_scale.npy") if ann.is_file() else None,
        )

    def scan(
        self, query: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], k: int
    ) -> npt.NDArray[np.int64]:
        """The ``k`` of ``rows`` whose vectors score best, read from the 8-bit codes (a quarter
        of the bytes of the vectors) where the version has them; ascending."""
        if self.codes is None or self.code_scale is None or len(rows) <= k:
            return rows
        approx = self.codes[rows].astype(np.float32) @ (query * self.code_scale)
        return np.sort(rows[np.argpartition(-approx, k - 1)[:k]])


def write_segment(
    folder: Path,
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None,
    progress: IndexProgress | None = None,
    *,
    exact_below: int = EXACT_BELOW,
) -> None:
    """Write a version's files (all but the manifest) into ``folder``, reading each product
    once (``products`` may make them as they are asked for)."""
    writers = {field: PostingsWriter() for field in LEXICAL_FIELDS}
    starts, ids, prices, out_of_stock = [0], [], [], []
    brands: dict[str, int] = {"": 0}
    brand_ids: list[int] = []
    categories: dict[str, list[int]] = {}
    with (folder / "products.jsonl").open("wb") as handle:
        for begin in range(0, len(products), WRITE_CHUNK):
            for row, product in enumerate(products[begin : begin + WRITE_CHUNK], begin):
                line = (product.model_dump_json() + "\n").encode("utf-8")
                handle.write(line)
                starts.append(starts[-1] + len(line))
                ids.append(product.id.encode("utf-8"))
                prices.append(np.nan if product.price is None else product.price)
                out_of_stock.append(product.in_stock is False)
                for field, text in lexical_texts(product).items():
                    writers[field].add(text)
                brand_ids.append(brands.setdefault((product.brand or "").lower(), len(brands)))
                for level in {level.lower() for level in product.category}:
                    categories.setdefault(level, []).append(row)
            if progress is not None:
                progress.advance(min(WRITE_CHUNK, len(products) - begin))
    np.save(folder / "product_starts.npy", np.asarray(starts, dtype=np.int64))
    ByteStrings.write(ids, folder / "ids.bin", folder / "id_starts.npy")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    np.save(folder / "id_order.npy", np.asarray(order, dtype=np.int64))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    titles = np.zeros_like(vectors) if title_vectors is None else title_vectors
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "title_vectors.npy", np.ascontiguousarray(titles, dtype=np.float32))
    np.save(folder / "has_title.npy", np.any(titles, axis=1))
    (folder / "brands.json").write_text(json.dumps(list(brands)), encoding="utf-8")
    np.save(folder / "brand_ids.npy", np.asarray(brand_ids, dtype=np.int32))
    np.save(folder / "prices.npy", np.asarray(prices, dtype=np.float64))
    np.save(folder / "out_of_stock.npy", np.asarray(out_of_stock, dtype=bool))
    keys = list(categories)
    sizes = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum([len(categories[key]) for key in keys], out=sizes[1:])
    (folder / "categories.json").write_text(json.dumps(keys), encoding="utf-8")
    np.save(folder / "category_starts.npy", sizes)
    np.save(folder / "category_rows.npy", np.asarray(
        [row for key in keys for row in categories[key]], dtype=np.int32))
    for field, writer in writers.items():
        writer.write(folder / "bm25" / field)
    if len(products) >= exact_below:
        AnnIndex.build(vectors, folder / ANN_FILE)
        scale = np.maximum(np.abs(vectors).max(axis=0), 1e-12).astype(np.float32) / 127
        codes = np.lib.format.open_memmap(folder / "codes.npy", mode="w+", dtype=np.int8,
                                          shape=vectors.shape)
        for start in range(0, len(vectors), 65536):
            chunk = vectors[start : start + 65536] / scale
            codes[start : start + len(chunk)] = np.rint(chunk).astype(np.int8)
        codes.flush()
        del codes
        np.save(folder / "code_scale.npy", scale)
