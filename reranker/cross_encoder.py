"""An in-process cross-encoder loaded from a sentence-transformers checkpoint folder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.encoder import prepare_offline_loading
from reranker.errors import CheckpointError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)


class InProcessCrossEncoder:
    """Scores pairs with a `sentence_transformers.CrossEncoder` in this process.

    The checkpoint is loaded on first use, from a local folder only.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        batch_size: int = 32,
        max_length: int = 256,
        device: str | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self._batch_size = batch_size
        self._max_length = max_length
        self._device = device
        self._model: CrossEncoder | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"cross-encoder:{self.checkpoint.name}"

    @property
    def model(self) -> CrossEncoder:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> CrossEncoder:
        if not (self.checkpoint / "config.json").is_file():
            raise CheckpointError(
                f"no cross-encoder checkpoint at {self.checkpoint} (config.json missing)"
            )
        prepare_offline_loading()
        from sentence_transformers import CrossEncoder

        logger.info("loading cross-encoder from %s", self.checkpoint)
        try:
            model: CrossEncoder = CrossEncoder(
                str(self.checkpoint),
                max_length=self._max_length,
                device=self._device or "cpu",
                local_files_only=True,
            )
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load cross-encoder {self.checkpoint}: {e}") from e
        return model

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        scores = self.model.predict(
            [(query, text) for text in texts],
            batch_size=self._batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(value) for value in scores]

    def close(self) -> None:
        self._model = None
