"""An in-process cross-encoder loaded from a local folder.

A folder is one of:

- a full sentence-transformers cross-encoder checkpoint (``config.json``), or
- a LoRA adapter artifact written by ``shoprank tune reranker`` (``adapter_config.json`` +
  ``model_card.json``): the packaged all-MiniLM-L6-v2 weights plus the adapter, merged on load.

Tuned artifacts carry a `TunedModelCard`; its ``max_length`` is the one training used.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

# Re-exported: the adapter and card file names, and the base a LoRA artifact names.
from indexer.model_files import ADAPTER_CONFIG as ADAPTER_CONFIG
from indexer.model_files import MODEL_CARD as MODEL_CARD
from indexer.model_files import PACKAGED_BASE as PACKAGED_BASE
from indexer.model_files import packaged_model_path
from indexer.model_loading import prepare_offline_loading
from reranker.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

#: peft's adapter weights file, beside `ADAPTER_CONFIG` in a LoRA artifact.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Used when neither the caller nor a model card says otherwise.
DEFAULT_MAX_LENGTH = 256


class TunedModelCard(BaseModel):
    """What ``model_card.json`` records about a tuned cross-encoder (written by tuning).

    Unknown keys are ignored, so a reader keeps working when the card grows.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    base_model: str
    mode: Literal["lora", "full"]
    max_length: int
    config: dict[str, Any]
    data: dict[str, Any]
    training_seconds: float
    validation_metric: str
    validation_before: float
    validation_best: float
    validation_retrieval: float
    best_step: int | None
    artifact_bytes: int
    versions: dict[str, str]
    created_at: str


def read_model_card(folder: Path) -> TunedModelCard | None:
    """The folder's `TunedModelCard`, or None when it has no ``model_card.json``."""
    path = folder / MODEL_CARD
    if not path.is_file():
        return None
    try:
        return TunedModelCard.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        raise CheckpointError(f"unreadable model card {path}: {e}") from e


def portable_adapter_config(folder: Path) -> None:
    """Replace the absolute base-model path peft writes with `PACKAGED_BASE`."""
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = PACKAGED_BASE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class InProcessCrossEncoder:
    """Scores pairs with a `sentence_transformers.CrossEncoder` in this process.

    The checkpoint (full or LoRA, see the module docstring) is loaded on first use, from local
    files only. ``max_length`` defaults to the model card's, else to 256.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
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

    #: Runs in this process: there is no remote server to stop calling.
    circuit_open = False

    @property
    def max_length(self) -> int:
        """Tokens of each pair the model reads: the one given, else the card's, else 256."""
        if self._max_length is not None:
            return self._max_length
        card = read_model_card(self.checkpoint)
        return card.max_length if card else DEFAULT_MAX_LENGTH

    @property
    def model(self) -> CrossEncoder:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> CrossEncoder:
        is_adapter = (self.checkpoint / ADAPTER_CONFIG).is_file()
        if not is_adapter and not (self.checkpoint / "config.json").is_file():
            raise CheckpointError(
                f"no cross-encoder checkpoint at {self.checkpoint} (config.json missing, "
                f"and no {ADAPTER_CONFIG} of a LoRA artifact either)"
            )
        card = read_model_card(self.checkpoint)
        if is_adapter and card is None:
            raise CheckpointError(
                f"LoRA artifact {self.checkpoint} has no {MODEL_CARD}: "
                "it was not written by 'shoprank tune reranker'"
            )
        max_length = self.max_length
        prepare_offline_loading()
        logger.info("loading cross-encoder from %s", self.checkpoint)
        try:
            if is_adapter:
                return _load_lora(self.checkpoint, max_length, self._device or "cpu")
            from sentence_transformers import CrossEncoder

            model: CrossEncoder = CrossEncoder(
                str(self.checkpoint),
                max_length=max_length,
                device=self._device or "cpu",
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError, RuntimeError) as e:
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


def _load_lora(folder: Path, max_length: int, device: str) -> CrossEncoder:
    """The packaged weights with a one-logit head, then the adapter (and its head), merged."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise CheckpointError(
            f"{folder} is a LoRA artifact; loading it needs peft: pip install 'shoprank[tune]'"
        ) from e

    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base != PACKAGED_BASE:
        raise CheckpointError(
            f"LoRA artifact {folder} applies to {base!r}; only {PACKAGED_BASE!r} is supported"
        )
    model = packaged_cross_encoder(max_length=max_length, device=device)
    adapted = PeftModel.from_pretrained(inner_model(model), str(folder))
    # Merged, inference costs what the base model costs.
    model[0].model = adapted.merge_and_unload()
    return model


def packaged_cross_encoder(*, max_length: int, device: str | None = None) -> CrossEncoder:
    """The packaged all-MiniLM-L6-v2 weights as a cross-encoder with a new one-logit head.

    The libraries warn that a bi-encoder is converted and that the head is missing from the
    checkpoint; here both are by design (tuning trains the head, a LoRA artifact brings its
    trained copy), so those two warnings are held back.
    """
    prepare_offline_loading()
    from sentence_transformers import CrossEncoder

    with _expected_warnings_dropped():
        model: CrossEncoder = CrossEncoder(
            str(packaged_model_path()),
            num_labels=1,
            max_length=max_length,
            device=device,
            local_files_only=True,
        )
    return model


_EXPECTED_WARNINGS = {
    "sentence_transformers.base.model": "model to CrossEncoder",
    "transformers.modeling_utils": "LOAD REPORT",
}


def _is_unexpected(record: logging.LogRecord) -> bool:
    marker = _EXPECTED_WARNINGS.get(record.name)
    return marker is None or marker not in str(record.msg)


@contextmanager
def _expected_warnings_dropped() -> Iterator[None]:
    # A filter, not a higher level: transformers runs extra checks (and warns) when its
    # modeling logger is set to WARNING or above.
    loggers = [logging.getLogger(name) for name in _EXPECTED_WARNINGS]
    for log in loggers:
        log.addFilter(_is_unexpected)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(_is_unexpected)


def inner_model(model: CrossEncoder) -> torch.nn.Module:
    """The transformers model inside a sentence-transformers cross-encoder."""
    import torch

    inner = model[0].model
    if not isinstance(inner, torch.nn.Module):
        raise CheckpointError(f"unexpected cross-encoder layout: {type(inner).__name__}")
    return inner
