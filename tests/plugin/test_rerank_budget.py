"""The adaptive rerank window: a cost model worked out by hand, and a pipeline that reranks
fewer candidates when the budget is short, never fewer than the floor."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.rerank_budget import RerankCostModel
from tests.plugin.test_offline_eval import pipeline  # noqa: F401  (fixture)


def test_the_first_observation_sets_the_rate_and_later_ones_are_smoothed() -> None:
    model = RerankCostModel(fixed_ms=1.0, smoothing=0.5)
    model.observe(chars=1000, elapsed_ms=11.0)
    assert model.ms_per_char == pytest.approx(0.01)
    model.observe(chars=1000, elapsed_ms=21.0)
    assert model.ms_per_char == pytest.approx(0.015)
    assert model.predict([100, 100]) == pytest.approx(1.0 + 0.015 * 200)


def test_the_window_is_the_longest_prefix_that_fits_and_never_below_the_floor() -> None:
    model = RerankCostModel(fixed_ms=1.0, ms_per_char=0.01)
    chars = [100] * 50  # 1 ms per pair
    assert model.window(chars, budget_ms=11.0, floor=2, ceiling=50) == 10
    assert model.window(chars, budget_ms=1000.0, floor=2, ceiling=40) == 40
    assert model.window(chars, budget_ms=-5.0, floor=3, ceiling=40) == 3
    assert model.window(chars[:2], budget_ms=-5.0, floor=3, ceiling=40) == 2
    long_first = [400] * 5 + [100] * 45  # the same budget covers fewer long texts
    assert model.window(long_first, budget_ms=11.0, floor=1, ceiling=50) == 2


def test_lengths_are_capped_at_what_the_model_reads() -> None:
    model = RerankCostModel(max_chars=50)
    assert model.chars("query", ["x" * 10, "x" * 500]) == [15, 50]


def test_the_cost_model_caps_pairs_at_the_reranker_max_length(
    pipeline: SearchPipeline,  # noqa: F811
) -> None:
    from plugin.components import build_reranker
    from plugin.rank_stages import reranker_max_length
    from plugin.settings import Settings
    from reranker.base import NoReranker
    from reranker.errors import CheckpointError

    class Short(NoReranker):
        max_length = 48

    class Broken(NoReranker):
        @property
        def max_length(self) -> int:
            raise CheckpointError("no such checkpoint")

    built = SearchPipeline(pipeline.store, pipeline.encoder, Short())
    assert built.reranking.cost.max_chars == 48 * 4  # what 48 tokens hold, about
    assert reranker_max_length(NoReranker()) == 256  # says nothing: the default
    assert reranker_max_length(Broken()) == 256  # fails on its first rerank, not at startup
    triton = build_reranker(Settings(reranker="triton", reranker_max_length=48))
    assert reranker_max_length(triton) == 48  # Triton's tokenizer cuts there too


def test_an_out_of_range_reranker_max_length_names_the_field_and_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from plugin.settings import Settings

    monkeypatch.setenv("SHOPRANK_RERANKER_MAX_LENGTH", "8")
    with pytest.raises(ValidationError, match=r"reranker_max_length[\s\S]*16"):
        Settings()


class SlowReranker:
    """Takes 1 ms per 100 characters, like a model whose cost grows with the text."""

    name = "slow"
    circuit_open = False

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        time.sleep(sum(len(query) + len(text) for text in texts) / 100 / 1000)
        return [float(-len(text)) for text in texts]

    def close(self) -> None:
        return None


def test_a_budgeted_search_reranks_what_fits(pipeline: SearchPipeline) -> None:  # noqa: F811
    pipeline.reranking.reranker = SlowReranker()
    pipeline.settings.rerank_window = 6
    pipeline.settings.min_rerank_window = 2
    fixed = pipeline.search(SearchRequest(query="red shoes", mode="vector", k=6))
    assert fixed.reranked == 6  # no budget: the whole window
    pipeline.reranking.cost = RerankCostModel(fixed_ms=0.0, ms_per_char=10.0)  # very slow
    tight = pipeline.search(SearchRequest(query="red shoes", mode="vector", k=6,
                                          rerank_budget_ms=1.0))
    assert tight.reranked == 2  # the floor
    assert [hit.scores.rerank is not None for hit in tight.results].count(True) == 2
    roomy = pipeline.search(SearchRequest(query="red shoes", mode="vector", k=6,
                                          rerank_budget_ms=60_000))
    assert roomy.reranked == 6


def test_concurrent_retrieval_returns_what_sequential_retrieval_does(
    pipeline: SearchPipeline,  # noqa: F811
) -> None:
    request = SearchRequest(query="red shoes", k=6, explain=True)
    together = pipeline.search(request)
    pipeline.retriever.concurrent = False
    one_by_one = pipeline.search(request)
    assert list(together.timings_ms)[:3] == ["load_encoder", "encode", "retrieve"]
    assert [(hit.id, hit.scores) for hit in together.results] == [
        (hit.id, hit.scores) for hit in one_by_one.results
    ]
    pipeline.close()
