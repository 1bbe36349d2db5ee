"""The circuit breaker that the Triton reranker and the OpenSearch store share, and what it
does for the store: a node that cannot answer costs a few timeouts, then is refused at once."""

from __future__ import annotations

import socket

import pytest

from indexer.circuit import CircuitBreaker, CircuitGuard
from indexer.errors import IndexNotFoundError, StoreUnavailableError
from indexer.opensearch_store import OpenSearchStore
from indexer.settings import IndexerSettings
from tests.indexer.store_factories import opensearch_settings


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Down(Exception):
    pass


def test_breaker_opens_after_repeated_failures_and_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_seconds=5.0, clock=clock)
    breaker.failed()
    assert breaker.state == "closed" and breaker.allows()
    breaker.failed()
    assert breaker.state == "open" and not breaker.allows()
    clock.now += 4.9
    assert breaker.state == "open" and not breaker.allows()
    clock.now += 0.1
    assert breaker.state == "half-open"
    assert breaker.allows()  # the trial call
    assert not breaker.allows()  # and only one at a time
    breaker.failed()
    assert breaker.state == "open"
    clock.now += 5.0
    assert breaker.allows()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allows()


def _guard(clock: FakeClock) -> CircuitGuard:
    breaker = CircuitBreaker(failures=2, reset_seconds=5.0, clock=clock)
    return CircuitGuard(breaker, Down, lambda: Down("circuit open"))


def _fail(guard: CircuitGuard) -> None:
    with pytest.raises(Down), guard.call():
        raise Down("no answer")


def _half_open() -> CircuitGuard:
    """A guard whose circuit opened and whose reset time has passed: the next call is the
    trial."""
    clock = FakeClock()
    guard = _guard(clock)
    _fail(guard)
    _fail(guard)
    clock.now += 5.0
    assert guard.breaker.state == "half-open"
    return guard


def test_the_guard_counts_only_failures_to_answer() -> None:
    guard = _guard(FakeClock())
    _fail(guard)
    with pytest.raises(ValueError), guard.call():
        raise ValueError("the server answered with an error")
    _fail(guard)  # not two in a row: the answer in between reset the count
    assert guard.breaker.state == "closed"
    _fail(guard)
    assert guard.breaker.state == "open"
    with pytest.raises(Down, match="circuit open"), guard.call():
        pytest.fail("an open circuit lets no call through")


def test_a_call_inside_the_half_open_trial_is_part_of_it() -> None:
    guard = _half_open()
    # the trial, and inside it a call of its own (e.g. finding the index it writes to)
    with guard.call(), guard.call():
        pass
    assert guard.breaker.state == "closed"


def test_a_trial_that_ends_in_an_interrupt_never_leaves_the_circuit_stuck() -> None:
    guard = _half_open()
    with pytest.raises(KeyboardInterrupt), guard.call():
        raise KeyboardInterrupt
    with guard.call():
        pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_store_whose_node_is_gone_is_refused_at_once_after_a_few_failures() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    settings = IndexerSettings(store="opensearch", opensearch_url=url, opensearch_timeout_s=2,
                               opensearch_circuit_failures=2, opensearch_circuit_reset_s=600)
    store = OpenSearchStore(settings, "circuit")
    for _ in range(2):
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            store.count()
    with pytest.raises(StoreUnavailableError) as refused:
        store.search_bm25("shoes", 10)
    assert str(refused.value) == (
        f"OpenSearch at {url} is not called for 600 s after 2 failures in a row (circuit open)"
    )


@pytest.mark.integration
def test_a_missing_index_is_an_answer_not_a_failure() -> None:
    settings = opensearch_settings(opensearch_circuit_failures=1, opensearch_circuit_reset_s=600)
    store = OpenSearchStore(settings, "circuit-never-indexed")
    for _ in range(3):
        with pytest.raises(IndexNotFoundError):
            store.count()
