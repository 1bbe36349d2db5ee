"""Write a tuned cross-encoder into a Triton model repository as a new model version.

A version folder is ``<repository>/shoprank_reranker/<N>/`` holding the model code (a copy of
the repository's template ``model.py``) and ``checkpoint/`` (the tuned artifact as tuning wrote
it: a LoRA adapter of about 1 MB, or a full checkpoint). The folder is written under a
temporary name and renamed when complete, so a server that loads meanwhile never sees half a
version. Triton's model control then loads it without a restart (`TritonReranker.load`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reranker.cross_encoder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_model_card
from reranker.errors import CheckpointError
from reranker.triton_contract import CHECKPOINT_DIR, MODEL_FILE, MODEL_NAME


@dataclass(frozen=True)
class ExportedVersion:
    folder: Path
    version: int
    mode: str  # "lora" or "full"
    size_bytes: int


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable {path}: {e}") from e
    return value if isinstance(value, dict) else {}


def check_checkpoint(checkpoint: Path) -> str:
    """``"lora"`` or ``"full"`` for a cross-encoder (one relevance logit); refuses anything
    else, e.g. a bi-encoder artifact from `tune encoder`, naming what is wrong."""
    if (checkpoint / ADAPTER_CONFIG).is_file():
        if not (checkpoint / ADAPTER_WEIGHTS).is_file():
            raise CheckpointError(f"LoRA artifact {checkpoint} lacks {ADAPTER_WEIGHTS}")
        if read_model_card(checkpoint) is None:
            raise CheckpointError(
                f"LoRA artifact {checkpoint} has no model card: it was not written by "
                "'shoprank tune reranker'"
            )
        task = _json(checkpoint / ADAPTER_CONFIG).get("task_type")
        if task != "SEQ_CLS":
            raise CheckpointError(
                f"{checkpoint} is a LoRA artifact for {task!r}, not a cross-encoder (SEQ_CLS): "
                "export the output of 'shoprank tune reranker'"
            )
        return "lora"
    if (checkpoint / "config.json").is_file():
        config = _json(checkpoint / "config.json")
        labels = len(config.get("id2label") or {}) or config.get("num_labels", 0)
        architectures = config.get("architectures") or []
        if labels != 1 or not any("SequenceClassification" in a for a in architectures):
            raise CheckpointError(
                f"{checkpoint} is not a one-label cross-encoder (architectures {architectures}, "
                f"{labels} labels)"
            )
        return "full"
    raise CheckpointError(
        f"--checkpoint {checkpoint}: no config.json (full checkpoint) and no {ADAPTER_CONFIG} "
        "(LoRA artifact) there"
    )


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def export_reranker(
    checkpoint: Path, repository: Path, *, version: int | None = None
) -> ExportedVersion:
    """Copy ``checkpoint`` into ``repository`` as version ``version`` (default: newest + 1)."""
    mode = check_checkpoint(checkpoint)
    model_dir = repository / MODEL_NAME
    template = model_dir / MODEL_FILE
    if not template.is_file():
        raise CheckpointError(
            f"{repository} is not a shoprank model repository: {template} is missing"
        )
    existing = versions(model_dir)
    number = version if version is not None else (existing[-1] + 1 if existing else 1)
    if number < 1:
        raise CheckpointError(f"--version must be 1 or more (got {number})")
    target = model_dir / str(number)
    if target.exists():
        raise CheckpointError(
            f"version {number} already exists at {target}; choose another --version "
            "(a served version is never overwritten)"
        )
    staging = model_dir / f".{number}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        shutil.copy2(template, staging / MODEL_FILE)
        shutil.copytree(checkpoint, staging / CHECKPOINT_DIR)
        staging.rename(target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"cannot write version {number} to {model_dir}: {e}") from e
    size = sum(p.stat().st_size for p in (target / CHECKPOINT_DIR).rglob("*") if p.is_file())
    return ExportedVersion(target, number, mode, size)
