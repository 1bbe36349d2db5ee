"""The app factory: the lifespan builds the pipeline and closes it; the routers and the docs
pages are mounted behind the request guards (CORS, rate limits, the body limit)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI

from indexer.errors import IndexerError
from plugin.api import metrics, operations, products, search, sessions
from plugin.api.body_limit import BodyLimitMiddleware
from plugin.api.cors import ConfiguredCors
from plugin.api.docs import add_docs
from plugin.api.error_handlers import add_error_handlers
from plugin.api.metrics import add_metrics
from plugin.api.rate_limit import Clock, RateLimitMiddleware, route_buckets
from plugin.api.responses import SafeJSONResponse
from plugin.components import build_pipeline
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from plugin.web import router as web_router

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: Settings | None, pipeline: SearchPipeline | None, clock: Clock
) -> AsyncIterator[None]:
    """Resolve the settings, build the pipeline unless one was given, warm it up, close it.
    While the app serves, its registry reads the pipeline's metrics.

    The request guards read the settings and the rate limits' buckets (timed by ``clock``)
    from ``app.state``.

    A missing or unreachable index does not stop the process: `/healthz` answers and the
    routes that need the index answer 503 until it exists.
    """
    resolved = settings or Settings()
    app.state.settings = resolved
    app.state.rate_limits = route_buckets(resolved, clock)
    app.state.pipeline = pipeline or build_pipeline(resolved)
    try:
        app.state.pipeline.store.count()
        app.state.pipeline.encoder.encode_query("warm up")
    except IndexerError as e:
        logger.warning("starting without a usable index: %s", e)
    app.state.metrics_registry.register(app.state.pipeline.metrics)
    yield
    app.state.metrics_registry.unregister(app.state.pipeline.metrics)
    app.state.pipeline.close()


def create_app(
    settings: Settings | None = None,
    pipeline: SearchPipeline | None = None,
    *,
    clock: Clock = time.monotonic,
) -> FastAPI:
    """Build the app. Settings are read from the environment when the app starts; ``clock``
    times the rate limits (tests pass their own).

    >>> from fastapi.testclient import TestClient
    >>> with TestClient(create_app(Settings(index="demo"))) as client:
    ...     client.get("/healthz").json()
    {'status': 'ok', 'index': 'demo'}
    """
    app = FastAPI(
        title="shoprank",
        summary="Product search: BM25 + vector retrieval fused with RRF, optional reranking.",
        version="0.1.0",
        lifespan=partial(lifespan, settings=settings, pipeline=pipeline, clock=clock),
        docs_url=None,
        redoc_url=None,
        default_response_class=SafeJSONResponse,
    )
    add_error_handlers(app)
    for router in (search.router, products.router, sessions.router, operations.router,
                   metrics.router):
        app.include_router(router)
    app.include_router(web_router)
    add_docs(app)
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    # The last added runs first: every answer is timed and counted, the guards' included; CORS
    # headers go on every answer; a client over its rate is answered before its body is
    # looked at.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RateLimitMiddleware)
    app.add_middleware(ConfiguredCors)
    add_metrics(app)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the models of the `POST /events` body, whose handler reads the body
    itself (so FastAPI does not collect them)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(
            sessions.EVENT_SCHEMAS
        )
    return app.openapi_schema  # type: ignore[return-value]
