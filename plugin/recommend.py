"""Recommendations from the vector store: item-to-item neighbours and a session's neighbours.

Both are one filtered k-NN query: `similar` searches with the product's own stored embedding,
`recommend` with the session's profile direction. They run the same on the local store and
on OpenSearch.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import numpy.typing as npt

from indexer.store import Filters, VectorStore
from plugin.errors import PluginError, UnknownProductError
from plugin.models import RecommendedItem
from plugin.session_store import SessionState


class NoHistoryError(PluginError):
    """The session has no engagement to recommend from."""


def similar(
    store: VectorStore, product_id: str, k: int, filters: Filters | None = None
) -> list[RecommendedItem]:
    """The ``k`` products nearest to ``product_id`` that pass ``filters``, never itself."""
    vector = store.vectors([product_id]).get(product_id)
    if vector is None:
        raise UnknownProductError(f"no product with id {product_id!r}")
    return _neighbours(store, vector, k, filters, exclude={product_id})


def recommend(
    store: VectorStore, state: SessionState | None, k: int, filters: Filters | None = None
) -> list[RecommendedItem]:
    """The ``k`` products nearest to the session's profile, leaving out what it bought."""
    direction = None if state is None else state.profile_direction()
    if state is None or direction is None:
        raise NoHistoryError(
            "the session has no clicks, add-to-carts or purchases yet (POST /events first)"
        )
    return _neighbours(store, direction, k, filters, exclude=set(state.purchased))


def _neighbours(
    store: VectorStore,
    vector: npt.NDArray[np.float32],
    k: int,
    filters: Filters | None,
    exclude: Collection[str],
) -> list[RecommendedItem]:
    hits = store.search_vector(vector, k + len(exclude), filters)
    kept = [hit for hit in hits if hit.product_id not in exclude][:k]
    products = store.get_many([hit.product_id for hit in kept])
    results: list[RecommendedItem] = []
    for hit in kept:
        product = products.get(hit.product_id)
        if product is None:  # deleted between the two calls
            continue
        results.append(
            RecommendedItem(
                **RecommendedItem.summary_of(product, len(results) + 1),
                score=round(hit.score, 6),
            )
        )
    return results
