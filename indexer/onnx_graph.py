"""Export a BERT-family transformer to ONNX, fused for ONNX Runtime, and quantize it to INT8.

How the graph is made: the model is traced with eager attention (TorchScript exporter,
dynamic batch and sequence axes), ONNX Runtime's transformer optimizer fuses embeddings,
attention, layer norms and GELU, and the quantizer turns the fused graph's weights into
per-channel INT8. Fused, the INT8 graph runs quantized attention and embeddings (QAttention,
QEmbedLayerNormalization) and measured faster than the quantized unfused trace; the SDPA trace
does not fuse. In fp32 ONNX Runtime's load-time fusion alone was as fast.

The bi-encoder (`indexer.onnx_encoder`) and the cross-encoder (`reranker.onnx_export`) are
exported with these functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from indexer.errors import IndexerError
from indexer.onnx_files import INPUT_NAMES, OPSET
from indexer.onnx_session import ort_errors, require_onnx

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Options:
    """`onnxruntime.quantization.quantize_dynamic` settings (QInt8 weights, dynamic activations).

    Measured on the shared ESCI data (AVX2 without VNNI): per-channel scales halved the
    cross-encoder's largest logit error against per-tensor ones (0.011 vs 0.023) and lifted the
    query encoder's lowest cosine to torch from 0.924 to 0.986, at the same speed;
    ``reduce_range`` (7-bit weights, meant against VPMADDUBSW saturation) was no faster and
    lowered that cosine to 0.977, so it stays off. bench/onnx_quality.py measures the result.
    """

    per_channel: bool = True
    reduce_range: bool = False


def export_transformer(model: torch.nn.Module, path: Path, *, output: str) -> dict[str, int]:
    """Export a BERT-family Hugging Face model to ``path`` (fp32, fused for ONNX Runtime).

    ``output`` names the model output to keep (``logits``, ``last_hidden_state``); the graph
    takes `INPUT_NAMES` (int64, shape batch x sequence, both dynamic). Returns the counts of
    fused operators.
    """
    require_onnx("onnxruntime", "onnx")
    from onnxruntime.transformers.optimizer import optimize_model

    config: Any = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "bert":
        raise IndexerError(
            f"ONNX export supports BERT-family models (all-MiniLM-L6-v2 and its tunes), not "
            f"{getattr(config, 'model_type', type(model).__name__)!r}"
        )
    traced = path.with_name(f".{path.name}.traced")
    failures: tuple[type[Exception], ...] = (RuntimeError, ValueError, OSError, *ort_errors())
    try:
        with _eager_attention(model):
            _trace(_select_output(model, output), traced, output, vocab=config.vocab_size)
        optimized = optimize_model(
            str(traced), model_type="bert", num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
        )
        fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(path))
    except failures as e:
        raise IndexerError(f"ONNX export to {path} failed: {e}") from e
    finally:
        traced.unlink(missing_ok=True)
    logger.info("exported %s (fused operators: %s)", path, fused)
    return fused


def _trace(module: torch.nn.Module, path: Path, output: str, *, vocab: int) -> None:
    import torch

    # The second row is padded, so the trace keeps the attention-mask path (an all-ones mask
    # lets transformers drop the mask, and the trace would bake that in).
    ids = torch.arange(1000, 1000 + 16, dtype=torch.int64).remainder(vocab).reshape(2, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    with torch.inference_mode():
        torch.onnx.export(
            module, (ids, mask, types), str(path), input_names=list(INPUT_NAMES),
            output_names=[output], dynamic_axes={**axes, output: {0: "batch"}},
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def _select_output(model: torch.nn.Module, output: str) -> torch.nn.Module:
    """``model`` taking positional inputs (`INPUT_NAMES`) and returning only ``output``."""
    import torch

    class SelectOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            result = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids)
            value: torch.Tensor = getattr(result, output)
            return value

    return SelectOutput().eval()


@contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Trace with eager attention: ONNX Runtime's optimizer fuses that pattern into one
    Attention operator (the SDPA trace stays unfused); the model is restored afterwards."""
    config: Any = model.config
    before = config._attn_implementation
    model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_attn_implementation(before)  # type: ignore[operator]


def quantize_int8(
    source: Path, target: Path, options: Int8Options | None = None
) -> dict[str, Any]:
    """Write ``target``: ``source`` with dynamically quantized QInt8 weights; returns the
    settings used."""
    require_onnx("onnxruntime", "onnx")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    chosen = options or Int8Options()
    failures: tuple[type[Exception], ...] = (RuntimeError, ValueError, OSError, *ort_errors())
    try:
        quantize_dynamic(
            source, target, weight_type=QuantType.QInt8, per_channel=chosen.per_channel,
            reduce_range=chosen.reduce_range,
            # The fused operators are outside ONNX's shape inference; their tensors are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except failures as e:
        raise IndexerError(f"INT8 quantization of {source} failed: {e}") from e
    return {"weight_type": "QInt8", "activations": "dynamic uint8",
            "per_channel": chosen.per_channel, "reduce_range": chosen.reduce_range}
