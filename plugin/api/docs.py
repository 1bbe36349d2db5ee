"""The API docs pages, `/docs` (Swagger UI) and `/redoc`, served with their scripts, styles and
icon from this server, so they work without internet access (FastAPI's own pages load them
from a CDN). The files come from the ``fastapi-offline`` package, which ships Swagger UI's and
ReDoc's standalone bundles; only its static folder is used.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

#: Where the bundled files are served.
ASSETS_URL = "/docs-assets"
#: The package and folder that hold them.
ASSETS_PACKAGE = ("fastapi_offline", "static")
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


def add_docs(app: FastAPI) -> None:
    """Serve the docs pages and their files on ``app`` (made with ``docs_url=None`` and
    ``redoc_url=None``, so that FastAPI's CDN pages are not there too)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    app.include_router(router)


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        # No badge that asks swagger.io's online validator about the schema.
        swagger_ui_parameters={**(request.app.swagger_ui_parameters or {}), "validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )
