"""The vector-store contract shared by the local store and OpenSearch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from indexer.encoder import BiEncoder
from indexer.encoder_stamp import EncoderStamp
from indexer.errors import DimensionMismatchError, EncoderMismatchError, StoreError
from indexer.model_files import PACKAGED_IDENTITY
from indexer.progress import IndexProgress
from indexer.schema import Product
from indexer.text import cleaned

RetrievalMode = Literal["bm25", "vector", "hybrid"]
RETRIEVAL_MODES: tuple[RetrievalMode, ...] = ("bm25", "vector", "hybrid")


class Filters(BaseModel):
    """Restrictions applied inside retrieval. Unknown keys are rejected.

    - ``brand``: one brand or a list; exact match, case-insensitive.
    - ``category``: matches any level of a product's category path, case-insensitive.
    - ``price_min`` / ``price_max``: inclusive; products without a price never match a range.
    - ``in_stock``: True keeps products not known to be out of stock (``in_stock`` True or
      unknown); False keeps only products known to be out of stock.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    brand: list[str] | None = Field(default=None, min_length=1, max_length=100)
    category: str | None = Field(default=None, min_length=1, max_length=200)
    price_min: float | None = Field(default=None, ge=0)
    price_max: float | None = Field(default=None, ge=0)
    in_stock: bool | None = None

    @field_validator("brand", mode="before")
    @classmethod
    def _one_brand_is_a_list(cls, value: object) -> object:
        return cleaned([value] if isinstance(value, str) else value)

    @field_validator("category", mode="before")
    @classmethod
    def _clean_category(cls, value: object) -> object:
        return cleaned(value)

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
        known_out_of_stock = product.in_stock is False
        if self.in_stock is not None and self.in_stock == known_out_of_stock:
            return False  # asked for stock and it is out, or for out of stock and it is not
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

    @property
    def circuit_open(self) -> bool:
        """Whether calls are refused at once after repeated failures to answer (a remote
        store's `indexer.circuit.CircuitBreaker`, open or half-open); an embedded store's never
        is."""
        ...

    def exists(self) -> bool:
        """Whether a complete serving index is there."""
        ...

    def count(self) -> int: ...

    def brand_counts(self) -> dict[str, int]:
        """Products per brand in the serving index, brands lower-cased ("" for none).

        What fairness rules such as "brands below 1% of the catalog" are computed from.
        """
        ...

    def encoder_stamp(self) -> EncoderStamp | None:
        """The encoder that wrote the serving version; None if it predates encoder stamps."""
        ...

    def get(self, product_id: str) -> Product | None: ...

    def get_many(self, product_ids: Sequence[str]) -> dict[str, Product]: ...

    def vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """The stored (L2-normalised) embedding of each id that exists; unknown ids are left out.

        What "more like this" and personalisation start from, without encoding anything.
        """
        ...

    def title_vectors(self, product_ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """The stored (L2-normalised) embedding of each product's title alone, for the ids that
        have one; products written without a title embedding are left out, as unknown ids are.

        What the final stage's ``title_cosine`` reads: a title says what the product is, the
        whole text also what it goes with.
        """
        ...

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]: ...

    def search_vector(
        self, vector: npt.NDArray[np.float32], n: int, filters: Filters | None = None
    ) -> list[ScoredId]: ...

    def replace_all(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        *,
        title_vectors: npt.NDArray[np.float32] | None = None,
        metadata: dict[str, Any] | None = None,
        encoder: EncoderStamp | None = None,
        progress: IndexProgress | None = None,
    ) -> str:
        """Build a complete new version and make it the serving one; returns its name.

        ``title_vectors`` (optional, one row per product) are stored for `title_vectors`.
        ``encoder`` is recorded with the version (`encoder_stamp` returns it). ``progress``
        hears how many products are written as they are. A failure leaves the serving version
        untouched, and a killed rebuild's leftovers go with the next one.
        """
        ...

    def upsert(
        self,
        products: Sequence[Product],
        vectors: npt.NDArray[np.float32],
        title_vectors: npt.NDArray[np.float32] | None = None,
    ) -> int:
        """Add or replace products in the serving index; searchable when this returns."""
        ...

    def delete(self, product_ids: Sequence[str]) -> int:
        """Remove products from the serving index; returns how many existed."""
        ...

    def close(self) -> None: ...


def check_vectors(
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> None:
    """One vector row per product (and one title vector of the same shape, when given), or a
    `DimensionMismatchError` saying what arrived."""
    if vectors.ndim != 2 or vectors.shape[0] != len(products):
        raise DimensionMismatchError(
            f"{len(products)} products need {len(products)} vectors, got shape {vectors.shape}"
        )
    if title_vectors is not None and title_vectors.shape != vectors.shape:
        raise DimensionMismatchError(
            f"title vectors must have the shape of the vectors {vectors.shape}, "
            f"got {title_vectors.shape}"
        )


def check_rebuild(
    products: Sequence[Product],
    vectors: npt.NDArray[np.float32],
    title_vectors: npt.NDArray[np.float32] | None = None,
) -> None:
    """What a full rebuild needs: matching vectors and at least one product."""
    check_vectors(products, vectors, title_vectors)
    if not products:
        raise StoreError("refusing to build an empty index")


def check_encoder(store: VectorStore, encoder: BiEncoder) -> None:
    """Refuse to compare ``encoder``'s vectors with an index another encoder wrote.

    Call it before a vector or hybrid query and before an upsert; BM25 needs no check. An index
    written before encoder stamps existed counts as written by the packaged encoder.

    Raises `EncoderMismatchError` naming both encoders and the two ways out.
    """
    written_by = store.encoder_stamp()
    if written_by is None:
        if encoder.is_packaged:
            return
        raise EncoderMismatchError(
            f"index {store.location} was written by the packaged {PACKAGED_IDENTITY} "
            f"(before shoprank recorded encoders), but this process encodes with "
            f"{encoder.stamp.describe()} from {encoder.model_path}: its vectors are not "
            f"comparable with the index's. Reindex with the new encoder "
            f"(`shoprank reindex --catalog PATH`), or unset SHOPRANK_ENCODER_PATH to query "
            f"with {PACKAGED_IDENTITY}."
        )
    using = encoder.stamp
    if written_by.fingerprint == using.fingerprint:
        return
    raise EncoderMismatchError(
        f"index {store.location} was written by encoder {written_by.describe()}, but this "
        f"process encodes with {using.describe()}: their vectors are not comparable. "
        f"Reindex with the new encoder (`shoprank reindex --catalog PATH`), or "
        f"{_way_back(written_by, using)}."
    )


def _way_back(written_by: EncoderStamp, using: EncoderStamp) -> str:
    """How to configure this process like the one that wrote the index."""
    steps = []
    if written_by.path != using.path:
        steps.append(
            f"unset SHOPRANK_ENCODER_PATH (the packaged {PACKAGED_IDENTITY})"
            if written_by.path is None
            else f"set SHOPRANK_ENCODER_PATH={written_by.path} back"
        )
    if written_by.max_seq_length != using.max_seq_length:
        steps.append(f"set SHOPRANK_ENCODER_MAX_SEQ_LENGTH={written_by.max_seq_length} back")
    if not steps:
        where = using.path or f"the packaged {PACKAGED_IDENTITY}"
        return f"restore the files of {where} as they were when the index was written"
    return " and ".join(steps)
