"""BM25 scored exactly as Lucene (and so OpenSearch) scores it, with cheap incremental updates.

OpenSearch's BM25 (Lucene's ``LegacyBM25Similarity``, its default):
``(k1 + 1) * idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))`` with
``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, where ``dl`` is the field length after it went
through Lucene's one-byte norm encoding (``SmallFloat.intToByte4``): exact below 24 terms, then
rounded down to 4 significant bits. Reproducing that rounding keeps the local store's BM25 order
congruent with OpenSearch's.

The formula's pieces live here; `indexer.postings` scores a version's rows from disk and
`indexer.local_overlay` the rows of live changes (each a `TermRow`), both with these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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


def term_row(vocabulary: Vocabulary, text: str) -> TermRow:
    """Analyse a text into a row, adding new terms to the vocabulary."""
    terms = analyze(text)
    counted = Counter(vocabulary.add(term) for term in terms)
    return TermRow(
        np.fromiter(counted.keys(), dtype=np.int32, count=len(counted)),
        np.fromiter(counted.values(), dtype=np.int32, count=len(counted)),
        len(terms),
    )
