"""Request and response bodies of the search API (also used by the CLI)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from indexer.store import Filters, RetrievalMode

MAX_QUERY_CHARS = 512
MAX_K = 100

QueryText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)
]


class SearchRequest(BaseModel):
    """``POST /search`` body. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    query: QueryText
    k: int = Field(default=10, ge=1, le=MAX_K)
    mode: RetrievalMode = "hybrid"
    filters: Filters | None = None
    #: None: rerank when the server has a reranker.
    rerank: bool | None = None
    #: None: apply the learned final stage when the server has one.
    final: bool | None = None
    explain: bool = False


class StageScores(BaseModel):
    """The score each stage gave a result; None where a stage did not score it."""

    bm25: float | None = None
    vector: float | None = None
    fused: float | None = None
    rerank: float | None = None
    final: float | None = None


class Explanation(BaseModel):
    """Why a result sits where it does."""

    bm25_rank: int | None = Field(description="rank in the BM25 list, if retrieved by BM25")
    vector_rank: int | None = Field(description="rank in the vector list, if retrieved by it")
    retrieval_rank: int = Field(description="rank after retrieval (fused in hybrid mode)")
    rerank_rank: int | None = Field(description="rank inside the rerank window, if reranked")
    ordered_by: str = Field(description="the stage whose score set the final order")
    final_contributions: dict[str, float] | None = Field(
        default=None,
        description="the learned final stage's score split by feature (weight x value)",
    )
    text: str = Field(description="the product text the models saw")


class SearchHit(BaseModel):
    rank: int
    id: str
    title: str
    brand: str | None
    category: list[str]
    price: float | None
    score: float = Field(description="score of the stage that ordered this result")
    scores: StageScores
    explanation: Explanation | None = None


class SearchResponse(BaseModel):
    query: str
    mode: RetrievalMode
    k: int
    candidates: int = Field(description="how many candidates retrieval returned")
    reranked: int = Field(description="how many candidates the reranker rescored")
    reranker: str
    final_stage: str = Field(default="none", description="the learned final stage, if any")
    degraded: bool = False
    results: list[SearchHit]
    timings_ms: dict[str, float]
    filters: dict[str, Any] | None = None
