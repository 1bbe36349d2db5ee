"""One field's BM25 inverted index on disk, memory-mapped, scored as Lucene scores it.

The embedded store keeps one per lexical field in each index version. Opening one reads two
small numbers and maps four arrays, whatever the catalog's size; a query reads only the
postings of its own terms. Files in the field's folder::

    terms.bin, term_starts.npy   the vocabulary: UTF-8 terms sorted by their bytes, end to end
    starts.npy                   where each term's postings begin (one more than terms)
    rows.npy, freqs.npy          postings: row numbers (ascending) and term frequencies
    norms.npy                    each row's length after Lucene's norm encoding
    stats.json                   rows with at least one term, and the sum of their lengths

`BM25` holds the collection statistics a score reads (`indexer.lexical` has the formula):
those of one version, or of a version plus its live changes, so the two score on one scale.
"""

from __future__ import annotations

import bisect
import json
import math
import mmap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse

from indexer.analysis import analyze
from indexer.lexical import K1, B, lucene_norm_length

_STATS = "stats.json"


class ByteStrings(Sequence[bytes]):
    """Byte strings stored end to end, with their start offsets (one more than strings)."""

    def __init__(self, blob: bytes | np.memmap, starts: npt.NDArray[np.int64]) -> None:
        self._blob = blob
        self._starts = starts

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override]
        return bytes(self._blob[self._starts[index] : self._starts[index + 1]])

    @staticmethod
    def write(strings: Iterable[bytes], blob: Path, starts: Path) -> None:
        items = list(strings)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in items], out=offsets[1:])
        blob.write_bytes(b"".join(items))
        np.save(starts, offsets)

    @classmethod
    def open(cls, blob: Path, starts: Path, *, scattered: bool = False) -> ByteStrings:
        """Map the files; ``scattered`` says the strings are read one here, one there."""
        offsets = np.load(starts, mmap_mode="r")
        data: bytes | np.memmap = (
            np.memmap(blob, dtype=np.uint8, mode="r") if blob.stat().st_size else b""
        )
        return cls(read_scattered(data) if scattered else data, offsets)


def read_scattered(mapped: Any) -> Any:
    """Tell the kernel a mapped file is read a row here and a row there, so a page fault
    reads that page and not the next 32 too: without it, rescoring a few hundred rows per
    search pulled in nearly all of a million products' vectors (1.4 GB) within 256 searches."""
    handle = getattr(mapped, "_mmap", None)
    if handle is not None and hasattr(mmap, "MADV_RANDOM"):
        handle.madvise(mmap.MADV_RANDOM)
    return mapped


