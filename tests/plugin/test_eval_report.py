"""`shoprank eval --report`: an HTML page whose plots are embedded, on a hand-made catalog."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from indexer.local_store import LocalStore
from plugin.eval_report import (
    CurvePoint,
    bootstrap_ci,
    fairness_curve,
    window_summary,
    write_report,
)
from plugin.fairness.evaluation import fairness_setup
from plugin.offline_eval import StageResult, evaluate_stages, markdown
from plugin.pipeline import SearchPipeline
from reranker.metrics import evaluate_run
from tests.conftest import axis_vectors
from tests.plugin.fairness.test_evaluation import FAIR_TOPK, RUN, catalog
from tests.plugin.fairness.test_evaluation import QRELS as FAIR_QRELS

QUERIES = {"q1": "shoe maker", "q2": "big shoe", "q3": "small shoe"}
QRELS = {"q1": {"s0": 1, "s1": 2}, "q2": {"b3": 1}, "q3": {"s2": 3, "b1": 1}}


def test_the_report_embeds_its_plots_and_opens_offline(tmp_path: Path) -> None:
    products = catalog()
    store = LocalStore(tmp_path / "idx")
    store.replace_all(products, axis_vectors(len(products)))
    encoder = type("Unused", (), {"clear_cache": lambda self: None})()
    pipeline = SearchPipeline(store, encoder)  # type: ignore[arg-type]
    setup = fairness_setup(FAIR_TOPK, products)
    results = evaluate_stages(pipeline, QUERIES, QRELS, ["bm25"], fairness=setup)
    curve = fairness_curve(setup, results[-1], QRELS, QUERIES, k=10, gains=None)

    path = write_report(tmp_path / "report", "tiny", results,
                        markdown(results, "full", "tiny", setup), k=10, fairness=curve)
    page = path.read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # nDCG per stage, latency, fairness curve
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert not re.findall(r"(?:src|href)=\"https?://", page), "the report loads nothing"
    assert "nDCG@10" in page


def test_the_fairness_curve_trades_relevance_for_exposure_as_the_policy_tightens() -> None:
    """q1 ranks ten big-brand products above ten small (protected) ones: FA*IR with a higher
    target p lifts more small brands into the top 10."""
    setup = fairness_setup(FAIR_TOPK, catalog())
    scores = {qid: [float(-rank) for rank in range(len(ids))] for qid, ids in RUN.items()}
    stage = StageResult("bm25", RUN, evaluate_run(RUN, FAIR_QRELS, k=10), 0.0, scores=scores)
    curve = fairness_curve(setup, stage, FAIR_QRELS, {}, k=10, gains=None)
    labels = [point.label for point in curve]
    assert labels == ["off", "p=0.1", "p=0.2", "p=0.3", "p=0.4", "p=0.5", "p=0.6"]
    exposure = [point.x for point in curve]
    assert exposure[-1] > exposure[0]
    assert exposure == sorted(exposure)  # never less exposure for a stronger policy


def test_bootstrap_ci_holds_the_mean() -> None:
    mean, low, high = bootstrap_ci([0.0, 0.5, 1.0, 0.5])
    assert mean == 0.5 and low < mean < high
    assert bootstrap_ci([0.3, 0.3]) == (0.3, 0.3, 0.3)


def test_the_window_curve_is_written_out_in_numbers_beside_its_plot(tmp_path: Path) -> None:
    """A reader can quote the adaptive window's trade-off without reading it off the plot."""
    curve = [CurvePoint("50 ms", 0.61234, 120.0, p95=180.0, window=10.0),
             CurvePoint("fixed window", 0.65, 210.4, p95=260.6, window=20.0)]
    text = window_summary(curve, 10)
    assert text == ("50 ms: mean window 10.0, nDCG@10 0.6123, search p50 120 ms / p95 180 ms; "
                    "fixed window: mean window 20.0, nDCG@10 0.6500, search p50 210 ms / "
                    "p95 261 ms")
