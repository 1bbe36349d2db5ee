"""``shoprank search``: search the index from the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from indexer.errors import IndexerError
from indexer.store import Filters
from plugin.cli.common import (
    IndexOption,
    ModeChoice,
    StoreOption,
    UrlOption,
    build_settings,
    fail,
    out,
    problems,
)
from plugin.components import build_pipeline
from plugin.errors import PluginError
from plugin.models import SearchRequest, SearchResponse
from reranker.errors import RerankerError


def search(
    query: Annotated[str, typer.Argument(help="The search text.")],
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 10,
    mode: Annotated[
        ModeChoice, typer.Option("--mode", "-m", help="How retrieval runs.")
    ] = ModeChoice.hybrid,
    brand: Annotated[
        list[str] | None, typer.Option("--brand", help="Only these brands (repeat for several).")
    ] = None,
    category: Annotated[
        str | None,
        typer.Option("--category", help="Only products in this category (any level of its path)."),
    ] = None,
    price_min: Annotated[
        float | None, typer.Option("--price-min", help="Lowest price, inclusive.")
    ] = None,
    price_max: Annotated[
        float | None, typer.Option("--price-max", help="Highest price, inclusive.")
    ] = None,
    in_stock: Annotated[
        bool, typer.Option("--in-stock", help="Leave out products marked out of stock.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
    explain: Annotated[
        bool, typer.Option("--explain", help="Say why each result ranks where it does.")
    ] = False,
    index: IndexOption = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Search the index from the terminal."""
    settings = build_settings(index=index, store=store, opensearch_url=opensearch_url)
    try:
        filters = Filters(
            brand=brand or None, category=category, price_min=price_min, price_max=price_max,
            in_stock=True if in_stock else None,
        )
        request = SearchRequest(
            query=query, k=k, mode=mode.value, filters=filters, explain=explain
        )
    except ValidationError as e:
        fail(problems(e))
    try:
        response = build_pipeline(settings).search(request)
    except (IndexerError, RerankerError, PluginError) as e:
        fail(str(e), code=1)
    if as_json:
        out.print_json(response.model_dump_json(exclude_none=True))
    else:
        print_results(response)


def print_results(response: SearchResponse) -> None:
    """The results as a table, then the time each stage took."""
    table = Table(title=f"{response.query!r} ({response.mode}, {response.candidates} candidates)")
    for column in ("#", "id", "title", "brand", "price", "score"):
        table.add_column(column)
    for hit in response.results:
        table.add_row(
            str(hit.rank),
            hit.id,
            hit.title[:80],
            hit.brand or "",
            "" if hit.price is None else f"{hit.price:.2f}",
            f"{hit.score:.4f}",
        )
    out.print(table)
    timings = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in response.timings_ms.items())
    out.print(f"timings: {timings}", highlight=False)
