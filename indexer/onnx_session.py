"""ONNX Runtime on CPU: sessions, tokenizers and padded inputs for BERT-family graphs.

What serving an exported folder needs, for the bi-encoder's queries and products
(`indexer.onnx_encoder.OnnxQueryEncoder`) and for the cross-encoder
(`reranker.onnx_cross_encoder`). ONNX Runtime's exceptions (`ort_errors`) become
`indexer.errors.IndexerError` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import IndexerError
from indexer.onnx_files import TOKENIZER_FILE

if TYPE_CHECKING:
    from onnxruntime import InferenceSession
    from tokenizers import Tokenizer


def require_onnx(*packages: str) -> None:
    """Export needs onnxruntime and onnx; inference onnxruntime only."""
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


def open_session(path: Path, *, threads: int | None = None) -> InferenceSession:
    """A CPU session for ``path``; ``threads`` intra-op threads (default: ONNX Runtime's).

    Idle threads sleep instead of spinning: the cores are shared with the HTTP server,
    retrieval and torch, and spinning threads measured much slower under that load.
    """
    require_onnx("onnxruntime")
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
