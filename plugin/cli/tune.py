"""``shoprank tune ...``: fine-tune the models on judged queries.

``tune reranker`` and ``tune encoder`` here, ``tune ranker`` in `plugin.cli.tune_ranker`,
``tune reranker-distill`` in `plugin.cli.tune_distill`. The commands reuse ``shoprank eval``'s
index handling (one local index per catalog file, built on first use), so a tuning run mines
candidates from the same retrieval that evaluation scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.table import Table

from indexer.catalog import load_catalog
from indexer.errors import CatalogError, IndexerError
from indexer.schema import Product
from indexer.store import VectorStore, check_encoder
from plugin.cli.common import (
    build_settings,
    catalog_label,
    check_catalog_and_out,
    console,
    eval_index_name,
    fail,
    problems,
)
from plugin.cli.index import ensure_index
from plugin.cli.tune_distill import tune_reranker_distill
from plugin.cli.tune_ranker import tune_ranker
from plugin.components import build_encoder, build_store
from plugin.errors import PluginError
from plugin.settings import Settings
from reranker.encoder_tuning import BiEncoderTuneConfig, tune_bi_encoder
from reranker.errors import RerankerError
from reranker.metrics import ESCI_GAINS, Qrels, load_qrels, load_queries
from reranker.pseudo_queries import pseudo_training_set
from reranker.training import TuneResult
from reranker.training_data import mine_candidates
from reranker.tuning import CrossEncoderTuneConfig, tune_cross_encoder
from reranker.tuning_config import TuneConfig

Config = TypeVar("Config", bound=TuneConfig)

tune_app = typer.Typer(
    help="Fine-tune the models on judged queries (LoRA by default).",
    no_args_is_help=True,
)


#: The tuning configs' defaults are the CLI's, so the two never disagree.
RERANKER_DEFAULTS = CrossEncoderTuneConfig()
ENCODER_DEFAULTS = BiEncoderTuneConfig()


CatalogOption = Annotated[Path, typer.Option("--catalog", "-c", help="JSONL or JSONL.gz catalog.")]
QueriesOption = Annotated[Path, typer.Option("--queries", "-q", help="qid<TAB>text lines.")]
QrelsOption = Annotated[Path, typer.Option("--qrels", help="TREC qrels (qid 0 docid grade).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="New (or empty) output folder.")]
IndexOption = Annotated[
    str | None,
    typer.Option("--index", help="Index to mine candidates from (default: eval's index for the "
                 "catalog, built if missing)."),
]
EsciOption = Annotated[
    bool, typer.Option("--esci", help=f"ESCI gains {ESCI_GAINS} for targets and validation.")
]
EpochsOption = Annotated[
    int, typer.Option("--epochs", min=1, max=100, help="Passes over the training data.")
]
SeedOption = Annotated[
    int, typer.Option("--seed", help="Seed of the validation split and the initial weights.")
]


def _prepared(
    catalog: Path, out_dir: Path, index: str | None, make_config: Callable[[Settings], Config]
) -> tuple[Settings, Config]:
    """Check --catalog and --out and validate the config; the settings name --index or eval's
    index for the catalog."""
    check_catalog_and_out(catalog, out_dir)
    settings = build_settings(index=index or eval_index_name(catalog))
    try:
        return settings, make_config(settings)
    except ValidationError as e:
        fail(problems(e))


def _products(catalog: Path) -> dict[str, Product]:
    """The catalog's valid products by id (a bad catalog exits 2)."""
    try:
        return {product.id: product for product in load_catalog(catalog).products}
    except CatalogError as e:
        fail(str(e))


def _judged(queries: Path, qrels: Path) -> tuple[dict[str, str], Qrels]:
    """The judged queries' texts and the judgments (a bad file exits 2)."""
    try:
        query_texts = load_queries(queries)
        judgments = load_qrels(qrels)
    except RerankerError as e:
        fail(str(e))
    return {qid: text for qid, text in query_texts.items() if qid in judgments}, judgments


@contextmanager
def _tuning(settings: Settings) -> Iterator[VectorStore]:
    """The store to mine from, closed after; a failure while mining or training exits 1."""
    try:
        store = build_store(settings)
        try:
            yield store
        finally:
            store.close()
    except (IndexerError, RerankerError, PluginError) as e:
        fail(str(e), code=1)


