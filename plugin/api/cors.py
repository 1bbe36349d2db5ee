"""CORS, closed unless origins are configured: with ``SHOPRANK_CORS_ALLOW_ORIGINS`` empty (the
default) no response carries a CORS header, so browsers on other origins cannot read the API;
with origins set, Starlette's `CORSMiddleware` allows exactly those.

Browsers get the public read and write routes a shop page needs (``GET`` and ``POST`` with a
JSON body); the admin routes' ``X-API-Key`` header is not allowed, so no web page can use it.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: What a cross-origin page may do.
ALLOWED_METHODS = ("GET", "POST")
ALLOWED_HEADERS = ("Content-Type",)


class ConfiguredCors:
    """`CORSMiddleware` for the origins in ``app.state.settings``, built on the first request
    (the settings are resolved when the app starts, after its middleware is set up)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._origins: tuple[str, ...] | None = None
        self._handler: ASGIApp = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(scope["app"].state, "settings", None) if "app" in scope else None
        if scope["type"] != "http" or settings is None:
            await self.app(scope, receive, send)
            return
        origins = tuple(settings.cors_allow_origins)
        if origins != self._origins:
            self._origins = origins
            self._handler = self.app if not origins else CORSMiddleware(
                self.app,
                allow_origins=origins,
                allow_methods=ALLOWED_METHODS,
                allow_headers=ALLOWED_HEADERS,
            )
        await self._handler(scope, receive, send)
