"""The search page's routes: the page (`GET /`), its fragments for "more" and similar products,
the compare view (`GET /compare`), judging (`POST /ui/judgments`, admin key), and the page's
own script and style (`GET /ui/static/...`), all served from this package.

Handlers are plain functions (FastAPI runs them in its thread pool, as `POST /search` is run);
they call the same `SearchPipeline.search` the API does, so the page shows what the API answers.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import IndexerError
from plugin.api.dependencies import ADMIN, PipelineDep
from plugin.errors import RerankNotConfiguredError, UnknownProductError
from plugin.models import MAX_QUERY_CHARS, SearchResponse
from plugin.pipeline import SearchPipeline
from plugin.recommend import similar
from plugin.session_store import SessionStoreError
from plugin.web.judgments import GRADES, Judgments, JudgmentsError
from plugin.web.settings import WebSettings
from plugin.web.views import CONFIGURATIONS, PageQuery, moves, ndcg10, problems, result_views

HERE = Path(__file__).parent
#: The page's own files: name -> media type. Nothing else under static/ is served.
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
SESSION_COOKIE = "shoprank_session"
#: How many brands the brand field suggests (the most common in the index).
BRAND_SUGGESTIONS = 50

router = APIRouter(include_in_schema=False)


@cache
def templates() -> Jinja2Templates:
    return Jinja2Templates(directory=HERE / "templates")


def get_judgments(request: Request) -> Judgments | None:
    """The judgments files (``SHOPRANK_QRELS`` / ``SHOPRANK_QUERIES``), read on first use."""
    state = request.app.state
    if not hasattr(state, "web_judgments"):
        settings = WebSettings()
        state.web_judgments = (
            None if settings.qrels is None or settings.queries is None
            else Judgments(settings.qrels, settings.queries)
        )
    judgments: Judgments | None = state.web_judgments
    return judgments


JudgmentsDep = Annotated[Judgments | None, Depends(get_judgments)]


async def search_allowance(request: Request) -> None:
    """A page that searches spends the client's `POST /search` tokens (when rate limits are
    on), one per search it runs: the page is no way around the API's limit. Async, so it runs
    on the event loop as the limit's middleware does (the buckets have no lock)."""
    if not request.query_params.get("q", "").strip():
        return
    buckets = getattr(request.app.state, "rate_limits", {}).get("/search")
    if buckets is None:
        return
    client = request.client.host if request.client else "unknown"
    searches = 2 if request.url.path.endswith("/compare") else 1
    for _ in range(searches):
        wait = buckets.take(client)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(
                status_code=429, headers={"Retry-After": str(seconds)},
                detail=f"rate limit exceeded on /search (the page's searches count too); "
                f"retry after {seconds} s",
            )


SEARCHES = (Depends(search_allowance),)


class PageError(Exception):
    """A search the page cannot show: the message and the status the page answers with."""

    def __init__(self, status: int, messages: Sequence[str]) -> None:
        self.status = status
        self.messages = list(messages)
        super().__init__("; ".join(messages))


def _page_query(request: Request) -> PageQuery:
    params = request.query_params
    try:
        page = PageQuery.from_params(dict(params), params.getlist("brand"))
    except ValidationError as e:
        raise PageError(422, problems(e)) from e
    if page.config not in CONFIGURATIONS:
        raise PageError(422, [f"config: unknown configuration {page.config!r}; "
                              f"one of {', '.join(CONFIGURATIONS)}"])
    return page


def _session_id(request: Request) -> str:
    """The shopper's session: the page's cookie, or a new one (set on the response)."""
    known = request.cookies.get(SESSION_COOKIE, "")
    if known and len(known) <= 128 and all(c.isalnum() or c in "_.:@-" for c in known):
        return known
    return "web-" + secrets.token_hex(8)


def _run(
    pipeline: SearchPipeline, page: PageQuery, config: str, session_id: str, explain: bool
) -> SearchResponse:
    if len(page.q) > MAX_QUERY_CHARS:
        raise PageError(422, [f"q: at most {MAX_QUERY_CHARS} characters"])
    try:
        return pipeline.search(page.request(config, session_id=session_id, explain=explain))
    except ValidationError as e:
        raise PageError(422, problems(e)) from e
    except RerankNotConfiguredError as e:
        raise PageError(400, [f"config {config!r}: {e}"]) from e
    except (IndexerError, SessionStoreError) as e:
        raise PageError(503, [f"search is not available: {e}"]) from e


def _brands(request: Request, pipeline: SearchPipeline) -> list[str]:
    """The most common brands, for the brand field's suggestions (computed once)."""
    state = request.app.state
    if not hasattr(state, "web_brands"):
        try:
            counts = pipeline.store.brand_counts()
        except IndexerError:
            return []
        common = sorted((b for b in counts if b), key=lambda b: -counts[b])
        state.web_brands = common[:BRAND_SUGGESTIONS]
    brands: list[str] = state.web_brands
    return brands


def _render(
    request: Request, name: str, context: dict[str, Any], session_id: str, status: int = 200
) -> HTMLResponse:
    response = templates().TemplateResponse(
        request, name, {"session_id": session_id, "configurations": CONFIGURATIONS, **context},
        status_code=status,
    )
    # The page's script reads the id from the page, never from the cookie.
    response.set_cookie(SESSION_COOKIE, session_id, max_age=86_400, samesite="lax",
                        httponly=True)
    return response


