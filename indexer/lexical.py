"""BM25 over `product_to_text`, with English stop words and Snowball stemming (bm25s)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer

_STOPWORDS = "en"


class LexicalIndex:
    """A BM25 index over a fixed list of documents (row i is document i)."""

    def __init__(self, retriever: bm25s.BM25, size: int) -> None:
        self._retriever = retriever
        self._size = size
        self._stemmer = Stemmer.Stemmer("english")

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            list(texts), stopwords=_STOPWORDS, stemmer=stemmer, show_progress=False
        )
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, len(texts))

    @classmethod
    def load(cls, folder: Path, size: int) -> LexicalIndex:
        retriever = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(retriever, size)

    def save(self, folder: Path) -> None:
        self._retriever.save(str(folder), show_progress=False)

    def scores(self, text: str) -> npt.NDArray[np.float32]:
        """BM25 score of every document for a query (0 where no term matches)."""
        tokens = bm25s.tokenize(
            [text],
            stopwords=_STOPWORDS,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )[0]
        if not tokens:
            return np.zeros(self._size, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)
