"""The vector-store contract shared by the local store and OpenSearch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.errors import DimensionMismatchError, StoreError
from indexer.schema import Product

RetrievalMode = Literal["bm25", "vector", "hybrid"]
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = ("bm25", "vector", "hybrid")


class Filters(BaseModel):
    """Restrictions applied inside retrieval. Unknown keys are rejected.

    - ``brand``: one brand or a list; exact match, case-insensitive.
    - ``category``: matches any level of a product's category path, case-insensitive.
    - ``price_min`` / ``price_max``: inclusive; products without a price never match a range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    brand: list[str] | None = Field(default=None, min_length=1, max_length=100)
    category: str | None = Field(default=None, min_length=1, max_length=200)
    price_min: float | None = Field(default=None, ge=0)
    price_max: float | None = Field(default=None, ge=0)

    @field_validator("brand", mode="before")
    @classmethod
    def _one_brand_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Filters:
        if (
            self.price_min is not None
            and self.price_max is not None
            and self.price_min > self.price_max
        ):
            raise ValueError(
                f"price_min ({self.price_min}) must not exceed price_max ({self.price_max})"
            )
        return self

    def is_empty(self) -> bool:
        return all(value is None for value in self.model_dump().values())

    def matches(self, product: Product) -> bool:
        """Whether one product passes these filters (the reference semantics)."""
        if self.brand is not None:
            wanted = {brand.lower() for brand in self.brand}
            if product.brand is None or product.brand.lower() not in wanted:
                return False
        if self.category is not None:
            target = self.category.lower()
            if all(level.lower() != target for level in product.category):
                return False
        if self.price_min is not None or self.price_max is not None:
            if product.price is None:
                return False
            if self.price_min is not None and product.price < self.price_min:
                return False
            if self.price_max is not None and product.price > self.price_max:
                return False
        return True


@dataclass(frozen=True)
class ScoredId:
    """A product id with one retriever's score (higher is better)."""

    product_id: str
    score: float


@runtime_checkable
class VectorStore(Protocol):
    """Holds product records, their vectors and a lexical index, and searches them.

    Both searches apply filters inside retrieval: they return up to ``n`` matching products,
    best first, and never fewer than ``n`` when ``n`` products match (BM25 returns only
    products that share a term with the query).
    """

    @property
    def dimension(self) -> int: ...

    @property
    def location(self) -> str:
        """Where the index lives, for messages (a folder, or a URL and an alias)."""
        ...

    def exists(self) -> bool:
        """Whether a complete serving index is there."""
        ...

    def count(self) -> int: ...

    def get(self, product_id: str) -> Product | None: ...

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]: ...

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]: ...

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]: ...

    def replace_all(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Build a complete new version and make it the serving one; returns its name.

        A failure leaves the serving version untouched.
        """
        ...

    def upsert(self, products: Sequence[Product], vectors: npt.NDArray[np.float32]) -> int:
        """Add or replace products in the serving index; searchable when this returns."""
        ...

    def delete(self, product_ids: Sequence[str]) -> int:
        """Remove products from the serving index; returns how many existed."""
        ...

    def close(self) -> None: ...


def check_vectors(products: Sequence[Product], vectors: npt.NDArray[np.float32]) -> None:
    """One vector row per product, or a `DimensionMismatchError` saying what arrived."""
    if vectors.ndim != 2 or vectors.shape[0] != len(products):
        raise DimensionMismatchError(
            f"{len(products)} products need {len(products)} vectors, got shape {vectors.shape}"
        )


def check_rebuild(products: Sequence[Product], vectors: npt.NDArray[np.float32]) -> None:
    """What a full rebuild needs: matching vectors and at least one product."""
    check_vectors(products, vectors)
    if not products:
        raise StoreError("refusing to build an empty index")
