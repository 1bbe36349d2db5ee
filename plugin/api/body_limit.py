"""The request body limit: a body over ``SHOPRANK_MAX_BODY_BYTES`` is answered 413 before it
is read.

A request that declares its length (``Content-Length``) is judged by it and nothing of its
body is read; the server's framing then holds the body to that length. A request that does
not (``Transfer-Encoding: chunked``) has its chunks counted as they arrive: past the limit it is
answered at once and the rest is never read; within it, the chunks read are handed on to the
app unchanged.
"""

from __future__ import annotations

from collections import deque

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Refuses oversized bodies with 413; the limit comes from ``app.state.settings``, which the
    lifespan sets (before it ran, requests pass unchecked)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(scope["app"].state, "settings", None) if "app" in scope else None
        if scope["type"] != "http" or settings is None:
            await self.app(scope, receive, send)
            return
        limit: int = settings.max_body_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await too_large(limit)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        read = await _read_within(receive, limit)
        if read is None:
            await too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(read, receive), send)


def too_large(limit: int) -> JSONResponse:
    """The 413; the connection closes, since the rest of the body was not read."""
    return JSONResponse(
        {"detail": f"request body too large: the limit is {limit} bytes "
                   "(SHOPRANK_MAX_BODY_BYTES)"},
        status_code=413,
        headers={"Connection": "close"},
    )


async def _read_within(receive: Receive, limit: int) -> list[Message] | None:
    """The body's messages up to its end, or None as soon as they add up to over ``limit``."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then whatever the server sends next."""
    pending = deque(messages)

    async def replayed() -> Message:
        return pending.popleft() if pending else await receive()

    return replayed
