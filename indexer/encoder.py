"""The bi-encoder: packaged all-MiniLM-L6-v2 (or a tuned one), loaded offline on first use.

`BiEncoder` encodes products in batches and queries one at a time, with torch or with ONNX
Runtime (`indexer.onnx_encoder`). Its model folder (`indexer.model_files`) is either a full
sentence-transformers model or a LoRA adapter artifact merged into the packaged model on load
(`indexer.model_loading`); its `EncoderStamp` (`indexer.encoder_stamp`) is what an index
records about it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from indexer.encoder_stamp import (
    DocumentBackend,
    EncoderStamp,
    encoder_fingerprint,
    encoder_identity,
)
from indexer.errors import IndexerError
from indexer.model_files import packaged_model_path, same_folder
from indexer.model_loading import load_bi_encoder
from indexer.onnx_encoder import OnnxQueryEncoder, ensure_query_export
from indexer.onnx_files import Precision
from indexer.settings import IndexerSettings
from indexer.vectors import Vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: How `BiEncoder` encodes queries: torch, or ONNX Runtime in INT8 (``onnx-int8``) or fp32.
QueryBackend = Literal["torch", "onnx-int8", "onnx"]


class BiEncoder:
    """Encodes products in batches and queries one at a time (with an LRU cache).

    Vectors are L2-normalised float32, so a dot product is the cosine similarity.

    ``query_backend`` ``onnx-int8`` or ``onnx`` encodes queries with ONNX Runtime
    (`indexer.onnx_encoder.OnnxQueryEncoder`) from an export of this encoder made on first use
    under ``onnx_cache_dir`` (default: `IndexerSettings.onnx_cache_dir`), keyed by the
    fingerprint. ``document_backend`` ``onnx-int8`` (or ``onnx``, fp32) encodes products with
    the same export (`indexer.onnx_encoder.OnnxQueryEncoder.encode_many`, length-sorted
    batches, every core); the fingerprint stays the same and the stamp records the backend.

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
        query_backend: QueryBackend = "torch",
        document_backend: DocumentBackend = "torch",
        onnx_cache_dir: Path | None = None,
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
        #: Queries `encode_query` had to run the model for (cache misses), since creation.
        self.cache_misses = 0
        self.query_backend: QueryBackend = query_backend
        self._onnx_cache_dir = onnx_cache_dir
        self.document_backend: DocumentBackend = document_backend
        self._onnx: OnnxQueryEncoder | None = None
        self._onnx_documents: OnnxQueryEncoder | None = None
        self._onnx_lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    model = load_bi_encoder(self._model_path, device=self._device)
                    model.max_seq_length = self._max_seq_length
                    self._model = model
        return self._model

    @property
    def model_path(self) -> Path:
        """The folder this encoder loads (the packaged model's when none was given)."""
        return self._model_path or packaged_model_path()

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @property
    def is_packaged(self) -> bool:
        return self._model_path is None or same_folder(self._model_path, packaged_model_path())

    @cached_property
    def identity(self) -> str:
        """A human name: ``all-MiniLM-L6-v2`` or ``tuned:<folder name>``."""
        return encoder_identity(self._model_path)

    @cached_property
    def fingerprint(self) -> str:
        """Equal for encoders whose vectors are comparable; computed without loading the model."""
        return encoder_fingerprint(self._model_path, self._max_seq_length)

    @property
    def stamp(self) -> EncoderStamp:
        """What an index written by this encoder records."""
        return EncoderStamp(
            identity=self.identity,
            fingerprint=self.fingerprint,
            max_seq_length=self._max_seq_length,
            path=None if self.is_packaged else str(self.model_path.resolve()),
            documents=self.document_backend,
        )

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
        if self.document_backend != "torch":
            return self.onnx_document_encoder.encode_many(
                texts, self._batch_size, progress=progress
            )
        return self._encode_torch(texts, progress=progress)

    def _encode_torch(self, texts: Sequence[str], *, progress: bool = False) -> Vectors:
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
            self.cache_misses += 1
        if self.query_backend == "torch":
            # Not `encode_texts`: the document backend is for products only.
            vector: Vectors = self._encode_torch([key])[0]
        else:
            vector = self.onnx_query_encoder.encode([key])[0]
        vector.setflags(write=False)
        if self._cache_size:
            with self._cache_lock:
                self._cache[key] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vector

    def warm_queries(self, texts: Sequence[str]) -> None:
        """Encode the queries not yet cached in batches and cache them, so that a later
        `encode_query` of each is a lookup (bulk work: mining, distillation). At most the
        cache's size of them stays cached."""
        keys = list(dict.fromkeys(" ".join(text.split()) for text in texts))
        with self._cache_lock:
            missing = [key for key in keys if key not in self._cache]
        if not missing or not self._cache_size or self.query_backend != "torch":
            return
        vectors = self._encode_torch(missing)
        with self._cache_lock:
            for key, vector in zip(missing, vectors, strict=True):
                vector.setflags(write=False)
                self._cache[key] = vector
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def load_query_model(self) -> None:
        """Load what `encode_query` runs unless it is loaded (the torch model, or the ONNX
        export and its session), so that loading can be timed apart from encoding."""
        if self.query_backend == "torch":
            self.model  # noqa: B018  (the property loads it)
        else:
            self.onnx_query_encoder.load()

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    @property
    def onnx_query_encoder(self) -> OnnxQueryEncoder:
        """The ONNX Runtime query encoder, exported (once per fingerprint) on first use."""
        if self._onnx is None:
            with self._onnx_lock:
                if self._onnx is None:
                    precision: Precision = "fp32" if self.query_backend == "onnx" else "int8"
                    # One short query is as fast on one thread as on two, and leaves the other
                    # cores free.
                    self._onnx = self._open_onnx(precision, threads=1)
        return self._onnx

    @property
    def onnx_document_encoder(self) -> OnnxQueryEncoder:
        """The same export (INT8, or fp32 for ``onnx``) on every core, for batches of products."""
        if self._onnx_documents is None:
            with self._onnx_lock:
                if self._onnx_documents is None:
                    precision: Precision = "fp32" if self.document_backend == "onnx" else "int8"
                    self._onnx_documents = self._open_onnx(precision, threads=None)
        return self._onnx_documents

    def _open_onnx(self, precision: Precision, *, threads: int | None) -> OnnxQueryEncoder:
        cache_dir = self._onnx_cache_dir
        if cache_dir is None:
            cache_dir = IndexerSettings().onnx_cache_dir
        folder = ensure_query_export(
            cache_dir, self.fingerprint, lambda: self.model, source=self.identity
        )
        return OnnxQueryEncoder(folder, precision=precision, threads=threads)
