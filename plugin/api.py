"""The HTTP API. Collaborators are built in the lifespan and reach handlers through Depends."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from indexer.errors import IndexerError
from indexer.indexing import upsert_products
from indexer.schema import Product, product_to_text
from indexer.store import Filters
from plugin.components import build_pipeline
from plugin.errors import RerankNotConfiguredError
from plugin.events import (
    Event,
    EventBatch,
    EventRecorder,
    EventValidationError,
    RecordResult,
    session_summary,
)
from plugin.models import MAX_K, RecommendResponse, SearchRequest, SearchResponse, SessionId
from plugin.pipeline import SearchPipeline
from plugin.recommend import NoHistoryError, UnknownProductError, recommend, similar
from plugin.session_store import SessionStoreError
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

#: The filters `GET /similar` and `GET /recommend` take as query parameters.
_FILTER_PARAMS = tuple(Filters.model_fields)
_SINGLE_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def query_filters(request: Request) -> Filters | None:
    """Filters from the query string; an unknown parameter or a bad value is a 422."""
    allowed = {"k", "session_id", *_FILTER_PARAMS}
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise HTTPException(
            status_code=422,
            detail=f"unknown query parameter {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
        )
    params = request.query_params
    # Only brand takes a list (?brand=a&brand=b); every other filter is one value.
    values: dict[str, Any] = {
        name: params.getlist(name) if name == "brand" else params[name]
        for name in _FILTER_PARAMS
        if name in params
    }
    if not values:
        return None
    try:
        return Filters.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in e.errors(include_url=False)]
        ) from e


FiltersDep = Annotated[Filters | None, Depends(query_filters)]
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]


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
        app.state.pipeline.close()

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

    @app.patch(
        "/products/{product_id}", response_model=Product, dependencies=[Depends(require_admin)]
    )
    def patch_product(
        product_id: str,
        changes: Annotated[dict[str, Any], Body(examples=[{"price": 19.99, "in_stock": False}])],
        pipeline: PipelineDep,
    ) -> Product:
        """Change some fields of one product (price, stock, ...); searchable on return."""
        product = pipeline.store.get(product_id)
        if product is None:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        if changes.get("id", product_id) != product_id:
            raise HTTPException(status_code=422, detail="the id of a product cannot change")
        try:
            updated = Product.model_validate({**product.model_dump(), **changes})
        except ValidationError as e:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)]
            ) from e
        stored = pipeline.store.vectors([product_id]).get(product_id)
        if stored is not None and product_to_text(updated) == product_to_text(product):
            # Price and stock are not model text: keep the vectors, skip the encoder.
            title = pipeline.store.title_vectors([product_id]).get(product_id)
            pipeline.store.upsert(
                [updated], stored[np.newaxis, :], None if title is None else title[np.newaxis, :]
            )
        else:
            upsert_products(pipeline.store, [updated], pipeline.encoder)
        return updated

    @app.delete(
        "/products/{product_id}", status_code=204, dependencies=[Depends(require_admin)]
    )
    def delete_product(product_id: str, pipeline: PipelineDep) -> Response:
        if pipeline.store.delete([product_id]) == 0:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return Response(status_code=204)

    @app.post(
        "/events",
        response_model=RecordResult,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/EventBatch"},
                    {"$ref": "#/components/schemas/ClickEvent"},
                ]}}},
            }
        },
    )
    async def post_events(request: Request) -> RecordResult:
        """One event, or ``{"events": [...]}`` (at most 1000). All are validated first: on any
        problem nothing is stored and the 422 lists each problem by its place in the batch."""
        try:
            payload = await request.json()
        except ValueError as e:
            raise HTTPException(status_code=422, detail=f"the body is not JSON: {e}") from e
        try:
            if isinstance(payload, dict) and "events" in payload:
                events = EventBatch.model_validate(payload).events
            else:
                events = [_SINGLE_EVENT.validate_python(payload)]
        except ValidationError as e:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)]
            ) from e
        pipeline: SearchPipeline = request.app.state.pipeline
        recorder = EventRecorder(pipeline.store, pipeline.session_store)
        try:
            return await run_in_threadpool(recorder.record, events)
        except EventValidationError as e:
            raise HTTPException(status_code=422, detail=e.problems) from e
        except SessionStoreError as e:
            raise HTTPException(status_code=503, detail=f"session store failed: {e}") from e

    @app.get("/similar/{product_id}", response_model=RecommendResponse,
             response_model_exclude_none=True)
    def get_similar(
        product_id: str, pipeline: PipelineDep, filters: FiltersDep, k: KParam = 10
    ) -> RecommendResponse:
        """Products nearest to this one (by their embeddings), never itself; filters apply."""
        try:
            results = similar(pipeline.store, product_id, k, filters)
        except UnknownProductError as e:
            raise HTTPException(status_code=404, detail=str(e)) from e
        return RecommendResponse(
            source="item", of=product_id, results=results,
            filters=None if filters is None else filters.model_dump(exclude_none=True),
        )

    @app.get("/recommend", response_model=RecommendResponse, response_model_exclude_none=True)
    def get_recommend(
        session_id: Annotated[SessionId, Query()],
        pipeline: PipelineDep,
        filters: FiltersDep,
        k: KParam = 10,
    ) -> RecommendResponse:
        """Products nearest to the session's profile, leaving out what it bought."""
        try:
            state = pipeline.session_store.get(session_id)
            results = recommend(pipeline.store, state, k, filters)
        except SessionStoreError as e:
            raise HTTPException(status_code=503, detail=f"session store failed: {e}") from e
        except NoHistoryError as e:
            raise HTTPException(status_code=404, detail=f"session {session_id!r}: {e}") from e
        return RecommendResponse(
            source="session", of=session_id, results=results,
            filters=None if filters is None else filters.model_dump(exclude_none=True),
        )

    @app.get("/sessions/{session_id}", dependencies=[Depends(require_admin)])
    def get_session(session_id: SessionId, pipeline: PipelineDep) -> dict[str, Any]:
        """What the server holds of a session: affinities, price band, recent events."""
        try:
            state = pipeline.session_store.get(session_id)
            events = pipeline.session_store.events(session_id, limit=100)
        except SessionStoreError as e:
            raise HTTPException(status_code=503, detail=f"session store failed: {e}") from e
        if state is None and not events:
            raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
        return session_summary(state, events)

    @app.delete("/sessions/{session_id}", status_code=204,
                dependencies=[Depends(require_admin)])
    def delete_session(session_id: SessionId, pipeline: PipelineDep) -> Response:
        """Forget a session and its events."""
        try:
            existed = pipeline.session_store.delete(session_id)
        except SessionStoreError as e:
            raise HTTPException(status_code=503, detail=f"session store failed: {e}") from e
        if not existed:
            raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
        return Response(status_code=204)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(pipeline: PipelineDep) -> str:
        """Counters in the Prometheus text format."""
        lines = []
        for name in ("search_total", "search_degraded_total", "search_personalized_total",
                     "personalization_unavailable_total"):
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
