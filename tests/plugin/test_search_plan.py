"""The rules that decide which stages a search runs, written once in `plugin.search_plan`."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.errors import RerankNotConfiguredError
from plugin.models import FairnessPolicy, SearchRequest
from plugin.search_plan import FinalRankers, SearchPlan, SearchSettings, plan_search
from reranker.features import CROSS_ENCODER_FEATURE, FEATURE_NAMES
from reranker.linear_ranker import LinearRanker

PLAIN = LinearRanker(FEATURE_NAMES, (1.0,) * len(FEATURE_NAMES), card={"name": "plain"})
WITH_CE = LinearRanker(
    (*FEATURE_NAMES, CROSS_ENCODER_FEATURE), (1.0,) * (len(FEATURE_NAMES) + 1),
    card={"name": "with-ce"},
)
NONE = FinalRankers()


def plan(
    rankers: FinalRankers = NONE, *, reranker: bool = True,
    settings: SearchSettings | None = None, **request: Any,
) -> SearchPlan:
    return plan_search(
        SearchRequest(query="red shoes", **request), settings or SearchSettings(), rankers,
        has_reranker=reranker,
    )


def test_the_final_stage_runs_by_default_in_hybrid_mode_only() -> None:
    assert plan(FinalRankers(PLAIN)).final is PLAIN
    assert plan(FinalRankers(PLAIN), mode="vector").final is None
    assert plan(FinalRankers(PLAIN), final=False).final is None
    with pytest.raises(RerankNotConfiguredError, match="needs mode 'hybrid'"):
        plan(FinalRankers(PLAIN), mode="bm25", final=True)
    with pytest.raises(RerankNotConfiguredError, match="without a learned final stage"):
        plan(final=True)


def test_a_final_stage_that_reads_the_cross_encoder_decides_whether_to_rerank() -> None:
    assert plan().rerank and not plan(reranker=False).rerank
    assert plan(FinalRankers(WITH_CE)).rerank
    assert not plan(FinalRankers(WITH_CE), final=False).rerank  # measured only where it runs
    assert plan(FinalRankers(PLAIN), final=False).rerank
    with pytest.raises(RerankNotConfiguredError, match="needs rerank=true"):
        plan(FinalRankers(WITH_CE), rerank=False)
    assert plan(FinalRankers(WITH_CE, PLAIN), rerank=False).final is PLAIN
    with pytest.raises(RerankNotConfiguredError, match="without a reranker"):
        plan(reranker=False, rerank=True)


def test_a_failed_rerank_hands_the_final_stage_to_its_fallback() -> None:
    assert plan(FinalRankers(WITH_CE, PLAIN)).degraded().final is PLAIN
    assert plan(FinalRankers(WITH_CE)).degraded().final is None
    assert plan(FinalRankers(PLAIN)).degraded().final is PLAIN


def test_the_request_overrides_the_servers_settings() -> None:
    settings = SearchSettings(candidates=50, rerank_budget_ms=40.0, out_of_stock="keep",
                              fairness=FairnessPolicy(policy="group_cap"))
    default = plan(settings=settings, k=80)
    assert (default.depth, default.budget_ms, default.out_of_stock) == (80, 40.0, "keep")
    assert default.fairness == settings.fairness and default.filters is None
    asked = plan(settings=settings, rerank_budget_ms=10.0, out_of_stock="hide",
                 fairness={"policy": "none"})
    assert asked.budget_ms == 10.0 and asked.fairness is None
    assert asked.filters is not None and asked.filters.in_stock is True


def test_only_a_search_with_a_session_is_personalised() -> None:
    assert plan().personal_weight == 0.0
    assert plan(session_id="s1").personal_weight == 0.3
    assert plan(session_id="s1", personalize=False).personal_weight == 0.0
