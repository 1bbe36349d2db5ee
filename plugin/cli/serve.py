"""``shoprank serve`` and ``shoprank demo``: run the HTTP API, in one process or several.

With ``--workers N`` uvicorn runs N processes on one port. Each builds its own app through
`worker_app`, with the settings the serve command resolved: its options are handed over as the
``SHOPRANK_*`` variables they stand for, which the workers inherit with the rest of the
environment. The workers write their metrics to a folder the serve command creates and removes
(`prometheus_client`'s multi-process mode), so ``GET /metrics`` adds up every worker's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

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
from plugin.metrics import MULTIPROC_ENV
from plugin.settings import Settings
from reranker.errors import RerankerError

if TYPE_CHECKING:
    from fastapi import FastAPI

#: The most worker processes `serve --workers` starts.
MAX_WORKERS = 64


class SessionStoreChoice(StrEnum):
    """Where session states live (`plugin.settings.SessionStoreKind`)."""

    memory = "memory"
    redis = "redis"


HostOption = Annotated[
    str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")
]
PortOption = Annotated[int | None, typer.Option("--port", help="Port to listen on (default 8080).")]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers", min=1, max=MAX_WORKERS,
        help="Server processes on the one port (more than 1 needs --session-store redis).",
    ),
]


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
    workers: WorkersOption = 1,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    options = {
        "host": host, "port": port, "index": index, "reranker": reranker,
        "reranker_checkpoint": checkpoint, "triton_url": triton_url,
        "final_ranker": final_ranker, "session_store": session_store, "redis_url": redis_url,
    }
    settings = build_settings(**options, store=store, opensearch_url=opensearch_url)
    if workers == 1:
        serve_api(settings)
    else:
        serve_workers(
            settings, workers, {**options, "store": store, "opensearch_url": opensearch_url}
        )


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


def serve_workers(settings: Settings, workers: int, options: Mapping[str, object]) -> None:
    """Serve with ``workers`` uvicorn processes; ``options`` are the command line's settings
    (None where not given), handed to the workers through their environment.

    Sessions must live where every worker reads them (Redis): in memory, each process would
    keep its own, and a shopper's next search would miss the events another one took.
    """
    if settings.session_store != "redis":
        fail(
            f"--workers {workers} needs --session-store redis (or SHOPRANK_SESSION_STORE=redis): "
            "in memory, each worker process would keep its own sessions"
        )
    try:  # fail once, here, rather than in every worker
        build_pipeline(settings).close()
    except (PluginError, RerankerError) as e:
        fail(str(e))
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="shoprank-metrics-") as metrics:
        console.print(f"serving with {workers} worker processes, their metrics in {metrics}",
                      highlight=False, soft_wrap=True)
        with environment({**worker_environment(options), MULTIPROC_ENV: metrics}):
            uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers,
                        host=settings.host, port=settings.port, log_level="info")


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in this process's environment (which worker processes inherit), and the
    environment as it was afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_environment(options: Mapping[str, object]) -> dict[str, str]:
    """The ``SHOPRANK_*`` variables that stand for the given ``options``.

    >>> worker_environment({"port": 8081, "session_store": SessionStoreChoice.redis, "index": None})
    {'SHOPRANK_PORT': '8081', 'SHOPRANK_SESSION_STORE': 'redis'}
    """
    prefix = Settings.model_config.get("env_prefix", "")
    return {
        f"{prefix}{name}".upper(): str(value.value if isinstance(value, StrEnum) else value)
        for name, value in options.items()
        if value is not None
    }


def worker_app() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (uvicorn calls this factory in
    each): its settings come from the environment the serve command prepared."""
    from plugin.api import create_app

    settings = Settings()
    limit_blas_threads(settings.blas_threads)
    return create_app(settings)


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
