"""Where amortized fairness keeps its window: the `ExposureStore` protocol and its twin.

`InMemoryExposureStore` is the embedded implementation. It keeps the last ``window`` queries'
exposure records per key and their running sums, so reading the window's totals costs
O(groups), not O(window x groups), on every search. A key comes from the request's policy
(its field and its ``max_ndcg_loss``, any number in 0..1), so the store keeps at most
``max_keys`` of them, the least recently updated going first: memory stays bounded whatever
the requests ask for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
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
    """The last ``window`` queries' records per key, for at most ``max_keys`` keys (the least
    recently updated is forgotten first), in process memory; thread-safe.

    >>> store = InMemoryExposureStore(window=10, max_keys=1)
    >>> store.update("brand:0.05", {"a": 1.0}, {"a": 1.0})
    >>> store.update("brand:0.1", {"a": 1.0}, {"a": 1.0})
    >>> store.get("brand:0.05").queries, len(store)
    (0, 1)
    """

    def __init__(self, window: int = 500, *, max_keys: int = 256) -> None:
        if window < 1:
            raise ValueError(f"InMemoryExposureStore: window must be at least 1, got {window}")
        if max_keys < 1:
            raise ValueError(f"InMemoryExposureStore: max_keys must be at least 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._records: OrderedDict[str, deque[ExposureTotals]] = OrderedDict()
        self._sums: dict[str, ExposureTotals] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many keys the store holds."""
        return len(self._records)

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
            self._records.move_to_end(key)
            while len(self._records) > self.max_keys:
                forgotten, _ = self._records.popitem(last=False)
                del self._sums[forgotten]
