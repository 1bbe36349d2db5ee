"""BERT-family transformers on ONNX Runtime: export, INT8 quantization, sessions; and the
bi-encoder's query side on ONNX Runtime (`OnnxQueryEncoder`).

An exported folder holds ``model.onnx`` (fp32), optionally ``model.int8.onnx`` (dynamic INT8
quantization of its weights), the tokenizer files and an ``onnx_card.json`` (`OnnxCard`).
The cross-encoder export (`reranker.onnx_export`) writes the same layout with these helpers.

How the graph is made: the model is traced with eager attention (TorchScript exporter,
dynamic batch and sequence axes), ONNX Runtime's transformer optimizer fuses embeddings,
attention, layer norms and GELU, and the quantizer turns the fused graph's weights into
per-channel INT8. Fused, the INT8 graph runs quantized attention and embeddings (QAttention,
QEmbedLayerNormalization) and measured faster than the quantized unfused trace; the SDPA trace
does not fuse. In fp32 ONNX Runtime's load-time fusion alone was as fast.

Queries go through ONNX when ``SHOPRANK_QUERY_BACKEND`` asks; documents keep the torch encoder
unless ``SHOPRANK_DOCUMENT_BACKEND`` is ``onnx-int8`` or ``onnx`` (fp32; the same vectors as
torch), both through `OnnxQueryEncoder.encode_many`. Either way the encoder fingerprint is the
same: INT8 vectors are an approximation of the same space (cosine to torch about 0.99), and an
index records which backend wrote its products (`EncoderStamp`).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.batching import length_batches
from indexer.encoder import Vectors, hf_transformer
from indexer.errors import IndexerError

if TYPE_CHECKING:
    import torch
    from onnxruntime import InferenceSession
    from sentence_transformers import SentenceTransformer
    from tokenizers import Encoding, Tokenizer

logger = logging.getLogger(__name__)

#: The fp32 graph, the INT8 graph and the card, in every exported folder.
ONNX_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
ONNX_CARD = "onnx_card.json"
#: The fast tokenizer file that sessions read (written by ``save_pretrained``).
TOKENIZER_FILE = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
#: Bumped whenever the export changes what its files compute; part of the query cache's key.
EXPORT_FORMAT = 1

Precision = Literal["int8", "fp32"]


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


def _require(*packages: str) -> None:
    """Export needs onnxruntime and onnx; inference onnxruntime only."""
    import importlib

    try:
        for package in packages:
            importlib.import_module(package)
    except ImportError as e:
        raise IndexerError(
            f"{e.name} is missing (ONNX export and inference): pip install 'shoprank[onnx]'"
        ) from e


def ort_errors() -> tuple[type[Exception], ...]:
    """ONNX Runtime's exception classes (they derive from `Exception` only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidArgument, state.NoSuchFile, state.InvalidGraph,
            state.InvalidProtobuf, state.RuntimeException, state.NotImplemented)


def export_transformer(model: torch.nn.Module, path: Path, *, output: str) -> dict[str, int]:
    """Export a BERT-family Hugging Face model to ``path`` (fp32, fused for ONNX Runtime).

    ``output`` names the model output to keep (``logits``, ``last_hidden_state``); the graph
    takes `INPUT_NAMES` (int64, shape batch x sequence, both dynamic). Returns the counts of
    fused operators.
    """
    _require("onnxruntime", "onnx")
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
    _require("onnxruntime", "onnx")
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


def open_session(path: Path, *, threads: int | None = None) -> InferenceSession:
    """A CPU session for ``path``; ``threads`` intra-op threads (default: ONNX Runtime's).

    Idle threads sleep instead of spinning: the cores are shared with the HTTP server,
    retrieval and torch, and spinning threads measured much slower under that load.
    """
    _require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ort_errors() as e:
        raise IndexerError(f"cannot load ONNX model {path}: {e}") from e


def load_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The folder's fast tokenizer, truncating (longest first) to ``max_length``, unpadded."""
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for unreadable files
        raise IndexerError(f"cannot load tokenizer {path}: {e}") from e
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def padded_inputs(
    ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]]
) -> dict[str, np.ndarray]:
    """Model inputs for one batch, padded (id 0) only to the batch's longest sequence."""
    rows, width = len(ids), max(len(row) for row in ids)
    input_ids = np.zeros((rows, width), dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    token_types = np.zeros((rows, width), dtype=np.int64)
    for row, (tokens, types) in enumerate(zip(ids, type_ids, strict=True)):
        input_ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
        token_types[row, : len(types)] = types
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types}


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


def mean_pool_normalize(tokens: np.ndarray, mask: np.ndarray) -> Vectors:
    """sentence-transformers' mean pooling then `torch.nn.functional.normalize` (eps 1e-12)."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (tokens.astype(np.float32) * weights).sum(axis=1)
    means = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.ascontiguousarray(means / np.maximum(norms, 1e-12), dtype=np.float32)


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
