"""Which encoder wrote an index: `EncoderStamp`, its identity and its fingerprint.

Every encoder has a stamp: a human identity and a fingerprint of its weights and settings. An
index records the stamp of the encoder that wrote it, so that vectors from a different encoder
are never compared with it (see `indexer.store.check_encoder`). Both are computed from the
model's files (`indexer.model_files`); no model loads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from indexer.errors import IndexerError
from indexer.model_files import (
    MODEL_CARD,
    PACKAGED_IDENTITY,
    folder_digest,
    is_adapter_artifact,
    packaged_model_path,
    same_folder,
)

#: How the bi-encoder encodes products: torch, or ONNX Runtime in INT8 (``onnx-int8``) or fp32.
DocumentBackend = Literal["torch", "onnx-int8", "onnx"]


@dataclass(frozen=True)
class EncoderStamp:
    """Which encoder wrote an index.

    ``fingerprint`` decides (equal fingerprints mean comparable vectors); the rest is for
    messages: ``identity`` is a human name, ``path`` the folder (None for the packaged model),
    ``documents`` the backend that encoded the products (INT8 vectors approximate torch's, so
    it does not decide).
    """

    identity: str
    fingerprint: str
    max_seq_length: int
    path: str | None = None
    documents: DocumentBackend = "torch"

    def describe(self) -> str:
        backend = "" if self.documents == "torch" else f", documents {self.documents}"
        return (
            f"{self.identity} (fingerprint {self.fingerprint}, "
            f"max_seq_length {self.max_seq_length}{backend})"
        )

    def to_meta(self) -> dict[str, Any]:
        """The stamp as stored in index metadata (a local manifest, an OpenSearch ``_meta``)."""
        return {
            "identity": self.identity,
            "fingerprint": self.fingerprint,
            "max_seq_length": self.max_seq_length,
            "path": self.path,
            "documents": self.documents,
        }

    @classmethod
    def from_meta(cls, meta: object) -> EncoderStamp | None:
        """Read `to_meta` output back; None when the index predates stamps."""
        if meta is None:
            return None
        if not isinstance(meta, Mapping):
            raise IndexerError(f"index metadata holds an unreadable encoder stamp: {meta!r}")
        try:
            path = meta.get("path")
            documents = meta.get("documents", "torch")
            if documents not in get_args(DocumentBackend):
                raise ValueError(f"documents {documents!r}")
            return cls(
                identity=str(meta["identity"]),
                fingerprint=str(meta["fingerprint"]),
                max_seq_length=int(meta["max_seq_length"]),
                path=None if path is None else str(path),
                documents=documents,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexerError(
                f"index metadata holds an unreadable encoder stamp: {dict(meta)!r}"
            ) from e


def encoder_identity(path: Path | None) -> str:
    """``all-MiniLM-L6-v2``, ``tuned:<folder name>`` for tuned artifacts, else the folder name."""
    if path is None or same_folder(path, packaged_model_path()):
        return PACKAGED_IDENTITY
    if is_adapter_artifact(path) or (path / MODEL_CARD).is_file():
        return f"tuned:{path.resolve().name}"
    return path.resolve().name


def encoder_fingerprint(path: Path | None, max_seq_length: int) -> str:
    """A short, stable hash of what an encoder computes: its weights and its truncation.

    An adapter artifact's fingerprint covers the packaged base it applies to. No model loads.
    """
    digest = hashlib.sha256(f"max_seq_length={max_seq_length}\n".encode())
    folder = path or packaged_model_path()
    if is_adapter_artifact(folder):
        digest.update(f"base={folder_digest(packaged_model_path())}\n".encode())
    digest.update(f"model={folder_digest(folder)}\n".encode())
    return digest.hexdigest()[:16]
