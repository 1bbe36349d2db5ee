"""The search page: server-rendered Jinja2 templates and a small static bundle (no CDN), for
shoppers (search, filters, "more", similar products, a session that sends events) and for
relevance engineers (per-stage scores and timings, a compare view, judging into a qrels file).

`plugin.web.router` holds the routes; `plugin.web.views` turns search responses into what the
templates show; `plugin.web.judgments` reads and appends the judgments file.
"""

from plugin.web.router import router

__all__ = ["router"]
