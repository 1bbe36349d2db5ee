"""Faults while serving: a backing server killed by pid (SIGKILL) under a bounded loopback
load, then started again, while shoprank keeps running.

Each test starts the server it kills on ports and folders of its own (the suite's shared
OpenSearch, Triton and Redis are never touched), runs shoprank on a real uvicorn server with
the components its settings build, and holds a few clients sending requests at a fixed
pace before, during and after the fault. Every request must be answered within the client
timeout; what the answers are is the behaviour a shopper sees:

* Triton killed: every search answers 200, in retrieval order, marked ``degraded`` with the
  reason; reranking comes back by itself once Triton does.
* OpenSearch killed: searches answer 503 with a JSON detail naming OpenSearch; 200 again once
  the node is back; nothing hangs. Stopped (SIGSTOP, a node that hangs): the same 503, each
  after one OpenSearch timeout; 200 again after SIGCONT.
* Redis killed: searches answer 200 without personalisation; ``/events`` and ``/sessions``
  answer 503 naming Redis; all answer 200 again once Redis is back.

Each test prints its figures (``pytest -s``): requests, 5xx, degraded answers, the slowest
answer during the fault, and the time to recovery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from indexer.settings import IndexerSettings
from plugin.api import create_app
from plugin.settings import Settings
from reranker.triton_contract import MODEL_NAME
from tests.conftest import REPO, demo_slice
from tests.plugin.fault_harness import (
    CLIENT_TIMEOUT,
    Answer,
    FaultReport,
    Load,
    free_port,
    kill,
    pause,
    resume,
    script,
    serve,
    sockets_to,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUERIES = ["water bottle", "usb c charging cable", "running shoes", "coffee grinder",
           "stainless steel", "wireless headphones"]
ADMIN_KEY = "faults-admin-key"
#: Seconds of load with the server down.
FAULT_SECONDS = 6.0


@pytest.fixture(scope="module")
def products() -> list[Product]:
    return [Product.model_validate(record) for record in demo_slice(60)]


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    return BiEncoder()


def searching(client: httpx.Client, number: int) -> tuple[str, httpx.Response]:
    body = {"query": QUERIES[number % len(QUERIES)], "k": 10}
    return "search", client.post("/search", json=body)


def report(load: Load, fault: str, killed: float, back_started: float, back: float,
           recovered: Answer) -> FaultReport:
    answers = load.sent_between(0)
    during = load.sent_between(killed, back)
    figures = FaultReport(
        fault=fault,
        sent=len(answers),
        server_errors=sum(a.server_error for a in answers),
        no_answer=sum(a.status is None for a in answers),
        degraded=sum(isinstance(a.body, dict) and bool(a.body.get("degraded")) for a in answers),
        during_fault=len(during),
        max_latency_during_fault_s=max((a.seconds for a in during), default=0.0),
        restart_s=back - back_started,
        recovery_after_back_s=max(0.0, recovered.sent + recovered.seconds - back),
    )
    print(figures.line())
    if os.environ.get("SHOPRANK_FAULTS_TIMELINE"):
        print(load.timeline(killed))
    return figures


# --- Triton -------------------------------------------------------------------------------

@pytest.fixture
def triton(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Triton of this test's own: a scratch repository (scripts/triton adds the packaged
    cross-encoder as version 1), its own run folder and ports."""
    model = tmp_path / "models" / MODEL_NAME
    model.mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        (model / name).write_bytes((REPO / "triton_models" / MODEL_NAME / name).read_bytes())
    run_dir = tmp_path / "triton-run"
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "SHOPRANK_TRITON_REPOSITORY": str(model.parent),
           "SHOPRANK_TRITON_RUN_DIR": str(run_dir), "SHOPRANK_TRITON_HTTP_PORT": str(http),
           "SHOPRANK_TRITON_GRPC_PORT": str(grpc), "SHOPRANK_TRITON_METRICS_PORT": str(metrics)}
    script("triton", "start", env)
    try:
        yield f"http://127.0.0.1:{http}", env, run_dir / "triton.pid"
    finally:
        script("triton", "stop", env)  # also ends the model stubs a killed server leaves


