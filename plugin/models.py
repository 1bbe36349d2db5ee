"""Request and response bodies of the search API (also used by the CLI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from indexer.schema import Product
from indexer.store import Filters, RetrievalMode
from indexer.text import cleaned

MAX_QUERY_CHARS = 512
MAX_K = 100

#: keep: rank as any other product; demote: after every product in stock; hide: leave out.
OutOfStock = Literal["keep", "demote", "hide"]
SessionId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")
]

#: A query, cleaned as catalog text is (`indexer.text.clean_text`: control characters count
#: as spaces), then held to 1-512 characters.
QueryText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS),
    BeforeValidator(cleaned),
]


class FairnessPolicy(BaseModel):
    """A request's fairness step (see `plugin.fairness.stage`). Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    #: fair_topk: FA*IR; exposure_parity: group exposure follows relevance; group_cap: at most
    #: ``cap`` items per group in the top k; amortized: exposure follows relevance across the
    #: server's recent queries, not per query; none: switch off the server's default policy.
    policy: Literal["fair_topk", "exposure_parity", "group_cap", "amortized", "none"]
    #: Which product field defines the groups ("category": the top level of the path).
    field: Literal["brand", "category"] = "brand"
    #: The protected groups, by name (FA*IR protects them) ...
    protected: list[
        Annotated[str, StringConstraints(min_length=1, max_length=200), BeforeValidator(cleaned)]
    ] | None = Field(default=None, max_length=1000)
    #: ... or by rule: brands with less than this share of the catalog (categories: of the
    #: query's candidates).
    protected_share_below: float | None = Field(default=None, gt=0, lt=1)
    p: float = Field(default=0.3, gt=0, lt=1, description="FA*IR target protected proportion")
    alpha: float = Field(default=0.1, gt=0, lt=1, description="FA*IR significance level")
    k: int | None = Field(default=None, ge=1, le=MAX_K, description="default: the request's k")
    cap: int = Field(default=2, ge=1, le=MAX_K, description="group_cap: items per group")
    tolerance: float = Field(default=0.1, ge=0, le=1, description="exposure_parity slack")
    max_ndcg_loss: float = Field(
        default=0.05, ge=0, le=1, description="amortized: the most nDCG@k one query may lose"
    )
    #: A shopper who names a brand asked for it: a query holding every word of a group found
    #: in the top k is left as ranked (the step says so).
    exempt_named_groups: bool = True

    @model_validator(mode="after")
    def _protected_once(self) -> FairnessPolicy:
        given = (self.protected is not None) + (self.protected_share_below is not None)
        if given > 1:
            raise ValueError("give either protected or protected_share_below, not both")
        if self.policy == "fair_topk" and not given:
            raise ValueError(
                "policy fair_topk needs the protected groups: protected (a list of names) "
                "or protected_share_below (a share of the catalog, 0-1)"
            )
        return self


#: A request's way to say "no fairness step", whatever the server's default policy.
NO_FAIRNESS = FairnessPolicy(policy="none")


class FairnessSummary(BaseModel):
    """What the fairness step did to this response."""

    policy: str
    protected_groups: list[str] = Field(description="the protected groups among the candidates")
    moved: int = Field(description="how many results changed rank")
    satisfied: bool = Field(description="false when the constraint could not be met")
    ndcg_loss: float = Field(description="nDCG@k lost against the order before it")
    notes: list[str] = []


