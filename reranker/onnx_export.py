"""Export a tuned cross-encoder to ONNX (fp32, and INT8 with dynamic quantization).

The checkpoint is anything `InProcessCrossEncoder` loads (a LoRA artifact merged onto the
packaged weights, or a full checkpoint), loaded by the same code. The folder written:

- ``model.onnx``: the fp32 graph (inputs ``input_ids``, ``attention_mask``,
  ``token_type_ids``, batch and sequence dynamic; output ``logits``, batch x 1);
- ``model.int8.onnx``: the same with QInt8 weights (unless ``int8=False``);
- the tokenizer files, the source's ``model_card.json`` when it has one, and
  ``onnx_card.json`` (source, max_length, opset, activation, versions, file sizes).

It is written under a temporary name and renamed when complete. `OnnxCrossEncoder` serves it.

>>> export_onnx(Path("artifacts/ce-lora"), Path("artifacts/ce-onnx"))  # doctest: +SKIP
PosixPath('artifacts/ce-onnx')
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from indexer.errors import IndexerError
from indexer.onnx_files import INT8_MODEL, ONNX_MODEL, staged_folder, write_card
from indexer.onnx_graph import export_transformer, quantize_int8
from reranker.cross_encoder import MODEL_CARD, InProcessCrossEncoder, inner_model
from reranker.errors import CheckpointError
from reranker.triton_export import check_checkpoint

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

#: What the cross-encoder graph outputs: one relevance logit per pair.
LOGITS = "logits"


def export_onnx(
    checkpoint: Path, out: Path, *, int8: bool = True, max_length: int | None = None
) -> Path:
    """Write ``checkpoint`` as an ONNX folder at ``out`` (which must not exist); returns ``out``.

    ``max_length`` defaults to the checkpoint's model card, else 256 (as in-process).
    A bi-encoder or any other non-cross-encoder folder is refused with a `CheckpointError`.
    """
    mode = check_checkpoint(checkpoint)
    if out.exists():
        raise CheckpointError(f"{out} already exists; an export never overwrites one")
    model = InProcessCrossEncoder(checkpoint, max_length=max_length, device="cpu").model
    activation = _activation(model, checkpoint)
    tokenizer, length = model.tokenizer, model.max_seq_length
    if tokenizer is None or length is None:
        raise CheckpointError(f"cross-encoder {checkpoint} has no tokenizer or no max_length")
    logger.info("exporting cross-encoder %s to ONNX at %s", checkpoint, out)
    try:
        with staged_folder(out) as staging:
            fused = export_transformer(inner_model(model), staging / ONNX_MODEL, output=LOGITS)
            quantization = (
                quantize_int8(staging / ONNX_MODEL, staging / INT8_MODEL) if int8 else None
            )
            tokenizer.save_pretrained(str(staging))
            if (checkpoint / MODEL_CARD).is_file():
                shutil.copy2(checkpoint / MODEL_CARD, staging / MODEL_CARD)
            write_card(
                staging, kind="cross-encoder", source=str(checkpoint.resolve()),
                source_mode=mode, max_length=int(length), output=LOGITS,
                activation=activation, fused_operators=fused, int8=quantization,
            )
    except IndexerError as e:
        raise CheckpointError(f"cannot export {checkpoint} to ONNX: {e}") from e
    return out


def _activation(model: CrossEncoder, checkpoint: Path) -> Literal["sigmoid", "identity"]:
    """The score function applied to the logit, which `OnnxCrossEncoder` reapplies."""
    import torch

    function = model.activation_fn
    if isinstance(function, torch.nn.Sigmoid):
        return "sigmoid"
    if isinstance(function, torch.nn.Identity):
        return "identity"
    raise CheckpointError(
        f"cross-encoder {checkpoint} scores with {type(function).__name__}; the ONNX reranker "
        "reproduces Sigmoid and Identity only"
    )
