"""The layout of an exported ONNX folder, shared by the bi-encoder and the cross-encoder.

An exported folder holds ``model.onnx`` (fp32), optionally ``model.int8.onnx`` (dynamic INT8
quantization of its weights), the tokenizer files and an ``onnx_card.json`` (`OnnxCard`).
`staged_folder` writes one so that readers never see it half-written. The bi-encoder's export
is `indexer.onnx_encoder`, the cross-encoder's `reranker.onnx_export`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.errors import IndexerError

#: The fp32 graph, the INT8 graph and the card, in every exported folder.
ONNX_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
ONNX_CARD = "onnx_card.json"
#: The fast tokenizer file that sessions read (written by ``save_pretrained``).
TOKENIZER_FILE = "tokenizer.json"
#: What every exported graph takes (int64, shape batch x sequence).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
#: Bumped whenever the export changes what its files compute; part of the query cache's key.
EXPORT_FORMAT = 1

Precision = Literal["int8", "fp32"]


class OnnxCard(BaseModel):
    """What ``onnx_card.json`` records about an exported folder. Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["cross-encoder", "bi-encoder"]
    source: str
    source_mode: str
    max_length: int
    opset: int
    output: str
    #: Cross-encoders: what turns a logit into the score (sentence-transformers' activation).
    activation: Literal["sigmoid", "identity"] | None = None
    #: Bi-encoders: how token embeddings become the sentence embedding (then L2-normalised).
    pooling: Literal["mean"] | None = None
    fingerprint: str | None = None
    fused_operators: dict[str, int]
    int8: dict[str, Any] | None
    files: dict[str, int]
    versions: dict[str, str]
    export_format: int = EXPORT_FORMAT
    created_at: str

    def model_file(self, precision: Precision) -> str:
        return INT8_MODEL if precision == "int8" else ONNX_MODEL


def read_onnx_card(folder: Path) -> OnnxCard:
    """The folder's card; a clear error when the folder is not an exported ONNX model."""
    path = folder / ONNX_CARD
    if not path.is_file():
        raise IndexerError(f"{folder} is not an ONNX export: {ONNX_CARD} is missing")
    try:
        return OnnxCard.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as e:
        raise IndexerError(f"unreadable {path}: {e}") from e


def versions() -> dict[str, str]:
    """Versions of the libraries an export depends on (from package metadata, nothing imported)."""
    found = {}
    for package in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def write_card(folder: Path, **fields: Any) -> OnnxCard:
    """Write ``onnx_card.json`` (sizes of the files already in ``folder`` included)."""
    card = OnnxCard(
        **fields, opset=OPSET, files=file_sizes(folder), versions=versions(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (folder / ONNX_CARD).write_text(
        json.dumps(card.model_dump(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return card


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block succeeds.

    Readers never see a half-written export; a failed one leaves nothing behind. ``out`` must
    not exist yet (an export never overwrites one).
    """
    if out.exists():
        raise IndexerError(f"{out} already exists; an export never overwrites one")
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir(parents=True)
        yield staging
        staging.rename(out)
    except OSError as e:
        raise IndexerError(f"cannot write {out}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
