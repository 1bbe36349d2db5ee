"""Change one product in the serving index, re-embedding it only when its model text changed."""

from __future__ import annotations

import numpy as np

from indexer.encoder import BiEncoder
from indexer.indexing import upsert_products
from indexer.schema import Product, product_to_text
from indexer.store import VectorStore


def update_product(store: VectorStore, before: Product, after: Product, encoder: BiEncoder) -> bool:
    """Write ``after`` in place of ``before`` (the same id); it is searchable on return.

    Price and stock are not part of `product_to_text`: when only such fields change, the stored
    vectors still describe the product, so they are kept and the encoder is not run. Returns
    whether the product was re-embedded: a price change alone returns False.
    """
    stored = store.vectors([after.id]).get(after.id)
    if stored is None or product_to_text(after) != product_to_text(before):
        upsert_products(store, [after], encoder)
        return True
    title = store.title_vectors([after.id]).get(after.id)
    store.upsert(
        [after], stored[np.newaxis, :], None if title is None else title[np.newaxis, :]
    )
    return False
