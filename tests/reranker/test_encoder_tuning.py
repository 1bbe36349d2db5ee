"""Bi-encoder tuning: data preparation by hand-computed cases, and a tiny real training run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from indexer.encoder import BiEncoder
from indexer.errors import EncoderMismatchError
from indexer.indexing import index_products, upsert_products
from indexer.local_store import LocalStore
from indexer.model_files import ADAPTER_CONFIG, PACKAGED_BASE
from indexer.schema import Product
from indexer.store import check_encoder
from reranker.cross_encoder import read_model_card
from reranker.encoder_tuning import (
    BiEncoderTuneConfig,
    ProductTexts,
    RetrievalValidation,
    Triplet,
    triplets,
    tune_bi_encoder,
)
from reranker.training_data import split_queries
from reranker.tuning import TuningError
from tests.conftest import demo_slice, make_product


def test_triplets_cycle_the_shorter_side_and_skip_what_cannot_train() -> None:
    qrels = {"q1": {"a": 3, "b": 3, "c": 2}, "q2": {"x": 1}, "q3": {"y": 3}}
    negatives = {"q1": ["n1"], "q2": ["n2"], "q3": []}
    assert triplets(["q1", "q2", "q3"], qrels, negatives, min_positive_grade=3) == [
        Triplet("q1", "a", "n1"), Triplet("q1", "b", "n1")  # c is below the grade
    ]
    assert triplets(["q1"], qrels, negatives, min_positive_grade=2) == [
        Triplet("q1", "a", "n1"), Triplet("q1", "b", "n1"), Triplet("q1", "c", "n1")
    ]


class _AxisModel:
    """Encodes each known text as a fixed vector (a stand-in for a sentence-transformer)."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        return np.array([self.vectors[text] for text in texts], dtype=np.float32)


def test_validation_ranks_the_corpus_by_cosine_and_scores_ndcg() -> None:
    products = {pid: make_product(pid, title) for pid, title in
                [("a", "alpha"), ("b", "beta"), ("c", "gamma")]}
    texts = ProductTexts(products)
    model = _AxisModel({
        "find beta": [0.0, 1.0], texts["a"]: [1.0, 0.0], texts["b"]: [0.6, 0.8],
        texts["c"]: [0.8, 0.6],
    })
    validation = RetrievalValidation({"q": "find beta"}, ["a", "b", "c"], texts,
                                     {"q": {"b": 3}}, k=10)
    assert validation.rank(model) == {"q": ["b", "c", "a"]}  # type: ignore[arg-type]
    assert validation.score(model) == pytest.approx(1.0)  # type: ignore[arg-type]
    assert validation.ndcg({"q": ["a", "b"]}) == pytest.approx(1 / np.log2(3))


def test_unusable_inputs_fail_before_any_model_loads(tmp_path: Path) -> None:
    products = {"a": make_product("a", "alpha")}
    with pytest.raises(TuningError, match="at least 2 queries"):
        tune_bi_encoder(products, {"q": "alpha"}, {"q": {"a": 3}}, {"q": ["a"]}, tmp_path / "o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(TuningError, match="not an empty folder"):
        tune_bi_encoder(products, {}, {}, {}, tmp_path / "full")
    queries = {"q1": "alpha", "q2": "beta"}
    with pytest.raises(TuningError, match="no training triplet"):
        tune_bi_encoder(products, queries, {"q1": {"a": 1}, "q2": {"a": 1}},
                        {"q1": ["a"], "q2": ["a"]}, tmp_path / "o")


def _title_queries(
    products: list[Product], count: int
) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, list[str]]]:
    """Query i is the start of product i's title; product i is Exact, the next one judged 0.

    Candidates are the catalog rotated to put the answer last, as a weak retriever would.
    """
    ids = [product.id for product in products]
    queries, qrels, candidates = {}, {}, {}
    for i in range(count):
        qid = f"t{i}"
        queries[qid] = " ".join(products[i].title.split()[:5])
        qrels[qid] = {ids[i]: 3, ids[i + 1]: 0}
        candidates[qid] = ids[i + 1:] + ids[: i + 1]
    return queries, qrels, candidates


