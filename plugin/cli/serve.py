"""``shoprank serve`` and ``shoprank demo``: run the HTTP API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from plugin.cli.common import (
    CheckpointOption,
    IndexOption,
    RerankerChoice,
    StoreOption,
    UrlOption,
    build_settings,
    console,
    fail,
    index_exists,
)
from plugin.cli.index import reindex_into
from plugin.components import build_pipeline, limit_blas_threads
from plugin.demo import DEMO_CATALOG, DEMO_INDEX
from plugin.errors import PluginError
from plugin.settings import Settings
from reranker.errors import RerankerError


class SessionStoreChoice(StrEnum):
    """Where session states live (`plugin.settings.SessionStoreKind`)."""

    memory = "memory"
    redis = "redis"


HostOption = Annotated[
    str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
]
PortOption = Annotated[int | None, typer.Option("--port", help="Port to listen on (default 8080).")]


def serve(
    host: HostOption = None,
    port: PortOption = None,
    index: IndexOption = None,
    reranker: Annotated[
        RerankerChoice | None,
        typer.Option("--reranker", help="onnx (default: the packaged cross-encoder on ONNX "
                     "Runtime INT8, or an `export onnx` folder / tuned --checkpoint), "
                     "cross-encoder (torch, in process), triton, or none."),
    ] = None,
    checkpoint: CheckpointOption = None,
    triton_url: Annotated[
        str | None, typer.Option("--triton-url", help="Triton's HTTP endpoint (--reranker triton).")
    ] = None,
    final_ranker: Annotated[
        str | None,
        typer.Option("--final-ranker", help="default (packaged), none, or a `tune ranker` file."),
    ] = None,
    session_store: Annotated[
        SessionStoreChoice | None,
        typer.Option("--session-store", help="Where sessions live (default: memory)."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL (--session-store redis).")
    ] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    settings = build_settings(
        host=host, port=port, index=index, reranker=reranker,
        reranker_checkpoint=checkpoint, triton_url=triton_url, final_ranker=final_ranker,
        session_store=session_store, redis_url=redis_url, store=store,
        opensearch_url=opensearch_url,
    )
    serve_api(settings)


def serve_api(settings: Settings) -> None:
    """Build the pipeline and serve it with uvicorn until interrupted."""
    # Imported when serving: the app and the server are not needed by the other commands.
    import uvicorn

    from plugin.api import create_app

    try:
        pipeline = build_pipeline(settings)
    except (PluginError, RerankerError) as e:
        fail(str(e))
    app = create_app(settings, pipeline)
    limit_blas_threads(settings.blas_threads)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


def demo(
    host: HostOption = None,
    port: PortOption = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Index the demo catalog and exit.")
    ] = False,
) -> None:
    """Index the bundled ESCI catalog if needed, then serve it."""
    settings = build_settings(host=host, port=port, index=DEMO_INDEX)
    if not index_exists(settings):
        console.print(f"indexing the bundled demo catalog {DEMO_CATALOG.name} (first run only)")
        reindex_into(settings, DEMO_CATALOG, strict=False)
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"\n[bold]shoprank demo[/] serves {url} (API docs: {url}/docs)\n"
        f"try:\n  curl -s {url}/search -H 'content-type: application/json' "
        """-d '{"query": "wireless earbuds", "k": 5, "explain": true}'\n"""
        "then POST /events with a session_id, search with that session_id, and try "
        "GET /similar/{id} and GET /recommend?session_id=... (README, \"Sessions\")\n",
        highlight=False,
        soft_wrap=True,
    )
    if not no_serve:
        serve_api(settings)