class SearchRequest(BaseModel):
    """``POST /search`` body. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    query: QueryText
    k: int = Field(default=10, ge=1, le=MAX_K)
    mode: RetrievalMode = "hybrid"
    filters: Filters | None = None
    #: None: rerank when the server has a reranker.
    rerank: bool | None = None
    #: Latency budget (ms) up to the end of reranking: the rerank window shrinks to the
    #: candidates predicted to fit. None: the server's setting (by default a fixed window).
    rerank_budget_ms: float | None = Field(default=None, gt=0, le=60_000)
    #: None: apply the learned final stage when the server has one.
    final: bool | None = None
    fairness: FairnessPolicy | None = None
    #: The shopper's session: its clicks, carts and purchases (`POST /events`) personalise
    #: this search.
    session_id: SessionId | None = None
    #: None: personalise when a session_id is given and the server's weight is above zero.
    personalize: bool | None = None
    #: What to do with products marked out of stock; None: the server's setting.
    out_of_stock: OutOfStock | None = None
    explain: bool = False

    @model_validator(mode="after")
    def _personal_needs_session(self) -> SearchRequest:
        if self.personalize and self.session_id is None:
            raise ValueError("personalize=true needs a session_id")
        return self


class StageScores(BaseModel):
    """The score each stage gave a result; None where a stage did not score it."""

    bm25: float | None = None
    vector: float | None = None
    fused: float | None = None
    rerank: float | None = None
    final: float | None = None
    #: The session's term (weight x signal mix), added to the ordering score rescaled to [0, 1].
    personal: float | None = None


class Explanation(BaseModel):
    """Why a result sits where it does."""

    bm25_rank: int | None = Field(
        default=None, description="rank in the BM25 list, if retrieved by BM25"
    )
    vector_rank: int | None = Field(
        default=None, description="rank in the vector list, if retrieved by it"
    )
    retrieval_rank: int = Field(description="rank after retrieval (fused in hybrid mode)")
    rerank_rank: int | None = Field(
        default=None, description="rank inside the rerank window, if reranked"
    )
    ordered_by: str = Field(description="the stage whose score set the final order")
    final_contributions: dict[str, float] | None = Field(
        default=None,
        description="the learned final stage's score split by feature (weight x value)",
    )
    fairness_move: str | None = Field(
        default=None, description="why the fairness step moved this result, from which rank"
    )
    personalization: dict[str, float] | None = Field(
        default=None,
        description="the session signals behind the personal term (each in [-1, 1]): "
        "profile, brand, category, price",
    )
    stock: str | None = Field(default=None, description="set when stock changed the rank")
    text: str = Field(description="the product text the models saw")


class RankedProduct(BaseModel):
    """What a result list shows of a product, at its rank: the fields search results and
    recommendations share. The API leaves out a field that is None (no brand, no price)."""

    rank: int
    id: str
    title: str
    brand: str | None = None
    category: list[str]
    price: float | None = None
    in_stock: bool | None = None

    @staticmethod
    def summary_of(product: Product, rank: int) -> dict[str, Any]:
        """These fields of ``product`` at ``rank``, to build a result from."""
        return {
            "rank": rank, "id": product.id, "title": product.title, "brand": product.brand,
            "category": product.category, "price": product.price, "in_stock": product.in_stock,
        }


class SearchHit(RankedProduct):
    score: float = Field(description="score of the stage that ordered this result")
    scores: StageScores
    explanation: Explanation | None = None


class SearchResponse(BaseModel):
    #: Quote it in the impression and click events of these results.
    request_id: str
    query: str
    mode: RetrievalMode
    k: int
    candidates: int = Field(description="how many candidates retrieval returned")
    reranked: int = Field(description="how many candidates the reranker rescored")
    reranker: str
    final_stage: str = Field(default="none", description="the learned final stage, if any")
    degraded: bool = False
    #: Why the answer is degraded (the reranker's failure), when it is.
    degraded_reason: str | None = None
    #: Whether the session's history changed the ranking's scores.
    personalized: bool = False
    fairness: FairnessSummary | None = None
    results: list[SearchHit]
    timings_ms: dict[str, float]
    filters: dict[str, Any] | None = None


class RecommendedItem(RankedProduct):
    score: float = Field(description="cosine similarity to the item or the session profile")


class RecommendResponse(BaseModel):
    source: Literal["item", "session"]
    #: The product (`/similar`) or session (`/recommend`) the results are neighbours of.
    of: str
    results: list[RecommendedItem]
    filters: dict[str, Any] | None = None