@pytest.mark.slow
def test_lora_tuning_learns_and_its_artifact_is_a_new_encoder(tmp_path: Path) -> None:
    products = [Product.model_validate(record) for record in demo_slice(40)]
    by_id = {p.id: p for p in products}
    queries, qrels, candidates = _title_queries(products, count=12)
    config = BiEncoderTuneConfig(
        epochs=3, batch_size=8, learning_rate=1e-3, max_seq_length=64, negatives_per_query=2,
        validation_fraction=0.25, validation_depth=40, logging_steps=1, seed=1,
    )
    out = tmp_path / "shoes-lora"

    result = tune_bi_encoder(by_id, queries, qrels, candidates, out, config, catalog="demo[:40]")

    assert (result.train_queries, result.validation_queries) == (9, 3)
    assert result.train_pairs == 9 * 2  # one positive, two negatives each
    per_epoch = len(result.losses) // config.epochs
    first, last = result.losses[:per_epoch], result.losses[-per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first)
    assert result.validation_best >= result.validation_before > result.validation_retrieval

    assert result.artifact_bytes < 1_000_000
    names = {path.name for path in out.iterdir()}
    assert {ADAPTER_CONFIG, "adapter_model.safetensors", "model_card.json", "README.md"} <= names
    assert not any(name.startswith(".checkpoints") for name in names)
    adapter = json.loads((out / ADAPTER_CONFIG).read_text())
    assert adapter["base_model_name_or_path"] == PACKAGED_BASE
    card = read_model_card(out)
    assert card is not None and card.mode == "lora" and card.max_length == 64
    assert card.data["catalog"] == "demo[:40]"
    assert "bi-encoder" in (out / "README.md").read_text()

    # BiEncoder loads the artifact, and it is the trained model: it reproduces the reported
    # validation nDCG.
    tuned, base = BiEncoder(out, max_seq_length=64), BiEncoder(max_seq_length=64)
    assert tuned.identity == "tuned:shoes-lora" and tuned.fingerprint != base.fingerprint
    _, validation_ids = split_queries(sorted(queries), config.validation_fraction, config.seed)
    corpus = list(dict.fromkeys(
        p for q in validation_ids for p in candidates[q][: config.validation_depth]
    ))
    validation = RetrievalValidation({q: queries[q] for q in validation_ids}, corpus,
                                     ProductTexts(by_id), {q: qrels[q] for q in validation_ids})
    assert validation.score(tuned.model) == pytest.approx(result.validation_best, abs=1e-6)
    query = tuned.encode_query(queries["t0"])
    assert query.shape == (384,) and not np.allclose(query, base.encode_query(queries["t0"]))
    # Training moved the training queries towards their positives, away from their negatives.
    train_ids, _ = split_queries(sorted(queries), config.validation_fraction, config.seed)
    assert _margin(tuned, train_ids, queries, qrels, candidates, by_id) > _margin(
        base, train_ids, queries, qrels, candidates, by_id
    )

    # An index written with the base encoder refuses the tuned one until it is rebuilt.
    store = LocalStore(tmp_path / "index")
    index_products(store, products[:10], base)
    with pytest.raises(EncoderMismatchError, match=r"all-MiniLM-L6-v2.*tuned:shoes-lora"):
        check_encoder(store, tuned)
    with pytest.raises(EncoderMismatchError):
        upsert_products(store, products[10:12], tuned)
    index_products(store, products[:10], tuned)
    check_encoder(store, tuned)
    assert upsert_products(store, products[10:12], tuned) == 2


def _margin(
    encoder: BiEncoder,
    query_ids: list[str],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    candidates: dict[str, list[str]],
    products: dict[str, Product],
) -> float:
    """Mean of cos(query, positive) - cos(query, first hard negative)."""
    texts = ProductTexts(products)
    gaps = []
    for qid in query_ids:
        positive = next(pid for pid, grade in qrels[qid].items() if grade == 3)
        vectors = encoder.encode_texts([queries[qid], texts[positive], texts[candidates[qid][0]]])
        gaps.append(float(vectors[0] @ vectors[1] - vectors[0] @ vectors[2]))
    return sum(gaps) / len(gaps)