def _results(
    pipeline: SearchPipeline,
    response: SearchResponse,
    judgments: Judgments | None,
    other: SearchResponse | None = None,
) -> dict[str, Any]:
    """A response as the templates show it: results with pictures, grades and moves."""
    try:
        grades = judgments.grades(response.query) if judgments is not None else None
    except JudgmentsError as e:
        raise PageError(503, [str(e)]) from e
    ids = [hit.id for hit in response.results]
    products = pipeline.store.get_many(ids)
    moved = None if other is None else moves(ids, [hit.id for hit in other.results])
    return {
        "response": response,
        "results": result_views(response, products, grades, moved),
        "ndcg": ndcg10(ids, grades),
        "judged": grades is not None,
    }


@router.get("/", response_class=HTMLResponse, dependencies=SEARCHES)
def search_page(request: Request, pipeline: PipelineDep, judgments: JudgmentsDep) -> Response:
    """The search page; with ``q`` the server renders the first results."""
    session_id = _session_id(request)
    context: dict[str, Any] = {"brands": _brands(request, pipeline), "grades": GRADES,
                               "judging": judgments is not None}
    try:
        page = _page_query(request)
        context["page"] = page
        if page.q.strip():
            response = _run(pipeline, page, page.config, session_id, page.explain)
            context.update(_results(pipeline, response, judgments))
    except PageError as e:
        context.setdefault("page", PageQuery())
        return _render(request, "search.html", {**context, "errors": e.messages}, session_id,
                       e.status)
    return _render(request, "search.html", context, session_id)


@router.get("/ui/results", response_class=HTMLResponse, dependencies=SEARCHES)
def more_results(request: Request, pipeline: PipelineDep, judgments: JudgmentsDep) -> Response:
    """Results from ``offset`` on, as list items ("more" appends them to the page)."""
    session_id = _session_id(request)
    try:
        page = _page_query(request)
        offset = int(request.query_params.get("offset", "0"))
        response = _run(pipeline, page, page.config, session_id, page.explain)
    except (PageError, ValueError) as e:
        status = e.status if isinstance(e, PageError) else 422
        raise HTTPException(status_code=status, detail=str(e)) from e
    context = _results(pipeline, response, judgments)
    context["results"] = context["results"][offset:]
    return _render(request, "_more.html", {**context, "page": page, "grades": GRADES,
                                           "judging": judgments is not None}, session_id)


@router.get("/ui/similar/{product_id}", response_class=HTMLResponse)
def similar_products(request: Request, product_id: str, pipeline: PipelineDep) -> Response:
    """Products nearest to one product (as `GET /similar/{id}` answers), as a list."""
    results = similar(pipeline.store, product_id, 5, None)
    products = pipeline.store.get_many([r.id for r in results])
    return _render(request, "_similar.html", {"items": results, "products": products},
                   _session_id(request))


@router.get("/ui/products/{product_id}", response_class=HTMLResponse)
def product_page(request: Request, product_id: str, pipeline: PipelineDep) -> Response:
    """One product and its similar products (a result's link leads here)."""
    product = pipeline.store.get(product_id)
    if product is None:
        raise UnknownProductError(f"no product with id {product_id!r}")
    results = similar(pipeline.store, product_id, 5, None)
    query = request.query_params.get("q", "")
    return _render(request, "product.html", {
        "product": product, "items": results,
        "products": pipeline.store.get_many([r.id for r in results]),
        "back": PageQuery(q=query[:MAX_QUERY_CHARS]).url() if query else None, "page": None,
    }, _session_id(request))


@router.get("/compare", response_class=HTMLResponse, dependencies=SEARCHES)
def compare_page(request: Request, pipeline: PipelineDep, judgments: JudgmentsDep) -> Response:
    """One query under two configurations (``a=`` and ``b=``) side by side, moves marked."""
    session_id = _session_id(request)
    params = request.query_params
    sides = (params.get("a", "hybrid"), params.get("b", "default"))
    context: dict[str, Any] = {"sides": sides, "brands": _brands(request, pipeline)}
    try:
        page = _page_query(request)
        context["page"] = page
        unknown = [name for name in sides if name not in CONFIGURATIONS]
        if unknown:
            raise PageError(422, [f"unknown configuration {unknown[0]!r}; "
                                  f"one of {', '.join(CONFIGURATIONS)}"])
        if page.q.strip():
            left, right = (_run(pipeline, page, name, session_id, True) for name in sides)
            context["columns"] = [
                {"name": sides[0], **_results(pipeline, left, judgments, right)},
                {"name": sides[1], **_results(pipeline, right, judgments, left)},
            ]
    except PageError as e:
        context.setdefault("page", PageQuery())
        return _render(request, "compare.html", {**context, "errors": e.messages}, session_id,
                       e.status)
    return _render(request, "compare.html", context, session_id)


class Judgment(BaseModel):
    """One rating from the page."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    product_id: str = Field(min_length=1, max_length=256, pattern=r"^\S+$")
    grade: int = Field(ge=min(GRADES), le=max(GRADES))


class Saved(BaseModel):
    qid: str
    product_id: str
    grade: int


@router.post("/ui/judgments", response_model=Saved, dependencies=ADMIN)
def judge(body: Judgment, judgments: JudgmentsDep) -> Saved:
    """Append one rating to the qrels file (the admin key is required: ratings train models)."""
    if judgments is None:
        raise HTTPException(status_code=409, detail="judging is off: set SHOPRANK_QRELS and "
                            "SHOPRANK_QUERIES to the files to write")
    try:
        qid = judgments.record(body.query, body.product_id, body.grade)
    except JudgmentsError as e:
        raise HTTPException(status_code=503, detail=str(e)) from e
    return Saved(qid=qid, product_id=body.product_id, grade=body.grade)


@router.get("/ui/static/{name}")
def static_file(name: str) -> FileResponse:
    """The page's script and style (no CDN: the page works offline)."""
    if name not in STATIC_FILES:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "public, max-age=3600"})
