"""``shoprank reindex``, ``upsert`` and ``delete``: write the serving index.

`reindex_into` and `ensure_index` are also how ``eval`` and ``tune`` build the index they read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from indexer.catalog import CatalogLoad, load_catalog
from indexer.errors import CatalogError, IndexerError
from indexer.indexing import reindex_catalog, upsert_products
from indexer.store import VectorStore
from plugin.cli.common import (
    IndexOption,
    StoreChoice,
    StoreOption,
    UrlOption,
    build_settings,
    console,
    fail,
    index_exists,
)
from plugin.cli.progress import index_progress
from plugin.components import build_encoder, build_store
from plugin.settings import Settings

CatalogOption = Annotated[Path, typer.Option("--catalog", "-c", help="JSONL or JSONL.gz catalog.")]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="Fail on any invalid line; write nothing.")
]


@contextmanager
def indexer_failures(failed: str = "") -> Iterator[None]:
    """A bad catalog exits 2, any other indexer error 1 (``failed`` prefixes its message)."""
    try:
        yield
    except CatalogError as e:
        fail(str(e))
    except IndexerError as e:
        fail(f"{failed}{e}", code=1)


def serving_store(
    index: str | None, store: StoreChoice | None, opensearch_url: str | None
) -> tuple[Settings, VectorStore]:
    """The settings the index options give, and the store they name."""
    settings = build_settings(index=index, store=store, opensearch_url=opensearch_url)
    return settings, build_store(settings)


def reindex_into(settings: Settings, catalog: Path, *, strict: bool) -> None:
    """Rebuild the settings' index from ``catalog``, its phases drawn as progress."""
    store = build_store(settings)
    with (
        indexer_failures("reindex failed, the serving index is unchanged: "),
        index_progress(console, settings.indexer.store) as progress,
    ):
        report, load = reindex_catalog(
            store, catalog, build_encoder(settings.indexer), strict=strict, progress=progress
        )
    report_load(catalog, load)
    console.print(
        f"indexed {report.indexed} products into [bold]{settings.index}[/] "
        f"(version {report.version}) at {store.location}"
    )


def ensure_index(settings: Settings, catalog: Path) -> None:
    """Build the settings' index from ``catalog`` unless it exists (invalid lines skipped)."""
    if not index_exists(settings):
        reindex_into(settings, catalog, strict=False)


def report_load(catalog: Path, load: CatalogLoad) -> None:
    """Name the first skipped lines and the duplicate ids of a catalog load."""
    for error in load.errors[:10]:
        console.print(f"[yellow]skipped[/] {catalog}: {error}", highlight=False)
    if load.errors:
        console.print(f"[yellow]{len(load.errors)} invalid line(s) skipped[/]")
    if load.duplicate_ids:
        console.print(
            f"[yellow]{len(load.duplicate_ids)} duplicate id(s), the last line won[/]: "
            + ", ".join(load.duplicate_ids[:5])
        )


def reindex(
    catalog: CatalogOption,
    index: IndexOption = None,
    strict: StrictOption = False,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Validate a catalog, embed it and swap it in as the serving index (zero downtime)."""
    settings = build_settings(index=index, store=store, opensearch_url=opensearch_url)
    reindex_into(settings, catalog, strict=strict)


def upsert(
    catalog: Annotated[Path, typer.Option("--catalog", "-c", help="Products to add or replace.")],
    index: IndexOption = None,
    strict: StrictOption = False,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Add or replace products in the serving index; searchable when this returns."""
    settings, target = serving_store(index, store, opensearch_url)
    with (
        indexer_failures(),
        index_progress(console, settings.indexer.store) as progress,
    ):
        load = load_catalog(catalog, strict=strict)
        count = upsert_products(
            target, load.products, build_encoder(settings.indexer), progress=progress
        )
    report_load(catalog, load)
    console.print(f"upserted {count} products into {settings.index} at {target.location}")


def delete(
    product_ids: Annotated[list[str], typer.Argument(help="Product ids to remove.")],
    index: IndexOption = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Remove products from the serving index."""
    _, target = serving_store(index, store, opensearch_url)
    with indexer_failures():
        removed = target.delete(product_ids)
    console.print(f"deleted {removed} of {len(product_ids)} products from {target.location}")

