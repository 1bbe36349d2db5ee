"""Stage evaluation under both protocols, on a tiny store (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.local_store import LocalStore
from indexer.schema import Product
from plugin.offline_eval import CrossValidation, evaluate_stages, markdown, summary
from plugin.pipeline import SearchPipeline
from tests.conftest import axis_vectors


class AxisEncoder:
    """Maps each known query to a fixed unit vector (the tiny store's vectors are axes)."""

    is_packaged = True  # the tiny store has no encoder stamp: it counts as the packaged one

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode_query(self, text: str) -> np.ndarray:
        return self.vectors.get(text, np.ones(8, dtype=np.float32) / np.sqrt(8))

    def clear_cache(self) -> None:
        return None


@pytest.fixture
def pipeline(tmp_path: Path, tiny_products: list[Product]) -> SearchPipeline:
    vectors = axis_vectors(len(tiny_products))
    store = LocalStore(tmp_path / "idx")
    store.replace_all(tiny_products, vectors)
    encoder = AxisEncoder({"red shoes": vectors[2], "coffee": vectors[5]})
    return SearchPipeline(store, encoder)  # type: ignore[arg-type]


QUERIES = {"q1": "red shoes", "q2": "coffee"}
QRELS = {"q1": {"p1": 3, "p3": 1, "p2": 0}, "q2": {"p6": 2, "p4": 0}}


def test_pool_protocol_only_reorders_the_judged_products(pipeline: SearchPipeline) -> None:
    (result,) = evaluate_stages(pipeline, QUERIES, QRELS, ["bm25"], protocol="pool")
    assert set(result.run["q1"]) == {"p1", "p2", "p3"}
    assert set(result.run["q2"]) == {"p4", "p6"}
    assert result.run["q2"][0] == "p6"  # the only pool product that matches "coffee"
    assert result.report.judged == 1.0


def test_full_protocol_ranks_the_catalog_and_compares_stages(pipeline: SearchPipeline) -> None:
    results = evaluate_stages(pipeline, QUERIES, QRELS, ["bm25", "vector", "hybrid"])
    assert [r.stage for r in results] == ["bm25", "vector", "hybrid"]
    assert results[0].versus_first is None
    assert all(r.versus_first is not None for r in results[1:])
    vector = results[1]
    assert vector.run["q1"][0] == "p3" and len(vector.run["q1"]) == 6
    data = summary(results, "full")
    assert data["protocol"] == "full"
    assert set(data["stages"]) == {"bm25", "vector", "hybrid"}
    assert "ci95" in data["stages"]["hybrid"]["nDCG_vs_bm25"]
    assert "ci95" in data["stages"]["hybrid"]["judged_only_nDCG_vs_bm25"]
    table = markdown(results, "full", "tiny")
    assert "nDCG vs bm25 [95% CI]" in table and table.count("\n| ") == 5  # header, rule, 3 stages
    assert "judged-only vs bm25 [95% CI]" in table


def test_cross_validation_reports_each_fold_and_matches_the_fold_loop(
    pipeline: SearchPipeline,
) -> None:
    from plugin.final_stage_fitting import cross_validated_fusion, folds_of, retrieved_lists
    from plugin.folds import FoldDone

    done: list[FoldDone] = []
    (result,) = evaluate_stages(
        pipeline, QUERIES, QRELS, ["tuned-hybrid"], cross_validation=CrossValidation(2, 0),
        on_fold=done.append,
    )
    assert [(d.stage, d.fold, d.folds, d.queries) for d in done] == [
        ("tuned-hybrid", 1, 2, 1), ("tuned-hybrid", 2, 2, 1)
    ]
    assert all(0.0 <= d.ndcg <= 1.0 and d.seconds >= 0 for d in done)
    folds = folds_of(list(QUERIES), 2, 0)
    expected, _ = cross_validated_fusion(
        retrieved_lists(pipeline, QUERIES), QRELS, folds, gains=None
    )
    assert result.run == expected
