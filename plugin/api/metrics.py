"""Prometheus metrics over HTTP: `GET /metrics`, and the middleware that times every request.

Each app keeps its metrics in its own `CollectorRegistry` (`add_metrics`): its request
histogram and error counter, and, while its lifespan runs, the pipeline's
`plugin.metrics.SearchMetrics`. Requests are labelled by route template (``/products/{id}``),
never by the raw path, so an unknown path or a product id cannot add a label. A request no
route handled is labelled ``unrouted``: an unknown path (404), or one a guard answered before
routing (429 past a rate limit, 413 past the body limit, a CORS preflight).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugin.api.dependencies import PipelineDep
from plugin.metrics import UNROUTED, CollectorRegistry, HttpMetrics, render

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request, pipeline: PipelineDep) -> Response:
    """The searches, degraded searches, stage and request latencies, errors and the reranker's
    circuit, in the Prometheus text format."""
    pipeline.metrics.refresh()
    body, content_type = render(request.app.state.metrics_registry)
    return Response(body, media_type=content_type)


def add_metrics(app: FastAPI) -> None:
    """Give ``app`` its registry and the request metrics; add this after the other middleware,
    so it runs first and times the guards' answers too."""
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    app.state.http_metrics = HttpMetrics(registry)
    app.add_middleware(RequestMetricsMiddleware)


def route_template(scope: Scope) -> str:
    """The path template of the route that handled ``scope`` (for a mount, its prefix), as
    the router left it in ``scope["route"]``; `plugin.metrics.UNROUTED` when none did."""
    route = scope.get("route")
    if isinstance(route, Route | Mount):  # FastAPI's APIRoute is a Route
        return route.path
    return UNROUTED


class RequestMetricsMiddleware:
    """Observes each HTTP request's seconds and status in ``app.state.http_metrics``; an
    exception that escapes the app counts as the 500 it becomes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics: HttpMetrics = scope["app"].state.http_metrics
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            metrics.observe(route_template(scope), scope["method"], status, seconds)
