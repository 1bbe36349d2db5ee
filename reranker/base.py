"""The `Reranker` protocol and the no-op reranker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, product text) pairs; higher is more relevant.

    Product texts come from `indexer.schema.product_to_text`.
    """

    @property
    def name(self) -> str: ...

    @property
    def circuit_open(self) -> bool:
        """Whether calls are being skipped after repeated failures (a remote reranker's circuit
        breaker is open or half-open); always False for a reranker in this process."""
        ...

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...

    def close(self) -> None: ...


class NoReranker:
    """Keeps retrieval order: the default until a tuned cross-encoder exists."""

    name = "none"
    circuit_open = False

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """Equal scores: a stable sort keeps retrieval order (the pipeline skips it anyway)."""
        return [0.0] * len(texts)

    def close(self) -> None:
        return None