def _print_tuned(
    what: str,
    result: TuneResult,
    *,
    counted: tuple[str, str, str],
    retrieval: str,
    before: str,
) -> None:
    """The result table of a tuning run. ``counted``: what the training and validation counts
    count, and what follows the validation count; ``retrieval`` and ``before`` name the two
    baselines."""
    train_unit, validation_unit, validation_suffix = counted
    table = Table(title=f"{what} tuned ({result.mode}) -> {result.out}")
    table.add_column("")
    table.add_column("value", justify="right")
    metric = result.validation_metric
    for label, value in (
        (f"training queries / {train_unit}", f"{result.train_queries} / {result.train_pairs}"),
        (f"validation queries / {validation_unit}",
         f"{result.validation_queries} / {result.validation_pairs}{validation_suffix}"),
        ("training time", f"{result.training_seconds:.0f} s ({result.steps} steps)"),
        (f"validation {metric}, {retrieval}", f"{result.validation_retrieval:.4f}"),
        (f"validation {metric}, {before}", f"{result.validation_before:.4f}"),
        (f"validation {metric}, tuned (step {result.best_step})",
         f"{result.validation_best:.4f}"),
        ("artifact size", f"{result.artifact_bytes / 1e6:.2f} MB"),
    ):
        table.add_row(label, value)
    console.print(table)


def _warn_unless_better(what: str, than: str, best: float, baseline: float, metric: str) -> None:
    if best <= baseline:
        console.print(
            f"[yellow]the tuned {what} does not beat {than} on the validation "
            f"queries ({metric} {best:.4f} <= {baseline:.4f})[/]"
        )


@tune_app.command("reranker")
def tune_reranker(
    catalog: CatalogOption,
    queries: QueriesOption,
    qrels: QrelsOption,
    out_dir: OutOption,
    lora: Annotated[
        bool, typer.Option("--lora/--full", help="Train a LoRA adapter (~1 MB) or every weight.")
    ] = True,
    epochs: EpochsOption = RERANKER_DEFAULTS.epochs,
    seed: SeedOption = RERANKER_DEFAULTS.seed,
    esci: EsciOption = False,
    index: IndexOption = None,
    negatives: Annotated[
        int, typer.Option("--negatives", min=0, max=1000, help="Mined hard negatives per query.")
    ] = RERANKER_DEFAULTS.negatives_per_query,
    max_length: Annotated[
        int, typer.Option("--max-length", min=16, max=512, help="Tokens per query+product pair.")
    ] = RERANKER_DEFAULTS.max_length,
    depth: Annotated[
        int | None,
        typer.Option("--depth", min=1, max=1000, help="Candidates mined per query; validation "
                     "reranks this many (default: the pipeline's rerank window)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=1024, help="Pairs per training batch.")
    ] = RERANKER_DEFAULTS.batch_size,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", help="Default 5e-4 with LoRA, 3e-5 with --full."),
    ] = None,
) -> None:
    """Fine-tune the cross-encoder reranker from the packaged MiniLM weights.

    Candidates come from this project's hybrid retrieval; held-out queries pick the best epoch
    by nDCG@10. Writes the model, model_card.json and README.md to --out; serve it with
    --reranker cross-encoder --checkpoint OUT.
    """
    settings, config = _prepared(catalog, out_dir, index, lambda settings: CrossEncoderTuneConfig(
        lora=lora, epochs=epochs, seed=seed, negatives_per_query=negatives,
        max_length=max_length, batch_size=batch_size, learning_rate=learning_rate,
        validation_depth=depth or settings.rerank_window, gains=ESCI_GAINS if esci else None,
    ))
    window = config.validation_depth
    judged, judgments = _judged(queries, qrels)
    products = _products(catalog)
    if not judged:
        fail(f"no query of {queries} has a judgment in {qrels}")
    ensure_index(settings, catalog)
    console.print(f"mining {window} candidates for {len(judged)} judged queries "
                  f"from {settings.index}")
    with _tuning(settings) as store:
        candidates = mine_candidates(store, build_encoder(settings.indexer), judged, window)
        console.print(f"tuning the reranker ({config.mode}), this takes a while on a CPU")
        result = tune_cross_encoder(
            products, judged, judgments, candidates, out_dir, config,
            catalog=catalog_label(catalog), progress=True,
        )
    _print_tuned(
        "reranker", result, counted=("pairs", "pairs", ""),
        retrieval="retrieval order", before="before training",
    )
    _warn_unless_better(
        "reranker", "retrieval order", result.validation_best, result.validation_retrieval,
        result.validation_metric,
    )


