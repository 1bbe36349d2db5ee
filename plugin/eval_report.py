"""`shoprank eval --report DIR`: one HTML page with plots, its images embedded (PNG as data
URIs, drawn by matplotlib), so it opens offline and travels as one file.

The plots: nDCG@k per stage with a 95% bootstrap CI over queries; each stage's search-latency
distribution; with ``--fairness``, the fairness trade-off curve (the policy's strength swept,
nDCG@k against the protected groups' exposure ratio, on the last stage's ranking); with a
reranker, the adaptive rerank window's quality/latency curve (the rerank stage under several
latency budgets, `SHOPRANK_RERANK_BUDGET_MS`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plugin.fairness.evaluation import FairnessSetup, fair_run, fairness_measures, percentile
from plugin.models import MAX_K, MAX_QUERY_CHARS, NO_FAIRNESS, FairnessPolicy, SearchRequest
from plugin.offline_eval import StageResult
from plugin.pipeline import SearchPipeline
from reranker.metrics import Gains, Qrels, evaluate_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Rerank latency budgets (ms) of the adaptive window's curve; None: the fixed window.
BUDGETS_MS: tuple[float | None, ...] = (25.0, 50.0, 100.0, 200.0, None)


@dataclass(frozen=True)
class CurvePoint:
    """One setting of a swept knob: what it bought and what it cost."""

    label: str
    ndcg: float
    x: float
    #: The window curve's p95 search latency (ms) beside its median ``x``.
    p95: float | None = None
    #: The window curve's mean rerank window (candidates the cross-encoder scored).
    window: float | None = None


def bootstrap_ci(
    values: Sequence[float], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95% percentile-bootstrap interval over queries."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return (float("nan"),) * 3
    picks = np.random.default_rng(seed).integers(0, data.size, size=(samples, data.size))
    low, high = np.quantile(data[picks].mean(axis=1), [0.025, 0.975])
    return float(data.mean()), float(low), float(high)


def fairness_curve(
    setup: FairnessSetup, result: StageResult, qrels: Qrels, queries: Mapping[str, str],
    *, k: int, gains: Gains | None,
) -> list[CurvePoint]:
    """The policy at several strengths over one stage's scored ranking (no new searches):
    nDCG@k against the protected/other exposure ratio; "off" is the ranking as it was."""
    scored = {qid: result.run.get(qid, []) for qid in result.report.per_query}
    points = []
    for label, policy in [("off", None), *_strengths(setup.policy)]:
        if policy is None:
            run, exempt = scored, set[str]()
        else:
            swept = dataclasses.replace(setup, policy=policy)
            run, _, exempt = fair_run(swept, scored, result.scores, policy.k or k, queries)
        measures, _ = fairness_measures(setup, run, setup.policy.k or k, exempt)
        if measures.exposure_ratio is None:
            continue
        report = evaluate_run(run, qrels, k=k, gains=gains)
        points.append(CurvePoint(label, report.ndcg, measures.exposure_ratio))
    return points


def _strengths(policy: FairnessPolicy) -> list[tuple[str, FairnessPolicy]]:
    """The policy's own knob, from gentle to strong."""
    sweeps: dict[str, tuple[str, list[float]]] = {
        "fair_topk": ("p", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
        "group_cap": ("cap", [5, 4, 3, 2, 1]),
        "exposure_parity": ("tolerance", [0.4, 0.2, 0.1, 0.05, 0.0]),
        "amortized": ("max_ndcg_loss", [0.01, 0.02, 0.05, 0.1, 0.2]),
    }
    knob, values = sweeps[policy.policy]
    return [(f"{knob}={value:g}", policy.model_copy(update={knob: int(value) if knob == "cap"
                                                             else value}))
            for value in values]


def window_curve(
    pipeline: SearchPipeline, queries: Mapping[str, str], qrels: Qrels,
    *, k: int, gains: Gains | None, budgets: Sequence[float | None] = BUDGETS_MS,
) -> list[CurvePoint]:
    """The rerank stage (hybrid retrieval + cross-encoder) under each latency budget: nDCG@k
    against the median search latency. Each budget runs every judged query once more."""
    points = []
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    for budget in budgets:
        run: dict[str, list[str]] = {}
        latencies, windows = [], []
        for qid, text in judged.items():
            response = pipeline.search(SearchRequest(
                query=text[:MAX_QUERY_CHARS], k=MAX_K, rerank=True, final=False,
                rerank_budget_ms=budget, fairness=NO_FAIRNESS,
            ))
            run[qid] = [hit.id for hit in response.results]
            latencies.append(response.timings_ms["total"])
            windows.append(response.reranked)
        label = "fixed window" if budget is None else f"{budget:g} ms"
        report = evaluate_run(run, qrels, k=k, gains=gains)
        points.append(CurvePoint(label, report.ndcg, statistics.median(latencies),
                                 p95=percentile(latencies, 0.95),
                                 window=statistics.fmean(windows) if windows else None))
    return points


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def ndcg_plot(results: Sequence[StageResult], k: int) -> str:
    figure, axes = _figure()
    names = [r.stage for r in results]
    cis = [bootstrap_ci([v["ndcg"] for v in r.report.per_query.values()]) for r in results]
    means = [c[0] for c in cis]
    errors = [[c[0] - c[1] for c in cis], [c[2] - c[0] for c in cis]]
    axes.bar(names, means, yerr=errors, capsize=6, color="#4c78a8")
    for x, (mean, _, high) in enumerate(cis):
        axes.annotate(f"{mean:.3f}", (x, high), ha="center", va="bottom", fontsize=8)
    axes.set_ylabel(f"nDCG@{k} (95% CI)")
    axes.set_title(f"nDCG@{k} per stage")
    return _png(figure)


def latency_plot(results: Sequence[StageResult]) -> str | None:
    timed = [r for r in results if r.latencies_ms]
    if not timed:
        return None
    figure, axes = _figure()
    axes.boxplot([r.latencies_ms for r in timed], showfliers=True)
    axes.set_xticks(range(1, len(timed) + 1), [r.stage for r in timed])
    axes.set_yscale("log")
    axes.set_ylabel("search latency per query (ms, log)")
    axes.set_title("Latency per stage")
    return _png(figure)


def window_summary(points: Sequence[CurvePoint], k: int) -> str:
    """The window curve's points in words: budget, mean window, nDCG@k, median / p95 ms."""
    return "; ".join(
        f"{p.label}: mean window {p.window if p.window is not None else float('nan'):.1f}, "
        f"nDCG@{k} {p.ndcg:.4f}, search p50 {p.x:.0f} ms"
        + (f" / p95 {p.p95:.0f} ms" if p.p95 is not None else "")
        for p in points)


def curve_plot(points: Sequence[CurvePoint], xlabel: str, title: str, k: int) -> str:
    figure, axes = _figure()
    axes.plot([p.x for p in points], [p.ndcg for p in points], marker="o", color="#e45756")
    labels: dict[tuple[float, float], list[str]] = {}
    for point in points:  # settings that gave the same point share one label
        labels.setdefault((point.x, point.ndcg), []).append(point.label)
    for (x, ndcg), names in labels.items():
        axes.annotate(", ".join(names), (x, ndcg), textcoords="offset points", xytext=(4, 4),
                      fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(f"nDCG@{k}")
    axes.set_title(title)
    return _png(figure)


def write_report(
    folder: Path, title: str, results: Sequence[StageResult], summary_markdown: str, *, k: int,
    fairness: list[CurvePoint] | None = None, window: list[CurvePoint] | None = None,
) -> Path:
    """Write ``folder/index.html`` and return its path."""
    sections = [("nDCG@k per stage", ndcg_plot(results, k),
                 "Each bar: the mean over judged queries; whiskers: a 95% bootstrap CI.")]
    latency = latency_plot(results)
    if latency is not None:
        sections.append(("Latency distributions", latency,
                         "Each query's whole search, per stage (cross-validated stages are "
                         "not timed)."))
    if fairness:
        sections.append(("Fairness trade-off", curve_plot(
            fairness, "exposure ratio, protected / other (1 = parity)",
            f"Fairness policy swept on stage {results[-1].stage}", k),
            "The policy's knob from off to strongest, over the same ranking."))
    if window:
        sections.append(("Adaptive rerank window", curve_plot(
            window, "median search latency (ms)", "Quality against latency budget", k),
            "The rerank stage under each latency budget (the window shrinks to fit): "
            + window_summary(window, k)))
    body = "\n".join(
        f'<section><h2>{html.escape(name)}</h2><img src="{image}" alt="{html.escape(name)}">'
        f"<p>{html.escape(caption)}</p></section>"
        for name, image, caption in sections
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>body{{font:15px/1.4 system-ui,sans-serif;"
        "max-width:60rem;margin:1rem auto;padding:0 1rem}img{max-width:100%}"
        "pre{white-space:pre-wrap;background:#f4f4f6;padding:.5rem}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}<h2>Table</h2>"
        f"<pre>{html.escape(summary_markdown)}</pre></body></html>\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
