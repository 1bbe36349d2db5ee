"""The app factory: the lifespan builds the pipeline and closes it; the routers are mounted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from indexer.errors import IndexerError
from plugin.api import operations, products, search, sessions
from plugin.api.error_handlers import add_error_handlers
from plugin.components import build_pipeline
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(
    app: FastAPI, *, settings: Settings | None, pipeline: SearchPipeline | None
) -> AsyncIterator[None]:
    """Resolve the settings, build the pipeline unless one was given, warm it up, close it.

    A missing or unreachable index does not stop the process: `/healthz` answers and the
    routes that need the index answer 503 until it exists.
    """
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


def create_app(settings: Settings | None = None, pipeline: SearchPipeline | None = None) -> FastAPI:
    """Build the app. Settings are read from the environment when the app starts.

    >>> from fastapi.testclient import TestClient
    >>> with TestClient(create_app(Settings(index="demo"))) as client:
    ...     client.get("/healthz").json()
    {'status': 'ok', 'index': 'demo'}
    """
    app = FastAPI(
        title="shoprank",
        summary="Product search: BM25 + vector retrieval fused with RRF, optional reranking.",
        version="0.1.0",
        lifespan=partial(lifespan, settings=settings, pipeline=pipeline),
    )
    add_error_handlers(app)
    for router in (search.router, products.router, sessions.router, operations.router):
        app.include_router(router)
    return app
