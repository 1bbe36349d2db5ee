"""Cross-encoder tuning: data preparation by hand-computed cases, and a tiny real training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import BiEncoder
from indexer.schema import Product
from indexer.store import Filters, ScoredId
from reranker.cross_encoder import (
    ADAPTER_CONFIG,
    PACKAGED_BASE,
    InProcessCrossEncoder,
    read_model_card,
)
from reranker.errors import CheckpointError
from reranker.metrics import ESCI_GAINS, evaluate_run
from reranker.training_data import (
    LabeledPair,
    hard_negatives,
    labeled_pairs,
    mine_candidates,
    soft_targets,
    split_queries,
)
from reranker.tuning import CrossEncoderTuneConfig, TuningError, tune_cross_encoder
from tests.conftest import demo_slice


def test_split_is_by_whole_queries_and_repeatable() -> None:
    ids = [f"q{i}" for i in range(10)]
    train, validation = split_queries(ids, 0.2, seed=3)
    assert len(validation) == 2 and len(train) == 8
    assert sorted(train + validation) == sorted(ids)
    assert split_queries(list(reversed(ids)), 0.2, seed=3) == (train, validation)
    assert split_queries(ids + ids[:4], 0.2, seed=3) == (train, validation)


def test_split_keeps_one_query_on_each_side() -> None:
    assert [len(side) for side in split_queries(["a", "b"], 0.01, seed=0)] == [1, 1]
    assert [len(side) for side in split_queries(["a", "b"], 0.99, seed=0)] == [1, 1]
    assert split_queries(["a"], 0.5, seed=0) == (["a"], [])
    with pytest.raises(ValueError, match="validation_fraction"):
        split_queries(["a", "b"], 1.0, seed=0)


def test_hard_negatives_skip_relevant_and_keep_rank_order() -> None:
    candidates = {"q1": ["a", "b", "c", "d", "e"], "q2": ["x", "y"], "q3": []}
    qrels = {"q1": {"a": 3, "b": 0, "d": 1}, "q2": {"x": 2, "y": 1}}
    assert hard_negatives(candidates, qrels, per_query=2) == {
        "q1": ["b", "c"],  # b judged 0, c unjudged; a and d are relevant
        "q2": [],
        "q3": [],
    }
    assert hard_negatives(candidates, qrels, per_query=10)["q1"] == ["b", "c", "e"]


def test_soft_targets_keep_the_grade_order() -> None:
    qrels = {"q": {"a": 3, "b": 2, "c": 1, "d": 0}}
    assert soft_targets(qrels) == pytest.approx({3: 1.0, 2: 3 / 7, 1: 1 / 7, 0: 0.0})
    assert soft_targets(qrels, ESCI_GAINS) == pytest.approx({3: 1.0, 2: 0.1, 1: 0.01, 0: 0.0})
    with pytest.raises(ValueError, match="positive gain"):
        soft_targets({"q": {"a": 0}})


def test_labeled_pairs_add_unjudged_negatives_once() -> None:
    pairs = labeled_pairs(
        ["q1"], {"q1": {"a": 2, "b": 0}, "q2": {"z": 2}}, {"q1": ["b", "c"]}, {2: 1.0, 0: 0.0}
    )
    assert pairs == [
        LabeledPair("q1", "a", 1.0), LabeledPair("q1", "b", 0.0), LabeledPair("q1", "c", 0.0)
    ]


class _Bm25OnlyStore:
    """Just enough of a `VectorStore` for BM25 retrieval."""

    def search_bm25(self, text: str, n: int, filters: Filters | None = None) -> list[ScoredId]:
        hits = [ScoredId(f"{text}-{i}", 1.0 / (i + 1)) for i in range(5)]
        return hits[:n]

    def search_vector(
        self, vector: np.ndarray, n: int, filters: Filters | None = None
    ) -> list[ScoredId]:
        raise AssertionError("BM25 mining must not search vectors")


def test_mine_candidates_returns_ranked_ids_per_query() -> None:
    mined = mine_candidates(
        _Bm25OnlyStore(), BiEncoder(), {"q1": "lamp", "q2": "mug"}, depth=3,  # type: ignore[arg-type]
        mode="bm25",
    )
    assert mined == {"q1": ["lamp-0", "lamp-1", "lamp-2"], "q2": ["mug-0", "mug-1", "mug-2"]}


def test_output_folder_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(TuningError, match="not an empty folder"):
        tune_cross_encoder({}, {}, {}, {}, tmp_path)
    assert (tmp_path / "old.txt").read_text() == "keep me"


def test_adapter_without_model_card_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ADAPTER_CONFIG).write_text("{}")
    with pytest.raises(CheckpointError, match=r"model_card\.json"):
        InProcessCrossEncoder(tmp_path).score("q", ["text"])


def _title_queries(products: list[Product], count: int) -> tuple[
    dict[str, str], dict[str, dict[str, int]], dict[str, list[str]]
]:
    """Queries made of product titles: the product is grade 3, its neighbour grade 0.

    Candidates are the whole slice, rotated so that the relevant product is fourth.
    """
    ids = [product.id for product in products]
    queries, qrels, candidates = {}, {}, {}
    for i in range(count):
        qid = f"t{i}"
        queries[qid] = " ".join(products[i].title.split()[:6])
        qrels[qid] = {ids[i]: 3, ids[i + 1]: 0}
        start = (i - 3) % len(ids)
        candidates[qid] = ids[start:] + ids[:start]
    return queries, qrels, candidates


@pytest.mark.slow
def test_lora_tuning_learns_and_writes_a_small_loadable_artifact(tmp_path: Path) -> None:
    products = [Product.model_validate(record) for record in demo_slice(30)]
    queries, qrels, candidates = _title_queries(products, count=8)
    config = CrossEncoderTuneConfig(
        epochs=4, batch_size=8, learning_rate=1e-3, max_length=64, negatives_per_query=4,
        validation_fraction=0.25, validation_depth=10, logging_steps=1,
        early_stopping_patience=10, seed=1,
    )
    out = tmp_path / "ce-lora"

    result = tune_cross_encoder(
        {p.id: p for p in products}, queries, qrels, candidates, out, config, catalog="demo[:30]"
    )

    assert (result.train_queries, result.validation_queries) == (6, 2)
    # Two judged pairs per query, plus the top 4 negatives less the judged one among them.
    assert result.train_pairs == 6 * (2 + 3)
    per_epoch = len(result.losses) // config.epochs
    first, last = result.losses[:per_epoch], result.losses[-per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first)
    assert result.steps == config.epochs * 4  # 30 pairs in batches of 8

    assert result.artifact_bytes < 5_000_000
    names = {path.name for path in out.iterdir()}
    assert {ADAPTER_CONFIG, "adapter_model.safetensors", "model_card.json", "README.md"} <= names
    assert not any(name.startswith(".checkpoints") for name in names)
    assert json.loads((out / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == (
        PACKAGED_BASE
    )
    card = read_model_card(out)
    assert card is not None and card.mode == "lora" and card.max_length == 64
    assert card.config["learning_rate"] == 1e-3 and card.data["catalog"] == "demo[:30]"

    # The loaded artifact is the trained model: it reproduces the reported validation nDCG.
    reranker = InProcessCrossEncoder(out)
    _, validation_ids = split_queries(sorted(queries), config.validation_fraction, config.seed)
    texts = {p.id: p for p in products}
    from indexer.schema import product_to_text

    run = {}
    for qid in validation_ids:
        window = candidates[qid][: config.validation_depth]
        scores = reranker.score(queries[qid], [product_to_text(texts[p]) for p in window])
        assert len(scores) == len(window)
        run[qid] = [p for _, p in sorted(zip(scores, window, strict=True), key=lambda s: -s[0])]
    ndcg = evaluate_run(run, {q: qrels[q] for q in validation_ids}, k=config.k).ndcg
    assert ndcg == pytest.approx(result.validation_best, abs=1e-6)
