"""What the search page shows, built from the page's URL and the pipeline's responses by pure
functions: the URL's settings as a `SearchRequest`, the named configurations the compare view
offers, each result with its product's picture and rating, its grade and how far it moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.schema import Product
from indexer.store import Filters
from plugin.models import MAX_K, FairnessPolicy, SearchHit, SearchRequest, SearchResponse
from reranker.metrics import ndcg_at_k

#: Results per page, and how many more "more" asks for.
PAGE = 10


@dataclass(frozen=True)
class Configuration:
    """A named way to run a query, as the compare view offers them."""

    label: str
    overrides: Mapping[str, Any]


GROUP_CAP = FairnessPolicy(policy="group_cap", field="brand", cap=2)

#: The configurations, by the name the URL uses (``config=``, ``a=``, ``b=``).
CONFIGURATIONS: dict[str, Configuration] = {
    "default": Configuration("Server default (every stage it has)", {}),
    "hybrid": Configuration("Hybrid retrieval only (BM25 + vector, RRF)",
                            {"rerank": False, "final": False}),
    "rerank": Configuration("Hybrid + cross-encoder, no final stage",
                            {"rerank": True, "final": False}),
    "no-rerank": Configuration("Without the cross-encoder", {"rerank": False}),
    "fair": Configuration("Fairness on (at most 2 per brand in the top k)",
                          {"fairness": GROUP_CAP}),
    "no-fair": Configuration("Fairness off", {"fairness": FairnessPolicy(policy="none")}),
    "no-personal": Configuration("Without personalisation", {"personalize": False}),
}


class PageQuery(BaseModel):
    """The page's URL: the query and its settings (``/?q=...&brand=...&k=20``)."""

    model_config = ConfigDict(extra="ignore")

    q: str = Field(default="", max_length=512)
    brand: list[str] = Field(default_factory=list, max_length=100)
    category: str = Field(default="", max_length=200)
    price_min: float | None = Field(default=None, ge=0)
    price_max: float | None = Field(default=None, ge=0)
    in_stock: bool = False
    k: int = Field(default=PAGE, ge=1, le=MAX_K)
    config: str = "default"
    explain: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], brands: Sequence[str]) -> PageQuery:
        """From a query string's parameters (``brands``: every ``brand=`` given); blank fields
        count as unset, so an empty form field is no filter."""
        values = {key: value for key, value in params.items() if value != ""}
        values["brand"] = [b for b in brands if b.strip()]
        return cls.model_validate(values)

    def filters(self) -> Filters | None:
        values: dict[str, Any] = {
            "brand": self.brand or None,
            "category": self.category.strip() or None,
            "price_min": self.price_min,
            "price_max": self.price_max,
            "in_stock": True if self.in_stock else None,
        }
        values = {key: value for key, value in values.items() if value is not None}
        return Filters.model_validate(values) if values else None

    def request(self, config: str, *, session_id: str | None, explain: bool) -> SearchRequest:
        """The search this URL asks for under the named configuration."""
        overrides = CONFIGURATIONS[config].overrides
        return SearchRequest.model_validate({
            "query": self.q, "k": self.k, "filters": self.filters(), "session_id": session_id,
            "explain": explain, **overrides,
        })

    def url(self, path: str = "/", **changes: Any) -> str:
        """This page's URL with some settings changed (None drops a setting)."""
        values: dict[str, Any] = {
            "q": self.q, "brand": self.brand, "category": self.category,
            "price_min": self.price_min, "price_max": self.price_max,
            "in_stock": 1 if self.in_stock else None, "k": self.k if self.k != PAGE else None,
            "config": None if self.config == "default" else self.config,
            "explain": 1 if self.explain else None,
        }
        values.update(changes)
        pairs = [(key, value) for key, value in values.items() if value not in (None, "", [])]
        return f"{path}?{urlencode(pairs, doseq=True)}"


def problems(error: ValidationError) -> list[str]:
    """Each problem of a bad URL, naming its parameter."""
    messages = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "query"
        messages.append(f"{where}: {problem['msg']}")
    return messages


@dataclass(frozen=True)
class ResultView:
    """One result as the page shows it."""

    hit: SearchHit
    image_url: str | None
    rating: float | None
    rating_count: int | None
    #: The judged grade, when judgments are loaded and this product has one.
    grade: int | None = None
    #: Compare view: how this result moved against the other side ("up 3", "new", ...).
    moved: str | None = None

    @property
    def top_contributions(self) -> list[tuple[str, float]]:
        """The final stage's three largest feature contributions, by size."""
        explanation = self.hit.explanation
        if explanation is None or not explanation.final_contributions:
            return []
        ranked = sorted(explanation.final_contributions.items(), key=lambda kv: -abs(kv[1]))
        return ranked[:3]


def result_views(
    response: SearchResponse,
    products: Mapping[str, Product],
    grades: Mapping[str, int] | None = None,
    moves: Mapping[str, str] | None = None,
) -> list[ResultView]:
    views = []
    for hit in response.results:
        product = products.get(hit.id)
        views.append(ResultView(
            hit=hit,
            image_url=product.image_url if product else None,
            rating=product.rating if product else None,
            rating_count=product.rating_count if product else None,
            grade=None if grades is None else grades.get(hit.id),
            moved=None if moves is None else moves.get(hit.id),
        ))
    return views


def moves(ranking: Sequence[str], other: Sequence[str]) -> dict[str, str]:
    """How each result of ``ranking`` moved against ``other``: "up n", "down n" or "new"
    (not in ``other``); results at the same rank are left out."""
    where = {product_id: rank for rank, product_id in enumerate(other, start=1)}
    changed = {}
    for rank, product_id in enumerate(ranking, start=1):
        before = where.get(product_id)
        if before is None:
            changed[product_id] = "new"
        elif before != rank:
            step = before - rank
            changed[product_id] = f"up {step}" if step > 0 else f"down {-step}"
    return changed


def ndcg10(ranking: Sequence[str], grades: Mapping[str, int] | None) -> float | None:
    """nDCG@10 with `shoprank eval`'s default gains (2^grade - 1); None without judgments."""
    if not grades:
        return None
    return ndcg_at_k(ranking, grades, 10)
