"""The HTTP API. Collaborators are built in the lifespan and reach handlers through Depends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from indexer.errors import IndexerError, IndexNotFoundError
from indexer.schema import Product
from plugin.components import build_pipeline
from plugin.errors import RerankNotConfiguredError
from plugin.models import SearchRequest, SearchResponse
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from reranker.errors import RerankerError

logger = logging.getLogger(__name__)


class Health(BaseModel):
    status: str
    index: str
    products: int | None = None
    reranker: str | None = None
    detail: str | None = None


def get_pipeline(request: Request) -> SearchPipeline:
    pipeline: SearchPipeline = request.app.state.pipeline
    return pipeline


PipelineDep = Annotated[SearchPipeline, Depends(get_pipeline)]


def create_app(settings: Settings | None = None, pipeline: SearchPipeline | None = None) -> FastAPI:
    """Build the app. Settings are read from the environment when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or Settings()
        app.state.settings = resolved
        app.state.pipeline = pipeline or build_pipeline(resolved)
        try:
            app.state.pipeline.store.count()
            app.state.pipeline.encoder.encode_query("warm up")
        except IndexNotFoundError as e:
            logger.warning("starting without an index: %s", e)
        yield
        app.state.pipeline.store.close()
        app.state.pipeline.reranker.close()

    app = FastAPI(
        title="shoprank",
        summary="Product search: BM25 + vector retrieval fused with RRF, optional reranking.",
        version="0.1.0",
        lifespan=lifespan,
    )

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
    def search(body: SearchRequest, pipeline: PipelineDep) -> SearchResponse:
        try:
            return pipeline.search(body)
        except RerankNotConfiguredError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        except IndexNotFoundError as e:
            raise HTTPException(status_code=503, detail=str(e)) from e
        except (IndexerError, RerankerError) as e:
            logger.exception("search failed")
            raise HTTPException(status_code=503, detail=f"search backend failed: {e}") from e

    @app.get("/products/{product_id}", response_model=Product)
    def get_product(product_id: str, pipeline: PipelineDep) -> Product:
        try:
            product = pipeline.store.get(product_id)
        except IndexNotFoundError as e:
            raise HTTPException(status_code=503, detail=str(e)) from e
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return product

    @app.get("/healthz", response_model=Health, response_model_exclude_none=True)
    def healthz(request: Request) -> Health:
        return Health(status="ok", index=request.app.state.settings.index)

    @app.get("/readyz", response_model=Health, response_model_exclude_none=True)
    def readyz(request: Request, pipeline: PipelineDep) -> Health:
        index = request.app.state.settings.index
        try:
            count = pipeline.store.count()
        except IndexerError as e:
            raise HTTPException(
                status_code=503,
                detail=Health(status="not ready", index=index, detail=str(e)).model_dump(
                    exclude_none=True
                ),
            ) from e
        return Health(
            status="ready", index=index, products=count, reranker=pipeline.reranker.name
        )

    return app
