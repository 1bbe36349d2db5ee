"""`shoprank eval --fairness`: a policy applied to each stage's ranking, on a hand-made catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.local_store import LocalStore
from indexer.schema import Product
from plugin.cli import app
from plugin.fairness.evaluation import evaluate_fairness, fairness_measures, fairness_setup
from plugin.models import FairnessPolicy
from plugin.offline_eval import evaluate_stages, markdown, summary
from plugin.pipeline import SearchPipeline
from reranker.metrics import evaluate_run
from tests.conftest import axis_vectors, make_product

runner = CliRunner()


def catalog() -> list[Product]:
    """30 products of one big brand, ten one-product brands and two products without a brand."""
    big = [make_product(f"b{i}", f"big shoe model {i}", brand="Big") for i in range(30)]
    small = [make_product(f"s{i}", f"small shoe maker {i}", brand=f"Small{i}") for i in range(10)]
    return big + small + [make_product(f"n{i}", "plain shoe", brand=None) for i in range(2)]


#: q1: ten big-brand products above ten small-brand ones; q2: no small brand among the
#: candidates, so FA*IR cannot be met and the query is not tested.
RUN = {"q1": [f"b{i}" for i in range(10)] + [f"s{i}" for i in range(10)],
       "q2": [f"b{i}" for i in range(10, 20)] + ["n0", "n1"]}
QRELS = {"q1": {"b0": 1, "s0": 1}, "q2": {"b10": 1}}
FAIR_TOPK = FairnessPolicy(policy="fair_topk", protected_share_below=0.1, p=0.5, alpha=0.1)


def test_catalog_rule_protects_small_brands_but_not_products_without_a_brand() -> None:
    setup = fairness_setup(FAIR_TOPK, catalog())
    assert setup.protected == {f"small{i}" for i in range(10)}  # each 1/42 < 10%; (none) 2/42
    assert setup.protected_share == pytest.approx(10 / 42)
    listed = fairness_setup(FairnessPolicy(policy="fair_topk", protected=["Big"]), catalog())
    assert listed.protected == {"big"}  # matched case-folded, as the search API does


def test_top_k_without_protected_items_fails_and_the_policy_repairs_it() -> None:
    setup = fairness_setup(FAIR_TOPK, catalog())
    before, tested = fairness_measures(setup, RUN, 10)
    assert tested == 1  # q2's candidates hold no protected item
    assert before.pass_rate == 0.0
    assert before.exposure_ratio == 0.0  # no protected item in any top 10

    result = evaluate_fairness(setup, RUN, {}, QRELS, evaluate_run(RUN, QRELS), k=10)
    assert result.after.pass_rate == 1.0 and result.tested == 1 and result.queries == 2
    assert result.after.exposure_ratio is not None and result.after.exposure_ratio > 0
    assert result.after.awrf is not None and before.awrf is not None
    assert result.after.awrf > before.awrf
    assert result.changed == 1 and result.run["q2"] == RUN["q2"]
    assert set(result.run["q1"]) == set(RUN["q1"])  # a permutation: nothing dropped or added
    # s0 (relevant) moved into the top 10, so q1 gains; q2 is unchanged.
    per_query = result.report.per_query
    assert per_query["q1"]["ndcg"] > evaluate_run(RUN, QRELS).per_query["q1"]["ndcg"]
    assert result.versus_unconstrained.mean > 0
    assert result.latency_p95_us >= result.latency_p50_us > 0


def test_without_protected_groups_only_relevance_and_latency_are_reported() -> None:
    setup = fairness_setup(FairnessPolicy(policy="group_cap", cap=2), catalog())
    result = evaluate_fairness(setup, RUN, {}, QRELS, evaluate_run(RUN, QRELS), k=10)
    assert result.before.pass_rate is None and result.after.awrf is None
    assert sum(pid.startswith("b") for pid in result.run["q1"][:10]) == 2


def test_amortized_policy_runs_over_the_queries_in_turn() -> None:
    setup = fairness_setup(
        FairnessPolicy(policy="amortized", protected_share_below=0.1), catalog()
    )
    result = evaluate_fairness(setup, RUN, {}, QRELS, evaluate_run(RUN, QRELS), k=10)
    assert result.queries == 2 and set(result.run["q1"]) == set(RUN["q1"])


@pytest.fixture
def tiny_index(_isolated_home: Path, tmp_path: Path) -> dict[str, str]:
    """A catalog file, its index (axis vectors: bm25 needs no model) and judged queries."""
    products = catalog()
    LocalStore(_isolated_home / "indexes" / "tiny").replace_all(
        products, axis_vectors(len(products))
    )
    catalog_file = tmp_path / "catalog.jsonl"
    catalog_file.write_text(
        "".join(p.model_dump_json(exclude_none=True) + "\n" for p in products)
    )
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\tshoe maker\nq2\tbig shoe\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 s0 1\nq1 0 b0 1\nq2 0 b3 1\n")
    return {"--catalog": str(catalog_file), "--queries": str(queries), "--qrels": str(qrels),
            "--index": "tiny", "--mode": "bm25"}


def _eval(options: dict[str, str], *extra: str) -> list[str]:
    return ["eval", *(part for pair in options.items() for part in pair), *extra]


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ('{"policy": "fair_topk", "protected": ["Small0"], "alpha": 1.5}', "alpha"),
        ('{"policy": "fair_topk", "protected_share": 0.1}', "protected_share"),
        ('{"policy": "fair_topk"}', "protected_share_below"),
        ('{"policy": "fair_topk", "p": 0.3', "JSON"),
        ('{"policy": "none"}', "nothing to evaluate"),
        ("@missing-policy.json", "missing-policy.json"),
    ],
)
def test_cli_refuses_a_malformed_policy_naming_the_field(
    tiny_index: dict[str, str], policy: str, named: str
) -> None:
    result = runner.invoke(app, _eval(tiny_index, "--fairness", policy))
    assert result.exit_code == 2
    assert "--fairness" in result.output and named in result.output.replace("\n", "")


def test_cli_reports_fairness_next_to_relevance(
    tiny_index: dict[str, str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"policy": "fair_topk", "protected_share_below": 0.1, "p": 0.5}))
    result = runner.invoke(app, _eval(tiny_index, "--fairness", f"@{policy}"))
    assert result.exit_code == 0, result.output
    for column in ("fair nDCG@10", "nDCG vs unconstrained [95% CI]", "FA*IR pass rate",
                   "tested queries", "exposure ratio", "AWRF", "fairness p50 / p95 us"):
        assert column in result.output
    assert "10 brand group(s) each below 10.00% of the catalog's 42 products" in result.output

    result = runner.invoke(app, _eval(tiny_index, "--json", "--fairness", policy.read_text()))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["fairness"]["protected_groups"] == 10
    fair = data["stages"]["bm25"]["fairness"]
    assert {"fair_pass_rate", "exposure_ratio", "awrf"} <= set(fair["fair"])
    assert set(fair["latency_us"]) == {"p50", "p95"} and fair["queries"] == 2


def test_evaluate_stages_adds_a_fair_row_per_stage(tmp_path: Path) -> None:
    products = catalog()
    store = LocalStore(tmp_path / "idx")
    store.replace_all(products, axis_vectors(len(products)))
    encoder = type("Unused", (), {"clear_cache": lambda self: None})()
    pipeline = SearchPipeline(store, encoder)  # type: ignore[arg-type]
    setup = fairness_setup(FAIR_TOPK, products)
    results = evaluate_stages(
        pipeline, {"q1": "shoe maker", "q2": "big shoe"}, {"q1": {"s0": 1}, "q2": {"b3": 1}},
        ["bm25"], fairness=setup,
    )
    (result,) = results
    assert result.fairness is not None and len(result.scores["q1"]) == len(result.run["q1"])
    assert np.isfinite(result.fairness.report.ndcg)
    assert "fairness" in summary(results, "full")["stages"]["bm25"]
    assert "#### fairness: fair_topk on brand" in markdown(results, "full", "tiny", setup)
