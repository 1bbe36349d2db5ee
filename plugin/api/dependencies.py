"""What handlers get through `Depends`: the pipeline and settings the lifespan built, the admin
key check, and the filters that `GET /similar` and `GET /recommend` take as query parameters."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import ValidationError

from indexer.store import Filters
from plugin.api.error_handlers import request_validation_error
from plugin.models import MAX_K
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings


def get_pipeline(request: Request) -> SearchPipeline:
    pipeline: SearchPipeline = request.app.state.pipeline
    return pipeline


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


PipelineDep = Annotated[SearchPipeline, Depends(get_pipeline)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


#: The admin key, declared to OpenAPI as a security scheme (the docs page's "Authorize").
ADMIN_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="AdminKey", auto_error=False,
    description="SHOPRANK_ADMIN_API_KEY; the admin routes need it",
)


def require_admin(
    settings: SettingsDep, x_api_key: Annotated[str | None, Security(ADMIN_KEY_HEADER)]
) -> None:
    """Admin endpoints need ``X-API-Key`` equal to ``SHOPRANK_ADMIN_API_KEY``."""
    expected = settings.admin_api_key
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


#: Route dependencies of the admin endpoints.
ADMIN = (Depends(require_admin),)

#: The filters `GET /similar` and `GET /recommend` take as query parameters.
_FILTER_PARAMS = tuple(Filters.model_fields)


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
        raise request_validation_error(e, "query") from e


FiltersDep = Annotated[Filters | None, Depends(query_filters)]
KParam = Annotated[int, Query(ge=1, le=MAX_K, description="how many results")]
