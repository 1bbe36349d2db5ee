"""The API's answers: `SafeJSONResponse`, the class every JSON answer is rendered with, and
the error answers as OpenAPI declares them: one table of what each status means here, and the
JSON bodies `plugin.api.error_handlers`, the handlers and the request guards send with them.
Routes list their statuses with `error_responses`:

>>> sorted(error_responses(404, 503))
[404, 503]
>>> error_responses(404)[404]["model"].__name__
'ErrorBody'
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model

from indexer.text import replace_surrogates


class SafeJSONResponse(JSONResponse):
    """JSON that always renders. Python reads ``NaN``, ``Infinity`` and an unpaired ``\\ud800``
    in a request's JSON, and a 422 repeats the input it refuses; neither fits in strict UTF-8
    JSON, and rendering them failed the answer with a 500. Here a number that is not finite
    is written as null and an unpaired surrogate as U+FFFD (as catalog text is cleaned).

    >>> SafeJSONResponse({"input": [float("nan"), "a\\ud800"]}).body
    b'{"input":[null,"a\\xef\\xbf\\xbd"]}'
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (UnicodeEncodeError, ValueError):
            return super().render(_json_safe(content))


def _json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return replace_surrogates(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


class ErrorBody(BaseModel):
    """Every error answer but 422: what went wrong, in words (FastAPI's shape)."""

    detail: str


class Problem(BaseModel):
    """One problem with a request, as FastAPI reports it: where the value came from and which
    field (``loc``), what is wrong (``msg``, ``type``) and the limit it broke (``ctx``)."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class InvalidRequestBody(BaseModel):
    """A 422: the problems by field (FastAPI's validation), each problem of an event batch by
    its place in the batch, or one sentence (an unknown query parameter, a body that is not
    JSON, a body id that differs from the path's)."""

    detail: list[Problem] | list[str] | str = Field(
        description="the problems: by field, by place in a batch, or in one sentence"
    )


#: What each error status means in this API.
DESCRIPTIONS: dict[int, str] = {
    400: "The body is not UTF-8 text, or (POST /search) the request asks for a stage this "
         "server does not run (a reranker, a final stage).",
    401: "The X-API-Key header is missing or wrong.",
    403: "The admin API is off: the server has no SHOPRANK_ADMIN_API_KEY.",
    404: "No such product or session.",
    413: "The body is over SHOPRANK_MAX_BODY_BYTES; it was not read.",
    422: "The request is invalid; the answer names each field and the limit it broke.",
    429: "Too many requests from this client (SHOPRANK_RATE_LIMIT); the Retry-After header "
         "says after how many seconds to try again.",
    503: "The index or the session store is not available (or the search backend failed).",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer ``codes``, each with its JSON body."""
    return {
        code: {"model": InvalidRequestBody if code == 422 else ErrorBody,
               "description": DESCRIPTIONS[code]}
        for code in codes
    }


def error_with_detail(
    code: int, detail: type[BaseModel], description: str
) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route whose ``code`` answer's ``detail`` is a ``detail`` model
    rather than a sentence (`/readyz` says which index is not ready)."""
    body = create_model(f"{detail.__name__}Error", detail=(detail, ...))
    return {code: {"model": body, "description": description}}


#: The statuses every admin route may answer beside its own.
ADMIN_ERRORS = (401, 403)
