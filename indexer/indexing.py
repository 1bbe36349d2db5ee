"""Turn a catalog into a serving index: validate, embed in batches, write, swap.

Each step is a phase that an optional `indexer.progress.IndexProgress` hears about.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.catalog import CatalogLoad, listed, load_catalog
from indexer.encoder import BiEncoder
from indexer.errors import CatalogError
from indexer.progress import IndexPhase, IndexProgress, phase
from indexer.schema import Product, product_to_text
from indexer.store import VectorStore, check_encoder

logger = logging.getLogger(__name__)

#: Texts per encoder call while progress is reported: the bar moves once per chunk. torch and
#: ONNX fp32 give the same vectors in any chunking (checked bit for bit on the demo catalog).
PROGRESS_CHUNK = 1024


@dataclass(frozen=True)
class IndexReport:
    """What a reindex did."""

    version: str
    indexed: int
    skipped_lines: int
    duplicate_ids: int


def index_products(
    store: VectorStore,
    products: Sequence[Product],
    encoder: BiEncoder,
    *,
    progress: IndexProgress | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    """Embed products and make them the serving version of ``store``, stamped with ``encoder``.

    A rebuild may change the encoder: this is how an index moves to a new one.
    """
    stamp = encoder.stamp  # fails on a missing encoder folder before the long encode
    vectors, titles = encode_products(encoder, products, progress=progress)
    with phase(progress, "write", len(products)):
        return store.replace_all(
            products, vectors, title_vectors=titles, metadata=metadata, encoder=stamp,
            progress=progress,
        )


def encode_products(
    encoder: BiEncoder, products: Sequence[Product], *, progress: IndexProgress | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Each product's text embedding (what vector search compares) and the embedding of its
    title alone (a final-stage feature). Titles are short, so the second pass costs a fraction
    of the first."""
    vectors = _encode(encoder, [product_to_text(p) for p in products], "embed texts", progress)
    titles = _encode(encoder, [p.title for p in products], "embed titles", progress)
    return vectors, titles


def _encode(
    encoder: BiEncoder, texts: list[str], name: IndexPhase, progress: IndexProgress | None
) -> npt.NDArray[np.float32]:
    """``texts`` encoded as phase ``name``; in chunks of `PROGRESS_CHUNK` while reported.

    ONNX INT8 quantizes each batch with its own scales, so its vectors depend on which texts
    share a call: it always encodes in one call (its bar moves once, at the end).
    """
    with phase(progress, name, len(texts)):
        if progress is None:
            return encoder.encode_texts(texts)
        if encoder.document_backend == "onnx-int8" or len(texts) <= PROGRESS_CHUNK:
            vectors = encoder.encode_texts(texts)
            progress.advance(len(texts))
            return vectors
        chunks = []
        for start in range(0, len(texts), PROGRESS_CHUNK):
            chunk = texts[start : start + PROGRESS_CHUNK]
            chunks.append(encoder.encode_texts(chunk))
            progress.advance(len(chunk))
        return np.concatenate(chunks)


def upsert_products(
    store: VectorStore,
    products: Sequence[Product],
    encoder: BiEncoder,
    *,
    progress: IndexProgress | None = None,
) -> int:
    """Embed products and add or replace them in the serving index.

    Raises `EncoderMismatchError` (before encoding anything) if another encoder wrote the index.
    """
    check_encoder(store, encoder)
    vectors, titles = encode_products(encoder, products, progress=progress)
    with phase(progress, "write"):
        return store.upsert(products, vectors, titles)


def reindex_catalog(
    store: VectorStore,
    catalog: Path,
    encoder: BiEncoder,
    *,
    strict: bool = False,
    progress: IndexProgress | None = None,
) -> tuple[IndexReport, CatalogLoad]:
    """Load a catalog (strict mode fails before anything is written) and rebuild the index.

    A catalog without one valid product fails before anything is encoded or written.
    """
    with phase(progress, "validate"):
        load = load_catalog(catalog, strict=strict)
    if not load.products:
        raise CatalogError(
            f"{catalog}: no valid product ({len(load.errors)} invalid line(s)); nothing was "
            "written" + listed(load.errors)
        )
    version = index_products(
        store, load.products, encoder, progress=progress, metadata={"catalog": str(catalog)}
    )
    report = IndexReport(
        version=version,
        indexed=len(load.products),
        skipped_lines=len(load.errors),
        duplicate_ids=len(load.duplicate_ids),
    )
    return report, load
