"""Per-client rate limits: a token bucket per client address, and the ASGI middleware that
answers 429 with ``Retry-After`` on the limited routes before a handler or the body is read.

Each limited route has its own table of buckets (a shopper's events do not spend its
searches). A bucket refills at ``per_second`` tokens a second up to ``burst``; a request takes
one token. A bucket idle long enough to be full again is the same as a new one, so it is
forgotten, and the table never holds more than ``max_clients`` (the least recently seen go
first): memory stays bounded whatever the number of addresses.

>>> now = [0.0]
>>> buckets = TokenBuckets(per_second=1, burst=2, max_clients=10, clock=lambda: now[0])
>>> [buckets.take("a"), buckets.take("a"), buckets.take("a"), buckets.take("b")]
[None, None, 1.0, None]
>>> now[0] = 1.0
>>> buckets.take("a")
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from plugin.settings import Settings

Clock = Callable[[], float]

#: The routes that are limited, each with its own buckets.
LIMITED_PATHS = ("/search", "/events")


class TokenBuckets:
    """The buckets of one route, keyed by client. Used from the event loop only (no lock)."""

    def __init__(
        self, per_second: float, burst: int, *, max_clients: int, clock: Clock = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        #: client -> (tokens left, when last seen), least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> float | None:
        """Take a token for ``client``: None if it may go on, else the seconds until it may."""
        now = self._clock()
        self._forget_full(now)
        tokens, seen = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - seen) * self.per_second)
        wait = None
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.per_second
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled to ``burst`` since their client was last seen."""
        refill = self.burst / self.per_second
        while self._buckets:
            _, seen = next(iter(self._buckets.values()))
            if now - seen < refill:
                return
            self._buckets.popitem(last=False)


def route_buckets(settings: Settings, clock: Clock = time.monotonic) -> dict[str, TokenBuckets]:
    """One bucket table per limited route, or none when ``SHOPRANK_RATE_LIMIT`` is off."""
    if not settings.rate_limit:
        return {}
    return {
        path: TokenBuckets(
            settings.rate_limit_per_second,
            settings.rate_limit_burst,
            max_clients=settings.rate_limit_max_clients,
            clock=clock,
        )
        for path in LIMITED_PATHS
    }


class RateLimitMiddleware:
    """Answers 429 to a client past its limit on a limited route; reads the tables the lifespan
    put in ``app.state.rate_limits`` (none before it ran, or when limits are off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            tables: Mapping[str, TokenBuckets] = getattr(
                scope["app"].state, "rate_limits", {}
            )
            path = route_path(scope)
            buckets = tables.get(path)
            if buckets is not None:
                client = scope.get("client")
                wait = buckets.take(client[0] if client else "unknown")
                if wait is not None:
                    await _too_many(buckets, path, wait)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The request's path inside the app (without the ``root_path`` a proxy mounts it under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _too_many(buckets: TokenBuckets, path: str, wait: float) -> JSONResponse:
    seconds = max(1, math.ceil(wait))
    detail = (
        f"rate limit exceeded on {path}: {buckets.per_second:g} requests per second per client, "
        f"bursts of {buckets.burst}; retry after {seconds} s"
    )
    return JSONResponse({"detail": detail}, status_code=429,
                        headers={"Retry-After": str(seconds)})