@tune_app.command("encoder")
def tune_encoder(
    catalog: CatalogOption,
    out_dir: OutOption,
    queries: Annotated[
        Path | None, typer.Option("--queries", "-q", help="qid<TAB>text lines (judged queries).")
    ] = None,
    qrels: Annotated[Path | None, typer.Option("--qrels", help="TREC qrels for --queries.")] = None,
    pseudo_queries: Annotated[
        int, typer.Option("--pseudo-queries", min=0, max=100_000, help="Also train on this many "
                          "queries written from the catalog's own products (no labels needed).")
    ] = 0,
    lora: Annotated[
        bool, typer.Option("--lora/--full", help="Train a LoRA adapter (~0.3 MB) or every weight.")
    ] = True,
    epochs: EpochsOption = ENCODER_DEFAULTS.epochs,
    seed: SeedOption = ENCODER_DEFAULTS.seed,
    esci: EsciOption = False,
    index: IndexOption = None,
    negatives: Annotated[
        int, typer.Option("--negatives", min=1, max=1000, help="Mined hard negatives per query.")
    ] = ENCODER_DEFAULTS.negatives_per_query,
    min_grade: Annotated[
        int, typer.Option("--min-grade", min=1, help="Lowest grade that counts as a positive.")
    ] = ENCODER_DEFAULTS.min_positive_grade,
    max_seq_length: Annotated[
        int, typer.Option("--max-seq-length", min=16, max=512, help="Tokens per text.")
    ] = ENCODER_DEFAULTS.max_seq_length,
    depth: Annotated[
        int, typer.Option("--depth", min=1, max=1000, help="Candidates mined per query; each "
                          "validation query adds this many to the validation corpus.")
    ] = ENCODER_DEFAULTS.validation_depth,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=2, max=1024, help="Rows per batch (in-batch "
                          "negatives: larger is harder).")
    ] = ENCODER_DEFAULTS.batch_size,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", help="Default 5e-4 with LoRA, 2e-5 with --full."),
    ] = None,
) -> None:
    """Fine-tune the bi-encoder (query and product vectors) from the packaged MiniLM weights.

    Trains on (query, relevant product, mined hard negative) triplets with in-batch negatives;
    held-out queries pick the best epoch by the nDCG@10 of vector retrieval. Writes the model,
    model_card.json and README.md to --out. To use it, set SHOPRANK_ENCODER_PATH=OUT and
    rebuild the index: an index refuses vector queries from another encoder than its own.
    """
    settings, config = _prepared(catalog, out_dir, index, lambda _: BiEncoderTuneConfig(
        lora=lora, epochs=epochs, seed=seed, negatives_per_query=negatives,
        min_positive_grade=min_grade, max_seq_length=max_seq_length, batch_size=batch_size,
        learning_rate=learning_rate, validation_depth=depth, gains=ESCI_GAINS if esci else None,
    ))
    judged: dict[str, str] = {}
    judgments: Qrels = {}
    if queries is not None and qrels is not None:
        judged, judgments = _judged(queries, qrels)
    elif queries is not None or qrels is not None:
        fail("--queries and --qrels go together")
    products = _products(catalog)
    if not judged and not pseudo_queries:
        fail("nothing to train on: give --queries/--qrels with judgments, or --pseudo-queries N")
    ensure_index(settings, catalog)
    console.print(f"mining {depth} candidates for {len(judged)} judged and "
                  f"{pseudo_queries} pseudo-queries from {settings.index}")
    described = catalog_label(catalog)
    with _tuning(settings) as store:
        encoder = build_encoder(settings.indexer)
        check_encoder(store, encoder)
        candidates = mine_candidates(store, encoder, judged, depth)
        if pseudo_queries:
            pseudo = pseudo_training_set(
                products, store, encoder, pseudo_queries, seed=seed, depth=depth
            )
            described += f" ({len(judged)} judged + {len(pseudo.queries)} pseudo-queries)"
            judged = {**judged, **pseudo.queries}
            judgments = {**judgments, **pseudo.qrels}
            candidates = {**candidates, **pseudo.candidates}
        console.print(f"tuning the bi-encoder ({config.mode}), this takes a while on a CPU")
        result = tune_bi_encoder(
            products, judged, judgments, candidates, out_dir, config,
            catalog=described, progress=True,
        )
    _print_tuned(
        "bi-encoder", result, counted=("triplets", "corpus", " products"),
        retrieval="mined order", before="packaged encoder",
    )
    _warn_unless_better(
        "encoder", "the packaged one", result.validation_best, result.validation_before,
        result.validation_metric,
    )
    console.print(
        f"use it: SHOPRANK_ENCODER_PATH={result.out} shoprank reindex --catalog {catalog}",
        highlight=False,
    )


tune_app.command("ranker")(tune_ranker)
tune_app.command("reranker-distill")(tune_reranker_distill)
