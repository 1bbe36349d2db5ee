"""Where amortized fairness keeps its window: the `ExposureStore` protocol and its twin.

`InMemoryExposureStore` is the embedded implementation. It keeps the last ``window`` queries'
exposure records per key and their running sums, so reading the window's totals costs
O(groups), not O(window x groups), on every search.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Protocol

from plugin.fairness.metrics import ExposureTotals


class ExposureStore(Protocol):
    """Where `AmortizedExposure` keeps what each group received over the last W queries.

    ``key`` separates policies (or shops). Values are plain floats per group so a remote store
    (Redis) can keep each query's record as JSON; the in-process twin is
    `InMemoryExposureStore`.
    """

    def get(self, key: str) -> ExposureTotals: ...

    def update(
        self, key: str, exposure: Mapping[str, float], relevance: Mapping[str, float]
    ) -> None: ...


#: A running total this close to zero is a group that left the window.
_ZERO = 1e-12


def _add(totals: dict[str, float], values: Mapping[str, float], sign: float) -> None:
    """Add (sign 1) or take away (sign -1) one record; a group whose total falls back to zero
    when a record leaves is dropped, so the sums stay as small as the window's groups."""
    for group, value in values.items():
        total = totals.get(group, 0.0) + sign * value
        if sign < 0 and abs(total) <= _ZERO:
            totals.pop(group, None)
        else:
            totals[group] = total


class InMemoryExposureStore:
    """The last ``window`` queries' records per key, in process memory; thread-safe."""

    def __init__(self, window: int = 500) -> None:
        if window < 1:
            raise ValueError(f"InMemoryExposureStore: window must be at least 1, got {window}")
        self.window = window
        self._records: dict[str, deque[ExposureTotals]] = {}
        self._sums: dict[str, ExposureTotals] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ExposureTotals:
        with self._lock:
            sums = self._sums.get(key)
            if sums is None:
                return ExposureTotals({}, {}, 0)
            return ExposureTotals(dict(sums.exposure), dict(sums.relevance), sums.queries)

    def update(
        self, key: str, exposure: Mapping[str, float], relevance: Mapping[str, float]
    ) -> None:
        with self._lock:
            records = self._records.setdefault(key, deque())
            sums = self._sums.setdefault(key, ExposureTotals({}, {}, 0))
            if len(records) == self.window:
                oldest = records.popleft()
                _add(sums.exposure, oldest.exposure, -1.0)
                _add(sums.relevance, oldest.relevance, -1.0)
            records.append(ExposureTotals(dict(exposure), dict(relevance), 1))
            _add(sums.exposure, exposure, 1.0)
            _add(sums.relevance, relevance, 1.0)
            self._sums[key] = ExposureTotals(sums.exposure, sums.relevance, len(records))