def test_triton_killed_under_load_degrades_every_search_and_recovers_without_a_restart(
    triton: tuple[str, dict[str, str], Path], products: list[Product], encoder: BiEncoder
) -> None:
    url, env, pid_file = triton
    # Triton runs the cross-encoder on CPU here, on a machine shared with the rest of the
    # suite: short pairs, a narrow window and a generous timeout keep it answering in time.
    settings = Settings(index="faults-triton", reranker="triton", triton_url=url,
                        triton_timeout_seconds=15, reranker_max_length=64, rerank_window=10)
    index_products(LocalStore(settings.index_root), products, encoder)
    timeout = settings.triton_timeout_seconds

    def reranked(a: Answer) -> bool:
        return a.status == 200 and not a.body["degraded"] and a.body["reranked"] > 0

    with serve(create_app(settings)) as served:
        with Load(served.url, searching, clients=2, interval=0.5) as load:
            load.wait_for(0, reranked, 120, "search reranked by Triton")
            killed = time.monotonic()
            kill(pid_file)
            load.run_for(FAULT_SECONDS)
            back_started = time.monotonic()
            script("triton", "stop", env)  # the killed server's model stubs
            script("triton", "start", env)
            back = time.monotonic()
            recovered = load.wait_for(back, reranked, 180, "search reranked after Triton is back")
            load.run_for(1.0)
        figures = report(load, "Triton SIGKILL", killed, back_started, back, recovered)
        time.sleep(1.0)
        open_connections = served.open_connections()

    answers = load.sent_between(0)
    assert figures.server_errors == 0 and figures.no_answer == 0, [
        a for a in answers if a.status != 200]
    assert all(a.status == 200 and len(a.body["results"]) == 10 for a in answers)
    # Sent once the server was gone: each answered in retrieval order, saying why, within one
    # Triton timeout (a margin for a busy machine on top).
    down = load.sent_between(killed + 0.5, back_started)
    assert len(down) >= FAULT_SECONDS  # the load kept coming
    for answer in down:
        assert answer.body["degraded"] and answer.body["reranked"] == 0, answer
        assert "reranker" in answer.body["degraded_reason"], answer
        assert answer.seconds < timeout + 10.0, answer
    assert figures.degraded >= len(down)
    assert open_connections == 0


# --- OpenSearch ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def opensearch(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A throwaway OpenSearch node: its own home folder and port, a small heap; the tests
    leave it running."""
    home = tmp_path_factory.mktemp("faults") / "opensearch"
    port = free_port()
    env = {**os.environ, "OPENSEARCH_HOME_DIR": str(home), "OPENSEARCH_PORT": str(port),
           "OPENSEARCH_HEAP": "384m"}
    script("opensearch", "start", env)
    try:
        yield f"http://127.0.0.1:{port}", env, home / "opensearch.pid"
    finally:
        script("opensearch", "stop", env)


def _index(store: OpenSearchStore, products: list[Product], encoder: BiEncoder) -> None:
    """Index with a client of the test's own, closed after, so that the sockets counted at the
    end are the server's."""
    try:
        index_products(store, products, encoder)
    finally:
        store.close()


