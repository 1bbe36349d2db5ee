"""The package errors translated to HTTP, registered once on the app instead of a try/except
in every handler. Each answer has FastAPI's shape, ``{"detail": ...}``.

======================================  ====  ===========================================
error                                   code  why
======================================  ====  ===========================================
`IndexerError` (no index, store down)   503   the index is not available, never a bare 500
`SessionStoreError`                     503   the session store is not available
`RerankerError` that the pipeline       503   the search backend failed; a reranker that is
did not absorb                                down or slow is absorbed as ``degraded``
`RerankNotConfiguredError`              400   the request asks for what the server lacks
`UnknownProductError`                   404   no product with that id
`EventValidationError`                  422   each problem by its place in the batch
======================================  ====  ===========================================

FastAPI's own answers (a refused request, an ``HTTPException``) keep their shape but are
rendered as `SafeJSONResponse`: a 422 that repeats a ``NaN`` or an unpaired surrogate the
request held still answers.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from indexer.errors import IndexerError
from plugin.api.responses import SafeJSONResponse
from plugin.errors import RerankNotConfiguredError, UnknownProductError
from plugin.events import EventValidationError
from plugin.session_store import SessionStoreError
from reranker.errors import RerankerError

logger = logging.getLogger(__name__)


def request_validation_error(
    error: ValidationError, location: Literal["body", "query"]
) -> RequestValidationError:
    """A pydantic error raised inside a handler, as the 422 FastAPI gives for a bad request:
    each problem's ``loc`` starts with where the value came from, then names the field."""
    return RequestValidationError(
        [{**problem, "loc": (location, *problem["loc"])}
         for problem in error.errors(include_url=False)]
    )


def _detail(status_code: int, detail: object) -> SafeJSONResponse:
    return SafeJSONResponse(status_code=status_code, content={"detail": detail})


def invalid_request(request: Request, error: Exception) -> SafeJSONResponse:
    problems = error.errors() if isinstance(error, RequestValidationError) else [str(error)]
    return _detail(422, jsonable_encoder(problems))


def http_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, HTTPException):
        raise error
    headers = getattr(error, "headers", None)
    if not is_body_allowed_for_status_code(error.status_code):
        return Response(status_code=error.status_code, headers=headers)
    return SafeJSONResponse({"detail": error.detail}, status_code=error.status_code,
                            headers=headers)


def index_unavailable(request: Request, error: Exception) -> SafeJSONResponse:
    logger.warning("%s %s: %s", request.method, request.url.path, error)
    return _detail(503, str(error))


def session_store_unavailable(request: Request, error: Exception) -> SafeJSONResponse:
    logger.warning("%s %s: %s", request.method, request.url.path, error)
    return _detail(503, f"session store failed: {error}")


def search_backend_failed(request: Request, error: Exception) -> SafeJSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return _detail(503, f"search backend failed: {error}")


def rerank_not_configured(request: Request, error: Exception) -> SafeJSONResponse:
    return _detail(400, str(error))


def unknown_product(request: Request, error: Exception) -> SafeJSONResponse:
    return _detail(404, str(error))


def invalid_events(request: Request, error: Exception) -> SafeJSONResponse:
    problems = error.problems if isinstance(error, EventValidationError) else [str(error)]
    return _detail(422, problems)


def add_error_handlers(app: FastAPI) -> None:
    """Register every translation above on ``app``."""
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(IndexerError, index_unavailable)
    app.add_exception_handler(SessionStoreError, session_store_unavailable)
    app.add_exception_handler(RerankerError, search_backend_failed)
    app.add_exception_handler(RerankNotConfiguredError, rerank_not_configured)
    app.add_exception_handler(UnknownProductError, unknown_product)
    app.add_exception_handler(EventValidationError, invalid_events)
