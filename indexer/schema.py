"""The product record and the one text rendering every model sees.

`product_to_text` is the single place that turns a product into model input: the bi-encoder,
BM25 and every cross-encoder (in-process, Triton, tuning) use it, so a product never looks
different to two stages.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from indexer.text import check_identifier, cleaned

#: Dimension of the packaged all-MiniLM-L6-v2 bi-encoder.
EMBEDDING_DIM = 384
#: Lexical fields and their BM25 weights: scores add up across fields (``most_fields``).
#: ``text`` is `product_to_text`; a half-weight title field favours title matches.
LEXICAL_FIELDS: dict[str, float] = {"text": 1.0, "title": 0.5}

_MAX_BULLETS = 5
_MAX_ATTRIBUTES = 12
#: The longest brand or category name: OpenSearch keeps them as whole terms, and refuses a
#: document with a term over 32,766 bytes (its whole reindex would fail).
MAX_NAME_CHARS = 256
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]


class Product(BaseModel):
    """One catalog line. Real catalogs are ragged: nulls become empty values.

    Extra fields (Icecat's `gtin`, `model`, `released`, ...) are kept, a NaN or infinite number
    in them as null (as both stores would serve it). Every text but the id is cleaned by
    `indexer.text.clean_text` (control characters as spaces, NFC); an id with a control
    character is refused.

    ``in_stock`` is None when the catalog does not say (such a product counts as available).
    A line with an integer ``stock`` quantity and no ``in_stock`` is in stock when the quantity
    is positive; ``stock`` itself is kept as an extra field. Stock is never model text.

    >>> Product.model_validate({"id": "1", "title": "Desk lamp", "stock": 0}).in_stock
    False
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, frozen=True)

    id: str = Field(min_length=1, max_length=256)
    title: str = Field(min_length=1)
    description: str = ""
    bullet_points: list[str] = Field(default_factory=list)
    brand: Name | None = None
    category: list[Name] = Field(default_factory=list)
    price: float | None = Field(default=None, ge=0)
    rating: float | None = Field(default=None, ge=0)
    rating_count: int | None = Field(default=None, ge=0)
    image_url: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    in_stock: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            key: value if key == "id" else cleaned(value, nan_as_null=key not in _DECLARED)
            for key, value in data.items()
        }

    @model_validator(mode="before")
    @classmethod
    def _in_stock_from_quantity(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("in_stock") is not None:
            return data
        stock = data.get("stock")
        if isinstance(stock, int) and not isinstance(stock, bool):
            return {**data, "in_stock": stock > 0}
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return check_identifier(value.strip()) if isinstance(value, str) else value

    @field_validator("title", mode="before")
    @classmethod
    def _strip_title(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("description", mode="before")
    @classmethod
    def _none_to_empty_text(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("bullet_points", "category", mode="before")
    @classmethod
    def _none_to_empty_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, list):
            return [item for item in value if item not in (None, "")]
        return value

    @field_validator("brand", mode="before")
    @classmethod
    def _blank_brand_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes_as_text(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items() if v not in (None, "")}
        return value


#: The fields `Product` declares (the others are extra fields).
_DECLARED = frozenset(Product.model_fields)


def product_to_text(product: Product) -> str:
    """Render a product for the models: title first, then brand, category path and details.

    >>> lamp = Product(id="1", title="Desk lamp", brand="Ikea", category=["Home", "Lighting"])
    >>> product_to_text(lamp)
    'Desk lamp | brand: Ikea | category: Home > Lighting'
    """
    parts = [product.title]
    if product.brand:
        parts.append(f"brand: {product.brand}")
    if product.category:
        parts.append("category: " + " > ".join(product.category))
    attributes = list(product.attributes.items())[:_MAX_ATTRIBUTES]
    if attributes:
        parts.append("; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in attributes))
    bullets = product.bullet_points[:_MAX_BULLETS]
    if bullets:
        parts.append(" ".join(bullets))
    if product.description:
        parts.append(product.description)
    return " | ".join(parts)


def lexical_texts(product: Product) -> dict[str, str]:
    """The text of each field in `LEXICAL_FIELDS` for one product."""
    return {"text": product_to_text(product), "title": product.title}
