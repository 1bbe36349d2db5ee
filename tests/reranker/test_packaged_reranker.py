"""The shipped cross-encoder: what a fresh install serves with no --checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from indexer.schema import Product, product_to_text
from plugin.components import (
    PACKAGED_FINAL_RANKER,
    PACKAGED_RERANKER,
    PACKAGED_RETRIEVAL_RANKER,
    build_pipeline,
    build_reranker,
)
from plugin.settings import Settings
from reranker.cross_encoder import InProcessCrossEncoder, read_model_card
from reranker.features import CROSS_ENCODER_FEATURE
from reranker.linear_ranker import LinearRanker
from reranker.onnx_cross_encoder import OnnxCrossEncoder
from tests.conftest import demo_slice

pytestmark = pytest.mark.slow

#: The most the shipped artifact may weigh in git (the issue's limit).
MAX_ARTIFACT_BYTES = 25 * 1024 * 1024


def test_the_packaged_cross_encoder_is_small_documented_and_needs_no_checkpoint() -> None:
    size = sum(p.stat().st_size for p in PACKAGED_RERANKER.rglob("*") if p.is_file())
    assert size <= MAX_ARTIFACT_BYTES
    card = read_model_card(PACKAGED_RERANKER)
    assert card is not None and card.mode == "lora"
    assert (PACKAGED_RERANKER / "README.md").is_file()
    reranker = build_reranker(Settings(reranker="cross-encoder"))
    assert isinstance(reranker, InProcessCrossEncoder)
    assert reranker.checkpoint == PACKAGED_RERANKER and reranker.max_length == card.max_length


def test_the_packaged_cross_encoder_finds_the_product_a_query_was_written_from() -> None:
    """For real demo products it scores the product whose title a query quotes above most
    others: an untrained head would rank it anywhere."""
    products = [Product.model_validate(row) for row in demo_slice(200)]
    rng = random.Random(0)
    reranker = InProcessCrossEncoder(PACKAGED_RERANKER)
    ranks = []
    for product in rng.sample(products, 15):
        query = " ".join(product.title.split()[:4])
        others = rng.sample([p for p in products if p.id != product.id], 19)
        scores = reranker.score(query, [product_to_text(p) for p in [product, *others]])
        ranks.append(1 + sum(s > scores[0] for s in scores[1:]))
    assert np.mean([1 / r for r in ranks]) > 0.7, ranks


def test_the_default_reranker_is_the_packaged_model_on_onnx_exported_once(
    _isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOPRANK_RERANKER")  # the conftest turns reranking off
    settings = Settings()
    assert settings.reranker == "onnx" and settings.reranker_precision == "int8"
    reranker = build_reranker(settings)
    assert isinstance(reranker, OnnxCrossEncoder)
    exported = reranker.folder
    assert exported.parent == _isolated_home / "cache" / "onnx"
    texts = [product_to_text(Product.model_validate(row)) for row in demo_slice(8)]
    expected = InProcessCrossEncoder(PACKAGED_RERANKER).score("wireless earbuds", texts)
    fp32 = build_reranker(Settings(reranker_precision="fp32"))
    assert isinstance(fp32, OnnxCrossEncoder) and fp32.folder == exported  # no second export
    assert np.allclose(fp32.score("wireless earbuds", texts), expected, atol=1e-4)
    assert np.allclose(reranker.score("wireless earbuds", texts), expected, atol=0.05)


def test_without_a_reranker_the_packaged_final_stage_is_its_retrieval_twin() -> None:
    packaged = LinearRanker.load(PACKAGED_FINAL_RANKER)
    twin = LinearRanker.load(PACKAGED_RETRIEVAL_RANKER)
    assert CROSS_ENCODER_FEATURE in packaged.feature_names
    assert CROSS_ENCODER_FEATURE not in twin.feature_names
    plain = build_pipeline(Settings(reranker="none"))
    assert plain.final_ranker is not None and not plain.final_needs_rerank
    served = build_pipeline(Settings(reranker="cross-encoder"))
    assert served.final_needs_rerank and served.final.rankers.fallback is not None
