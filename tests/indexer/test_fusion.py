from __future__ import annotations

import pytest

from indexer.fusion import reciprocal_rank_fusion


def test_rrf_matches_hand_computed_scores() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)


def test_rrf_orders_by_score_then_id_on_ties() -> None:
    # x and y are each first in one list: equal scores, so id order decides.
    assert [d for d, _ in reciprocal_rank_fusion([["y", "z"], ["x"]], k=10)] == ["x", "y", "z"]


def test_rrf_top_does_not_depend_on_page_size() -> None:
    lexical = [f"d{i}" for i in range(50)]
    semantic = list(reversed(lexical))
    top5_of_deep = [d for d, _ in reciprocal_rank_fusion([lexical, semantic])][:5]
    assert len(top5_of_deep) == 5
    assert top5_of_deep == [d for d, _ in reciprocal_rank_fusion([lexical, semantic])[:5]]


def test_rrf_rejects_negative_k() -> None:
    with pytest.raises(ValueError, match="k must be >= 0"):
        reciprocal_rank_fusion([["a"]], k=-1)
