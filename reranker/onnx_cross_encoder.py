"""A cross-encoder exported by `reranker.onnx_export`, scored with ONNX Runtime on CPU.

Scores equal the in-process reranker's (same tokenizer, truncation and activation): within
1e-4 in fp32, within about 0.02 in INT8. Torch is not needed at serving time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.batching import length_batches
from indexer.errors import IndexerError
from indexer.onnx_files import OnnxCard, Precision, read_onnx_card
from indexer.onnx_session import load_tokenizer, open_session, ort_errors, padded_inputs
from reranker.errors import CheckpointError, RerankerError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer


@dataclass(frozen=True)
class _Loaded:
    card: OnnxCard
    session: InferenceSession
    tokenizer: Tokenizer


class OnnxCrossEncoder:
    """Scores (query, product text) pairs with an exported cross-encoder on ONNX Runtime.

    Pairs are tokenized once, sorted by token length and cut into batches of ``batch_size``;
    each batch is padded only to its own longest pair. ``max_length`` defaults to the export's;
    ``threads`` to ONNX Runtime's choice. Nothing loads before the first `score`.

    >>> reranker = OnnxCrossEncoder(Path("artifacts/ce-onnx"))  # doctest: +SKIP
    >>> reranker.score("usb c charger", ["65W USB-C charger", "HDMI cable"])  # doctest: +SKIP
    [0.93, 0.04]
    """

    def __init__(
        self,
        folder: Path,
        *,
        precision: Precision = "int8",
        batch_size: int = 32,
        max_length: int | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more (got {batch_size})")
        self.folder = folder
        self.precision: Precision = precision
        self._batch_size = batch_size
        self._max_length = max_length
        self._threads = threads
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"onnx-{self.precision}:{self.folder.name}"

    #: Runs in this process: there is no remote server to stop calling.
    circuit_open = False

    @property
    def max_length(self) -> int:
        """Tokens of each pair the model reads: the one given, else the export's."""
        if self._max_length is not None:
            return self._max_length
        try:
            return read_onnx_card(self.folder).max_length
        except IndexerError as e:
            raise CheckpointError(f"cannot load ONNX cross-encoder {self.folder}: {e}") from e

    def _load(self) -> _Loaded:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._open()
        return self._loaded

    def _open(self) -> _Loaded:
        try:
            card = read_onnx_card(self.folder)
            if card.kind != "cross-encoder":
                raise CheckpointError(
                    f"{self.folder} holds an ONNX {card.kind}, not a cross-encoder"
                )
            path = self.folder / card.model_file(self.precision)
            if not path.is_file():
                raise CheckpointError(
                    f"{self.folder} has no {path.name}: export it with INT8 "
                    "(the default) or use precision 'fp32'"
                )
            session = open_session(path, threads=self._threads)
            tokenizer = load_tokenizer(self.folder, self.max_length)
        except IndexerError as e:
            raise CheckpointError(f"cannot load ONNX cross-encoder {self.folder}: {e}") from e
        return _Loaded(card, session, tokenizer)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in input order (sigmoid of the logit, as in-process)."""
        if not texts:
            return []
        loaded = self._load()
        encodings = loaded.tokenizer.encode_batch([(query, text) for text in texts])
        logits = np.empty(len(texts), dtype=np.float32)
        for batch in length_batches([len(e.ids) for e in encodings], self._batch_size):
            inputs = padded_inputs(
                [encodings[i].ids for i in batch], [encodings[i].type_ids for i in batch]
            )
            try:
                (output,) = loaded.session.run([loaded.card.output], inputs)
            except ort_errors() as e:
                raise RerankerError(f"ONNX cross-encoder {self.folder} failed: {e}") from e
            logits[batch] = output[:, 0]
        if loaded.card.activation == "sigmoid":
            return [float(value) for value in 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))]
        return [float(value) for value in logits]

    def close(self) -> None:
        self._loaded = None
