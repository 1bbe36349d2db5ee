"""The bi-encoder on ONNX Runtime: its export (`export_bi_encoder`) and `OnnxQueryEncoder`.

The export writes the shared folder layout (`indexer.onnx_files`) with the shared export and
quantization (`indexer.onnx_graph`); mean pooling and L2 normalisation stay in numpy
(`indexer.vectors`).

Queries go through ONNX when ``SHOPRANK_QUERY_BACKEND`` asks; documents keep the torch encoder
unless ``SHOPRANK_DOCUMENT_BACKEND`` is ``onnx-int8`` or ``onnx`` (fp32; the same vectors as
torch), both through `OnnxQueryEncoder.encode_many`. Either way the encoder fingerprint is the
same: INT8 vectors are an approximation of the same space (cosine to torch about 0.99), and an
index records which backend wrote its products (`indexer.encoder_stamp.EncoderStamp`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.batching import length_batches
from indexer.errors import IndexerError
from indexer.model_loading import hf_transformer
from indexer.onnx_files import (
    EXPORT_FORMAT,
    INT8_MODEL,
    ONNX_CARD,
    ONNX_MODEL,
    OnnxCard,
    Precision,
    read_onnx_card,
    staged_folder,
    write_card,
)
from indexer.onnx_graph import export_transformer, quantize_int8
from indexer.onnx_session import load_tokenizer, open_session, ort_errors, padded_inputs
from indexer.vectors import Vectors, mean_pool_normalize

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from sentence_transformers import SentenceTransformer
    from tokenizers import Encoding, Tokenizer

logger = logging.getLogger(__name__)


def export_bi_encoder(
    model: SentenceTransformer,
    out: Path,
    *,
    source: str,
    fingerprint: str | None = None,
    int8: bool = True,
) -> OnnxCard:
    """Export a loaded bi-encoder's transformer (mean pooling and L2 norm stay in numpy).

    Refuses models whose modules are not transformer -> mean pooling [-> normalize], the only
    pipeline `OnnxQueryEncoder` reproduces.
    """
    _check_pipeline(model)
    transformer = hf_transformer(model)
    tokenizer = transformer.tokenizer
    if tokenizer is None or model.max_seq_length is None:
        raise IndexerError("the bi-encoder has no tokenizer or no max_seq_length to export")
    with staged_folder(out) as staging:
        fused = export_transformer(transformer.model, staging / ONNX_MODEL,
                                   output="last_hidden_state")
        quantization = quantize_int8(staging / ONNX_MODEL, staging / INT8_MODEL) if int8 else None
        tokenizer.save_pretrained(str(staging))
        card = write_card(
            staging, kind="bi-encoder", source=source, source_mode="sentence-transformers",
            max_length=int(model.max_seq_length), output="last_hidden_state", pooling="mean",
            fingerprint=fingerprint, fused_operators=fused, int8=quantization,
        )
    return card


def _check_pipeline(model: SentenceTransformer) -> None:
    names = [type(module).__name__ for module in model]
    pooling = model[1] if len(names) > 1 else None
    mode = getattr(pooling, "pooling_mode", None) if pooling is not None else None
    if names[:2] != ["Transformer", "Pooling"] or names[2:] not in ([], ["Normalize"]) or (
        mode != "mean"
    ):
        raise IndexerError(
            f"the ONNX query encoder reproduces transformer -> mean pooling [-> normalize]; "
            f"this bi-encoder is {' -> '.join(names)} (pooling {mode!r})"
        )


class OnnxQueryEncoder:
    """Encodes texts with an exported bi-encoder on ONNX Runtime, as sentence-transformers does:
    mean of the token embeddings under the attention mask, then L2 normalisation.

    The session is created on first use.
    """

    def __init__(
        self, folder: Path, *, precision: Precision = "int8", threads: int | None = None
    ) -> None:
        self.folder = folder
        self.precision: Precision = precision
        self._threads = threads
        self._state: tuple[InferenceSession, Tokenizer] | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open the session and the tokenizer now rather than on the first encode."""
        self._loaded()

    def _loaded(self) -> tuple[InferenceSession, Tokenizer]:
        if self._state is None:
            with self._lock:
                if self._state is None:
                    card = read_onnx_card(self.folder)
                    if card.kind != "bi-encoder":
                        raise IndexerError(f"{self.folder} holds a {card.kind}, not a bi-encoder")
                    path = self.folder / card.model_file(self.precision)
                    if not path.is_file():
                        raise IndexerError(
                            f"{self.folder} has no {path.name}: it was exported without it"
                        )
                    self._state = (open_session(path, threads=self._threads),
                                   load_tokenizer(self.folder, card.max_length))
        return self._state

    def encode(self, texts: Sequence[str]) -> Vectors:
        """An (n, dim) float32 array of unit vectors, one per text, in one batch."""
        session, tokenizer = self._loaded()
        return self._run(session, tokenizer.encode_batch(list(texts)))

    def encode_many(
        self, texts: Sequence[str], batch_size: int, *, progress: bool = False
    ) -> Vectors:
        """Unit vectors for many texts, in input order.

        The texts are tokenized once and cut into batches of similar token counts, longest
        first, each padded only to its own longest text.
        """
        session, tokenizer = self._loaded()
        encodings = tokenizer.encode_batch(list(texts))
        batches = length_batches([len(e.ids) for e in encodings], batch_size)
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        vectors: Vectors | None = None
        for batch in tqdm(batches, desc="Batches", disable=not progress):
            rows = self._run(session, [encodings[i] for i in batch])
            if vectors is None:
                vectors = np.empty((len(encodings), rows.shape[1]), dtype=np.float32)
            vectors[batch] = rows
        if vectors is None:
            raise IndexerError("encode_many needs at least one text")
        return vectors

    def _run(self, session: InferenceSession, encodings: Sequence[Encoding]) -> Vectors:
        inputs = padded_inputs([e.ids for e in encodings], [e.type_ids for e in encodings])
        try:
            (tokens,) = session.run(["last_hidden_state"], inputs)
        except ort_errors() as e:
            raise IndexerError(f"ONNX bi-encoder {self.folder} failed: {e}") from e
        return mean_pool_normalize(tokens, inputs["attention_mask"])

    def close(self) -> None:
        self._state = None


def query_export_folder(cache_dir: Path, fingerprint: str) -> Path:
    """Where the query-side export of the encoder with ``fingerprint`` is cached."""
    return cache_dir / f"bi-encoder-{fingerprint}-f{EXPORT_FORMAT}"


def ensure_query_export(
    cache_dir: Path, fingerprint: str, model: Callable[[], SentenceTransformer], *, source: str
) -> Path:
    """The cached export for ``fingerprint``; if there is none, ``model()`` is exported first
    (so a cached export never loads torch).

    Two processes racing both export; the first rename wins and the other keeps its files out.
    """
    folder = query_export_folder(cache_dir, fingerprint)
    if (folder / ONNX_CARD).is_file():
        return folder
    logger.info("exporting the query encoder to ONNX under %s (once per encoder)", folder)
    try:
        export_bi_encoder(model(), folder, source=source, fingerprint=fingerprint)
    except IndexerError:
        if (folder / ONNX_CARD).is_file():  # another process finished first
            return folder
        raise
    return folder
