"""One contract, every `SessionStore`: the in-memory store and Redis behave the same.

The Redis cases talk to the real server that scripts/test starts (``SHOPRANK_REDIS_URL``);
each test writes under its own key prefix and removes its keys afterwards.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from plugin.redis_session_store import RedisSessionStore
from plugin.session_store import (
    MAX_EVENTS_PER_SESSION,
    Engagement,
    InMemorySessionStore,
    SessionState,
    SessionStore,
    SessionStoreError,
    StateUpdate,
)

REDIS_URL = os.environ.get("SHOPRANK_REDIS_URL", "redis://127.0.0.1:16379/0")
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Stores:
    """Makes stores of one kind that share their sessions, as separate server processes do."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.clock = FakeClock()
        self.prefix = f"shoprank:test:{uuid.uuid4().hex[:12]}:"
        self.ttl_seconds = 60.0
        self.max_events = MAX_EVENTS_PER_SESSION
        self._memory: InMemorySessionStore | None = None
        self._made: list[SessionStore] = []

    def configure(self, *, ttl_seconds: float = 60.0, max_events: int = MAX_EVENTS_PER_SESSION
                  ) -> None:
        """Settings for the stores made after this call."""
        self.ttl_seconds, self.max_events = ttl_seconds, max_events
        self._memory = None

    def make(self) -> SessionStore:
        """A store handle; for Redis, a new client of the same sessions every call."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = InMemorySessionStore(
                    ttl_seconds=self.ttl_seconds, max_events=self.max_events, clock=self.clock
                )
            return self._memory
        store = RedisSessionStore(
            REDIS_URL, ttl_seconds=self.ttl_seconds, max_events=self.max_events,
            prefix=self.prefix, timeout_seconds=5.0,
        )
        self._made.append(store)
        return store

    def wait(self, seconds: float) -> None:
        """Let time pass: the memory store's clock moves, Redis's TTLs run down for real."""
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            time.sleep(seconds)

    def cleanup_clients(self) -> None:
        for store in self._made:
            store.close()

    def cleanup(self) -> None:
        self.cleanup_clients()
        if self.kind == "redis":
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
            try:
                keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()


@pytest.fixture(params=[
    pytest.param("memory", id="memory"),
    pytest.param("redis", id="redis", marks=pytest.mark.integration),
])
def stores(request: pytest.FixtureRequest) -> Iterator[Stores]:
    made = Stores(request.param)
    if made.kind == "redis":
        try:
            made.make().ping()
        except SessionStoreError as e:  # CI was told to start it: a failure, never a skip
            made.cleanup_clients()
            pytest.fail(f"{e} (scripts/test starts it; by hand: scripts/redis start)")
    yield made
    made.cleanup()


def unit(seed: int, dim: int = 8) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def click(product_id: str, at: float, seed: int = 0, **fields: Any) -> Engagement:
    return Engagement("click", product_id, at, unit(seed), **fields)


def count_one(session_id: str, product_id: str, at: float) -> StateUpdate:
    def update(state: SessionState | None) -> SessionState:
        return (state or SessionState.empty(session_id)).applied(click(product_id, at))
    return update


def test_implements_the_protocol(stores: Stores) -> None:
    store = stores.make()
    assert isinstance(store, SessionStore)
    store.ping()
    assert store.location in {"memory", REDIS_URL}


def test_an_unknown_session_has_no_state_and_no_events(stores: Stores) -> None:
    store = stores.make()
    assert store.get("never-seen") is None
    assert store.events("never-seen") == []
    assert store.delete("never-seen") is False


def test_a_state_round_trips(stores: Stores) -> None:
    store = stores.make()
    state = (
        SessionState.empty("s1")
        .applied(click("p1", T0, seed=1, brand="Acme", category=("Shoes", "Running"), price=50.0))
        .applied(Engagement("purchase", "p2", T0 + 600, unit(2), brand="Bolt",
                            category=("Shoes",), price=80.0))
    )
    seen: list[SessionState | None] = []

    def replace(previous: SessionState | None) -> SessionState:
        seen.append(previous)
        return state

    assert store.update("s1", replace, [{"type": "purchase", "product_id": "p2"}]) == state
    assert seen == [None]

    got = stores.make().get("s1")
    assert got is not None and state.profile is not None and got.profile is not None
    np.testing.assert_allclose(got.profile, state.profile, atol=1e-6)
    assert got.profile.dtype == np.float32
    assert got.session_id == "s1" and got.updated_at == T0 + 600
    assert got.weight == pytest.approx(state.weight)
    assert got.brands == pytest.approx(state.brands) and set(got.brands) == {"acme", "bolt"}
    assert got.categories == pytest.approx(state.categories)
    assert got.purchased == ("p2",) and got.engagements == 2
    assert got.price_band() == pytest.approx(state.price_band())

    # the next update starts from the stored state
    later = store.update("s1", count_one("s1", "p3", T0 + 700), [])
    assert later.engagements == 3 and later.purchased == ("p2",)
    stored = stores.make().get("s1")
    assert stored is not None and stored.engagements == 3


def test_events_are_kept_in_order_and_trimmed(stores: Stores) -> None:
    stores.configure(max_events=5)
    store = stores.make()
    for batch in range(3):
        events = [{"type": "impression", "n": batch * 3 + i} for i in range(3)]
        store.update("s1", count_one("s1", f"p{batch}", T0 + batch), events)

    assert [e["n"] for e in stores.make().events("s1")] == [4, 5, 6, 7, 8]
    assert [e["n"] for e in store.events("s1", limit=2)] == [7, 8]
    assert store.events("s1")[0] == {"type": "impression", "n": 4}
    assert store.events("other") == []


def test_a_session_expires_ttl_after_its_last_write(stores: Stores) -> None:
    # Redis's TTLs run down for real: its TTL is long enough that a stalled test process (a
    # busy two-core machine) still reads within it; the memory store's clock is the test's.
    ttl = 1.0 if stores.kind == "memory" else 4.0
    stores.configure(ttl_seconds=ttl)
    store = stores.make()
    store.update("s1", count_one("s1", "p1", T0), [{"n": 1}])
    stores.wait(0.5 * ttl)
    store.update("s1", count_one("s1", "p2", T0 + 1), [{"n": 2}])
    stores.wait(0.6 * ttl)  # past the first write's TTL, 0.4 TTL before the last write's ends
    kept = store.get("s1")
    assert kept is not None and kept.engagements == 2
    assert [e["n"] for e in store.events("s1")] == [1, 2]

    stores.wait(0.6 * ttl)
    assert store.get("s1") is None
    assert store.events("s1") == []
    # an expired session starts afresh
    assert store.update("s1", count_one("s1", "p3", T0 + 2), []).engagements == 1


def test_delete_forgets_state_and_events(stores: Stores) -> None:
    store = stores.make()
    store.update("s1", count_one("s1", "p1", T0), [{"n": 1}])
    store.update("s2", count_one("s2", "p1", T0), [{"n": 1}])

    assert store.delete("s1") is True
    assert store.get("s1") is None and store.events("s1") == []
    assert store.delete("s1") is False
    remaining = stores.make().get("s2")
    assert remaining is not None and remaining.engagements == 1


def test_concurrent_updates_of_one_session_lose_nothing(stores: Stores) -> None:
    threads, updates = 8, 25
    handles = [stores.make() for _ in range(threads)]  # Redis: one client per "process"
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(updates):
                handles[worker].update(
                    "hot", count_one("hot", f"p{worker}-{i}", T0 + i), [{"w": worker, "i": i}]
                )
        except BaseException as e:  # reported below, with the worker's traceback
            failures.append(e)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert not failures, failures

    state = stores.make().get("hot")
    assert state is not None and state.engagements == threads * updates
    events = stores.make().events("hot")
    assert len(events) == threads * updates
    for worker in range(threads):  # each writer's events stay in its order
        assert [e["i"] for e in events if e["w"] == worker] == list(range(updates))


# -- Redis only -----------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


#: A call to a dead or silent Redis with a sub-second timeout returns within this: far below a
#: hang (no timeout) or a retry loop, and far above what a busy two-core machine adds.
BOUNDED_SECONDS = 10.0


def test_an_unreachable_redis_fails_fast_naming_the_url() -> None:
    url = f"redis://:secret@127.0.0.1:{_closed_port()}/0"
    store = RedisSessionStore(url, timeout_seconds=0.5)
    assert store.location == url.replace(":secret@", "")
    for call in (
        store.ping,
        lambda: store.get("s1"),
        lambda: store.events("s1"),
        lambda: store.delete("s1"),
        lambda: store.update("s1", count_one("s1", "p1", T0), [{"n": 1}]),
    ):
        started = time.monotonic()
        with pytest.raises(SessionStoreError, match=re.escape(store.location)) as raised:
            call()
        assert time.monotonic() - started < BOUNDED_SECONDS
        assert "secret" not in str(raised.value)
        assert isinstance(raised.value.__cause__, redis.RedisError)
    store.close()


def test_a_redis_that_does_not_answer_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = RedisSessionStore(url, timeout_seconds=0.3)
        started = time.monotonic()
        with pytest.raises(SessionStoreError, match=re.escape(url)):
            store.get("s1")
        assert time.monotonic() - started < BOUNDED_SECONDS
        store.close()


@pytest.mark.integration
def test_unreadable_redis_state_is_a_store_error() -> None:
    prefix = f"shoprank:test:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    store = RedisSessionStore(REDIS_URL, prefix=prefix)
    store.ping()
    try:
        client.set(store._state_key("s1"), b"{not json")
        with pytest.raises(SessionStoreError, match="s1"):
            store.get("s1")
        with pytest.raises(SessionStoreError, match="s1"):
            store.update("s1", count_one("s1", "p1", T0), [])
    finally:
        client.delete(store._state_key("s1"))
        client.close()
        store.close()


def test_settings_are_checked_without_connecting() -> None:
    with pytest.raises(ValueError, match="URL"):
        RedisSessionStore("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="max_events"):
        RedisSessionStore(max_events=0)
    RedisSessionStore("redis://127.0.0.1:1/0")  # nothing listens there: still no error


def test_the_in_memory_store_keeps_at_most_max_sessions_the_least_recently_written_go() -> None:
    clock = FakeClock()
    store = InMemorySessionStore(max_sessions=2, clock=clock)
    for session in ("a", "b", "a", "c"):  # "a" written again: "b" is the oldest
        store.update(session, lambda state, s=session: state or SessionState.empty(s), [{}])
    assert store.get("b") is None
    assert store.get("a") is not None and store.get("c") is not None
    for i in range(1000):
        store.update(f"s{i}", lambda state: state or SessionState.empty("x"), [])
    assert sum(store.get(f"s{i}") is not None for i in range(1000)) == 2
