"""The pipeline's event counters (searches, degraded searches, personalised searches), served
at GET /metrics."""

from __future__ import annotations

import threading
from collections import Counter


class Counters(Counter[str]):
    """Counts by name; `count` is safe to call from many request threads at once.

    >>> counters = Counters()
    >>> counters.count("search_total")
    >>> counters["search_total"]
    1
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            self[name] += 1
