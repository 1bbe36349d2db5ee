"""BM25 scored exactly as Lucene (and so OpenSearch) scores it, with cheap incremental updates.

OpenSearch's BM25 (Lucene's ``LegacyBM25Similarity``, its default):
``(k1 + 1) * idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))`` with
``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, where ``dl`` is the field length after it went
through Lucene's one-byte norm encoding (``SmallFloat.intToByte4``): exact below 24 terms, then
rounded down to 4 significant bits. Reproducing that rounding keeps the local store's BM25 order
congruent with OpenSearch's.

Documents are rows; each row keeps its term ids and counts, so replacing a few rows re-analyses
only those and rebuilds the column index in well under a second.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import sparse

from indexer.analysis import analyze

K1 = 1.2
B = 0.75

IntArray = npt.NDArray[np.int32]


def _int4_to_long(value: int) -> int:
    bits = value & 0x07
    shift = (value >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


def _long_to_int4(value: int) -> int:
    bits = value.bit_length()
    if bits < 4:
        return value
    shift = bits - 4
    return ((value >> shift) & 0x07) | ((shift + 1) << 3)


_FREE_VALUES = 255 - _long_to_int4(2**31 - 1)  # 24


def lucene_norm_length(length: int) -> int:
    """The field length Lucene's BM25 sees after its one-byte norm round trip."""
    if length < _FREE_VALUES:
        return length
    encoded = _FREE_VALUES + _long_to_int4(length - _FREE_VALUES)
    return _FREE_VALUES + _int4_to_long(encoded - _FREE_VALUES)


@dataclass(frozen=True)
class TermRow:
    """One document: distinct term ids, their counts, and its length in terms."""

    ids: IntArray
    counts: IntArray
    length: int


class Vocabulary:
    """Term -> id, append-only so older index snapshots stay valid."""

    def __init__(self, terms: Sequence[str] = ()) -> None:
        self._ids: dict[str, int] = {term: i for i, term in enumerate(terms)}

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, term: str) -> int | None:
        return self._ids.get(term)

    def add(self, term: str) -> int:
        found = self._ids.get(term)
        if found is None:
            found = self._ids[term] = len(self._ids)
        return found

    def terms(self) -> list[str]:
        return list(self._ids)


class LexicalIndex:
    """A BM25 index over rows of term counts; immutable once built."""

    def __init__(self, vocabulary: Vocabulary, rows: Sequence[TermRow]) -> None:
        self.vocabulary = vocabulary
        self.rows = list(rows)
        size = len(self.rows)
        lengths = np.array([row.length for row in self.rows], dtype=np.int64)
        indptr = np.zeros(size + 1, dtype=np.int64)
        np.cumsum([len(row.ids) for row in self.rows], out=indptr[1:])
        ids = np.concatenate([r.ids for r in self.rows]) if size else np.zeros(0, np.int32)
        counts = np.concatenate([r.counts for r in self.rows]) if size else np.zeros(0, np.int32)
        self._columns = sparse.csr_matrix(
            (counts.astype(np.float32), ids, indptr), shape=(size, len(vocabulary))
        ).tocsc()
        with_terms = int((lengths > 0).sum())
        self._doc_count = with_terms
        self._avgdl = float(lengths.sum()) / with_terms if with_terms else 1.0
        norm = np.array([lucene_norm_length(int(n)) for n in lengths], dtype=np.float32)
        self._length_factor = (K1 * ((1 - B) + B * norm / self._avgdl)).astype(np.float32)

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        vocabulary = Vocabulary()
        return cls(vocabulary, [term_row(vocabulary, text) for text in texts])

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(self, rows: Sequence[TermRow]) -> LexicalIndex:
        """A new index over other rows, sharing this vocabulary."""
        return LexicalIndex(self.vocabulary, rows)

    def row_for(self, text: str) -> TermRow:
        return term_row(self.vocabulary, text)

    def scores(self, text: str) -> npt.NDArray[np.float32]:
        """BM25 score of every row for a query (0 where no term matches)."""
        scores = np.zeros(len(self.rows), dtype=np.float32)
        columns = self._columns
        for term in analyze(text):
            term_id = self.vocabulary.get(term)
            if term_id is None or term_id >= columns.shape[1]:
                continue
            start, end = columns.indptr[term_id], columns.indptr[term_id + 1]
            if start == end:
                continue
            rows = columns.indices[start:end]
            tf = columns.data[start:end]
            df = end - start
            idf = math.log(1 + (self._doc_count - df + 0.5) / (df + 0.5))
            scores[rows] += (K1 + 1) * idf * tf / (tf + self._length_factor[rows])
        return scores

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocabulary.json").write_text(
            json.dumps(self.vocabulary.terms()), encoding="utf-8"
        )
        np.savez(
            folder / "rows.npz",
            offsets=np.cumsum([0] + [len(row.ids) for row in self.rows]),
            ids=np.concatenate([r.ids for r in self.rows]) if self.rows else np.zeros(0),
            counts=np.concatenate([r.counts for r in self.rows]) if self.rows else np.zeros(0),
            lengths=np.array([row.length for row in self.rows], dtype=np.int64),
        )

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        vocabulary = Vocabulary(json.loads((folder / "vocabulary.json").read_text("utf-8")))
        with np.load(folder / "rows.npz") as data:
            offsets, ids, counts, lengths = (
                data["offsets"], data["ids"], data["counts"], data["lengths"]
            )
        rows = [
            TermRow(
                ids[offsets[i] : offsets[i + 1]].astype(np.int32),
                counts[offsets[i] : offsets[i + 1]].astype(np.int32),
                int(lengths[i]),
            )
            for i in range(len(lengths))
        ]
        return cls(vocabulary, rows)


def term_row(vocabulary: Vocabulary, text: str) -> TermRow:
    """Analyse a text into a row, adding new terms to the vocabulary."""
    terms = analyze(text)
    counted = Counter(vocabulary.add(term) for term in terms)
    return TermRow(
        np.fromiter(counted.keys(), dtype=np.int32, count=len(counted)),
        np.fromiter(counted.values(), dtype=np.int32, count=len(counted)),
        len(terms),
    )