def test_opensearch_killed_under_load_answers_503_naming_it_and_recovers(
    opensearch: tuple[str, dict[str, str], Path], products: list[Product], encoder: BiEncoder
) -> None:
    url, env, pid_file = opensearch
    port = int(url.rsplit(":", 1)[1])
    indexer = IndexerSettings(store="opensearch", opensearch_url=url,
                              opensearch_alias_prefix="shoprank-faults")
    settings = Settings(index="faults-os", reranker="none", indexer=indexer)
    _index(OpenSearchStore(indexer, settings.index), products, encoder)

    def ok(a: Answer) -> bool:
        return a.status == 200

    with serve(create_app(settings)) as served:
        with Load(served.url, searching, clients=3, interval=0.3) as load:
            load.wait_for(0, ok, 60, "search answered by OpenSearch")
            killed = time.monotonic()
            kill(pid_file)
            load.run_for(FAULT_SECONDS)
            ready = httpx.get(f"{served.url}/readyz", timeout=CLIENT_TIMEOUT)
            back_started = time.monotonic()
            script("opensearch", "start", env)
            back = time.monotonic()
            recovered = load.wait_for(back, ok, 120, "search answered after OpenSearch returned")
            load.run_for(1.0)
        after = httpx.get(f"{served.url}/readyz", timeout=CLIENT_TIMEOUT)
        figures = report(load, "OpenSearch SIGKILL", killed, back_started, back, recovered)
        time.sleep(1.0)
        open_connections = served.open_connections()

    answers = load.sent_between(0)
    assert figures.no_answer == 0, [a for a in answers if a.status is None]
    assert {a.status for a in answers} <= {200, 503}
    down = load.sent_between(killed + 0.5, back_started)
    assert len(down) >= FAULT_SECONDS
    for answer in down:
        assert answer.status == 503 and "OpenSearch" in answer.detail(), answer
        assert answer.seconds < CLIENT_TIMEOUT, answer
    assert ready.status_code == 503 and "OpenSearch" in str(ready.json()["detail"])
    # The killed node came back with its index from its data folder: nothing was lost.
    assert after.status_code == 200 and after.json()["products"] == len(products)
    # No request of a shopper is left hanging, and none of shoprank's connections to the
    # dead node lingers half-closed.
    assert open_connections == 0
    assert sockets_to(port, "08") == 0


def test_opensearch_hung_under_load_answers_503_within_its_timeout_and_recovers(
    opensearch: tuple[str, dict[str, str], Path], products: list[Product], encoder: BiEncoder
) -> None:
    """SIGSTOP: the node keeps its connections but answers nothing, the worst case for a
    client. The first searches wait one OpenSearch timeout, then answer 503; once the store's
    circuit is open, the rest answer 503 at once, so a hang cannot hold every server thread;
    SIGCONT and they answer. (A short timeout, so that requests sent during the stop also run
    out of it.)"""
    url, env, pid_file = opensearch
    script("opensearch", "start", env)  # running already, unless the test above failed
    indexer = IndexerSettings(store="opensearch", opensearch_url=url, opensearch_timeout_s=3,
                              opensearch_alias_prefix="shoprank-faults")
    settings = Settings(index="faults-os-hung", reranker="none", indexer=indexer)
    _index(OpenSearchStore(indexer, settings.index), products, encoder)
    timeout = indexer.opensearch_timeout_s

    def ok(a: Answer) -> bool:
        return a.status == 200

    with serve(create_app(settings)) as served:
        with Load(served.url, searching, clients=3, interval=0.3) as load:
            load.wait_for(0, ok, 60, "search answered by OpenSearch")
            stopped = time.monotonic()
            pid = pause(pid_file)
            try:
                load.run_for(3 * timeout)
            finally:
                resumed = time.monotonic()
                resume(pid)
            recovered = load.wait_for(resumed, ok, 60, "search answered after SIGCONT")
            load.run_for(1.0)
        figures = report(load, "OpenSearch SIGSTOP", stopped, resumed, resumed, recovered)
        time.sleep(1.0)
        open_connections = served.open_connections()

    answers = load.sent_between(0)
    assert figures.no_answer == 0, [a for a in answers if a.status is None]
    assert {a.status for a in answers} <= {200, 503}
    # Answered while the node was stopped: 503 naming it, each within about one timeout
    # (plus what a search takes on a busy machine).
    failed = [a for a in answers if stopped + 0.5 < a.sent + a.seconds < resumed]
    assert len(failed) >= 3, "too few searches answered while the node was stopped"
    for answer in failed:
        assert answer.status == 503 and "OpenSearch" in answer.detail(), answer
        assert answer.seconds < timeout + 15, answer
    refused = [a for a in failed if "circuit open" in a.detail()]
    print(f"{len(refused)} of {len(failed)} answered during the stop were refused by the open "
          f"circuit, the slowest of those in {max((a.seconds for a in refused), default=0):.2f} s")
    assert len(refused) > len(failed) / 2, "the circuit did not spare most searches the timeout"
    assert open_connections == 0


