"""The HTTP API: `create_app` builds the FastAPI app from the routers in this package.

- `app`: the app factory and the lifespan that builds and closes the pipeline;
- `dependencies`: what handlers get through `Depends` (pipeline, settings, admin key, filters);
- `error_handlers`: the package errors translated to HTTP statuses, once for every route;
- `responses`: the JSON answer class, and each route's error answers as OpenAPI declares them;
- `search`, `products`, `sessions`, `operations`, `metrics`: the routers, one per job
  (`metrics` also times and counts every request);
- `cors`, `rate_limit`, `body_limit`: the request guards, ASGI middleware that answer before a
  handler runs (CORS closed unless origins are set, 429 past a client's rate, 413 past the
  body limit);
- `docs`: the `/docs` and `/redoc` pages with their files served locally (no CDN).
"""

from __future__ import annotations

from plugin.api.app import create_app

__all__ = ["create_app"]
