"""``shoprank eval``: score each stage of the pipeline on judged queries."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from indexer.catalog import load_catalog
from indexer.errors import CatalogError, IndexerError
from plugin.cli.common import (
    CheckpointOption,
    IndexOption,
    RerankerChoice,
    StoreOption,
    UrlOption,
    build_settings,
    console,
    eval_index_name,
    fail,
    out,
    problems,
)
from plugin.cli.index import ensure_index
from plugin.components import build_encoder, build_pipeline
from plugin.errors import PluginError
from plugin.fairness.evaluation import FairnessSetup, fairness_setup
from plugin.folds import FoldDone
from plugin.models import FairnessPolicy
from plugin.offline_eval import (
    CV_STAGES,
    STAGES,
    CrossValidation,
    EvalProtocol,
    Stage,
    StageResult,
    evaluate_stages,
    markdown,
    summary,
)
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from reranker.errors import RerankerError
from reranker.metrics import (
    ESCI_GAINS,
    Gains,
    Qrels,
    load_qrels,
    load_queries,
    parse_gains,
    write_trec_run,
)


class ProtocolChoice(StrEnum):
    """What each stage ranks (`plugin.offline_eval.EvalProtocol`)."""

    full = "full"
    pool = "pool"


class StageChoice(StrEnum):
    """One stage of `plugin.offline_eval.STAGES`."""

    bm25 = "bm25"
    vector = "vector"
    tuned_vector = "tuned-vector"
    hybrid = "hybrid"
    tuned_hybrid = "tuned-hybrid"
    rerank = "rerank"
    final = "final"


def evaluate(
    catalog: Annotated[
        Path, typer.Option("--catalog", "-c", help="JSONL or JSONL.gz catalog (indexed on "
                           "first use).")
    ],
    queries: Annotated[Path, typer.Option("--queries", "-q", help="qid<TAB>text lines.")],
    qrels: Annotated[Path, typer.Option("--qrels", help="TREC qrels.")],
    mode: Annotated[
        str,
        typer.Option("--mode", "-m", help="Stages to score, comma-separated "
                     f"({','.join(STAGES)}) or 'all'; the first is the baseline."),
    ] = "hybrid",
    protocol: Annotated[
        ProtocolChoice,
        typer.Option("--protocol", help="full (rank the catalog) or pool (judged pool)."),
    ] = ProtocolChoice.full,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Cutoff of the metrics.")] = 10,
    gains: Annotated[
        str | None,
        typer.Option("--gains", help="GRADE=GAIN list, e.g. 3=1,2=0.1,1=0.01,0=0; default 2^g-1."),
    ] = None,
    esci: Annotated[bool, typer.Option("--esci", help=f"Use the ESCI gains {ESCI_GAINS}.")] = False,
    run_out: Annotated[Path | None, typer.Option("--run-out", help="Write a TREC run.")] = None,
    stage: Annotated[
        StageChoice | None,
        typer.Option("--stage", help="Stage whose ranking --run-out writes (last)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of Markdown.")] = False,
    index: IndexOption = None,
    reranker: Annotated[RerankerChoice | None, typer.Option(
        "--reranker", help="onnx (default, the packaged cross-encoder), cross-encoder, triton "
        "or none; with a reranker the final stage reads its score.")] = None,
    checkpoint: CheckpointOption = None,
    final_ranker: Annotated[
        str | None,
        typer.Option("--final-ranker", help="default, none, or a file from `tune ranker`."),
    ] = None,
    cv: Annotated[
        int | None,
        typer.Option("--cv", min=2, max=20, help="Fit tuned-hybrid and final on K-1 folds of "
                     "the queries, score them on the held-out fold."),
    ] = None,
    cv_seed: Annotated[
        int, typer.Option("--cv-seed", help="Seed of the cross-validation folds.")
    ] = 0,
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
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write DIR/index.html: plots of nDCG@k per stage "
                     "with CIs, latency distributions, the fairness trade-off curve (with "
                     "--fairness) and the adaptive rerank window's quality/latency curve (with "
                     "a reranker: the judged queries are searched once more per budget)."),
    ] = None,
    store: StoreOption = None,
    opensearch_url: UrlOption = None,
) -> None:
    """Score each stage on judged queries: nDCG@k (plain and judged-only), MRR@k, Recall@100,
    judged@k, and each stage's nDCG change against the first with a paired-bootstrap 95% CI;
    with --fairness, the same stages under a fairness policy next to them."""
    if not catalog.is_file():
        fail(f"--catalog: file not found: {catalog}")
    policy = None if fairness is None else fairness_policy(fairness)
    stages = parse_stages(mode)
    chosen_protocol: EvalProtocol = "pool" if protocol is ProtocolChoice.pool else "full"
    needs_cv = [name for name in stages if name in CV_STAGES]
    if needs_cv and cv is None:
        fail(f"stage(s) {', '.join(needs_cv)} are tuned on the judgments: add --cv K")
    if stage is not None and stage.value not in stages:
        fail(f"--stage {stage.value!r} is not among the evaluated stages {', '.join(stages)}")
    settings = build_settings(
        index=index or eval_index_name(catalog),
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
        fail(str(e))
    ensure_index(settings, catalog)
    setup = None if policy is None else _fairness_setup(policy, catalog)
    try:
        pipeline = build_pipeline(settings)
        if "rerank" in stages and not pipeline.has_reranker:
            fail("stage 'rerank' needs a reranker: --reranker onnx or cross-encoder (the "
                 "packaged one unless --checkpoint DIR), or triton")
        tuned = None
        if "tuned-vector" in stages:
            if tuned_encoder is None:
                fail("stage 'tuned-vector' needs --tuned-encoder DIR")
            tuned = _tuned_encoder_pipeline(settings, catalog, tuned_encoder)
        if "final" in stages and cv is None and pipeline.final_ranker is None:
            fail("stage 'final' needs --cv K (fit it per fold) or a tuned --final-ranker FILE")
        results = evaluate_stages(
            pipeline, query_texts, judgments, stages,
            protocol=chosen_protocol, k=k, gains=gain_table,
            cross_validation=None if cv is None else CrossValidation(cv, cv_seed),
            tuned_encoder=tuned, fairness=setup, on_fold=_print_fold,
        )
        if report is not None:
            title = f"{catalog.parent.name}/{catalog.name}"
            path = _write_report(report, title, results, markdown(
                results, chosen_protocol, title, setup), pipeline, query_texts, judgments,
                setup, k=k, gains=gain_table, full=chosen_protocol == "full")
            console.print(f"report written to {path}")
    except (IndexerError, RerankerError, PluginError) as e:
        fail(str(e), code=1)
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


def _write_report(
    folder: Path, title: str, results: list[StageResult], table: str, pipeline: SearchPipeline,
    queries: dict[str, str], qrels: Qrels, setup: FairnessSetup | None, *, k: int,
    gains: Gains | None, full: bool,
) -> Path:
    """--report: the plots (`plugin.eval_report`); the window curve needs a reranker and the
    full protocol (it runs real searches)."""
    from plugin.eval_report import fairness_curve, window_curve, window_summary, write_report

    last = results[-1]
    curve = None
    if setup is not None and last.scores:
        curve = fairness_curve(setup, last, qrels, queries, k=k, gains=gains)
    window = None
    if full and pipeline.has_reranker:
        console.print("report: the rerank stage under each latency budget ...")
        window = window_curve(pipeline, queries, qrels, k=k, gains=gains)
        console.print(f"report: {window_summary(window, k)}", highlight=False, soft_wrap=True)
    try:
        return write_report(folder, title, results, table, k=k, fairness=curve, window=window)
    except OSError as e:
        fail(f"--report: cannot write {folder}: {e}", code=1)


def _print_fold(done: FoldDone) -> None:
    """``--cv``: one line per fold as it finishes, on stderr beside the progress."""
    ndcg = "no judged query" if math.isnan(done.ndcg) else f"nDCG {done.ndcg:.4f}"
    console.print(
        f"{done.stage}: fold {done.fold}/{done.folds}, {done.queries} held-out queries, "
        f"{ndcg} ({done.seconds:.1f} s)",
        highlight=False,
    )


def fairness_policy(text: str) -> FairnessPolicy:
    """--fairness: JSON or @FILE, validated as the API validates a request's policy."""
    source = "--fairness"
    if text.startswith("@"):
        source = f"--fairness {text}"
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"{source}: cannot read the file: {e}")
    try:
        policy = FairnessPolicy.model_validate_json(text)
    except ValidationError as e:
        fail(f"{source}: invalid fairness policy: {problems(e)}")
    if policy.policy == "none":
        fail(f"{source}: policy 'none' applies no fairness step: there is nothing to evaluate")
    return policy


def _fairness_setup(policy: FairnessPolicy, catalog: Path) -> FairnessSetup:
    """Groups and protected groups over the whole catalog (invalid lines skipped, as reindex
    skips them)."""
    try:
        products = load_catalog(catalog).products
    except CatalogError as e:
        fail(str(e))
    return fairness_setup(policy, products)


def _tuned_encoder_pipeline(settings: Settings, catalog: Path, encoder: Path) -> SearchPipeline:
    """A pipeline over ``<index>-tuned-<fingerprint>``, written by ``encoder`` if missing."""
    indexer = settings.indexer.model_copy(update={"encoder_path": encoder})
    fingerprint = build_encoder(indexer).fingerprint
    tuned = settings.model_copy(
        update={"index": f"{settings.index}-tuned-{fingerprint[:8]}", "indexer": indexer}
    )
    ensure_index(tuned, catalog)
    return build_pipeline(tuned)


def parse_stages(text: str) -> list[Stage]:
    """--mode: comma-separated stages, or ``all``."""
    names = list(STAGES) if text == "all" else [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        fail(f"--mode: unknown stage(s) {unknown}; choose from {', '.join(STAGES)} or 'all'")
    return names  # type: ignore[return-value]
