"""The ``shoprank`` command line."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

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
from plugin.components import build_encoder, build_pipeline, build_store, limit_blas_threads
from plugin.demo import DEMO_CATALOG, DEMO_INDEX
from plugin.errors import PluginError
from plugin.evaluate import (
    CV_STAGES,
    STAGES,
    CrossValidation,
    EvalProtocol,
    Stage,
    evaluate_stages,
    markdown,
    summary,
)
from plugin.export_cli import export_app
from plugin.fairness.evaluation import FairnessSetup, fairness_setup
from plugin.models import FairnessPolicy, SearchRequest, SearchResponse
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from plugin.tune_cli import tune_app
from reranker.errors import RerankerError
from reranker.evaluation import (
    ESCI_GAINS,
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
app.add_typer(tune_app, name="tune")
app.add_typer(export_app, name="export")
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
    in_stock: Annotated[
        bool, typer.Option("--in-stock", help="Leave out products marked out of stock.")
    ] = False,
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
            brand=brand or None, category=category, price_min=price_min, price_max=price_max,
            in_stock=True if in_stock else None,
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
        str | None,
        typer.Option("--reranker", help="onnx (default: the packaged cross-encoder on ONNX "
                     "Runtime INT8, or an `export onnx` folder / tuned --checkpoint), "
                     "cross-encoder (torch, in process), triton, or none."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Cross-encoder checkpoint folder.")
    ] = None,
    triton_url: Annotated[
        str | None, typer.Option("--triton-url", help="Triton's HTTP endpoint (--reranker triton).")
    ] = None,
    final_ranker: Annotated[
        str | None,
        typer.Option("--final-ranker", help="default (packaged), none, or a `tune ranker` file."),
    ] = None,
    session_store: Annotated[
        str | None,
        typer.Option("--session-store", help="memory (default) or redis: where sessions live."),
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL (--session-store redis).")
    ] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    settings = _settings(
        host=host, port=port, index=index, reranker=reranker, reranker_checkpoint=checkpoint,
        triton_url=triton_url, final_ranker=final_ranker, session_store=session_store,
        redis_url=redis_url, store=store, opensearch_url=opensearch_url,
    )
    _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from plugin.api import create_app

    try:
        pipeline = build_pipeline(settings)
    except (PluginError, RerankerError) as e:
        _fail(str(e))
    app_ = create_app(settings, pipeline)
    limit_blas_threads(settings.blas_threads)
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
        """-d '{"query": "wireless earbuds", "k": 5, "explain": true}'\n"""
        "then POST /events with a session_id, search with that session_id, and try "
        "GET /similar/{id} and GET /recommend?session_id=... (README, \"Sessions\")\n",
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
    mode: Annotated[
        str,
        typer.Option("--mode", "-m", help="Stages to score, comma-separated "
                     f"({','.join(STAGES)}) or 'all'; the first is the baseline."),
    ] = "hybrid",
    protocol: Annotated[
        str, typer.Option("--protocol", help="full (rank the catalog) or pool (judged pool).")
    ] = "full",
    k: Annotated[int, typer.Option("--k", min=1, max=100)] = 10,
    gains: Annotated[
        str | None,
        typer.Option("--gains", help="GRADE=GAIN list, e.g. 3=1,2=0.1,1=0.01,0=0; default 2^g-1."),
    ] = None,
    esci: Annotated[bool, typer.Option("--esci", help=f"Use the ESCI gains {ESCI_GAINS}.")] = False,
    run_out: Annotated[Path | None, typer.Option("--run-out", help="Write a TREC run.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Stage whose ranking --run-out writes (last).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of Markdown.")] = False,
    index: IndexOption = None,
    reranker: Annotated[str | None, typer.Option(
        "--reranker", help="onnx (default, the packaged cross-encoder), cross-encoder, triton "
        "or none; with a reranker the final stage reads its score.")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint")] = None,
    final_ranker: Annotated[
        str | None,
        typer.Option("--final-ranker", help="default, none, or a file from `tune ranker`."),
    ] = None,
    cv: Annotated[
        int | None,
        typer.Option("--cv", min=2, max=20, help="Fit tuned-hybrid and final on K-1 folds of "
                     "the queries, score them on the held-out fold."),
    ] = None,
    cv_seed: Annotated[int, typer.Option("--cv-seed")] = 0,
    tuned_encoder: Annotated[
        Path | None,
        typer.Option("--tuned-encoder", help="Bi-encoder from `tune encoder` for the "
                     "tuned-vector stage (its own index is built on first use)."),
    ] = None,
    fairness: Annotated[
        str | None,
        typer.Option(
            "--fairness",
            help="A fairness policy as JSON (the API's `fairness` body) or @FILE.json, e.g. "
            '\'{"policy": "fair_topk", "protected_share_below": 0.005, "p": 0.3}\'. Each '
            "stage's ranking is also reordered by it and reported: nDCG@k of the fair ranking "
            "and its change against the unconstrained one [95% CI], FA*IR pass rate at the "
            "policy's p and alpha, protected/other exposure ratio, AWRF (TREC Fair Ranking "
            "2022, target p vs 1-p), p50/p95 latency of the fairness step. Here "
            "protected_share_below is a share of the whole catalog's products, as in the API; "
            "products without a brand are never protected by it.",
        ),
    ] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Score each stage on judged queries: nDCG@k (plain and judged-only), MRR@k, Recall@100,
    judged@k, and each stage's nDCG change against the first with a paired-bootstrap 95% CI;
    with --fairness, the same stages under a fairness policy next to them."""
    if not catalog.is_file():
        _fail(f"--catalog: file not found: {catalog}")
    policy = None if fairness is None else _fairness_policy(fairness)
    stages = _stages(mode)
    if protocol not in ("full", "pool"):
        _fail(f"--protocol must be full or pool (got {protocol!r})")
    chosen_protocol: EvalProtocol = "pool" if protocol == "pool" else "full"
    needs_cv = [name for name in stages if name in CV_STAGES]
    if needs_cv and cv is None:
        _fail(f"stage(s) {', '.join(needs_cv)} are tuned on the judgments: add --cv K")
    if stage is not None and stage not in stages:
        _fail(f"--stage {stage!r} is not among the evaluated stages {', '.join(stages)}")
    settings = _settings(
        index=index or _eval_index_name(catalog),
        reranker=reranker,
        reranker_checkpoint=checkpoint,
        final_ranker=final_ranker,
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
    setup = None if policy is None else _fairness_setup(policy, catalog)
    try:
        pipeline = build_pipeline(settings)
        if "rerank" in stages and not pipeline.has_reranker:
            _fail("stage 'rerank' needs a reranker: --reranker onnx or cross-encoder (the "
                  "packaged one unless --checkpoint DIR), or triton")
        tuned = None
        if "tuned-vector" in stages:
            if tuned_encoder is None:
                _fail("stage 'tuned-vector' needs --tuned-encoder DIR")
            tuned = _tuned_encoder_pipeline(settings, catalog, tuned_encoder)
        if "final" in stages and cv is None and pipeline.final_ranker is None:
            _fail("stage 'final' needs --cv K (fit it per fold) or a tuned --final-ranker FILE")
        results = evaluate_stages(
            pipeline, query_texts, judgments, stages,
            protocol=chosen_protocol, k=k, gains=gain_table,
            cross_validation=None if cv is None else CrossValidation(cv, cv_seed),
            tuned_encoder=tuned, fairness=setup,
        )
    except (IndexerError, RerankerError, PluginError) as e:
        _fail(str(e), code=1)
    chosen = next(r for r in results if r.stage == (stage or stages[-1]))
    if run_out is not None:
        write_trec_run(chosen.run, run_out, tag=f"shoprank-{chosen.stage}")
    if as_json:
        data = {"index": settings.index, **summary(results, chosen_protocol)}
        if setup is not None:
            data["fairness"] = {
                "policy": setup.policy.model_dump(exclude_none=True), "protected": setup.rule,
                "protected_groups": len(setup.protected),
                "protected_share_of_catalog": round(setup.protected_share, 4),
            }
        print(json.dumps(data, indent=2))
    else:
        title = f"{catalog.parent.name}/{catalog.name}"
        text = markdown(results, chosen_protocol, title, setup)
        out.print(text, highlight=False, soft_wrap=True)
    skipped = results[0].report.skipped_queries
    if skipped:
        console.print(f"{len(skipped)} queries had no positive judgment: skipped")


def _fairness_policy(text: str) -> FairnessPolicy:
    """--fairness: JSON or @FILE, validated as the API validates a request's policy."""
    source = "--fairness"
    if text.startswith("@"):
        source = f"--fairness {text}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            _fail(f"{source}: cannot read the file: {e}")
    try:
        policy = FairnessPolicy.model_validate_json(text)
    except ValidationError as e:
        _fail(f"{source}: invalid fairness policy: " + "; ".join(map(_problem, e.errors())))
    if policy.policy == "none":
        _fail(f"{source}: policy 'none' applies no fairness step: there is nothing to evaluate")
    return policy


def _problem(error: Mapping[str, Any]) -> str:
    """One validation error as 'field: message (got value)'."""
    where = ".".join(str(part) for part in error["loc"])
    if not where:
        return str(error["msg"])
    got = error.get("input")
    return f"{where}: {error['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def _fairness_setup(policy: FairnessPolicy, catalog: Path) -> FairnessSetup:
    """Groups and protected groups over the whole catalog (invalid lines skipped, as reindex
    skips them)."""
    try:
        products = load_catalog(catalog).products
    except CatalogError as e:
        _fail(str(e))
    return fairness_setup(policy, products)


def _tuned_encoder_pipeline(settings: Settings, catalog: Path, encoder: Path) -> SearchPipeline:
    """A pipeline over ``<index>-tuned-<fingerprint>``, written by ``encoder`` if missing."""
    indexer = settings.indexer.model_copy(update={"encoder_path": encoder})
    fingerprint = build_encoder(indexer).fingerprint
    tuned = settings.model_copy(
        update={"index": f"{settings.index}-tuned-{fingerprint[:8]}", "indexer": indexer}
    )
    if not _index_exists(tuned):
        _reindex(tuned, catalog, strict=False)
    return build_pipeline(tuned)


def _stages(text: str) -> list[Stage]:
    names = list(STAGES) if text == "all" else [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        _fail(f"--mode: unknown stage(s) {unknown}; choose from {', '.join(STAGES)} or 'all'")
    return names  # type: ignore[return-value]