@dataclass(frozen=True)
class BM25:
    """Collection statistics: documents with at least one term and their summed length."""

    doc_count: int
    total_length: int

    @property
    def avgdl(self) -> float:
        return self.total_length / self.doc_count if self.doc_count else 1.0

    def idf(self, df: int) -> float:
        return math.log(1 + (self.doc_count - df + 0.5) / (df + 0.5))

    def length_factor(self, norms: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return (K1 * ((1 - B) + B * norms / self.avgdl)).astype(np.float32)

    def term_scores(
        self, df: int, tf: npt.NDArray[np.float32], norms: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """One term's BM25 score in each document that holds it ``tf`` times, of those
        ``norms`` (Lucene-encoded lengths), the term being in ``df`` documents."""
        factor = self.length_factor(norms)
        return (K1 + 1) * self.idf(df) * tf / (tf + factor)

    def __add__(self, other: BM25) -> BM25:
        return BM25(self.doc_count + other.doc_count, self.total_length + other.total_length)


@dataclass(frozen=True)
class Postings:
    """A field's inverted index over the rows of one version (read-only once written)."""

    terms: ByteStrings
    starts: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int32]
    freqs: npt.NDArray[np.float32]
    norms: npt.NDArray[np.float32]
    stats: BM25

    def lookup(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
        """The rows that hold ``term`` and its frequency in each; None if no row does."""
        key = term.encode("utf-8")
        at = bisect.bisect_left(self.terms, key)
        if at == len(self.terms) or self.terms[at] != key:
            return None
        start, end = int(self.starts[at]), int(self.starts[at + 1])
        return self.rows[start:end], self.freqs[start:end]

    def df(self, term: str) -> int:
        found = self.lookup(term)
        return 0 if found is None else len(found[0])

    def add_scores(
        self,
        scores: npt.NDArray[np.float32],
        terms: Sequence[str],
        stats: BM25,
        extra_df: dict[str, int],
    ) -> None:
        """Add the BM25 score of every row for the analysed query ``terms`` to ``scores``, with
        ``stats`` and document frequencies raised by ``extra_df`` (live changes)."""
        for term in terms:
            found = self.lookup(term)
            if found is None:
                continue
            rows, tf = found
            scores[rows] += stats.term_scores(len(rows) + extra_df.get(term, 0), tf,
                                              self.norms[rows])

    @classmethod
    def open(cls, folder: Path) -> Postings:
        stats = json.loads((folder / _STATS).read_text(encoding="utf-8"))
        return cls(
            terms=ByteStrings.open(folder / "terms.bin", folder / "term_starts.npy"),
            starts=np.load(folder / "starts.npy", mmap_mode="r"),
            rows=np.load(folder / "rows.npy", mmap_mode="r"),
            freqs=np.load(folder / "freqs.npy", mmap_mode="r"),
            norms=np.load(folder / "norms.npy", mmap_mode="r"),
            stats=BM25(int(stats["doc_count"]), int(stats["total_length"])),
        )


class PostingsWriter:
    """Collects one field's analysed rows in order, then writes them as `Postings`."""

    def __init__(self) -> None:
        self._vocabulary: dict[str, int] = {}
        self._indptr: list[int] = [0]
        self._ids: list[npt.NDArray[np.int32]] = []
        self._counts: list[npt.NDArray[np.int32]] = []
        self._lengths: list[int] = []

    def add(self, text: str) -> None:
        terms = analyze(text)
        counted = Counter(self._vocabulary.setdefault(t, len(self._vocabulary)) for t in terms)
        self._ids.append(np.fromiter(counted.keys(), dtype=np.int32, count=len(counted)))
        self._counts.append(np.fromiter(counted.values(), dtype=np.int32, count=len(counted)))
        self._indptr.append(self._indptr[-1] + len(counted))
        self._lengths.append(len(terms))

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        size, width = len(self._lengths), len(self._vocabulary)
        ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int32)
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int32)
        columns = sparse.csr_matrix(
            (counts.astype(np.float32), ids, np.asarray(self._indptr, dtype=np.int64)),
            shape=(size, width),
        ).tocsc()
        columns.sort_indices()
        encoded = [term.encode("utf-8") for term in self._vocabulary]
        order = sorted(range(width), key=encoded.__getitem__)
        ByteStrings.write((encoded[i] for i in order), folder / "terms.bin",
                          folder / "term_starts.npy")
        sizes = np.diff(columns.indptr)[order]
        starts = np.zeros(width + 1, dtype=np.int64)
        np.cumsum(sizes, out=starts[1:])
        pieces = [slice(columns.indptr[i], columns.indptr[i + 1]) for i in order]
        np.save(folder / "starts.npy", starts)
        np.save(folder / "rows.npy", _joined(columns.indices, pieces, np.int32))
        np.save(folder / "freqs.npy", _joined(columns.data, pieces, np.float32))
        lengths = np.asarray(self._lengths, dtype=np.int64)
        np.save(folder / "norms.npy", norm_lengths(lengths))
        with_terms = lengths > 0
        stats = {"doc_count": int(with_terms.sum()), "total_length": int(lengths.sum())}
        (folder / _STATS).write_text(json.dumps(stats), encoding="utf-8")


def _joined(values: np.ndarray, pieces: list[slice], dtype: type) -> np.ndarray:
    if not pieces:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([values[piece] for piece in pieces]).astype(dtype, copy=False)


def norm_lengths(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Each length after Lucene's one-byte norm round trip (`lucene_norm_length`), as float32."""
    distinct, inverse = np.unique(lengths, return_inverse=True)
    encoded = np.array([lucene_norm_length(int(n)) for n in distinct], dtype=np.float32)
    return encoded[inverse].reshape(lengths.shape)
