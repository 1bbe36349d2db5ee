"""Turn a catalog into a serving index: validate, embed in batches, write, swap."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.catalog import CatalogLoad, load_catalog
from indexer.encoder import BiEncoder
from indexer.schema import Product, product_to_text
from indexer.store import VectorStore, check_encoder

logger = logging.getLogger(__name__)


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
    progress: bool = False,
    metadata: dict[str, str] | None = None,
) -> str:
    """Embed products and make them the serving version of ``store``, stamped with ``encoder``.

    A rebuild may change the encoder: this is how an index moves to a new one.
    """
    stamp = encoder.stamp  # fails on a missing encoder folder before the long encode
    vectors, titles = encode_products(encoder, products, progress=progress)
    return store.replace_all(
        products, vectors, title_vectors=titles, metadata=metadata, encoder=stamp
    )


def encode_products(
    encoder: BiEncoder, products: Sequence[Product], *, progress: bool = False
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Each product's text embedding (what vector search compares) and the embedding of its
    title alone (a final-stage feature). Titles are short, so the second pass costs a fraction
    of the first."""
    vectors = encoder.encode_texts([product_to_text(p) for p in products], progress=progress)
    titles = encoder.encode_texts([p.title for p in products], progress=progress)
    return vectors, titles


def upsert_products(
    store: VectorStore, products: Sequence[Product], encoder: BiEncoder, *, progress: bool = False
) -> int:
    """Embed products and add or replace them in the serving index.

    Raises `EncoderMismatchError` (before encoding anything) if another encoder wrote the index.
    """
    check_encoder(store, encoder)
    vectors, titles = encode_products(encoder, products, progress=progress)
    return store.upsert(products, vectors, titles)


def reindex_catalog(
    store: VectorStore,
    catalog: Path,
    encoder: BiEncoder,
    *,
    strict: bool = False,
    progress: bool = False,
) -> tuple[IndexReport, CatalogLoad]:
    """Load a catalog (strict mode fails before anything is written) and rebuild the index."""
    load = load_catalog(catalog, strict=strict)
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
