"""The search routes: `POST /search`, and the k-NN neighbours of a product (`GET /similar`)
or of a session's profile (`GET /recommend`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from indexer.store import Filters
from plugin.api.dependencies import FiltersDep, KParam, PipelineDep
from plugin.api.responses import error_responses
from plugin.models import RecommendResponse, SearchRequest, SearchResponse, SessionId
from plugin.recommend import NoHistoryError, recommend, similar

router = APIRouter()


@router.post("/search", response_model=SearchResponse, response_model_exclude_none=True,
             responses=error_responses(400, 413, 422, 429, 503))
def search(body: SearchRequest, pipeline: PipelineDep) -> SearchResponse:
    return pipeline.search(body)


@router.get("/similar/{product_id}", response_model=RecommendResponse,
            response_model_exclude_none=True, responses=error_responses(404, 422, 503))
def get_similar(
    product_id: str, pipeline: PipelineDep, filters: FiltersDep, k: KParam = 10
) -> RecommendResponse:
    """Products nearest to this one (by their embeddings), never itself; filters apply."""
    results = similar(pipeline.store, product_id, k, filters)
    return RecommendResponse(
        source="item", of=product_id, results=results, filters=_echo(filters)
    )


@router.get("/recommend", response_model=RecommendResponse, response_model_exclude_none=True,
            responses=error_responses(404, 422, 503))
def get_recommend(
    session_id: Annotated[SessionId, Query()],
    pipeline: PipelineDep,
    filters: FiltersDep,
    k: KParam = 10,
) -> RecommendResponse:
    """Products nearest to the session's profile, leaving out what it bought."""
    state = pipeline.session_store.get(session_id)
    try:
        results = recommend(pipeline.store, state, k, filters)
    except NoHistoryError as e:
        raise HTTPException(status_code=404, detail=f"session {session_id!r}: {e}") from e
    return RecommendResponse(
        source="session", of=session_id, results=results, filters=_echo(filters)
    )


def _echo(filters: Filters | None) -> dict[str, Any] | None:
    """The filters as the response repeats them: only those the request set."""
    return None if filters is None else filters.model_dump(exclude_none=True)
