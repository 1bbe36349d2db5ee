"""The ``shoprank`` command line."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from indexer.catalog import CatalogLoad, load_catalog
from indexer.errors import CatalogError, IndexerError
from indexer.indexing import reindex_catalog, upsert_products
from indexer.settings import IndexerSettings
from indexer.store import Filters, RetrievalMode
from plugin.components import build_encoder, build_pipeline, build_store
from plugin.demo import DEMO_CATALOG, DEMO_INDEX
from plugin.errors import PluginError
from plugin.models import SearchRequest, SearchResponse
from plugin.settings import Settings
from reranker.errors import RerankerError
from reranker.evaluation import (
    ESCI_GAINS,
    evaluate_run,
    load_qrels,
    load_queries,
    parse_gains,
    write_trec_run,
)

app = typer.Typer(
    name="shoprank",
    help="Product search with hybrid retrieval and semantic reranking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

IndexOption = Annotated[
    str | None, typer.Option("--index", help="Index name under $SHOPRANK_HOME/indexes.")
]
ModeOption = Annotated[str, typer.Option("--mode", "-m", help="bm25, vector or hybrid.")]
StoreOption = Annotated[
    str | None, typer.Option("--store", help="local (default) or opensearch.")
]
UrlOption = Annotated[
    str | None, typer.Option("--opensearch-url", help="OpenSearch URL (with --store opensearch).")
]


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for noisy in ("httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The client logs every failed connection with a traceback; our own message names the URL.
    logging.getLogger("opensearch").setLevel(logging.ERROR)


def _settings(
    *, store: str | None = None, opensearch_url: str | None = None, **overrides: object
) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    indexer = {"store": store, "opensearch_url": opensearch_url}
    try:
        if any(value is not None for value in indexer.values()):
            values["indexer"] = IndexerSettings.model_validate(
                {key: value for key, value in indexer.items() if value is not None}
            )
        return Settings.model_validate(values)
    except ValidationError as e:
        _fail(str(e))


def _mode(mode: str) -> RetrievalMode:
    if mode not in ("bm25", "vector", "hybrid"):
        _fail(f"--mode must be one of bm25, vector, hybrid (got {mode!r})")
    return mode  # type: ignore[return-value]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """shoprank: index a catalog, search it, serve it, evaluate it."""
    _setup_logging(verbose)


def _reindex(settings: Settings, catalog: Path, *, strict: bool) -> None:
    store = build_store(settings)
    try:
        report, load = reindex_catalog(
            store, catalog, build_encoder(settings.indexer), strict=strict, progress=True
        )
    except CatalogError as e:
        _fail(str(e))
    except IndexerError as e:
        _fail(f"reindex failed, the serving index is unchanged: {e}", code=1)
    _report_load(catalog, load)
    console.print(
        f"indexed {report.indexed} products into [bold]{settings.index}[/] "
        f"(version {report.version}) at {store.location}"
    )


def _report_load(catalog: Path, load: CatalogLoad) -> None:
    for error in load.errors[:10]:
        console.print(f"[yellow]skipped[/] {catalog}: {error}", highlight=False)
    if load.errors:
        console.print(f"[yellow]{len(load.errors)} invalid line(s) skipped[/]")
    if load.duplicate_ids:
        console.print(
            f"[yellow]{len(load.duplicate_ids)} duplicate id(s), the last line won[/]: "
            + ", ".join(load.duplicate_ids[:5])
        )


@app.command()
def reindex(
    catalog: Annotated[Path, typer.Option("--catalog", "-c", help="JSONL or JSONL.gz catalog.")],
    index: IndexOption = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on any invalid line; write nothing.")
    ] = False,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Validate a catalog, embed it and swap it in as the serving index (zero downtime)."""
    settings = _settings(index=index, store=store, opensearch_url=opensearch_url)
    _reindex(settings, catalog, strict=strict)


