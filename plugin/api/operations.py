"""The operations routes: liveness (`/healthz`) and readiness (`/readyz`); the metrics are in
`plugin.api.metrics`."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from indexer.errors import IndexerError
from plugin.api.dependencies import PipelineDep, SettingsDep
from plugin.api.responses import error_with_detail

router = APIRouter()


class Health(BaseModel):
    status: str
    index: str
    products: int | None = None
    reranker: str | None = None
    detail: str | None = None


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz(settings: SettingsDep) -> Health:
    return Health(status="ok", index=settings.index)


@router.get("/readyz", response_model=Health, response_model_exclude_none=True,
            responses=error_with_detail(503, Health, "The index is not ready; says why."))
def readyz(settings: SettingsDep, pipeline: PipelineDep) -> Health:
    try:
        count = pipeline.store.count()
    except IndexerError as e:
        # Unlike the other routes' 503, this one says which index is not ready, as a Health.
        raise HTTPException(
            status_code=503,
            detail=Health(status="not ready", index=settings.index, detail=str(e)).model_dump(
                exclude_none=True
            ),
        ) from e
    return Health(
        status="ready", index=settings.index, products=count, reranker=pipeline.reranker.name
    )
