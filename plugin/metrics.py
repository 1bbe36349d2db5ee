"""The service's Prometheus metrics, kept with the standard client (`prometheus_client`).

`SearchMetrics` counts what the query path does: searches, degraded ones by cause, personalised
ones, each stage's latency (the keys of a response's ``timings_ms``) and whether the reranker's
circuit is open. The pipeline owns one; it belongs to no registry until an app registers it.
`HttpMetrics` times every request by route template, method and status class and counts the
errors; each app owns one. Both are read through the app's own `CollectorRegistry`, so several
apps in one process (tests) never collide.

With ``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the first import of
`prometheus_client` (``shoprank serve --workers N`` does this), every process writes its values
to files there and `render` adds them up across the processes.

>>> metrics = SearchMetrics()
>>> metrics.timed({"retrieve": 12.0, "total": 20.0})
>>> registry = CollectorRegistry()
>>> registry.register(metrics)
>>> registry.get_sample_value("shoprank_search_stage_seconds_count", {"stage": "retrieve"})
1.0
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from reranker.errors import UNAVAILABLE_CAUSES, UnavailableCause

__all__ = ["CollectorRegistry", "HttpMetrics", "SearchMetrics", "render", "status_class"]

#: The environment variable that turns on `prometheus_client`'s multi-process mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Histogram buckets in seconds, from a cached BM25 lookup to a reranker's timeout.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: The methods the request histogram names; anything else counts as ``OTHER``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: The route label of a request no route handled: an unknown path, or a guard's answer.
UNROUTED = "unrouted"


class SearchMetrics:
    """The query path's metrics; a `prometheus_client` collector an app's registry reads.

    ``circuit_open`` reads the reranker's circuit (`reranker.base.Reranker.circuit_open`),
    ``store_circuit_open`` the store's (`indexer.store.VectorStore.circuit_open`); the gauges
    are refreshed after every rerank and whenever the metrics are read.
    """

    def __init__(self, circuit_open: Callable[[], bool] = lambda: False,
                 store_circuit_open: Callable[[], bool] = lambda: False) -> None:
        self._circuit_open = circuit_open
        self._store_circuit_open = store_circuit_open
        self.searches = Counter("shoprank_search", "Searches started.", registry=None)
        self.degraded = Counter(
            "shoprank_search_degraded",
            "Searches answered without reranking because the reranker failed, by cause.",
            ["reason"], registry=None,
        )
        for cause in UNAVAILABLE_CAUSES:  # every cause shows, at 0 until it happens
            self.degraded.labels(cause)
        self.personalized = Counter(
            "shoprank_search_personalized", "Searches reordered by their session.", registry=None
        )
        self.personalization_unavailable = Counter(
            "shoprank_personalization_unavailable",
            "Searches left unpersonalised because the session store could not be read.",
            registry=None,
        )
        self.stage_seconds = Histogram(
            "shoprank_search_stage_seconds",
            "Seconds a search spent in each stage of its timings_ms (total: the whole search).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=None,
        )
        self.circuit = Gauge(
            "shoprank_reranker_circuit_open",
            "1 while the reranker's circuit breaker skips a failing server, else 0.",
            registry=None, multiprocess_mode="mostrecent",
        )
        self.store_circuit = Gauge(
            "shoprank_store_circuit_open",
            "1 while the store's circuit breaker refuses calls to a failing OpenSearch, else 0.",
            registry=None, multiprocess_mode="mostrecent",
        )
        self._metrics: tuple[MetricWrapperBase, ...] = (
            self.searches, self.degraded, self.personalized, self.personalization_unavailable,
            self.stage_seconds, self.circuit, self.store_circuit,
        )
        self.refresh()

    def timed(self, timings_ms: Mapping[str, float]) -> None:
        """Observe one search's ``timings_ms`` (a fixed set of stage names, so bounded)."""
        for stage, milliseconds in timings_ms.items():
            self.stage_seconds.labels(stage).observe(milliseconds / 1000)

    def degraded_by(self, cause: UnavailableCause) -> None:
        self.degraded.labels(cause).inc()

    def refresh(self) -> None:
        """Read the reranker's and the store's circuits into their gauges."""
        self.circuit.set(int(self._circuit_open()))
        self.store_circuit.set(int(self._store_circuit_open()))

    def describe(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.describe()

    def collect(self) -> Iterable[Metric]:
        self.refresh()
        for metric in self._metrics:
            yield from metric.collect()


class HttpMetrics:
    """Every request's seconds by route template, method and status class, and the errors
    (4xx and 5xx) by route and status code, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_seconds = Histogram(
            "shoprank_http_request_duration_seconds",
            "Seconds from a request's arrival to its last byte, by route template, method and "
            "status class.",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.errors = Counter(
            "shoprank_http_errors",
            "Answers with a 4xx or 5xx status, by route template and status code.",
            ["route", "status"], registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.request_seconds.labels(route, method, status_class(status)).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()


def status_class(status: int) -> str:
    """``"2xx"`` for 200..299, and so on.

    >>> status_class(503)
    '5xx'
    """
    return f"{status // 100}xx"


def multiprocess_dir() -> str | None:
    """Where the worker processes write their values, when several serve one port."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text of ``registry`` (with several workers: of every worker's values)
    and its content type."""
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    return generate_latest(registry), CONTENT_TYPE_LATEST

