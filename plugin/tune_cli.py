"""``shoprank tune ...``: fine-tune the models on judged queries.

Registered in `plugin.cli` with ``app.add_typer(tune_app, name="tune")``. The commands reuse
``shoprank eval``'s index handling (one local index per catalog file, built on first use), so a
tuning run mines candidates from the same retrieval that evaluation scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table

from indexer.catalog import load_catalog
from indexer.errors import CatalogError, IndexerError
from indexer.store import check_encoder
from plugin.components import build_encoder, build_store
from plugin.distill_cli import tune_reranker_distill
from plugin.errors import PluginError
from reranker.encoder_tuning import BiEncoderTuneConfig, tune_bi_encoder
from reranker.errors import RerankerError
from reranker.evaluation import ESCI_GAINS, load_qrels, load_queries
from reranker.pseudo_queries import pseudo_training_set
from reranker.training_data import mine_candidates
from reranker.tuning import CrossEncoderTuneConfig, TuneResult, tune_cross_encoder


def _default(field: str, config: type[BaseModel] = CrossEncoderTuneConfig) -> Any:
    """A CLI default taken from the tuning config, so the two never disagree."""
    return config.model_fields[field].default


def _encoder_default(field: str) -> Any:
    """A CLI default taken from the bi-encoder tuning config."""
    return _default(field, BiEncoderTuneConfig)


def _check_catalog_and_out(catalog: Path, out_dir: Path | None = None) -> None:
    """Fail unless --catalog is a file and --out (when given) is missing or an empty folder."""
    from plugin.cli import _fail

    if not catalog.is_file():
        _fail(f"--catalog: file not found: {catalog}")
    if out_dir is not None and out_dir.exists() and (
        not out_dir.is_dir() or any(out_dir.iterdir())
    ):
        _fail(f"--out {out_dir} exists and is not an empty folder; choose a new one")


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
    from plugin.cli import console

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
    from plugin.cli import console

    if best <= baseline:
        console.print(
            f"[yellow]the tuned {what} does not beat {than} on the validation "
            f"queries ({metric} {best:.4f} <= {baseline:.4f})[/]"
        )


def _catalog_label(catalog: Path) -> str:
    """How a model card names its catalog: folder and file, no machine-specific path."""
    return f"{catalog.parent.name}/{catalog.name}"


tune_app = typer.Typer(
    help="Fine-tune the models on judged queries (LoRA by default).",
    no_args_is_help=True,
)

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


@tune_app.command("reranker")
def tune_reranker(
    catalog: CatalogOption,
    queries: QueriesOption,
    qrels: QrelsOption,
    out_dir: OutOption,
    lora: Annotated[
        bool, typer.Option("--lora/--full", help="Train a LoRA adapter (~1 MB) or every weight.")
    ] = True,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=100)] = _default("epochs"),
    seed: Annotated[int, typer.Option("--seed")] = _default("seed"),
    esci: EsciOption = False,
    index: IndexOption = None,
    negatives: Annotated[
        int, typer.Option("--negatives", min=0, max=1000, help="Mined hard negatives per query.")
    ] = _default("negatives_per_query"),
    max_length: Annotated[
        int, typer.Option("--max-length", min=16, max=512, help="Tokens per query+product pair.")
    ] = _default("max_length"),
    depth: Annotated[
        int | None,
        typer.Option("--depth", min=1, max=1000, help="Candidates mined per query; validation "
                     "reranks this many (default: the pipeline's rerank window)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = _default(
        "batch_size"
    ),
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
    # plugin.cli registers this app, so its helpers are imported when the command runs.
    from plugin.cli import _eval_index_name, _fail, _index_exists, _reindex, _settings, console

    _check_catalog_and_out(catalog, out_dir)
    settings = _settings(index=index or _eval_index_name(catalog))
    window = depth or settings.rerank_window
    try:
        config = CrossEncoderTuneConfig(
            lora=lora, epochs=epochs, seed=seed, negatives_per_query=negatives,
            max_length=max_length, batch_size=batch_size, learning_rate=learning_rate,
            validation_depth=window, gains=ESCI_GAINS if esci else None,
        )
        query_texts = load_queries(queries)
        judgments = load_qrels(qrels)
        products = {product.id: product for product in load_catalog(catalog).products}
    except ValidationError as e:
        _fail(str(e))
    except (RerankerError, CatalogError) as e:
        _fail(str(e))
    judged = {qid: text for qid, text in query_texts.items() if qid in judgments}
    if not judged:
        _fail(f"no query of {queries} has a judgment in {qrels}")
    if not _index_exists(settings):
        _reindex(settings, catalog, strict=False)
    try:
        console.print(f"mining {window} candidates for {len(judged)} judged queries "
                      f"from {settings.index}")
        store = build_store(settings)
        try:
            candidates = mine_candidates(store, build_encoder(settings.indexer), judged, window)
        finally:
            store.close()
        console.print(f"tuning the reranker ({config.mode}), this takes a while on a CPU")
        result = tune_cross_encoder(
            products, judged, judgments, candidates, out_dir, config,
            catalog=_catalog_label(catalog), progress=True,
        )
    except (IndexerError, RerankerError, PluginError) as e:
        _fail(str(e), code=1)

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
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=100)] = _encoder_default(
        "epochs"
    ),
    seed: Annotated[int, typer.Option("--seed")] = _encoder_default("seed"),
    esci: EsciOption = False,
    index: IndexOption = None,
    negatives: Annotated[
        int, typer.Option("--negatives", min=1, max=1000, help="Mined hard negatives per query.")
    ] = _encoder_default("negatives_per_query"),
    min_grade: Annotated[
        int, typer.Option("--min-grade", min=1, help="Lowest grade that counts as a positive.")
    ] = _encoder_default("min_positive_grade"),
    max_seq_length: Annotated[
        int, typer.Option("--max-seq-length", min=16, max=512, help="Tokens per text.")
    ] = _encoder_default("max_seq_length"),
    depth: Annotated[
        int, typer.Option("--depth", min=1, max=1000, help="Candidates mined per query; each "
                          "validation query adds this many to the validation corpus.")
    ] = _encoder_default("validation_depth"),
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=2, max=1024, help="Rows per batch (in-batch "
                          "negatives: larger is harder).")
    ] = _encoder_default("batch_size"),
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
    # plugin.cli registers this app, so its helpers are imported when the command runs.
    from plugin.cli import _eval_index_name, _fail, _index_exists, _reindex, _settings, console

    _check_catalog_and_out(catalog, out_dir)
    settings = _settings(index=index or _eval_index_name(catalog))
    try:
        config = BiEncoderTuneConfig(
            lora=lora, epochs=epochs, seed=seed, negatives_per_query=negatives,
            min_positive_grade=min_grade, max_seq_length=max_seq_length, batch_size=batch_size,
            learning_rate=learning_rate, validation_depth=depth,
            gains=ESCI_GAINS if esci else None,
        )
        if (queries is None) != (qrels is None):
            _fail("--queries and --qrels go together")
        query_texts = {} if queries is None else load_queries(queries)
        judgments = {} if qrels is None else load_qrels(qrels)
        products = {product.id: product for product in load_catalog(catalog).products}
    except ValidationError as e:
        _fail(str(e))
    except (RerankerError, CatalogError) as e:
        _fail(str(e))
    judged = {qid: text for qid, text in query_texts.items() if qid in judgments}
    if not judged and not pseudo_queries:
        _fail("nothing to train on: give --queries/--qrels with judgments, or --pseudo-queries N")
    if not _index_exists(settings):
        _reindex(settings, catalog, strict=False)
    try:
        console.print(f"mining {depth} candidates for {len(judged)} judged and "
                      f"{pseudo_queries} pseudo-queries from {settings.index}")
        store = build_store(settings)
        try:
            encoder = build_encoder(settings.indexer)
            check_encoder(store, encoder)
            candidates = mine_candidates(store, encoder, judged, depth)
            if pseudo_queries:
                pseudo = pseudo_training_set(
                    products, store, encoder, pseudo_queries, seed=seed, depth=depth
                )
                judged = {**judged, **pseudo.queries}
                judgments = {**judgments, **pseudo.qrels}
                candidates = {**candidates, **pseudo.candidates}
        finally:
            store.close()
        console.print(f"tuning the bi-encoder ({config.mode}), this takes a while on a CPU")
        described = _catalog_label(catalog)
        if pseudo_queries:
            described += f" ({len(judged) - len(pseudo.queries)} judged + " \
                f"{len(pseudo.queries)} pseudo-queries)"
        result = tune_bi_encoder(
            products, judged, judgments, candidates, out_dir, config,
            catalog=described, progress=True,
        )
    except (IndexerError, RerankerError, PluginError) as e:
        _fail(str(e), code=1)

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


@tune_app.command("ranker")
def tune_ranker(
    catalog: Annotated[list[Path], typer.Option(
        "--catalog", "-c", help="JSONL or JSONL.gz catalog; repeat --catalog, --queries and "
        "--qrels (in the same order) to fit one ranker on several shops.")],
    queries: Annotated[list[Path], typer.Option("--queries", "-q", help="qid<TAB>text lines.")],
    qrels: Annotated[list[Path], typer.Option("--qrels", help="TREC qrels (qid 0 docid grade).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="JSON file to write.")],
    esci: EsciOption = False,
    index: Annotated[list[str] | None, typer.Option(
        "--index", help="Index to read candidates from, one per --catalog (default: eval's "
        "index for the catalog, built if missing).")] = None,
    reranker: Annotated[
        str | None, typer.Option("--reranker", help="Whose score the stage reads (default "
                                 "onnx: the packaged cross-encoder); none fits it without.")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Cross-encoder checkpoint folder.")
    ] = None,
    cv: Annotated[
        int, typer.Option("--cv", min=2, max=20, help="Folds for the model card's estimate.")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cross-validation folds.")] = 0,
) -> None:
    """Fit the learned final stage: a linear ranker over retrieval scores and field features
    (plus the cross-encoder score with --reranker). Its weights are readable in the JSON file;
    serve it with --final-ranker FILE."""
    import time

    from plugin.cli import _eval_index_name, _fail, _index_exists, _reindex, _settings, console
    from plugin.components import build_pipeline
    from plugin.final_stage import (
        QueryCandidates,
        collect_candidates,
        cross_validated_final,
        fit_final_stage,
        folds_of,
    )
    from reranker.evaluation import Qrels, evaluate_run

    if not len(catalog) == len(queries) == len(qrels) or (index and len(index) != len(catalog)):
        _fail(
            f"give --queries, --qrels (and --index, if any) once per --catalog: got "
            f"{len(catalog)} --catalog, {len(queries)} --queries, {len(qrels)} --qrels"
            + (f", {len(index)} --index" if index else "")
        )
    gains = ESCI_GAINS if esci else None
    started = time.perf_counter()
    collected: dict[str, QueryCandidates] = {}
    judgments: Qrels = {}
    has_reranker = False
    for number, path in enumerate(catalog):
        _check_catalog_and_out(path)
        settings = _settings(
            index=index[number] if index else _eval_index_name(path), reranker=reranker,
            reranker_checkpoint=checkpoint, final_ranker="none",
        )
        try:
            query_texts = load_queries(queries[number])
            shop_judgments = load_qrels(qrels[number])
        except RerankerError as e:
            _fail(str(e))
        judged = {qid: text for qid, text in query_texts.items() if qid in shop_judgments}
        if not _index_exists(settings):
            indexing_started = time.perf_counter()
            _reindex(settings, path, strict=False)
            started += time.perf_counter() - indexing_started  # fitting time only
        try:
            pipeline = build_pipeline(settings)
            has_reranker = pipeline.has_reranker
            shop = collect_candidates(pipeline, judged, rerank=has_reranker)
        except (IndexerError, RerankerError, PluginError) as e:
            _fail(str(e), code=1)
        # Query ids of different shops may clash: prefix them when there are several.
        prefix = f"{number}:" if len(catalog) > 1 else ""
        collected.update({prefix + qid: item for qid, item in shop.items()})
        judgments.update({prefix + qid: shop_judgments[qid] for qid in shop})
    if len(collected) < cv:
        _fail(f"--cv {cv} needs at least {cv} judged queries, the --queries files hold "
              f"{len(collected)}")
    try:
        folds = folds_of(list(collected), cv, seed)
        estimate = cross_validated_final(
            collected, judgments, folds, gains=gains, with_cross_encoder=has_reranker
        )
        hybrid = {qid: [c.product_id for c in item.candidates] for qid, item in collected.items()}
        scores = {
            name: round(evaluate_run(run, judgments, gains=gains).ndcg, 4)
            for name, run in (("hybrid", hybrid), ("final", estimate))
        }
        card = {
            "name": out_file.stem,
            "catalog": ", ".join(_catalog_label(path) for path in catalog),
            "queries": len(collected),
            "gains": "esci" if esci else "exponential",
            "cross_encoder": (pipeline.reranker.name if has_reranker else None),
            f"cv{cv}_ndcg@10": scores,
            "cv_seed": seed,
            "cv_note": (
                "folds hold out queries from the linear stage only; the cross-encoder may have "
                "been tuned on them" if has_reranker else "folds hold out whole queries"
            ),
        }
        ranker = fit_final_stage(
            collected, judgments, list(collected), gains=gains,
            with_cross_encoder=has_reranker, card=card,
        )
        card["training_seconds"] = round(time.perf_counter() - started, 1)
        ranker.save(out_file)
    except (IndexerError, RerankerError, PluginError, ValueError) as e:
        _fail(str(e), code=1)
    table = Table(title=f"final stage -> {out_file}")
    table.add_column("feature")
    table.add_column("weight", justify="right")
    table.add_column("weight x std", justify="right")
    for name, weight in zip(ranker.feature_names, ranker.weights, strict=True):
        table.add_row(name, f"{weight:+.3f}", f"{ranker.importance()[name]:+.3f}")
    console.print(table)
    console.print(
        f"{cv}-fold nDCG@10 on {len(collected)} queries: hybrid {scores['hybrid']:.4f}, "
        f"final {scores['final']:.4f} ({card['training_seconds']} s)"
    )



tune_app.command("reranker-distill")(tune_reranker_distill)
