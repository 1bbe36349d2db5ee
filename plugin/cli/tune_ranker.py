"""``shoprank tune ranker``: fit the learned final stage on judged queries, over one shop or
several (registered on ``shoprank tune`` by `plugin.cli.tune`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from indexer.errors import IndexerError
from plugin.cli.common import (
    CheckpointOption,
    RerankerChoice,
    build_settings,
    catalog_label,
    check_catalog_and_out,
    console,
    eval_index_name,
    fail,
)
from plugin.cli.index import ensure_index
from plugin.components import build_pipeline
from plugin.errors import PluginError
from plugin.final_stage_fitting import (
    QueryCandidates,
    collect_candidates,
    cross_validated_final,
    fit_final_stage,
    folds_of,
)
from reranker.errors import RerankerError
from reranker.metrics import ESCI_GAINS, Qrels, evaluate_run, load_qrels, load_queries


def tune_ranker(
    catalog: Annotated[list[Path], typer.Option(
        "--catalog", "-c", help="JSONL or JSONL.gz catalog; repeat --catalog, --queries and "
        "--qrels (in the same order) to fit one ranker on several shops.")],
    queries: Annotated[list[Path], typer.Option("--queries", "-q", help="qid<TAB>text lines.")],
    qrels: Annotated[list[Path], typer.Option("--qrels", help="TREC qrels (qid 0 docid grade).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="JSON file to write.")],
    esci: Annotated[
        bool, typer.Option("--esci", help=f"ESCI gains {ESCI_GAINS} for targets and validation.")
    ] = False,
    index: Annotated[list[str] | None, typer.Option(
        "--index", help="Index to read candidates from, one per --catalog (default: eval's "
        "index for the catalog, built if missing).")] = None,
    reranker: Annotated[
        RerankerChoice | None,
        typer.Option("--reranker", help="Whose score the stage reads (default onnx: the "
                     "packaged cross-encoder); none fits it without."),
    ] = None,
    checkpoint: CheckpointOption = None,
    cv: Annotated[
        int, typer.Option("--cv", min=2, max=20, help="Folds for the model card's estimate.")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the cross-validation folds.")] = 0,
) -> None:
    """Fit the learned final stage: a linear ranker over retrieval scores and field features
    (plus the cross-encoder score with --reranker). Its weights are readable in the JSON file;
    serve it with --final-ranker FILE."""
    if not len(catalog) == len(queries) == len(qrels) or (index and len(index) != len(catalog)):
        fail(
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
        check_catalog_and_out(path)
        settings = build_settings(
            index=index[number] if index else eval_index_name(path), reranker=reranker,
            reranker_checkpoint=checkpoint, final_ranker="none",
        )
        try:
            query_texts = load_queries(queries[number])
            shop_judgments = load_qrels(qrels[number])
        except RerankerError as e:
            fail(str(e))
        judged = {qid: text for qid, text in query_texts.items() if qid in shop_judgments}
        indexing_started = time.perf_counter()
        ensure_index(settings, path)
        started += time.perf_counter() - indexing_started  # fitting time only
        try:
            pipeline = build_pipeline(settings)
            has_reranker = pipeline.has_reranker
            shop = collect_candidates(pipeline, judged, rerank=has_reranker)
        except (IndexerError, RerankerError, PluginError) as e:
            fail(str(e), code=1)
        # Query ids of different shops may clash: prefix them when there are several.
        prefix = f"{number}:" if len(catalog) > 1 else ""
        collected.update({prefix + qid: item for qid, item in shop.items()})
        judgments.update({prefix + qid: shop_judgments[qid] for qid in shop})
    if len(collected) < cv:
        fail(f"--cv {cv} needs at least {cv} judged queries, the --queries files hold "
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
            "catalog": ", ".join(catalog_label(path) for path in catalog),
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
        fail(str(e), code=1)
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
