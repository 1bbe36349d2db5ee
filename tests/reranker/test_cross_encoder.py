"""The in-process cross-encoder loads a checkpoint folder and the pipeline reranks with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.model_files import packaged_model_path
from indexer.schema import Product, product_to_text
from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from reranker.cross_encoder import InProcessCrossEncoder
from reranker.errors import CheckpointError
from tests.conftest import demo_slice

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untuned) cross-encoder checkpoint started from the packaged MiniLM weights."""
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("ce") / "minilm-ce"
    CrossEncoder(str(packaged_model_path()), num_labels=1, max_length=128).save(str(folder))
    return folder


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json missing"):
        InProcessCrossEncoder(tmp_path).score("q", ["text"])


def test_a_max_length_setting_cuts_what_the_model_reads(checkpoint: Path) -> None:
    from plugin.components import build_reranker
    from plugin.settings import Settings

    text = "Insulated stainless steel water bottle" + " with a bamboo lid" * 4
    longer = text + " that keeps drinks cold for a whole day"
    short = build_reranker(Settings(reranker="cross-encoder", reranker_checkpoint=checkpoint,
                                    reranker_max_length=24))
    full = InProcessCrossEncoder(checkpoint)
    assert short.max_length == 24 and full.max_length == 256  # no model card: 256
    assert short.score("water bottle", [text]) == short.score("water bottle", [longer])
    assert full.score("water bottle", [text]) != full.score("water bottle", [longer])


def test_pipeline_reranks_the_window_by_cross_encoder_score(
    checkpoint: Path, tmp_path: Path
) -> None:
    from sentence_transformers import CrossEncoder

    products = [Product.model_validate(record) for record in demo_slice(120)]
    store = LocalStore(tmp_path / "idx")
    encoder = BiEncoder()
    index_products(store, products, encoder)
    reranker = InProcessCrossEncoder(checkpoint)
    pipeline = SearchPipeline(store, encoder, reranker,
                              settings=SearchSettings(candidates=30, rerank_window=10))

    response = pipeline.search(SearchRequest(query="stainless steel water bottle", k=30))
    window, rest = response.results[:10], response.results[10:]
    assert response.reranked == 10 and response.reranker.startswith("cross-encoder")
    rerank_scores = [hit.scores.rerank for hit in window]
    assert all(score is not None for score in rerank_scores)
    assert rerank_scores == sorted(rerank_scores, reverse=True)  # type: ignore[type-var]
    assert all(hit.scores.rerank is None for hit in rest)
    assert [hit.scores.fused for hit in rest] == sorted(
        [hit.scores.fused for hit in rest], reverse=True  # type: ignore[type-var]
    )

    reference = CrossEncoder(str(checkpoint), max_length=256)
    expected = reference.predict(
        [(response.query, product_to_text(store.get(hit.id))) for hit in window]  # type: ignore[arg-type]
    )
    assert [hit.scores.rerank for hit in window] == pytest.approx(list(expected), abs=1e-5)

    plain = pipeline.search(SearchRequest(query="stainless steel water bottle", k=30,
                                          rerank=False))
    assert plain.reranked == 0 and all(hit.scores.rerank is None for hit in plain.results)
