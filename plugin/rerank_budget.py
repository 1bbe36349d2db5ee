"""A rerank window that adapts per query to a latency budget.

A fixed window reranks 50 candidates whether they are 50 short titles or 50 long descriptions,
and whether retrieval took 5 ms or 80. `RerankCostModel` predicts what reranking the first n
candidates of this query will cost, from their lengths, and `window` picks the largest n whose
predicted cost fits what is left of the query's budget, never fewer than a floor.

The cost model is linear in the characters the reranker reads (each pair capped at what the
model's max length lets through): ``fixed_ms + ms_per_char * chars``. It learns ``ms_per_char``
online from every rerank it sees (an exponential moving average), so it follows the machine,
the model and the load without a calibration step.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Characters per word-piece token, roughly, for English product text.
CHARS_PER_TOKEN = 4.0


@dataclass
class RerankCostModel:
    """Predicts a rerank's milliseconds from its pairs' lengths, learning as it goes.

    >>> model = RerankCostModel(max_chars=1024)
    >>> model.observe(chars=20_000, elapsed_ms=42.0)
    >>> model.window([400] * 100, budget_ms=30.0, floor=10, ceiling=100)
    """

    #: The most characters of one pair the reranker reads (its max length in tokens x 4).
    max_chars: int = 1024
    #: Cost that does not grow with the pairs (call overhead).
    fixed_ms: float = 1.0
    #: A deliberately pessimistic start (about a slow CPU's rate), replaced by observations.
    ms_per_char: float = 0.01
    #: Weight of the newest observation.
    smoothing: float = 0.2
    observations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def chars(self, query: str, texts: Sequence[str]) -> list[int]:
        """What the reranker reads of each pair, in characters."""
        return [min(len(query) + len(text), self.max_chars) for text in texts]

    def predict(self, chars: Sequence[int]) -> float:
        return self.fixed_ms + self.ms_per_char * sum(chars)

    def observe(self, *, chars: int, elapsed_ms: float) -> None:
        """Learn from one rerank: ``chars`` read in ``elapsed_ms``."""
        if chars <= 0 or elapsed_ms <= 0:
            return
        rate = max(elapsed_ms - self.fixed_ms, 0.0) / chars
        with self._lock:
            weight = 1.0 if self.observations == 0 else self.smoothing
            self.ms_per_char = (1 - weight) * self.ms_per_char + weight * rate
            self.observations += 1

    def window(
        self, chars: Sequence[int], *, budget_ms: float, floor: int, ceiling: int
    ) -> int:
        """The largest n <= ``ceiling`` (and <= len(chars)) whose first n pairs are predicted
        to fit ``budget_ms``; at least ``floor`` when there are that many."""
        limit = min(ceiling, len(chars))
        spent = self.fixed_ms
        n = 0
        while n < limit and spent + self.ms_per_char * chars[n] <= budget_ms:
            spent += self.ms_per_char * chars[n]
            n += 1
        return max(n, min(floor, limit))