@app.command()
def upsert(
    catalog: Annotated[Path, typer.Option("--catalog", "-c", help="Products to add or replace.")],
    index: IndexOption = None,
    strict: Annotated[bool, typer.Option("--strict")] = False,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Add or replace products in the serving index; searchable when this returns."""
    settings = _settings(index=index, store=store, opensearch_url=opensearch_url)
    target = build_store(settings)
    try:
        load = load_catalog(catalog, strict=strict)
        count = upsert_products(target, load.products, build_encoder(settings.indexer))
    except CatalogError as e:
        _fail(str(e))
    except IndexerError as e:
        _fail(str(e), code=1)
    _report_load(catalog, load)
    console.print(f"upserted {count} products into {settings.index} at {target.location}")


@app.command()
def delete(
    product_ids: Annotated[list[str], typer.Argument(help="Product ids to remove.")],
    index: IndexOption = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Remove products from the serving index."""
    settings = _settings(index=index, store=store, opensearch_url=opensearch_url)
    target = build_store(settings)
    try:
        removed = target.delete(product_ids)
    except IndexerError as e:
        _fail(str(e), code=1)
    console.print(f"deleted {removed} of {len(product_ids)} products from {target.location}")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The search text.")],
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 10,
    mode: ModeOption = "hybrid",
    brand: Annotated[list[str] | None, typer.Option("--brand")] = None,
    category: Annotated[str | None, typer.Option("--category")] = None,
    price_min: Annotated[float | None, typer.Option("--price-min")] = None,
    price_max: Annotated[float | None, typer.Option("--price-max")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
    explain: Annotated[bool, typer.Option("--explain")] = False,
    index: IndexOption = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Search the index from the terminal."""
    settings = _settings(index=index, store=store, opensearch_url=opensearch_url)
    try:
        filters = Filters(
            brand=brand or None, category=category, price_min=price_min, price_max=price_max
        )
        request = SearchRequest(
            query=query, k=k, mode=_mode(mode), filters=filters, explain=explain
        )
    except ValidationError as e:
        _fail(str(e))
    try:
        response = build_pipeline(settings).search(request)
    except (IndexerError, RerankerError, PluginError) as e:
        _fail(str(e), code=1)
    if as_json:
        out.print_json(response.model_dump_json(exclude_none=True))
    else:
        _print_results(response)


def _print_results(response: SearchResponse) -> None:
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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    index: IndexOption = None,
    reranker: Annotated[
        str | None, typer.Option("--reranker", help="none or cross-encoder.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Cross-encoder checkpoint folder.")
    ] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    settings = _settings(
        host=host, port=port, index=index, reranker=reranker, reranker_checkpoint=checkpoint,
        store=store, opensearch_url=opensearch_url,
    )
    _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from plugin.api import create_app

    try:
        pipeline = build_pipeline(settings)
    except PluginError as e:
        _fail(str(e))
    app_ = create_app(settings, pipeline)
    uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info")


@app.command()
def demo(
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Index the demo catalog and exit.")
    ] = False,
) -> None:
    """Index the bundled ESCI catalog if needed, then serve it."""
    settings = _settings(host=host, port=port, index=DEMO_INDEX)
    if not _index_exists(settings):
        console.print(f"indexing the bundled demo catalog {DEMO_CATALOG.name} (first run only)")
        _reindex(settings, DEMO_CATALOG, strict=False)
    url = f"http://{settings.host}:{settings.port}"
    console.print(
        f"\n[bold]shoprank demo[/] serves {url} (API docs: {url}/docs)\n"
        f"try:\n  curl -s {url}/search -H 'content-type: application/json' "
        """-d '{"query": "wireless earbuds", "k": 5, "explain": true}'\n""",
        highlight=False,
        soft_wrap=True,
    )
    if not no_serve:
        _serve(settings)


def _index_exists(settings: Settings) -> bool:
    try:
        return build_store(settings).exists()
    except IndexerError as e:
        _fail(str(e), code=1)


def _eval_index_name(catalog: Path) -> str:
    stat = catalog.stat()
    key = f"{catalog.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    stem = re.sub(r"[^a-z0-9_-]+", "-", catalog.name.split(".")[0].lower()).strip("-")[:32]
    return f"eval-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@app.command("eval")
def evaluate(
    catalog: Annotated[Path, typer.Option("--catalog", "-c")],
    queries: Annotated[Path, typer.Option("--queries", "-q", help="qid<TAB>text lines.")],
    qrels: Annotated[Path, typer.Option("--qrels", help="TREC qrels.")],
    mode: ModeOption = "hybrid",
    k: Annotated[int, typer.Option("--k", min=1, max=100)] = 10,
    gains: Annotated[
        str | None,
        typer.Option("--gains", help="GRADE=GAIN list, e.g. 3=1,2=0.1,1=0.01,0=0; default 2^g-1."),
    ] = None,
    esci: Annotated[bool, typer.Option("--esci", help=f"Use the ESCI gains {ESCI_GAINS}.")] = False,
    run_out: Annotated[Path | None, typer.Option("--run-out", help="Write a TREC run.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    index: IndexOption = None,
    reranker: Annotated[str | None, typer.Option("--reranker")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint")] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Score search on judged queries: nDCG@k, MRR@k, Recall@100 and judged@k."""
    if not catalog.is_file():
        _fail(f"--catalog: file not found: {catalog}")
    settings = _settings(
        index=index or _eval_index_name(catalog),
        reranker=reranker,
        reranker_checkpoint=checkpoint,
        store=store,
        opensearch_url=opensearch_url,
    )
    gain_table = ESCI_GAINS if esci else None
    try:
        if gains is not None:
            gain_table = parse_gains(gains)
        query_texts = load_queries(queries)
        judgments = load_qrels(qrels)
    except RerankerError as e:
        _fail(str(e))
    if not _index_exists(settings):
        _reindex(settings, catalog, strict=False)
    try:
        pipeline = build_pipeline(settings)
    except PluginError as e:
        _fail(str(e))
    depth = max(settings.candidates, k)
    run: dict[str, list[str]] = {}
    timings: list[float] = []
    retrieval_mode = _mode(mode)
    try:
        if retrieval_mode != "bm25":
            pipeline.encoder.encode_query("warm up")  # load the model outside the timings
        for qid, text in query_texts.items():
            response = pipeline.search(
                SearchRequest(query=text[:512], k=min(depth, 100), mode=retrieval_mode)
            )
            run[qid] = [hit.id for hit in response.results]
            timings.append(response.timings_ms["total"])
    except (IndexerError, RerankerError, PluginError) as e:
        _fail(str(e), code=1)
    judged_only = {qid: judgments[qid] for qid in query_texts if qid in judgments}
    report = evaluate_run(
        run, judged_only, k=k, candidates_depth=min(depth, 100), gains=gain_table
    )
    if run_out is not None:
        write_trec_run(run, run_out, tag=f"shoprank-{mode}")
    summary = {"mode": mode, "index": settings.index, **report.summary()}
    summary["p50_latency_ms"] = round(statistics.median(timings), 2) if timings else 0.0
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{catalog.name}: {mode}")
    for key in summary:
        table.add_column(key)
    table.add_row(*(str(value) for value in summary.values()))
    out.print(table)
    if report.skipped_queries:
        console.print(f"{len(report.skipped_queries)} queries had no positive judgment: skipped")
