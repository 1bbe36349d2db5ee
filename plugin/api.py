"""The HTTP API. Collaborators are built in the lifespan and reach handlers through Depends."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from indexer.errors import IndexerError
from indexer.indexing import upsert_products
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


def require_admin(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """Admin endpoints need ``X-API-Key`` equal to ``SHOPRANK_ADMIN_API_KEY``."""
    expected = request.app.state.settings.admin_api_key
    if expected is None:
        raise HTTPException(
            status_code=403, detail="the admin API is disabled: set SHOPRANK_ADMIN_API_KEY"
        )
    if x_api_key is None or not secrets.compare_digest(
        x_api_key.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong X-API-Key header",
            headers={"WWW-Authenticate": "ApiKey"},
        )


PipelineDep = Annotated[SearchPipeline, Depends(get_pipeline)]


def _unavailable(request: Request, error: Exception) -> JSONResponse:
    logger.warning("%s %s: %s", request.method, request.url.path, error)
    return JSONResponse(status_code=503, content={"detail": str(error)})


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
        except IndexerError as e:
            logger.warning("starting without a usable index: %s", e)
        yield
        app.state.pipeline.store.close()
        app.state.pipeline.reranker.close()

    app = FastAPI(
        title="shoprank",
        summary="Product search: BM25 + vector retrieval fused with RRF, optional reranking.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # A missing index, an unreachable or failing store is "not available", never a bare 500.
    app.add_exception_handler(IndexerError, _unavailable)

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True)
    def search(body: SearchRequest, pipeline: PipelineDep) -> SearchResponse:
        try:
            return pipeline.search(body)
        except RerankNotConfiguredError as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        except RerankerError as e:
            logger.exception("search failed")
            raise HTTPException(status_code=503, detail=f"search backend failed: {e}") from e

    @app.get("/products/{product_id}", response_model=Product)
    def get_product(product_id: str, pipeline: PipelineDep) -> Product:
        product = pipeline.store.get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return product

    @app.put(
        "/products/{product_id}", response_model=Product, dependencies=[Depends(require_admin)]
    )
    def put_product(product_id: str, body: Product, pipeline: PipelineDep) -> Product:
        """Add or replace one product; it is searchable when the response arrives."""
        if body.id != product_id:
            raise HTTPException(
                status_code=422,
                detail=f"body id {body.id!r} does not match the path id {product_id!r}",
            )
        upsert_products(pipeline.store, [body], pipeline.encoder)
        return body

    @app.delete(
        "/products/{product_id}", status_code=204, dependencies=[Depends(require_admin)]
    )
    def delete_product(product_id: str, pipeline: PipelineDep) -> Response:
        if pipeline.store.delete([product_id]) == 0:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return Response(status_code=204)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(pipeline: PipelineDep) -> str:
        """Counters in the Prometheus text format."""
        lines = []
        for name in ("search_total", "search_degraded_total"):
            lines += [f"# TYPE shoprank_{name} counter",
                      f"shoprank_{name} {pipeline.counters.get(name, 0)}"]
        breaker = getattr(pipeline.reranker, "breaker", None)
        if breaker is not None:
            lines += ["# TYPE shoprank_reranker_circuit_open gauge",
                      f"shoprank_reranker_circuit_open {int(breaker.state != 'closed')}"]
        return "\n".join(lines) + "\n"

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
