"""Loading the bi-encoder's sentence-transformers model: offline, with a LoRA adapter merged.

Nothing here reaches a model hub (`prepare_offline_loading`); the cross-encoder's loaders in
`reranker` use the same guard. `hf_transformer` is the model's transformer module, which both
the LoRA merge and the ONNX export (`indexer.onnx_encoder`) work on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

from indexer.errors import IndexerError
from indexer.model_files import (
    ADAPTER_CONFIG,
    PACKAGED_BASE,
    is_adapter_artifact,
    packaged_model_path,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

logger = logging.getLogger(__name__)


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
