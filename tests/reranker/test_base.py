from __future__ import annotations

from reranker.base import NoReranker, Reranker


def test_no_reranker_keeps_retrieval_order() -> None:
    reranker = NoReranker()
    assert isinstance(reranker, Reranker) and reranker.name == "none"
    assert reranker.score("shoes", ["a", "b", "c"]) == [0.0, 0.0, 0.0]