# --- Redis --------------------------------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A Redis of this test's own (no persistence, as sessions are a cache)."""
    run_dir = tmp_path / "redis-run"
    port = free_port()
    env = {**os.environ, "SHOPRANK_REDIS_RUN_DIR": str(run_dir),
           "SHOPRANK_REDIS_PORT": str(port)}
    script("redis", "start", env)
    try:
        yield f"redis://127.0.0.1:{port}/0", env, run_dir / "redis.pid"
    finally:
        script("redis", "stop", env)


def test_redis_killed_under_load_search_answers_unpersonalised_and_sessions_503(
    redis_server: tuple[str, dict[str, str], Path], products: list[Product],
    encoder: BiEncoder,
) -> None:
    url, env, pid_file = redis_server
    settings = Settings(index="faults-redis", reranker="none", session_store="redis",
                        redis_url=url, admin_api_key=ADMIN_KEY)
    index_products(LocalStore(settings.index_root), products, encoder)
    session = "shopper-1"
    liked = [p.id for p in products if p.brand == products[0].brand][:3] or [products[0].id]

    def send(client: httpx.Client, number: int) -> tuple[str, httpx.Response]:
        kind = ("search", "events", "sessions")[number % 3]
        if kind == "events":
            event = {"type": "click", "session_id": session,
                     "product_id": liked[number % len(liked)],
                     "timestamp": datetime.now(UTC).isoformat()}
            return kind, client.post("/events", json=event)
        if kind == "sessions":
            return kind, client.get(f"/sessions/{session}", headers={"X-API-Key": ADMIN_KEY})
        body = {"query": QUERIES[number % len(QUERIES)], "k": 10, "session_id": session}
        return kind, client.post("/search", json=body)

    def personalised(a: Answer) -> bool:
        return a.kind == "search" and a.status == 200 and a.body["personalized"] is True

    def answered(kind: str) -> Callable[[Answer], bool]:
        return lambda a: a.kind == kind and a.status == 200

    def all_ok(after: float, timeout: float, what: str) -> Answer:
        """Wait until search, events and sessions each answered 200 after ``after``; the
        last of the three."""
        firsts = [load.wait_for(after, answered(kind), timeout, f"{kind} {what}")
                  for kind in ("events", "sessions", "search")]
        return max(firsts, key=lambda a: a.sent + a.seconds)

    with serve(create_app(settings)) as served:
        with Load(served.url, send, clients=3, interval=0.3) as load:
            all_ok(0, 60, "with Redis up")
            load.wait_for(0, personalised, 60, "personalised search")
            killed = time.monotonic()
            kill(pid_file)
            load.run_for(FAULT_SECONDS)
            back_started = time.monotonic()
            script("redis", "start", env)
            back = time.monotonic()
            recovered = all_ok(back, 60, "after Redis returned")
            load.wait_for(back, personalised, 60, "personalised search after Redis returned")
        figures = report(load, "Redis SIGKILL", killed, back_started, back, recovered)
        time.sleep(1.0)
        open_connections = served.open_connections()

    answers = load.sent_between(0)
    assert figures.no_answer == 0, [a for a in answers if a.status is None]
    # Answered while Redis was down: a search sent then but slow enough to read the session
    # after Redis came back is rightly personalised, so it is left out.
    down = load.answered_between(killed + 0.5, back_started)
    assert {a.kind for a in down} == {"search", "events", "sessions"}
    for answer in down:
        assert answer.seconds < CLIENT_TIMEOUT, answer
        if answer.kind == "search":
            assert answer.status == 200 and answer.body["personalized"] is False, answer
        else:
            assert answer.status == 503 and "Redis" in answer.detail(), answer
    assert all(a.status == 200 for a in answers if a.kind == "search")
    assert open_connections == 0
