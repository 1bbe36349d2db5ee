from __future__ import annotations

import math
from pathlib import Path

import pytest

from reranker.errors import EvaluationInputError
from reranker.metrics import (
    ESCI_GAINS,
    evaluate_run,
    judged_at_k,
    load_qrels,
    load_queries,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap,
    parse_gains,
    recall_at_k,
    write_trec_run,
)

L2 = math.log2


def test_ndcg_with_exponential_gains_by_hand() -> None:
    judgments = {"a": 3, "b": 1, "c": 0, "d": 2}
    ranking = ["b", "a", "x", "d"]  # x is unjudged: gain 0
    dcg = 1 / L2(2) + 7 / L2(3) + 0 + 3 / L2(5)
    ideal = 7 / L2(2) + 3 / L2(3) + 1 / L2(4)
    assert ndcg_at_k(ranking, judgments, 10) == pytest.approx(dcg / ideal)


def test_ndcg_with_esci_gains_and_cutoff() -> None:
    judgments = {"e1": 3, "e2": 3, "s": 2, "c": 1, "i": 0}
    ranking = ["s", "e1", "i", "e2"]
    dcg = 0.1 / L2(2) + 1.0 / L2(3)  # cut at k=3
    ideal = 1.0 / L2(2) + 1.0 / L2(3) + 0.1 / L2(4)
    assert ndcg_at_k(ranking, judgments, 3, ESCI_GAINS) == pytest.approx(dcg / ideal)


def test_ndcg_ties_in_grades_are_interchangeable() -> None:
    judgments = {"a": 2, "b": 2, "c": 1}
    assert ndcg_at_k(["a", "b", "c"], judgments, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a", "c"], judgments, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "a", "b"], judgments, 3) < 1.0


def test_unjudged_documents_score_zero_but_show_in_judged_at_k() -> None:
    judgments = {"a": 1}
    assert ndcg_at_k(["u1", "a"], judgments, 10) == pytest.approx(1 / L2(3))
    assert judged_at_k(["u1", "a", "u2", "u3"], judgments, 4) == pytest.approx(0.25)
    assert judged_at_k(["a", "u1"], {"a": 1, "u1": 0}, 2) == 1.0


def test_mrr_and_recall_by_hand() -> None:
    judgments = {"a": 0, "b": 2, "c": 1, "d": 3}
    assert mrr_at_k(["a", "x", "b"], judgments, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "c", "d"], judgments, 10, min_grade=3) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "x"], judgments, 10) == 0.0
    assert recall_at_k(["b", "x", "d"], judgments, 100) == pytest.approx(2 / 3)
    assert recall_at_k(["b", "x", "d"], judgments, 1) == pytest.approx(1 / 3)


def test_evaluate_run_skips_queries_without_positives_and_zeroes_missing_ones() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 2}}
    report = evaluate_run({"q1": ["a"]}, qrels, k=10)
    assert report.skipped_queries == ["q2"]
    assert report.queries == 2
    assert report.ndcg == pytest.approx(0.5)
    assert report.per_query["q3"]["ndcg"] == 0.0


def test_parse_gains() -> None:
    assert parse_gains("3=1,2=0.1,1=0.01,0=0") == ESCI_GAINS
    with pytest.raises(EvaluationInputError, match="GRADE=GAIN"):
        parse_gains("3:1")


def test_inputs_in_shared_formats(tmp_path: Path) -> None:
    queries = tmp_path / "queries.tsv"
    queries.write_text("q1\tred shoes\nq2\tblue dress\n", encoding="utf-8")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 a 3\nq1 0 b 0\nq2 0 c 1\n", encoding="utf-8")
    assert load_queries(queries) == {"q1": "red shoes", "q2": "blue dress"}
    assert load_qrels(qrels) == {"q1": {"a": 3, "b": 0}, "q2": {"c": 1}}
    qrels.write_text("q1 0 a\n", encoding="utf-8")
    with pytest.raises(EvaluationInputError, match="line 1"):
        load_qrels(qrels)


def test_trec_run_file_preserves_our_order(tmp_path: Path) -> None:
    path = tmp_path / "run.txt"
    write_trec_run({"q1": ["b", "a", "c"]}, path, tag="t")
    lines = [line.split() for line in path.read_text().splitlines()]
    assert lines[0] == ["q1", "Q0", "b", "1", "3", "t"]
    resorted = sorted(lines, key=lambda parts: -float(parts[4]))
    assert [parts[2] for parts in resorted] == ["b", "a", "c"]


def test_condensed_ndcg_drops_unjudged_documents() -> None:
    qrels = {"q1": {"a": 1, "b": 0}}
    report = evaluate_run({"q1": ["u1", "u2", "a"]}, qrels, k=10)
    assert report.ndcg == pytest.approx(1 / L2(4))
    assert report.ndcg_condensed == pytest.approx(1.0)


def test_paired_bootstrap_brackets_the_mean_difference() -> None:
    a = {f"q{i}": 0.5 for i in range(50)}
    better = {f"q{i}": 0.5 + (0.1 if i % 2 else 0.0) for i in range(50)}
    result = paired_bootstrap(a, better, samples=2000, seed=1)
    assert result.mean == pytest.approx(0.05)
    assert result.low < 0.05 < result.high and result.significant
    same = paired_bootstrap(a, a, samples=500)
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0) and not same.significant
    noisy = {f"q{i}": 0.5 + (0.2 if i % 2 else -0.2) for i in range(50)}
    assert not paired_bootstrap(a, noisy, samples=2000).significant
    with pytest.raises(EvaluationInputError, match="no scored query"):
        paired_bootstrap({"x": 1.0}, {"y": 1.0})
